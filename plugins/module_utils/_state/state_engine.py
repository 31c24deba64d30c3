# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the ebpf_state module does, as a function: run(params, check_mode) -> result. A host's whole desired
state applied as one transaction, on the host.

Under one hold of the host lock (lock.HostLock; the single-object functions called inside take it again):
  gate      every program and map declaration through its module's own check mode (program_runner.apply,
            map_runner.apply_entries with check_mode=True: probes, object, program, attach point, slot, entry
            encoding); nothing changes when any is refused. The predictions are the check-mode result.
  snapshot  what the host runs now, for every name the run may touch (state_snapshot: records, held kernel
            objects, declared map entries)
  apply     prune (names with our record, not listed), each program (program_runner.apply), its map entries
            (map_runner.apply_entries)
  health    the checked programs must move within their timeouts (state_health)
  commit    desired.json written atomically with generation+1 (state_desired), only after all of the above
  rollback  on any failure (an error, a failed health check, SIGTERM): the snapshot put back exactly, the
            desired state left as it was; the result says which program failed and why.
Boot mode (set_aside_refused=True, what the boot-time re-apply runs, reapply.py): a program refused at the gate
(the program or one of its map declarations: an interface that is not there yet) is set aside, reported in its
result entry with action "refused" and the refusal as its reason, and listed in the result's `set_aside`; the
others are applied. Nothing else differs (a refused prune still refuses the run; the boot does not prune).
The transaction does not depend on the controller: SIGHUP, SIGINT and SIGPIPE are ignored while it runs (a
dropped SSH connection or a killed controller does not stop it half way), and the result is written anyway.
`ops` replaces the host-facing functions (unit tests). Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import signal

from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params


class Refused(Exception):
    """The gate refused the run: nothing was changed. `name`: the program refused, `why`: the refusal."""

    def __init__(self, name, why):
        Exception.__init__(self, "program %s: %s" % (name, why))
        self.name = name
        self.why = why


class Failed(Exception):
    """A step after the first change failed: `name` (a program, or None) and why."""

    def __init__(self, name, why):
        Exception.__init__(self, "program %s: %s" % (name, why) if name else why)
        self.name = name
        self.why = why


class Terminated(BaseException):
    """SIGTERM during the transaction: rolled back, then the run fails."""


# ---- the host-facing functions (replaced by fakes in unit tests) --------------------------------------------
class HostOps(object):
    """The host's functions; state_dir: where the programs' records are (ebpf_state's state_dir)."""

    def __init__(self, state_dir=None):
        self.state_dir = state_dir

    def lock(self):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
        return lock.HostLock()  # re-entrant: program_runner and map_runner take it again inside

    def apply_program(self, params, check_mode, planned=None):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
        return program_runner.apply(params, check_mode, planned)

    def apply_entries(self, params, check_mode):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_runner
        return map_runner.apply_entries(params, check_mode)

    def map_exists(self, params):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map
        try:
            return bool(pinned_map.map_path(None, params["name"], params["map"], params["pin_root"]))
        except pinned_map.MapError:  # not pinned (yet)
            return False

    def managed_names(self, pin_root):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state
        return program_state.managed_names(pin_root, self.state_dir)

    def snapshot(self, names, map_params, pin_root):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_snapshot
        return state_snapshot.Snapshot(names, map_params, pin_root, self.state_dir)

    def health(self, items, pin_root):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_health
        return state_health.check(items, pin_root)

    def read_desired(self, path):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_desired
        return state_desired.read(path)

    def commit(self, path, previous, programs, check_mode=False):
        """The new generation (None when the saved state already holds `programs`); check mode writes nothing."""
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_desired
        if state_desired.same_programs(previous, programs):
            return None
        if check_mode:
            return previous.get("generation", 0) + 1
        return state_desired.commit(path, previous, programs)

    def errors(self):
        """The exceptions that are a clear refusal or failure (anything else is a bug: it still rolls back)."""
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_runner, map_wait
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply import DesiredError
        return program_runner.errors() + map_runner.ERRORS + (map_wait.WaitError, DesiredError, ValueError)


