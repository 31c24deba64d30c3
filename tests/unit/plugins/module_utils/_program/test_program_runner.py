"""program_runner: ebpf_program's options and what apply() decides from them. Argument refusals come before any
host access; desired() reuses the record's program list for an unchanged object (libbpf not opened); the rest
runs for real as root (libbpf opens the example objects without loading them, a bpffs directory of this test as
pin_root, check mode, state absent)."""
import hashlib
import os
import shutil

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.params import with_defaults
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner as pr
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec as spec_mod
from tests.unit.fixtures import c_binary

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5))
OBJECTS = os.path.join(TOP, "examples", "objects")
root_only = pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/fs/bpf"),
                               reason="probe: not root, or no bpffs at /sys/fs/bpf")


def obj(name):
    path = os.path.join(OBJECTS, name + ".bpf.o")
    if not os.path.exists(path):
        pytest.skip("probe: %s is not built (examples/Makefile)" % path)
    return path


@pytest.fixture
def pin_root():
    path = "/sys/fs/bpf/hm-unit-runner-%d" % os.getpid()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_spec_names_every_attach_kind_once():
    attach = pr.ARGUMENT_SPEC["attach"]
    assert sorted(attach["options"]) == sorted(spec_mod.ATTACH_KINDS)
    assert attach["mutually_exclusive"] == [list(spec_mod.ATTACH_KINDS)]
    assert attach["options"]["cgroup"]["options"]["type"]["choices"] == sorted(spec_mod.CGROUP_TYPES)
    assert pr.REQUIRED_IF == [("state", "attached", ("object",)), ("state", "loaded", ("object",))]


