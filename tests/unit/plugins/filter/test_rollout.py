"""The filters of the role ebpf_programs (plugins/filter/rollout.py), on the controller: rollout_plan checks the list
and works out what ebpf_state gets (objects by digest, module_utils digest); rollout_uploads adds the contents of
only what the host's first run said it lacks, read again and checked against the plan."""
import base64
import glob
import hashlib
import json
import os
import types

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.hypermesh.ebpf.plugins.filter.rollout import FilterModule, rollout_plan, rollout_uploads

OBJECTS_DIR = "/var/lib/hm/objects"


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tree(tmp_path):
    """A playbook dir with two objects, and a module_utils dir with two packages of one file each, a .pyc, a __pycache__ and a README."""
    play = tmp_path / "play"
    (play / "files").mkdir(parents=True)
    (play / "files" / "a.bpf.o").write_bytes(b"\x7fELF object a")
    (play / "files" / "b.bpf.o").write_bytes(b"\x7fELF object b")
    mu = tmp_path / "module_utils"
    (mu / "_state" / "__pycache__").mkdir(parents=True)
    (mu / "_common").mkdir()
    (mu / "_state" / "reapply.py").write_bytes(b"print('reapply')\n")
    (mu / "_common" / "atomic_file.py").write_bytes(b"# atomic\n")
    (mu / "_state" / "stale.pyc").write_bytes(b"junk")
    (mu / "_state" / "__pycache__" / "reapply.cpython-311.pyc").write_bytes(b"junk")
    (mu / "README").write_bytes(b"not code")
    return {"play": str(play), "mu": str(mu), "a": str(play / "files" / "a.bpf.o"), "b": str(play / "files" / "b.bpf.o")}


def xdp(name, obj, **extra):
    p = {"name": name, "object": obj, "attach": {"xdp": {"interface": "eth0", "mode": "generic"}}}
    p.update(extra)
    return p


def plan_of(tree, programs, **kw):
    return rollout_plan(programs, tree["play"], OBJECTS_DIR, tree["mu"], **kw)


def test_the_filters_are_registered():
    assert sorted(FilterModule().filters()) == ["rollout_plan", "rollout_uploads"]


def test_plan_names_each_object_by_its_digest_in_the_host_store(tree):
    a = sha(b"\x7fELF object a")
    b = sha(b"\x7fELF object b")
    plan = plan_of(tree, [
        xdp("one", "files/a.bpf.o"),                                      # relative to the playbook dir
        {"name": "two", "object": tree["b"], "attach": {"tracepoint": "syscalls/sys_enter_openat"},
         "state": "loaded", "program": "count_openat", "force": True},
        xdp("three", "files/../files/a.bpf.o"),                           # the same object: sent once
    ])
    progs = plan["programs"]
    assert [p["name"] for p in progs] == ["one", "two", "three"]
    assert progs[0]["object"] == "%s/%s.bpf.o" % (OBJECTS_DIR, a) and progs[0]["sha256"] == a
    assert progs[1]["object"] == "%s/%s.bpf.o" % (OBJECTS_DIR, b) and progs[1]["sha256"] == b
    assert progs[2]["sha256"] == a
    assert plan["objects"] == [{"sha256": a}, {"sha256": b}]
    assert plan["sources"] == {a: tree["a"], b: tree["b"]}
    assert progs[0]["state"] == "attached" and progs[0]["force"] is False and progs[0]["program"] is None
    assert progs[1]["state"] == "loaded" and progs[1]["force"] is True and progs[1]["program"] == "count_openat"
    assert progs[1]["attach"] == {"tracepoint": "syscalls/sys_enter_openat"}
    assert progs[0]["maps"] == []
    json.dumps(plan)  # set_fact keeps it: plain data only


def test_plan_fills_in_health_and_keeps_map_declarations(tree):
    plan = plan_of(tree, [
        xdp("one", "files/a.bpf.o", health={"check": "counter", "map": "xdp_stats", "key": 0, "field": "packets",
                                            "timeout": None},
            maps=[{"map": "blocklist", "key_format": "ipv4", "entries": [{"key": "192.0.2.1"}], "exact": None}]),
        xdp("two", "files/b.bpf.o", health={"timeout": 4}),
        xdp("three", "files/b.bpf.o", health={"check": "none"}),
    ], health_timeout=25)
    one, two, three = plan["programs"]
    assert one["health"] == {"check": "counter", "map": "xdp_stats", "key": 0, "field": "packets", "timeout": 25}
    assert one["maps"] == [{"map": "blocklist", "key_format": "ipv4", "entries": [{"key": "192.0.2.1"}]}]
    assert two["health"] == {"check": "run_count", "timeout": 4}
    assert three["health"] == {"check": "none", "timeout": 25}