# ---- decisions ----------------------------------------------------------------------------------------------
def action_of(res):
    """(action, reason) of one program_runner.apply result: none | load | replace | attach | detach | move |
    repair | remove."""
    before = (res.get("diff") or {}).get("before") or {}
    after = (res.get("diff") or {}).get("after") or {}
    if not res.get("changed"):
        return "none", "in sync" if after.get("state") != "absent" else "not present"
    if after.get("state") == "absent":
        return "remove", "not wanted"
    if before.get("state") in (None, "absent"):
        return "load", "not loaded"
    if before.get("state") == "inconsistent":
        return "repair", "inconsistent (a killed run or an outside change)"
    if before.get("sha256") != after.get("sha256"):
        return "replace", "object sha256 %s -> %s" % (_short(before.get("sha256")), _short(after.get("sha256")))
    if before.get("program") != after.get("program"):
        return "replace", "program %s -> %s" % (before.get("program"), after.get("program"))
    if (before.get("globals") or {}) != (after.get("globals") or {}):
        return "replace", "globals %s -> %s" % (before.get("globals") or {}, after.get("globals") or {})
    if before.get("attach") != after.get("attach"):
        if not after.get("attach"):
            return "detach", "state loaded (attached before)"
        if not before.get("attach"):
            return "attach", "state attached (loaded before)"
        return "move", "attach point changed"
    return "replace", "pinned maps differ from the record"


def _short(digest):
    return (digest or "?")[:12]


def health_items(wanted, entries, scope):
    """The (name, health) pairs to check: attached programs with a check, all of them or only the changed."""
    if scope == "none":
        return []
    return [(w.name, w.health) for w in wanted
            if w.health["check"] != "none" and w.program["state"] == "attached"
            and (scope == "all" or entries[w.name]["action"] != "none")]


@contextlib.contextmanager
def shielded():
    """The transaction runs to its end whatever happens to the controller: SIGHUP (the SSH session's pty
    closing), SIGINT (Ctrl-C in the controller's process group with a local connection) and SIGPIPE ignored;
    SIGTERM raises Terminated, which rolls the host back. Restored afterwards."""
    names = ("SIGHUP", "SIGINT", "SIGPIPE")
    saved = {}
    try:
        for n in names:
            if hasattr(signal, n):
                saved[n] = signal.signal(getattr(signal, n), signal.SIG_IGN)

        def term(_signum, _frame):
            raise Terminated("SIGTERM")
        saved["SIGTERM"] = signal.signal(signal.SIGTERM, term)
    except ValueError:  # not the main thread: nothing to shield
        pass
    try:
        yield
    finally:
        for n, handler in saved.items():
            signal.signal(getattr(signal, n), handler)


