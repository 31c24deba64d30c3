"""reapply.py, the boot-time re-apply, against a fake host: the saved entries (the role's file and
ebpf_state's) become ebpf_state's options, state_engine runs them in its boot mode (one run per pin root,
nothing saved, pruned, rolled back or health-checked), a program refused at the gate is retried every 2 s
until --retry-seconds have passed, the JSON lines and the exit codes."""
import contextlib
import io
import json

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import reapply
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_desired
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_engine
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params

PIN = "/sys/fs/bpf/hm-test"


class FakeError(Exception):
    pass


class FakeOps(object):
    """A host: programs {(pin_root, name): params}, maps {(name, map): {key: value}} created by a load,
    interfaces that are missing (a program attached there is refused in check mode, as program_runner does)."""

    def __init__(self, maps_of=None):
        self.progs = {}
        self.maps = {}
        self.maps_of = maps_of or {}
        self.missing = set()
        self.fail_apply = {}
        self.log = []
        self.locked = 0

    @contextlib.contextmanager
    def lock(self):
        self.locked += 1
        yield

    def _interface(self, params):
        xdp = (params.get("attach") or {}).get("xdp")
        return xdp and xdp["interface"]

    def apply_program(self, params, check_mode, planned=None):
        key = (params["pin_root"], params["name"])
        self.log.append(("program", params["name"], check_mode))
        if self._interface(params) in self.missing:
            raise FakeError("interface %s does not exist" % self._interface(params))
        if not check_mode and params["name"] in self.fail_apply:
            raise self.fail_apply.pop(params["name"])
        want = {"sha256": params["sha256"], "attach": params["attach"], "state": params["state"]}
        before = self.progs.get(key)
        changed = before != want
        if changed and not check_mode:
            self.progs[key] = want
            for m in self.maps_of.get(params["name"], []):
                self.maps.setdefault((params["name"], m), {})
        after = dict(want, state=params["state"])
        return {"changed": changed, "state": params["state"], "prog_id": 100 + len(self.progs),
                "diff": {"before": before or {"state": "absent"}, "after": after}}

    def apply_entries(self, params, check_mode):
        key = (params["name"], params["map"])
        self.log.append(("map", params["map"], check_mode))
        if key not in self.maps:
            raise FakeError("no pinned map %s/%s" % key)
        want = dict((str(e["key"]), e.get("value", 0)) for e in params["entries"])
        added = [k for k in want if k not in self.maps[key]]
        changed = bool(added)
        if changed and not check_mode:
            self.maps[key].update(want)
        return {"changed": changed, "counts": {"added": len(added), "updated": 0, "removed": 0},
                "added": added, "updated": []}

    def map_exists(self, params):
        return (params["name"], params["map"]) in self.maps

    def managed_names(self, pin_root):
        raise AssertionError("the boot does not prune")

    def snapshot(self, names, map_params, pin_root):
        raise AssertionError("the boot does not roll back")

    def health(self, items, pin_root):
        raise AssertionError("the boot checks no health")

    def read_desired(self, path):
        raise AssertionError("the boot saves nothing")

    def commit(self, *a, **kw):
        raise AssertionError("the boot saves nothing")

    def errors(self):
        return (FakeError, ValueError)

    def real(self):
        return [c[:2] for c in self.log if not c[2]]


class Clock(object):
    """time.time and time.sleep for the retry loop: sleeping moves the clock."""

    def __init__(self, host=None, appears=None):
        self.now = 1000.0
        self.sleeps = []
        self.host = host
        self.appears = appears or {}   # interface -> clock time it appears at

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        for ifname, at in self.appears.items():
            if self.now >= at:
                self.host.missing.discard(ifname)


def xdp(ifname):
    return {"xdp": {"interface": ifname, "netns": None, "mode": "generic"}}


def role_entry(name, sha, attach, maps=(), pin_root=PIN):
    """An entry of the role's desired.json (before ebpf_state): ebpf_program and ebpf_map parameters."""
    return {"program": {"name": name, "object": "/var/lib/hypermesh-ebpf/objects/%s.bpf.o" % sha, "sha256": sha,
                        "program": None, "state": "attached", "attach": attach, "pin_root": pin_root,
                        "force": False},
            "maps": [{"name": name, "map": m, "path": None, "pin_root": pin_root, "entries": entries,
                      "state": "present", "exact": False, "key_format": "auto", "value_format": "auto"}
                     for m, entries in maps]}


