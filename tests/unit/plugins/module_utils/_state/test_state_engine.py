"""state_engine's decisions against a fake host: gate before any change, one lock for the whole transaction,
snapshot before the first change, rollback on every kind of failure, commit only after a healthy apply, check
mode predicting without a change, prune limited to managed names."""
import contextlib
import json
import signal

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_desired
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_engine as se
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply import DesiredError


class FakeError(Exception):
    pass


class FakeSnap(object):
    def __init__(self, host, names):
        self.host = host
        self.names = list(names)
        self.saved = json.loads(json.dumps(host.state()))
        self.closed = False

    def restore(self, remove_program):
        removed = [n for n in self.host.progs if n not in self.saved["progs"]]
        for n in removed:
            remove_program(n)
        self.host.progs = self.saved["progs"]
        self.host.maps = dict((tuple(k.split("/")), v) for k, v in self.saved["maps"].items())
        self.host.log.append("restore")
        return {"removed": removed, "restored": sorted(self.saved["progs"]), "maps": [], "errors": []}

    def close(self):
        self.closed = True


class FakeHost(object):
    """Programs {name: {sha256, state, attach}}, maps {(name, map): {key: value}}, the calls made."""

    def __init__(self):
        self.progs = {}
        self.maps = {}
        self.managed = None
        self.fail_apply = {}        # name -> exception raised by the real (not check-mode) apply
        self.refuse = {}            # name -> exception raised in check mode too
        self.verdicts = {}          # name -> failure text of its health check
        self.desired = dict(state_desired.EMPTY)
        self.commits = []
        self.log = []
        self.lock_depth = 0
        self.snaps = []

    def state(self):
        return {"progs": self.progs, "maps": dict(("/".join(k), v) for k, v in self.maps.items())}

    # ops
    @contextlib.contextmanager
    def lock(self):
        assert self.lock_depth == 0
        self.lock_depth += 1
        try:
            yield
        finally:
            self.lock_depth -= 1

    def _want(self, params):
        if params["state"] == "absent":
            return {"state": "absent"}
        return {"state": params["state"], "sha256": params["sha256"], "attach": params["attach"]}

    def apply_program(self, params, check_mode, planned=None):
        assert self.lock_depth == 1
        name = params["name"]
        self.log.append(("program", name, check_mode))
        if name in self.refuse:
            raise self.refuse[name]
        if not check_mode and name in self.fail_apply:
            raise self.fail_apply[name]
        before = self.progs.get(name) or {"state": "absent"}
        after = self._want(dict({"state": "attached", "sha256": None, "attach": None}, **params))
        changed = before != after
        if changed and not check_mode:
            if after["state"] == "absent":
                del self.progs[name]
                for key in [k for k in self.maps if k[0] == name]:
                    del self.maps[key]
            else:
                self.progs[name] = after
        return {"changed": changed, "state": after["state"], "diff": {"before": before, "after": after}}

    def apply_entries(self, params, check_mode):
        assert self.lock_depth == 1
        key = (params["name"], params["map"])
        self.log.append(("map", params["map"], check_mode))
        if key not in self.maps:
            raise FakeError("no pinned map %s" % "/".join(key))
        current = self.maps[key]
        want = dict((str(e["key"]), e.get("value", 0)) for e in params["entries"])
        added = [k for k in want if k not in current]
        changed = any(current.get(k) != v for k, v in want.items())
        if changed and not check_mode:
            current.update(want)
        return {"changed": changed, "counts": {"added": len(added), "updated": 0, "removed": 0}}

    def map_exists(self, params):
        return (params["name"], params["map"]) in self.maps

    def managed_names(self, pin_root):
        return sorted(self.progs) if self.managed is None else list(self.managed)

    def snapshot(self, names, map_params, pin_root):
        assert self.lock_depth == 1
        self.log.append("snapshot")
        snap = FakeSnap(self, names)
        self.snaps.append(snap)
        return snap

    def health(self, items, pin_root):
        self.log.append(("health", [n for n, _h in items]))
        return dict((n, self.verdicts.get(n)) for n, _h in items)

    def read_desired(self, path):
        return json.loads(json.dumps(self.desired))

    def commit(self, path, previous, programs, check_mode=False):
        if state_desired.same_programs(previous, programs):
            return None
        gen = previous["generation"] + 1
        if not check_mode:
            self.desired = {"version": 1, "generation": gen, "programs": programs}
            self.commits.append(gen)
        return gen

    def errors(self):
        return (FakeError, ValueError)

    def real_calls(self):
        return [c for c in self.log if isinstance(c, tuple) and c[0] in ("program", "map") and not c[2]]