# ---- the transaction ----------------------------------------------------------------------------------------
class Engine(object):
    def __init__(self, params, check_mode=False, ops=None, set_aside_refused=False):
        self.wanted, self.opt = state_params.parse(params)
        self.check_mode = check_mode
        self.ops = ops or HostOps(self.opt["state_dir"])
        self.pin_root = self.opt["pin_root"]
        self.state_dir = self.opt["state_dir"]
        self.set_aside_refused = set_aside_refused
        self.entries = {}       # name -> the result entry of that program
        self.predicted = {}     # name -> program_runner.apply's result (check mode, then the real one if run)
        self.pruned = []
        self.set_aside = []     # boot mode: names refused at the gate, left out of the run

    def active(self):
        """The wanted programs this run applies (all but those set aside)."""
        return [w for w in self.wanted if w.name not in self.set_aside]

    def _entry(self, name, res, action=None, reason=None):
        act, why = action_of(res)
        entry = {"name": name, "action": action or act, "changed": bool(res.get("changed")),
                 "reason": reason or why, "maps": []}
        for key in ("prog_id", "link_id", "state"):
            if res.get(key) is not None:
                entry[key] = res[key]
        self.entries[name] = entry
        return entry

    # gate: the modules' check mode, for everything, before any change
    def gate(self):
        listed = set(w.name for w in self.wanted)
        if self.opt["prune"]:
            self.pruned = [n for n in self.ops.managed_names(self.pin_root) if n not in listed]
        for name in self.pruned:
            res = self._try(name, self.ops.apply_program, {"name": name, "state": "absent",
                                                           "pin_root": self.pin_root,
                                                           "state_dir": self.state_dir}, True)
            self.predicted[name] = res
            if res.get("changed"):
                self._entry(name, res, "remove", "not listed (prune)")
            else:
                self._entry(name, res)
        for w in self.wanted:
            try:
                self._gate_one(w)
            except Refused as e:
                if not self.set_aside_refused:
                    raise
                self.predicted.pop(w.name, None)
                self.entries[w.name] = {"name": w.name, "action": "refused", "changed": False, "reason": e.why,
                                        "maps": []}
                self.set_aside.append(w.name)

    def _gate_one(self, w):
        # the programs gated before this one, as they will be attached: a tcx order may name one of them
        planned = dict((n, r.get("attach")) for n, r in self.predicted.items()
                       if n not in self.set_aside and n not in self.pruned and r.get("attach"))
        res = self._try(w.name, lambda params, check: self.ops.apply_program(params, check, planned=planned),
                        dict(w.program), True)
        self.predicted[w.name] = res
        entry = self._entry(w.name, res)
        for m in w.maps:
            entry["maps"].append(self._predict_map(w, entry, m))

    def _predict_map(self, w, entry, m):
        if entry["action"] == "none" or self.ops.map_exists(m):
            res = self._try(w.name, self.ops.apply_entries, dict(m), True, "map %s" % m["map"])
            return {"map": m["map"], "changed": bool(res.get("changed")), "counts": res.get("counts"),
                    "exact": True}
        # the map is created by this run's load: every declared entry is written then (checked then, too)
        return {"map": m["map"], "changed": bool(m["entries"]), "counts": {"added": len(m["entries"])},
                "exact": False}

    def _try(self, name, fn, params, check_mode, what=None):
        try:
            return fn(params, check_mode)
        except self.ops.errors() as e:
            raise Refused(name, "%s%s" % ((what + ": ") if what else "", e))

    # apply, health, commit
    def apply(self):
        for name in self.pruned:
            if self.entries[name]["changed"]:
                self._step(name, None, self.ops.apply_program, {"name": name, "state": "absent",
                                                                "pin_root": self.pin_root,
                                                                "state_dir": self.state_dir})
        for w in self.active():
            entry = self.entries[w.name]
            if entry["changed"]:
                res = self._step(w.name, None, self.ops.apply_program, dict(w.program))
                self.predicted[w.name] = res
                self._entry(w.name, res, entry["action"], entry["reason"])["maps"] = entry["maps"]
                entry = self.entries[w.name]
            for m, mres in zip(w.maps, entry["maps"]):
                if mres["changed"] or not mres["exact"]:
                    res = self._step(w.name, "map %s" % m["map"], self.ops.apply_entries, dict(m))
                    mres.update(changed=bool(res.get("changed")), counts=res.get("counts"), exact=True)

    def _step(self, name, what, fn, params):
        try:
            return fn(params, False)
        except self.ops.errors() as e:
            raise Failed(name, "%s%s" % ((what + ": ") if what else "", e))

    def check_health(self):
        items = health_items(self.active(), self.entries, self.opt["health_checks"])
        if not items:
            return
        try:
            verdicts = self.ops.health(items, self.pin_root)
        except self.ops.errors() as e:
            raise Failed(None, "health check could not read: %s" % e)
        failed = []
        for name, _h in items:
            why = verdicts.get(name, "not checked")
            self.entries[name]["health"] = "ok" if why is None else why
            if why is not None:
                failed.append((name, why))
        if failed:
            raise Failed(failed[0][0], "health check failed: " + "; ".join(
                "%s%s" % ("" if i == 0 else "program %s: " % n, why) for i, (n, why) in enumerate(failed)))

    # the whole run
    def run(self):
        with self.ops.lock():
            previous = self.ops.read_desired(self.opt["desired"]) if self.opt["persist"] else None
            self.gate()
            if self.check_mode:
                return self.result(previous, self._commit(previous, True))
            names = self.pruned + [w.name for w in self.active()]
            maps = [m for w in self.active() for m in w.maps]
            snap = self.ops.snapshot(names, maps, self.pin_root) if self.opt["rollback"] else None
            try:
                with shielded():
                    return self._transaction(previous, snap)
            finally:
                if snap is not None:
                    snap.close()

    def _transaction(self, previous, snap):
        try:
            self.apply()
            self.check_health()
            generation = self._commit(previous, False)
        except BaseException as e:
            failure = e if isinstance(e, Failed) else Failed(None, "%s: %s" % (type(e).__name__, e))
            rolled = self._rollback(snap)
            out = self.result(previous, None)
            out.update(failed=True, msg=self._message(failure, rolled), failed_program=failure.name,
                       rolled_back=rolled is not None and not rolled["errors"], rollback=rolled)
            if isinstance(e, (Failed, Terminated)) or isinstance(e, self.ops.errors()):
                return out
            raise
        return self.result(previous, generation)

    def _commit(self, previous, check_mode):
        if not self.opt["persist"]:
            return None
        saved = [w.saved() for w in self.wanted if w.program["state"] != "absent"]
        return self.ops.commit(self.opt["desired"], previous, saved, check_mode)

    def _rollback(self, snap):
        if snap is None:
            return None
        return snap.restore(lambda name: self.ops.apply_program(
            {"name": name, "state": "absent", "pin_root": self.pin_root, "state_dir": self.state_dir}, False))

    def _message(self, failure, rolled):
        if rolled is None:
            return "%s; NOT rolled back (rollback: false)" % failure
        if rolled["errors"]:
            return "%s; rollback INCOMPLETE: %s" % (failure, "; ".join(rolled["errors"]))
        return "%s; rolled back to what the host ran before (restored: %s; removed: %s)" % (
            failure, ", ".join(rolled["restored"]) or "none", ", ".join(rolled["removed"]) or "none")

    def result(self, previous, generation):
        entries = [self.entries[n] for n in self.pruned] + [self.entries[w.name] for w in self.wanted]
        changed = any(e["changed"] or any(m["changed"] for m in e["maps"]) for e in entries)
        out = {"changed": bool(changed or generation), "programs": entries, "pruned": list(self.pruned)}
        if self.set_aside_refused:
            out["set_aside"] = list(self.set_aside)
        if previous is not None:
            out["generation"] = generation or previous.get("generation", 0)
            out["desired_changed"] = generation is not None
        out["diff"] = [dict(before_header=e["name"], after_header=e["name"],
                            before=(self.predicted[e["name"]].get("diff") or {}).get("before", {}),
                            after=(self.predicted[e["name"]].get("diff") or {}).get("after", {}))
                       for e in entries if e["changed"]]
        return out


def run(params, check_mode=False, ops=None, set_aside_refused=False):
    """Apply the host's whole desired state (ebpf_state's options). Returns the result dict (with failed=True
    and the rollback when a step after the first change failed); raises Refused (nothing changed) or
    state_params.StateError for bad input. set_aside_refused=True is the boot mode (see the module's doc): a
    program refused at the gate is set aside (action "refused", listed in `set_aside`) instead of refusing the
    run."""
    return Engine(params, check_mode, ops, set_aside_refused).run()