ROLE_DOC = {"version": 1, "programs": [
    role_entry("counter", "c1", xdp("eth1"), [("blocklist", [{"key": "10.0.0.1"}])]),
    role_entry("openat", "o1", {"tracepoint": "syscalls/sys_enter_openat"})]}


def lines_of(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def run(doc, host, retry_seconds=0.0, clock=None, check_mode=False):
    clock = clock or Clock(host)
    out = io.StringIO()
    failed = reapply.reapply(doc, check_mode=check_mode, retry_seconds=retry_seconds, out=out, sleep=clock.sleep,
                             clock=clock.time, ops=host)
    return failed, lines_of(out), clock


def fresh_host():
    return FakeOps({"counter": ["blocklist"]})


# ---- the saved entries as ebpf_state's options -----------------------------------------------------------
def test_a_role_entry_becomes_a_programs_option():
    pin_root, option = reapply.to_options(ROLE_DOC["programs"][0])
    assert pin_root == PIN
    assert option == {"name": "counter", "object": "/var/lib/hypermesh-ebpf/objects/c1.bpf.o", "sha256": "c1",
                      "state": "attached", "attach": xdp("eth1"), "force": False,
                      "maps": [{"map": "blocklist", "entries": [{"key": "10.0.0.1"}], "state": "present",
                                "exact": False, "key_format": "auto", "value_format": "auto"}],
                      "health": {"check": "none"}}
    assert set(option["maps"][0]) == set(state_params.MAP_SPEC)


def test_what_ebpf_state_saves_comes_back_as_the_same_options(tmp_path):
    """The file state_desired writes (generation, health, every default filled in) gives the engine the very
    program and map parameters it saved, under the same pin root."""
    given = [{"name": "counter", "object": "/o/c1.bpf.o", "sha256": "c1", "attach": xdp("eth1"),
              "maps": [{"map": "blocklist", "entries": [{"key": "10.0.0.1"}], "key_format": "ipv4"}],
              "health": {"check": "counter", "map": "stats"}},
             {"name": "openat", "object": "/o/o1.bpf.o", "state": "loaded"}]
    wanted, _opt = state_params.parse({"programs": given, "pin_root": PIN})
    path = str(tmp_path / "desired.json")
    state_desired.commit(path, state_desired.EMPTY, [w.saved() for w in wanted])
    doc = reapply.load_desired(path)
    assert doc["generation"] == 1
    groups, errors = reapply.plan(doc)
    assert errors == {} and [r for r, _o in groups] == [PIN]
    again, _opt = state_params.parse(reapply.engine_params(PIN, groups[0][1]))
    assert [w.program for w in again] == [w.program for w in wanted]
    assert [w.maps for w in again] == [w.maps for w in wanted]
    assert [w.health["check"] for w in again] == ["none", "none"]


def test_entries_are_grouped_by_pin_root_in_the_files_order():
    doc = {"version": 1, "programs": [role_entry("a", "a1", xdp("eth1")),
                                      role_entry("b", "b1", xdp("eth2"), pin_root="/sys/fs/bpf/other"),
                                      role_entry("c", "c1", xdp("eth3"))]}
    groups, errors = reapply.plan(doc)
    assert errors == {}
    assert [(r, [o["name"] for o in opts]) for r, opts in groups] == [(PIN, ["a", "c"]),
                                                                      ("/sys/fs/bpf/other", ["b"])]
    assert reapply.engine_params(PIN, groups[0][1])["state_dir"] == "/var/lib/hypermesh-ebpf"
    params = reapply.engine_params(PIN, groups[0][1], "/srv/state")
    assert dict((k, v) for k, v in params.items() if k != "programs") == {
        "pin_root": PIN, "state_dir": "/srv/state", "persist": False, "rollback": False, "prune": False, "health_checks": "none"}


def test_an_entry_the_engine_cannot_take_fails_alone():
    by_path = role_entry("bypath", "p1", xdp("eth1"), [("m", [])])
    by_path["maps"][0].update(map=None, path="/sys/fs/bpf/elsewhere/m")
    other_root = role_entry("otherroot", "r1", xdp("eth1"), [("m", [])])
    other_root["maps"][0]["pin_root"] = "/sys/fs/bpf/x"
    unknown = role_entry("unknown", "u1", xdp("eth1"))
    unknown["program"]["colour"] = "blue"
    absent_with_maps = role_entry("absent", "x1", xdp("eth1"), [("m", [])])
    absent_with_maps["program"]["state"] = "absent"
    doc = {"version": 1, "programs": [by_path, other_root, unknown, absent_with_maps, role_entry("ok", "k1", xdp("e")),
                                      role_entry("ok", "k2", xdp("e"))]}
    groups, errors = reapply.plan(doc)
    assert [o["name"] for o in groups[0][1]] == ["ok"] and groups[0][1][0]["sha256"] == "k1"
    assert "only a map of the program named by `map`" in errors[(PIN, "bypath")]
    assert "pin_root /sys/fs/bpf/x is not the program's" in errors[(PIN, "otherroot")]
    assert "unsupported program parameter(s) colour" in errors[(PIN, "unknown")]
    assert "state absent takes no maps" in errors[(PIN, "absent")]
    assert errors[(PIN, "ok")] == "listed more than once under pin_root %s" % PIN
    host = fresh_host()
    failed, lines, _c = run(doc, host)
    assert failed == ["absent", "bypath", "ok", "otherroot", "unknown"]
    assert host.real() == [("program", "ok")]
    assert [ln["program"] for ln in lines if ln.get("failed")] == failed


# ---- through the engine ------------------------------------------------------------------------------------
def test_reapply_restores_everything_then_changes_nothing():
    host = fresh_host()
    failed, lines, clock = run(ROLE_DOC, host)
    assert failed == [] and clock.sleeps == []
    assert lines == [
        {"program": "counter", "changed": True, "state": "attached", "prog_id": 101},
        {"program": "counter", "map": "blocklist", "changed": True, "added": ["10.0.0.1"], "updated": []},
        {"program": "openat", "changed": True, "state": "attached", "prog_id": 102}]
    assert host.maps[("counter", "blocklist")] == {"10.0.0.1": 0}
    assert host.locked == 1     # one engine run, under one hold of the lock
    # the gate first: every check-mode call before the first real one
    first_real = [c[2] for c in host.log].index(False)
    assert all(c[2] for c in host.log[:first_real]) and ("program", "openat", True) in host.log[:first_real]
    host.log = []
    failed, lines, _c = run(ROLE_DOC, host)
    assert failed == [] and host.real() == []
    assert [ln["changed"] for ln in lines] == [False, False, False]


def test_check_mode_changes_nothing():
    host = fresh_host()
    failed, lines, _c = run(ROLE_DOC, host, check_mode=True)
    assert failed == [] and host.real() == [] and host.progs == {}
    assert [ln["changed"] for ln in lines] == [True, True, True]


def test_a_late_interface_is_retried_every_2_s_and_the_others_applied_at_once():
    host = fresh_host()
    host.missing.add("eth1")
    clock = Clock(host, appears={"eth1": 1005.0})
    failed, lines, clock = run(ROLE_DOC, host, retry_seconds=30, clock=clock)
    assert failed == [] and clock.sleeps == [2, 2, 2]
    assert [ln["program"] for ln in lines] == ["openat", "counter", "counter"]
    assert lines[1]["changed"] and lines[2] == {"program": "counter", "map": "blocklist", "changed": True,
                                                "added": ["10.0.0.1"], "updated": []}
    assert host.locked == 4     # the first run and three retries
    # a retry runs only what was set aside
    assert host.log.count(("program", "openat", True)) == 1


def test_an_interface_that_never_comes_fails_at_the_deadline_with_its_reason():
    host = fresh_host()
    host.missing.add("eth1")
    failed, lines, clock = run(ROLE_DOC, host, retry_seconds=5)
    assert failed == ["counter"] and clock.sleeps == [2, 2, 2]
    assert lines[0]["program"] == "openat" and lines[0]["changed"]
    assert lines[-1] == {"program": "counter", "failed": True, "error": "interface eth1 does not exist"}
    assert ("counter", "blocklist") not in host.maps


def test_retry_seconds_0_tries_once():
    host = fresh_host()
    host.missing.add("eth1")
    failed, lines, clock = run(ROLE_DOC, host)
    assert failed == ["counter"] and clock.sleeps == [] and [ln["program"] for ln in lines] == ["openat", "counter"]


def test_a_failure_after_the_gate_does_not_keep_the_programs_after_it_back():
    doc = {"version": 1, "programs": [role_entry("a", "a1", xdp("eth1")), role_entry("b", "b1", xdp("eth2")),
                                      role_entry("c", "c1", xdp("eth3"))]}
    host = fresh_host()
    host.fail_apply["b"] = FakeError("verifier said no")   # once: the retry loads it
    failed, lines, clock = run(doc, host)
    assert failed == ["b"]
    assert [(ln["program"], ln["changed"]) for ln in lines[:2]] == [("a", True), ("c", True)]
    assert lines[2]["program"] == "b" and lines[2]["error"].startswith("program b: verifier said no")
    assert sorted(n for _r, n in host.progs) == ["a", "c"]
    host = fresh_host()
    host.fail_apply["b"] = FakeError("verifier said no")
    failed, lines, clock = run(doc, host, retry_seconds=10)
    assert failed == [] and clock.sleeps == [2] and [ln["program"] for ln in lines] == ["a", "c", "b"]


def test_each_pin_root_is_its_own_engine_run():
    doc = {"version": 1, "programs": [role_entry("a", "a1", xdp("eth1")),
                                      role_entry("a", "a2", xdp("eth2"), pin_root="/sys/fs/bpf/other")]}
    host = fresh_host()
    failed, lines, _c = run(doc, host)
    assert failed == [] and host.locked == 2
    assert sorted(host.progs) == sorted([("/sys/fs/bpf/other", "a"), (PIN, "a")])


# ---- the engine replaced: what reapply asks of it ----------------------------------------------------------
def test_the_engine_is_asked_for_its_boot_mode_and_a_bug_is_retried():
    calls = []

    def engine(params, check_mode, ops=None, set_aside_refused=False):
        calls.append((sorted(o["name"] for o in params["programs"]), check_mode, set_aside_refused))
        if len(calls) == 1:
            raise KeyError("oops")
        return {"changed": True, "programs": [{"name": o["name"], "action": "load", "changed": True,
                                               "reason": "not loaded", "state": "attached", "prog_id": 7,
                                               "maps": []} for o in params["programs"]]}
    clock = Clock()
    out = io.StringIO()
    failed = reapply.reapply(ROLE_DOC, retry_seconds=3, out=out, sleep=clock.sleep, clock=clock.time,
                             engine=engine, ops=object())
    assert failed == [] and calls == [(["counter", "openat"], False, True)] * 2
    assert [ln["program"] for ln in lines_of(out)] == ["counter", "openat"]


# ---- the command -------------------------------------------------------------------------------------------
def _write(tmp_path, doc):
    p = tmp_path / "desired.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


def test_state_dir_is_passed_down(tmp_path, monkeypatch, capsys):
    """--state-dir reaches the engine's host functions and every program's parameters (no environment)."""
    host, given, seen = fresh_host(), [], []
    monkeypatch.setattr(reapply, "_engine",
                        lambda: (state_engine.run, lambda state_dir: given.append(state_dir) or host))
    real = host.apply_program
    monkeypatch.setattr(host, "apply_program",
                        lambda params, check, planned=None: seen.append(params["state_dir"]) or real(params, check))
    path = _write(tmp_path, ROLE_DOC)
    assert reapply.main(["--desired", path, "--state-dir", "/srv/hm-state", "--retry-seconds", "0"]) == 0
    assert given == ["/srv/hm-state"] and seen and set(seen) == set(["/srv/hm-state"])
    assert reapply.main(["--desired", path, "--retry-seconds", "0"]) == 0
    assert given[-1] == "/var/lib/hypermesh-ebpf"
    capsys.readouterr()


def test_exit_codes(tmp_path, monkeypatch, capsys):
    host = fresh_host()
    monkeypatch.setattr(reapply, "_engine", lambda: (state_engine.run, lambda state_dir: host))
    path = _write(tmp_path, ROLE_DOC)
    assert reapply.main(["--desired", path, "--retry-seconds", "0"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"summary": True, "programs": 2, "failed": []}
    host.progs = {}
    host.missing.add("eth1")
    assert reapply.main(["--desired", path, "--retry-seconds", "0"]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"summary": True, "programs": 2, "failed": ["counter"]}
    for doc, text in (({"version": 99, "programs": []}, "version 99"), ("{not json", "is not JSON"),
                      ({"version": 1, "programs": [{"maps": []}]}, "programs[0] needs 'program'")):
        assert reapply.main(["--desired", _write(tmp_path, doc)]) == 2
        line = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert line["failed"] and text in line["error"]
    assert reapply.main(["--desired", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("doc", [ROLE_DOC, dict(ROLE_DOC, generation=4)])
def test_both_formats_load(tmp_path, doc):
    assert reapply.load_desired(_write(tmp_path, doc))["programs"] == ROLE_DOC["programs"]


# ---- the saved entry goes through the checks AnsibleModule makes (params.validate, the modules' spec constants) ----
@pytest.mark.parametrize("change,message", [
    (lambda e: e["program"].update(state="bogus"), "value of state must be one of: attached, loaded, absent, got: bogus"),
    (lambda e: e["program"].update(force="maybe"), "argument 'force' is of type str and we were unable to convert to bool"),
    (lambda e: e["program"].update(object=None), "state is attached but all of the following are missing: object"),
    (lambda e: e["program"]["attach"]["xdp"].update(mode="fast"),
     "value of mode must be one of: auto, generic, native, offload, got: fast found in attach -> xdp"),
    (lambda e: e["program"]["attach"].update(tc={"interface": "eth1"}), "parameters are mutually exclusive: xdp|tc|"),
    (lambda e: e["program"]["attach"]["xdp"].update(interface=None), "missing required arguments: interface found in attach -> xdp"),
    (lambda e: e["maps"][0].update(state="gone"),
     "value of state must be one of: present, absent, got: gone found in programs -> maps"),
    (lambda e: e["maps"][0].update(entries="k"), "Elements value for option 'entries' found in 'programs -> maps'"),
])
def test_a_saved_entry_ansiblemodule_would_refuse_is_refused_with_its_message(change, message):
    import copy
    bad = copy.deepcopy(ROLE_DOC["programs"][0])
    change(bad)
    doc = {"version": 1, "programs": [bad, ROLE_DOC["programs"][1]]}
    groups, errors = reapply.plan(doc)
    assert message in errors[(PIN, "counter")]
    assert [o["name"] for _r, opts in groups for o in opts] == ["openat"]  # the other entry is still applied


def test_a_saved_entry_is_converted_as_ansiblemodule_converts_it():
    import copy
    entry = copy.deepcopy(ROLE_DOC["programs"][0])
    entry["program"]["force"] = "no"  # truthy as a string: the engine must get False, as the module would
    entry["maps"][0]["exact"] = "yes"
    _pin, option = reapply.to_options(entry)
    assert option["force"] is False and option["maps"][0]["exact"] is True
    assert option["attach"] == xdp("eth1")  # the saved shape is kept (netns None stays None)


def test_saved_globals_come_back_as_they_were_given(tmp_path):
    """`globals` is saved with the program's options and handed back untouched (values are typed at load)."""
    given = [{"name": "drop", "object": "/o/d1.bpf.o", "sha256": "d1", "attach": xdp("eth1"),
              "globals": {"drop_port": 9, "addr": "10.0.0.1", "on": True}}]
    wanted, _opt = state_params.parse({"programs": given, "pin_root": PIN})
    assert wanted[0].program["globals"] == given[0]["globals"]
    path = str(tmp_path / "desired.json")
    state_desired.commit(path, state_desired.EMPTY, [w.saved() for w in wanted])
    groups, errors = reapply.plan(reapply.load_desired(path))
    assert errors == {}
    again, _opt = state_params.parse(reapply.engine_params(PIN, groups[0][1]))
    assert again[0].program["globals"] == {"drop_port": 9, "addr": "10.0.0.1", "on": True}


def test_a_program_without_globals_is_saved_as_before_the_option():
    """No `globals` key in the saved entry when none are set: a desired state saved by an older release is the
    same (no new generation after an upgrade)."""
    wanted, _opt = state_params.parse({"programs": [{"name": "c", "object": "/o/c.bpf.o", "attach": xdp("eth1")}],
                                       "pin_root": PIN})
    assert "globals" not in wanted[0].saved()["program"] and wanted[0].program["globals"] is None