class MapCreatingHost(FakeHost):
    """A load creates the program's maps (as the kernel does), empty."""

    def __init__(self, maps_of):
        FakeHost.__init__(self)
        self.maps_of = maps_of

    def apply_program(self, params, check_mode, planned=None):
        res = FakeHost.apply_program(self, params, check_mode)
        if res["changed"] and not check_mode and params["state"] != "absent":
            for m in self.maps_of.get(params["name"], []):
                self.maps.setdefault((params["name"], m), {})
        return res


def prog(name, sha="a1", **kw):
    p = {"name": name, "object": "/objs/%s.bpf.o" % sha, "sha256": sha, "attach": {"tracepoint": "x/" + name}}
    p.update(kw)
    return p


def params(programs, **kw):
    p = {"programs": programs, "desired": "/nonexistent/desired.json"}
    p.update(kw)
    return p


DEMO = [prog("counter", "c1", maps=[{"map": "blocklist", "entries": [{"key": "10.0.0.1"}]}],
             health={"check": "counter", "map": "stats", "key": 0}),
        prog("openat", "o1")]


def first_host():
    return MapCreatingHost({"counter": ["blocklist", "stats"]})


# ---- first rollout, second rollout -------------------------------------------------------------------------
def test_first_apply_loads_declares_checks_and_commits_generation_1():
    host = first_host()
    res = se.run(params(DEMO), ops=host)
    assert res["changed"] and not res.get("failed")
    assert [(e["name"], e["action"], e["changed"]) for e in res["programs"]] == [
        ("counter", "load", True), ("openat", "load", True)]
    assert res["programs"][0]["maps"][0]["changed"]
    assert host.maps[("counter", "blocklist")] == {"10.0.0.1": 0}
    assert ("health", ["counter", "openat"]) in host.log
    assert res["programs"][0]["health"] == "ok"
    assert host.commits == [1] and res["generation"] == 1 and res["desired_changed"]
    saved = host.desired["programs"]
    assert [s["program"]["name"] for s in saved] == ["counter", "openat"]
    assert saved[0]["maps"][0]["entries"] == [{"key": "10.0.0.1"}] and saved[0]["health"]["check"] == "counter"
    # the gate ran everything in check mode before the first change, the snapshot before the first change too
    first_real = host.log.index(host.real_calls()[0])
    assert host.log.index("snapshot") < first_real
    assert all(c[2] for c in host.log[:host.log.index("snapshot")] if isinstance(c, tuple))
    assert host.snaps[0].closed


def test_second_apply_changes_nothing_and_makes_no_real_call():
    host = first_host()
    se.run(params(DEMO), ops=host)
    host.log = []
    res = se.run(params(DEMO), ops=host)
    assert not res["changed"]
    assert [(e["action"], e["reason"]) for e in res["programs"]] == [("none", "in sync")] * 2
    assert host.real_calls() == []
    assert not [c for c in host.log if isinstance(c, tuple) and c[0] == "health"]
    assert host.commits == [1] and res["generation"] == 1 and not res["desired_changed"]
    assert res["diff"] == []


def test_health_checks_all_checks_unchanged_programs_too():
    host = first_host()
    se.run(params(DEMO), ops=host)
    host.log = []
    se.run(params(DEMO, health_checks="all"), ops=host)
    assert ("health", ["counter", "openat"]) in host.log


# ---- the gate --------------------------------------------------------------------------------------------
def test_refused_program_changes_nothing():
    host = first_host()
    host.refuse["openat"] = FakeError("kprobe is not supported")
    with pytest.raises(se.Refused) as e:
        se.run(params(DEMO), ops=host)
    assert "program openat: kprobe is not supported" in str(e.value)
    assert host.real_calls() == [] and "snapshot" not in host.log and host.progs == {}


def test_refused_map_entry_of_an_unchanged_program_changes_nothing():
    host = first_host()
    se.run(params(DEMO), ops=host)
    bad = json.loads(json.dumps(DEMO))
    bad[0]["maps"].append({"map": "missing", "entries": [{"key": 1}]})
    bad[1]["sha256"] = "o2"  # another change in the same run: it must not happen either
    host.log = []
    with pytest.raises(se.Refused) as e:
        se.run(params(bad), ops=host)
    assert "program counter: map missing: no pinned map" in str(e.value)
    assert host.real_calls() == [] and host.progs["openat"]["sha256"] == "o1"