def test_plan_passes_globals_through_only_when_given(tree):
    plan = plan_of(tree, [xdp("one", "files/a.bpf.o", globals={"drop_port": 9, "addr": "10.0.0.1"}),
                          xdp("two", "files/b.bpf.o")])
    one, two = plan["programs"]
    assert one["globals"] == {"drop_port": 9, "addr": "10.0.0.1"}
    assert "globals" not in two  # a program without them: the plan ebpf_state gets stays as it was
    with pytest.raises(AnsibleFilterError, match="one: globals must be a dict"):
        plan_of(tree, [xdp("one", "files/a.bpf.o", globals=["drop_port"])])


def test_plan_drops_empty_attach_points(tree):
    p = xdp("one", "files/a.bpf.o")
    p["attach"] = {"xdp": {"interface": "eth0"}, "tc": None, "kprobe": None}
    assert plan_of(tree, [p])["programs"][0]["attach"] == {"xdp": {"interface": "eth0"}}


def test_plan_digests_the_module_utils_as_ebpf_state_does(tree):
    """digest = sha256 over the *.py files sorted by name of "<name> <sha256 of content>\\n" (the contract of
    ebpf_state's reapply_code), written out here independently of the plugin."""
    files = {"_common/atomic_file.py": b"# atomic\n", "_state/reapply.py": b"print('reapply')\n"}
    text = "".join("%s %s\n" % (n, sha(files[n])) for n in sorted(files))
    plan = plan_of(tree, [])
    assert plan["reapply_code"] == {"digest": sha(text.encode())}
    assert plan["code_files"] == dict((n, sha(files[n])) for n in files)
    assert plan["programs"] == [] and plan["objects"] == []


def test_plan_of_the_collections_own_module_utils():
    from tests.conftest import TOP
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_install
    mu = os.path.join(TOP, "plugins", "module_utils")
    plan = rollout_plan([], "/", OBJECTS_DIR, mu)
    files = dict((os.path.relpath(n, mu), open(n, "rb").read()) for n in glob.glob(os.path.join(mu, "_*", "*.py")))
    assert len(files) > 30 and all(n.count("/") == 1 for n in files)
    assert "_state/reapply.py" in plan["code_files"] and "_state/state_engine.py" in plan["code_files"]
    assert plan["reapply_code"]["digest"] == state_install.code_digest(files)


def test_plan_reports_every_problem_at_once(tree):
    with pytest.raises(AnsibleFilterError) as e:
        plan_of(tree, [
            xdp("one", "files/a.bpf.o"),
            xdp("one", "files/b.bpf.o"),
            xdp("one", "files/b.bpf.o"),
            xdp("gone", "files/nothere.bpf.o"),
            xdp("dir", "files"),
            {"name": "noattach", "object": "files/a.bpf.o"},
            {"name": "two", "object": "files/a.bpf.o", "attach": {"xdp": {"interface": "eth0"},
                                                                  "tracepoint": "a/b"}},
            {"name": "odd", "object": "files/a.bpf.o", "attach": {"usdt": "x"}},
            xdp("cnt", "files/a.bpf.o", health={"check": "counter"}),
            {"object": "files/a.bpf.o"},
        ])
    msg = str(e.value)
    assert msg.startswith("ebpf_programs is not valid, nothing changed: "), msg
    for part in ("name one is listed more than once",
                 "gone: object %s/files/nothere.bpf.o does not exist on the controller" % tree["play"],
                 "dir: object %s/files is not a regular file" % tree["play"],
                 "noattach: attach needs one attach point;",
                 "two: attach needs one attach point, got tracepoint, xdp",
                 "odd: attach point usdt is not one of xdp, tc",
                 "cnt: health.check=counter needs health.map",
                 "ebpf_programs[9] needs a name"):
        assert part in msg, (part, msg)
    assert msg.count("listed more than once") == 1