@pytest.mark.parametrize("params,error,message", [
    ({"name": "x"}, spec_mod.SpecError, "state is attached but missing: object"),
    ({"name": "x", "state": "loaded"}, spec_mod.SpecError, "state is loaded but missing: object"),
    ({"name": "x", "state": "absent", "colour": 1}, ValueError, "unsupported parameters: colour"),
    ({"name": "a/b", "state": "absent"}, spec_mod.SpecError, "name 'a/b' is not valid"),
    ({"name": "_shared", "state": "absent"}, spec_mod.SpecError, "is not valid"),
    ({"name": "x", "state": "absent", "pin_root": "relative/dir"}, spec_mod.SpecError, "must be an absolute path"),
    ({"name": "x", "state": "absent", "pin_root": "/sys/fs/bpf/../x"}, spec_mod.SpecError, "without '..'"),
])
def test_arguments_are_refused_before_the_host_is_touched(params, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        pr.apply(params)


def test_a_pin_root_off_bpffs_is_refused(tmp_path):
    with pytest.raises(spec_mod.SpecError, match="is not on a bpf filesystem"):
        pr.apply({"name": "x", "state": "absent", "pin_root": str(tmp_path / "pins")})


def test_errors_are_the_clear_refusals():
    errors = pr.errors()
    assert all(isinstance(e, type) and issubclass(e, BaseException) for e in errors)
    for e in (spec_mod.SpecError, pr.ApplyError, pr.pa.AttachError, pr.LockTimeout, OSError):
        assert e in errors
    assert "NetlinkError" in [e.__name__ for e in errors]  # pyroute2 is installed here


@root_only
def test_root_has_the_privileges():
    assert pr.has_privileges()


def _run(tmp_path, **params):
    return pr.ProgramRun(with_defaults(dict({"name": "x", "state_dir": str(tmp_path)}, **params), pr.ARGUMENT_SPEC))


@pytest.mark.parametrize("make,message", [
    (lambda d: str(d / "none.bpf.o"), "does not exist on this host"),
    (lambda d: (d / "text.o").write_text("not elf") and str(d / "text.o"), "is not an ELF file"),
])
def test_the_object_is_checked_first(tmp_path, make, message):
    run = _run(tmp_path, object=make(tmp_path))
    with pytest.raises(spec_mod.SpecError, match=message):
        run.desired(None)
    assert run.obj is None


def test_a_wrong_sha256_is_refused(tmp_path):
    path = obj("tp_openat")
    with pytest.raises(spec_mod.SpecError, match="not the expected 00"):
        _run(tmp_path, object=path, sha256="00" * 32).desired(None)


def test_an_unchanged_object_is_not_opened_again(tmp_path):
    """The record's program list stands for the object with that digest: libbpf is not opened."""
    path = obj("tp_openat")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    record = {"sha256": digest, "programs": [{"name": "from_record", "section": "tracepoint/syscalls/sys_enter_openat"}]}
    run = _run(tmp_path, object=path)
    want = run.desired(record)
    assert run.obj is None
    assert want["program"] == "from_record" and want["sha256"] == digest
    assert want["attach"] == spec_mod.normalize(None, "tracepoint/syscalls/sys_enter_openat")


def test_a_new_object_is_read_with_libbpf(tmp_path):
    run = _run(tmp_path, object=obj("tp_openat"))
    try:
        want = run.desired(None)
        assert run.obj is not None and want["attach"]["type"] == "tracepoint"
        assert [p["name"] for p in want["programs"]] == [want["program"]]
    finally:
        if run.obj is not None:
            run.obj.close()


def test_loaded_needs_no_attach_point_and_attached_does(tmp_path):
    """An XDP program says no interface in its section: loaded is fine without one, attached is refused."""
    run = _run(tmp_path, object=obj("xdp_counter"), state="loaded")
    try:
        want = run.desired(None)
        assert want["state"] == "loaded" and want["attach"] is None and run.spec is None
    finally:
        run.obj.close()
    run = _run(tmp_path, object=obj("xdp_counter"))
    try:
        with pytest.raises(spec_mod.SpecError, match="set attach.xdp.interface"):
            run.desired(None)
    finally:
        run.obj.close()


@root_only
def test_absent_when_nothing_is_there_changes_nothing(pin_root, tmp_path):
    r = pr.apply({"name": "x", "state": "absent", "pin_root": pin_root, "state_dir": str(tmp_path)})
    assert r["changed"] is False and r["state"] == "absent" and r["pin_dir"] == os.path.join(pin_root, "x")
    assert not os.path.exists(os.path.join(pin_root, "x"))


@root_only
def test_check_mode_predicts_the_attach_and_pins_nothing(pin_root, tmp_path):
    params = {"name": "x", "object": obj("tp_openat"), "pin_root": pin_root, "state_dir": str(tmp_path)}
    r = pr.apply(params, check_mode=True)
    assert r["changed"] is True and r["state"] == "attached" and r["attach"]["type"] == "tracepoint"
    assert "prog_id" not in r and r["diff"]["before"] == {"state": "absent"}
    assert not os.path.exists(os.path.join(pin_root, "x")) and os.listdir(str(tmp_path)) == []


@root_only
def test_a_missing_attach_target_is_refused_in_check_mode_too(pin_root, tmp_path):
    params = {"name": "x", "object": obj("xdp_counter"), "pin_root": pin_root, "state_dir": str(tmp_path),
              "attach": {"xdp": {"interface": "hmnoif%d" % (os.getpid() % 100000)}}}
    with pytest.raises(pr.pa.AttachError, match="hmnoif"):
        pr.apply(params, check_mode=True)
    assert not os.path.exists(os.path.join(pin_root, "x"))


def test_globals_are_checked_and_normalised_by_desired(tmp_path, tmp_path_factory):
    from tests.unit.fixtures import globals_object
    path = globals_object.build(tmp_path_factory)
    run = _run(tmp_path, object=path, state="loaded", globals={"drop_port": "0x35", "addr4": "10.0.0.1"})
    try:
        want = run.desired(None)
    finally:
        run.obj.close()
    assert want["globals"] == {"drop_port": 53, "addr4": "10.0.0.1"}
    assert _run(tmp_path, object=path, state="loaded").desired(
        {"sha256": want["sha256"], "programs": want["programs"]})["globals"] == {}
    for bad, message in (({"nope": 1}, "no global variable 'nope'"), ({"drop_port": 70000}, "70000 does not fit")):
        run = _run(tmp_path, object=path, state="loaded", globals=bad)
        try:
            with pytest.raises(spec_mod.SpecError, match=message):
                run.desired(None)
        finally:
            if run.obj is not None:
                run.obj.close()


@root_only
def test_check_mode_shows_the_globals_and_pins_nothing(pin_root, tmp_path, tmp_path_factory):
    from tests.unit.fixtures import globals_object
    params = {"name": "x", "object": globals_object.build(tmp_path_factory), "state": "loaded",
              "pin_root": pin_root, "state_dir": str(tmp_path), "globals": {"drop_port": 10, "verbose": "no"}}
    r = pr.apply(params, check_mode=True)
    assert r["changed"] is True and r["globals"] == {"drop_port": 10, "verbose": False}
    assert r["diff"]["after"]["globals"] == {"drop_port": 10, "verbose": False}
    assert not os.path.exists(os.path.join(pin_root, "x")) and os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("uprobe, message", [
    ({"path": "/usr/bin/x", "symbol": "f", "offset": 4}, "mutually exclusive: symbol|offset"),
    ({"path": "/usr/bin/x"}, "one of the following is required: symbol, offset"),
    ({"symbol": "f"}, "missing required arguments: path"),
])
def test_uprobe_options_are_refused_as_ansible_refuses_them(uprobe, message):
    """params.validate: what AnsibleModule refuses for the same spec (the module, ebpf_state, the boot re-apply)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import params
    with pytest.raises(params.ParamError, match=message):
        params.validate({"name": "x", "object": "/x.bpf.o", "attach": {"uprobe": uprobe}}, pr.ARGUMENT_SPEC)
    ok = params.validate({"name": "x", "object": "/x.bpf.o", "attach": {"uretprobe": {"path": "/x", "offset": "16"}}},
                         pr.ARGUMENT_SPEC)
    assert ok["attach"]["uretprobe"] == {"path": "/x", "offset": 16, "symbol": None, "pid": None}


@root_only
def test_check_mode_predicts_a_uprobe_with_its_offset_and_pins_nothing(pin_root, tmp_path):
    """A binary of ours (tests/unit/fixtures/c_binary.py): attach.uprobe by symbol resolves to the file offset."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import elf_symbols
    binary = c_binary.build(tmp_path, "python")
    state_dir = tmp_path / "state"
    params = {"name": "x", "object": obj("uprobe_counter"), "pin_root": pin_root, "state_dir": str(state_dir),
              "attach": {"uretprobe": {"path": binary, "symbol": "main"}}}
    r = pr.apply(params, check_mode=True)
    st = os.stat(binary)
    assert r["changed"] is True and r["attach"] == {
        "type": "uretprobe", "path": binary, "symbol": "main", "offset": elf_symbols.function_offset(binary, "main"),
        "pid": None, "inode": "%d:%d" % (st.st_dev, st.st_ino)}, r
    assert not os.path.exists(os.path.join(pin_root, "x")) and not state_dir.exists()
    with pytest.raises(pr.pa.AttachError, match="has no function symbol hm_none"):
        pr.apply(dict(params, attach={"uprobe": {"path": binary, "symbol": "hm_none"}}), check_mode=True)


class _Unsupported(Exception):
    def __init__(self, feature, reason, message):
        Exception.__init__(self, message)
        self.feature, self.reason = feature, reason


@pytest.fixture
def gate_probes(monkeypatch):
    """program_gate.require with `no` the unsupported features (probes.Unsupported as the probes raise it)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_gate
    no = set()

    def require(features, memo_path=None):
        for f in features:
            if f in no:
                raise probes.Unsupported(f, "no %s here" % f, "%s are not supported on kernel 5.10: no %s" % (f, f))
    monkeypatch.setattr(program_gate, "require", require)
    return no


def test_gate_links_where_the_kernel_pins(gate_probes):
    assert pr.gate({"type": "tracepoint", "target": "syscalls/sys_enter_openat"}) is None


def test_gate_holds_where_only_the_perf_link_is_missing(gate_probes):
    gate_probes.add("perf_link")
    for kind in ("tracepoint", "kprobe", "kretprobe"):
        assert pr.gate({"type": kind, "target": "x"}) == "holder"
    assert pr.gate({"type": "uprobe", "path": "/bin/true", "offset": 0}) == "holder"
    assert pr.gate({"type": "xdp", "interface": "lo"}) is None


def test_gate_refuses_when_neither_link_nor_holder(gate_probes):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    gate_probes.update(["perf_link", "holder"])
    with pytest.raises(probes.Unsupported) as e:
        pr.gate({"type": "tracepoint", "target": "x"})
    assert "perf_link are not supported" in str(e.value) and "nor can the holder keep it: holder are" in str(e.value)


def test_gate_never_holds_a_missing_program_type(gate_probes):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    gate_probes.update(["kprobe", "perf_link"])
    with pytest.raises(probes.Unsupported, match="kprobe are not supported"):
        pr.gate({"type": "kprobe", "target": "x"})
    gate_probes.add("bpf_link")
    with pytest.raises(probes.Unsupported, match="bpf_link are not supported"):
        pr.gate({"type": "fentry", "target": "x"})  # fentry has no held form
    assert pr.gate({"type": "raw_tracepoint", "target": "sys_enter"}) == "holder"  # before 5.7: held
    assert pr.gate({"type": "cgroup", "path": "/sys/fs/cgroup", "cgroup_type": "egress"}) == "prog_attach"


def test_gate_xdp_with_a_priority_needs_the_dispatcher(gate_probes):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    multi = {"type": "xdp", "interface": "lo", "mode": "auto", "priority": 10, "proceed_on": ["pass"]}
    assert pr.gate(multi) is None
    gate_probes.add("xdp_multiprog")
    with pytest.raises(probes.Unsupported, match="xdp_multiprog are not supported"):
        pr.gate(multi)  # never one program per interface instead: the user asked for the dispatcher
    assert pr.gate({"type": "xdp", "interface": "lo", "mode": "auto"}) is None


def test_gate_cgroup_without_the_program_type_is_refused(gate_probes):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    gate_probes.update(["cgroup", "bpf_link"])
    with pytest.raises(probes.Unsupported, match="cgroup are not supported"):
        pr.gate({"type": "cgroup", "path": "/sys/fs/cgroup", "cgroup_type": "egress"})