def test_bad_input_is_refused_before_any_host_access():
    host = first_host()
    with pytest.raises(state_params.StateError, match="listed more than once"):
        se.run(params([prog("a"), prog("a")]), ops=host)
    with pytest.raises(state_params.StateError, match="counter needs health.map"):
        se.run(params([prog("a", health={"check": "counter"})]), ops=host)
    with pytest.raises(state_params.StateError, match="object is required"):
        se.run(params([{"name": "a"}]), ops=host)
    assert host.log == []


def test_unreadable_desired_state_refuses_before_any_change():
    host = first_host()

    def broken(path):
        raise DesiredError("%s is not JSON" % path)
    host.read_desired = broken
    with pytest.raises(DesiredError):
        se.run(params(DEMO), ops=host)
    assert host.log == []


# ---- boot mode: a program refused at the gate is set aside, the others applied ---------------------------------
def test_boot_mode_sets_a_refused_program_aside_and_applies_the_others():
    host = first_host()
    host.refuse["openat"] = FakeError("no interface hmx0")
    res = se.run(params(DEMO), ops=host, set_aside_refused=True)
    assert res["changed"] and not res.get("failed")
    assert res["set_aside"] == ["openat"]
    got = dict((e["name"], e) for e in res["programs"])
    assert got["openat"] == {"name": "openat", "action": "refused", "changed": False,
                             "reason": "no interface hmx0", "maps": []}
    assert got["counter"]["action"] == "load" and got["counter"]["maps"][0]["changed"]
    assert sorted(host.progs) == ["counter"] and host.maps[("counter", "blocklist")] == {"10.0.0.1": 0}
    assert ("health", ["counter"]) in host.log              # the one set aside is not checked
    assert host.snaps[0].names == ["counter"]               # nor snapshotted
    assert ("program", "openat", False) not in host.log     # nor applied
    assert host.commits == [1] and res["diff"] and [d["before_header"] for d in res["diff"]] == ["counter"]


def test_boot_mode_sets_aside_a_program_whose_map_declaration_is_refused():
    host = first_host()
    se.run(params(DEMO), ops=host)
    bad = json.loads(json.dumps(DEMO))
    bad[0]["maps"].append({"map": "missing", "entries": [{"key": 1}]})
    bad[1]["sha256"] = "o2"
    host.log = []
    res = se.run(params(bad, persist=False, health_checks="none"), ops=host, set_aside_refused=True)
    got = dict((e["name"], e) for e in res["programs"])
    assert res["set_aside"] == ["counter"] and got["counter"]["action"] == "refused"
    assert got["counter"]["reason"] == "map missing: no pinned map counter/missing"
    assert got["openat"]["action"] == "replace" and host.progs["openat"]["sha256"] == "o2"
    assert [c for c in host.real_calls() if c[1] in ("counter", "blocklist", "missing")] == []


def test_boot_mode_with_everything_refused_changes_nothing():
    host = first_host()
    for n in ("counter", "openat"):
        host.refuse[n] = FakeError("later")
    res = se.run(params(DEMO, persist=False), ops=host, set_aside_refused=True)
    assert not res["changed"] and res["set_aside"] == ["counter", "openat"]
    assert host.real_calls() == [] and host.progs == {} and host.commits == []
    # persist on (not what the boot does): the desired state saved is still the whole list given
    res = se.run(params(DEMO), ops=host, set_aside_refused=True)
    assert res["desired_changed"] and [p["program"]["name"] for p in host.desired["programs"]] == [
        "counter", "openat"]


def test_boot_mode_check_mode_reports_the_refused_and_predicts_the_others():
    host = first_host()
    host.refuse["counter"] = FakeError("later")
    res = se.run(params(DEMO), check_mode=True, ops=host, set_aside_refused=True)
    assert [(e["name"], e["action"]) for e in res["programs"]] == [("counter", "refused"), ("openat", "load")]
    assert host.real_calls() == [] and "snapshot" not in host.log


def test_boot_mode_failure_after_the_gate_still_rolls_back():
    host = first_host()
    host.refuse["counter"] = FakeError("later")
    host.fail_apply["openat"] = FakeError("verifier said no")
    res = se.run(params(DEMO), ops=host, set_aside_refused=True)
    assert res["failed"] and res["failed_program"] == "openat" and res["rolled_back"]
    assert res["set_aside"] == ["counter"] and host.progs == {}


def test_without_boot_mode_the_result_has_no_set_aside():
    assert "set_aside" not in se.run(params(DEMO), ops=first_host())