def test_plan_refuses_what_is_not_a_list(tree):
    with pytest.raises(AnsibleFilterError, match="must be a list of programs, got dict"):
        plan_of(tree, {"name": "one"})


def test_plan_needs_the_module_utils(tree, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AnsibleFilterError, match="no module_utils"):
        rollout_plan([], tree["play"], OBJECTS_DIR, str(empty))
    with pytest.raises(AnsibleFilterError, match="cannot read the collection's module_utils"):
        rollout_plan([], tree["play"], OBJECTS_DIR, str(tmp_path / "nothere"))


def test_plan_takes_any_mapping(tree):
    """Ansible hands filters its own (lazily templated) containers: anything that is a Mapping or a list."""
    p = types.MappingProxyType({"name": "one", "object": "files/a.bpf.o",
                                "attach": types.MappingProxyType({"xdp": {"interface": "eth0"}})})
    plan = plan_of(tree, (p,))
    assert plan["programs"][0]["attach"] == {"xdp": {"interface": "eth0"}}
    json.dumps(plan)


# ---- uploads ----------------------------------------------------------------------------------------------------
def test_uploads_without_missing_send_no_content(tree):
    plan = plan_of(tree, [xdp("one", "files/a.bpf.o"), xdp("two", "files/b.bpf.o")])
    for first in ({"changed": False, "programs": []}, {}, None):
        up = rollout_uploads(plan, first)
        assert up == {"objects": plan["objects"], "reapply_code": plan["reapply_code"]}


def test_uploads_send_only_what_the_host_lacks(tree):
    plan = plan_of(tree, [xdp("one", "files/a.bpf.o"), xdp("two", "files/b.bpf.o")])
    a, b = plan["objects"][0]["sha256"], plan["objects"][1]["sha256"]
    up = rollout_uploads(plan, {"changed": False, "missing": {"objects": [b], "code": False}})
    assert up["objects"][0] == {"sha256": a}
    assert up["objects"][1]["sha256"] == b and base64.b64decode(up["objects"][1]["content"]) == b"\x7fELF object b"
    assert up["reapply_code"] == plan["reapply_code"]

    up = rollout_uploads(plan, {"missing": {"objects": [], "code": True}})
    assert [o.get("content") for o in up["objects"]] == [None, None]
    files = up["reapply_code"]["files"]
    assert [f["name"] for f in files] == ["_common/atomic_file.py", "_state/reapply.py"]          # *.py only, sorted
    assert base64.b64decode(files[1]["content"]) == b"print('reapply')\n"
    assert up["reapply_code"]["digest"] == plan["reapply_code"]["digest"]


def test_uploads_refuse_a_file_changed_since_the_plan(tree):
    plan = plan_of(tree, [xdp("one", "files/a.bpf.o")])
    a = plan["objects"][0]["sha256"]
    with open(tree["a"], "ab") as f:
        f.write(b"rebuilt")
    with pytest.raises(AnsibleFilterError, match="changed on the controller during the rollout"):
        rollout_uploads(plan, {"missing": {"objects": [a], "code": False}})
    # not asked for: not read, nothing to refuse
    assert rollout_uploads(plan, {"missing": {"objects": [], "code": False}})["objects"] == [{"sha256": a}]

    with open(os.path.join(tree["mu"], "_state", "reapply.py"), "ab") as f:
        f.write(b"# edited\n")
    with pytest.raises(AnsibleFilterError, match="module_utils in .* changed on the controller"):
        rollout_uploads(plan, {"missing": {"objects": [], "code": True}})
    os.unlink(os.path.join(tree["mu"], "_state", "reapply.py"))
    with pytest.raises(AnsibleFilterError, match="changed on the controller"):
        rollout_uploads(plan, {"missing": {"objects": [], "code": True}})
    os.unlink(tree["a"])
    with pytest.raises(AnsibleFilterError, match="cannot be read"):
        rollout_uploads(plan, {"missing": {"objects": [a], "code": False}})


def test_uploads_refuse_an_object_the_plan_does_not_use(tree):
    plan = plan_of(tree, [xdp("one", "files/a.bpf.o")])
    with pytest.raises(AnsibleFilterError, match="does not use: %s" % ("0" * 64)):
        rollout_uploads(plan, {"missing": {"objects": ["0" * 64], "code": False}})