# ---- failures roll back ---------------------------------------------------------------------------------
def test_failed_health_check_rolls_back_and_keeps_the_desired_state():
    host = first_host()
    se.run(params(DEMO), ops=host)
    before = json.loads(json.dumps(host.state()))
    new = json.loads(json.dumps(DEMO))
    new[0]["sha256"] = "c2"
    new.append(prog("extra", "e1"))
    host.verdicts["counter"] = "counter stats[0] stayed at 0, not above 0, for 4.0 s"
    res = se.run(params(new), ops=host)
    assert res["failed"] and res["failed_program"] == "counter" and res["rolled_back"]
    assert "program counter: health check failed: counter stats[0] stayed at 0" in res["msg"]
    assert "rolled back" in res["msg"] and "removed: extra" in res["msg"]
    assert host.state() == before
    assert host.commits == [1] and host.desired["generation"] == 1
    assert [e["action"] for e in res["programs"]] == ["replace", "none", "load"]
    assert res["programs"][0]["reason"].startswith("object sha256 c1")


def test_apply_error_names_the_program_and_rolls_back_the_ones_before():
    host = first_host()
    host.fail_apply["openat"] = FakeError("verifier said no")
    res = se.run(params(DEMO), ops=host)
    assert res["failed"] and res["failed_program"] == "openat"
    assert res["msg"].startswith("program openat: verifier said no; rolled back")
    assert host.progs == {} and host.maps == {} and host.commits == []
    assert ("program", "counter", False) in host.log and "restore" in host.log


def test_sigterm_mid_transaction_rolls_back():
    host = first_host()

    def terminated(*_a):
        raise se.Terminated("SIGTERM")
    host.health = terminated
    res = se.run(params(DEMO), ops=host)
    assert res["failed"] and "Terminated" in res["msg"] and host.progs == {} and host.commits == []


def test_a_bug_still_rolls_back_then_raises():
    host = first_host()

    def bug(*_a):
        raise KeyError("oops")
    host.health = bug
    with pytest.raises(KeyError):
        se.run(params(DEMO), ops=host)
    assert host.progs == {} and "restore" in host.log and host.snaps[0].closed


def test_rollback_false_leaves_the_host_and_says_so():
    host = first_host()
    host.verdicts["openat"] = "did not run in 30.0 s"
    res = se.run(params(DEMO, rollback=False), ops=host)
    assert res["failed"] and "NOT rolled back" in res["msg"] and "snapshot" not in host.log
    assert sorted(host.progs) == ["counter", "openat"] and host.commits == []


def test_persist_false_commits_nothing():
    host = first_host()
    res = se.run(params(DEMO, persist=False), ops=host)
    assert res["changed"] and host.commits == [] and "generation" not in res


# ---- check mode ---------------------------------------------------------------------------------------------
def test_check_mode_predicts_without_changing():
    host = first_host()
    res = se.run(params(DEMO), check_mode=True, ops=host)
    assert res["changed"] and [e["action"] for e in res["programs"]] == ["load", "load"]
    assert res["programs"][0]["maps"] == [{"map": "blocklist", "changed": True, "counts": {"added": 1},
                                           "exact": False}]
    assert res["generation"] == 1 and res["desired_changed"]
    assert host.real_calls() == [] and "snapshot" not in host.log and host.progs == {} and host.commits == []
    assert [d["before_header"] for d in res["diff"]] == ["counter", "openat"]


def test_check_mode_of_an_unchanged_program_asks_the_map_itself():
    host = first_host()
    se.run(params(DEMO), ops=host)
    more = json.loads(json.dumps(DEMO))
    more[0]["maps"][0]["entries"].append({"key": "10.0.0.2"})
    host.log = []
    res = se.run(params(more), check_mode=True, ops=host)
    assert res["programs"][0]["action"] == "none"
    assert res["programs"][0]["maps"][0] == {"map": "blocklist", "changed": True,
                                             "counts": {"added": 1, "updated": 0, "removed": 0}, "exact": True}
    assert ("map", "blocklist", True) in host.log and host.real_calls() == []


# ---- prune ----------------------------------------------------------------------------------------------
def test_prune_removes_only_managed_names_not_listed():
    host = first_host()
    se.run(params(DEMO + [prog("old", "x1")]), ops=host)
    host.progs["foreign"] = {"state": "attached", "sha256": "f", "attach": None}
    host.managed = ["counter", "old", "openat"]  # "foreign" has no record of ours
    res = se.run(params(DEMO, prune=True), ops=host)
    assert res["pruned"] == ["old"]
    assert [(e["name"], e["action"]) for e in res["programs"]] == [("old", "remove"), ("counter", "none"),
                                                                   ("openat", "none")]
    assert sorted(host.progs) == ["counter", "foreign", "openat"]


def test_without_prune_unlisted_programs_stay():
    host = first_host()
    se.run(params(DEMO + [prog("old", "x1")]), ops=host)
    res = se.run(params(DEMO), ops=host)
    assert res["pruned"] == [] and "old" in host.progs


# ---- decisions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("before, after, changed, expected", [
    ({"state": "attached"}, {"state": "attached"}, False, "none"),
    ({"state": "absent"}, {"state": "attached", "sha256": "a"}, True, "load"),
    ({"state": "attached"}, {"state": "absent"}, True, "remove"),
    ({"state": "inconsistent"}, {"state": "attached"}, True, "repair"),
    ({"state": "attached", "sha256": "a"}, {"state": "attached", "sha256": "b"}, True, "replace"),
    ({"state": "attached", "sha256": "a", "program": "p"}, {"state": "attached", "sha256": "a", "program": "q"},
     True, "replace"),
    ({"state": "attached", "sha256": "a", "attach": {"t": 1}}, {"state": "loaded", "sha256": "a", "attach": None},
     True, "detach"),
    ({"state": "loaded", "sha256": "a", "attach": None}, {"state": "attached", "sha256": "a", "attach": {"t": 1}},
     True, "attach"),
    ({"state": "attached", "sha256": "a", "attach": {"t": 1}},
     {"state": "attached", "sha256": "a", "attach": {"t": 2}}, True, "move"),
    ({"state": "attached", "sha256": "a", "attach": {"t": 1}, "globals": {"port": 9}},
     {"state": "attached", "sha256": "a", "attach": {"t": 1}, "globals": {"port": 10}}, True, "replace"),
    ({"state": "attached", "sha256": "a", "attach": {"t": 1}, "globals": {"port": 9}},
     {"state": "attached", "sha256": "a", "attach": {"t": 1}, "globals": {}}, True, "replace"),
])
def test_action_of(before, after, changed, expected):
    assert se.action_of({"changed": changed, "diff": {"before": before, "after": after}})[0] == expected


def test_health_items_scope_and_kind():
    wanted, _opt = state_params.parse(params([prog("a"), prog("b"), prog("c", health={"check": "none"}),
                                              prog("d", state="loaded", attach=None)]))
    entries = {"a": {"action": "load"}, "b": {"action": "none"}, "c": {"action": "load"}, "d": {"action": "load"}}
    assert [n for n, _h in se.health_items(wanted, entries, "changed")] == ["a"]
    assert [n for n, _h in se.health_items(wanted, entries, "all")] == ["a", "b"]
    assert se.health_items(wanted, entries, "none") == []


def test_params_fill_defaults_and_timeouts():
    wanted, opt = state_params.parse(params([prog("a", health={"check": "counter", "map": "m"})],
                                            health_timeout=7))
    assert wanted[0].health["timeout"] == 7.0 and wanted[0].health["key"] == 0
    assert wanted[0].program["pin_root"] == "/sys/fs/bpf/hypermesh" and wanted[0].program["force"] is False
    assert opt["prune"] is False and opt["rollback"] is True


def test_shielded_ignores_the_controller_signals_and_restores_them():
    before = dict((s, signal.getsignal(s)) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM))
    with se.shielded():
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        with pytest.raises(se.Terminated):
            signal.raise_signal(signal.SIGTERM) if hasattr(signal, "raise_signal") else \
                __import__("os").kill(__import__("os").getpid(), signal.SIGTERM)
    assert dict((s, signal.getsignal(s)) for s in before) == before


# ---- the saved desired state -------------------------------------------------------------------------------
def test_desired_state_generations(tmp_path):
    path = str(tmp_path / "etc" / "desired.json")
    doc = state_desired.read(path)
    assert doc == state_desired.EMPTY
    programs = [{"program": {"name": "a"}, "maps": [], "health": {"check": "none"}}]
    assert state_desired.commit(path, doc, programs) == 1
    doc = state_desired.read(path)
    assert doc["generation"] == 1 and state_desired.same_programs(doc, programs)
    assert state_desired.commit(path, doc, programs + programs) == 2
    assert oct((tmp_path / "etc" / "desired.json").stat().st_mode & 0o777) == "0o644"


def test_desired_state_without_generation_reads_as_0_and_garbage_is_refused(tmp_path):
    p = tmp_path / "desired.json"
    p.write_text(json.dumps({"version": 1, "programs": []}))
    assert state_desired.read(str(p))["generation"] == 0
    p.write_text("{not json")
    with pytest.raises(DesiredError):
        state_desired.read(str(p))
