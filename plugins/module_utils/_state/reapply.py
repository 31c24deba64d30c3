# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot-time re-apply: make the kernel hold again the host's saved desired state.

bpffs is empty after a reboot, so every pinned program, link and map is gone. ebpf_state (and the
ebpf_programs role through it) saves the desired state of the host in /etc/hypermesh-ebpf/desired.json, and
the unit hypermesh-ebpf-reapply.service runs, after sys-fs-bpf.mount and network-online.target:

    PYTHONPATH=/usr/lib/hypermesh-ebpf \
    python3 -m ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply [--desired PATH] [--state-dir DIR] [--check]
        [--retry-seconds N]

One code path for rollout and boot: the saved entries become ebpf_state's `programs` options (each program's
parameters without pin_root, its map declarations in state_params.MAP_SPEC's shape; the health check is not
kept) and state_engine.run applies them, one run per pin root, with persist, rollback, prune and health checks
off, in its boot mode: a program refused at the gate (an interface that appears late, say) is set aside and
the others are applied. The programs set aside, or that failed, are tried again every 2 s until --retry-seconds
have passed. An entry the engine cannot take (a map named by path, a name listed twice) fails on its own and
is not retried.

Output, one JSON line each, to stdout (the journal): per program applied {program, changed, state, prog_id},
per map declaration {program, map, changed, added, updated} (the keys written), at the end one {program,
failed: true, error} per program that did not converge and {summary: true, programs, failed}. The exit status
is 0 when everything converged, 1 when something failed (the rest is still applied), 2 for an unreadable
desired file.

desired.json (version 1), as ebpf_state writes it (state_desired.py):
    {"version": 1, "generation": 3,
     "programs": [{"program": {program_runner.apply parameters: name, object, sha256, program, state, attach,
                               pin_root, force},
                   "maps": [{map_runner.apply_entries parameters: name, map, path: null, pin_root, entries, state,
                             exact, key_format, value_format}],
                   "health": {...}}]}
The role's earlier file is the same without `generation` and `health`; both are read.

Importable without ansible; runs on Python 3.9+.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import sys
import time

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.params import ParamError, validate, without_none

VERSION = 1


class DesiredError(ValueError):
    """The desired state file is missing, unreadable or not what ebpf_state writes (or one entry of it is not)."""


def load_desired(path):
    """The saved desired state, checked for shape (not for content: the engine checks that)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (IOError, OSError) as e:
        raise DesiredError("cannot read %s: %s" % (path, e))
    except ValueError as e:
        raise DesiredError("%s is not JSON: %s" % (path, e))
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise DesiredError("%s: version %r is not %d (written by another release of hypermesh.ebpf?)"
                           % (path, doc.get("version") if isinstance(doc, dict) else None, VERSION))
    programs = doc.get("programs")
    if not isinstance(programs, list):
        raise DesiredError("%s: 'programs' must be a list" % path)
    for i, entry in enumerate(programs):
        if not isinstance(entry, dict) or not isinstance(entry.get("program"), dict) \
                or not entry["program"].get("name") or not isinstance(entry.get("maps", []), list):
            raise DesiredError("%s: programs[%d] needs 'program' (ebpf_program parameters with a name) and "
                               "'maps' (a list)" % (path, i))
    return doc


def _line(out, **fields):
    out.write(json.dumps(fields, sort_keys=True) + "\n")
    out.flush()


# ---- the saved entries as ebpf_state's options ---------------------------------------------------------------
def _program_keys():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
    return [k for k in program_runner.ARGUMENT_SPEC if k not in ("pin_root", "state_dir")]


def _map_option(name, pin_root, i, mparams):
    """One saved map_runner.apply_entries parameter set as a programs[].maps option (MAP_SPEC's shape)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params
    if not isinstance(mparams, dict):
        raise DesiredError("maps[%d] is not a dict" % i)
    if mparams.get("path") is not None or not mparams.get("map"):
        raise DesiredError("maps[%d]: only a map of the program named by `map` can be re-applied (path %r)"
                           % (i, mparams.get("path")))
    if mparams.get("src") is not None:
        raise DesiredError("maps[%d]: entries from a file (src) cannot be re-applied" % i)
    if mparams.get("name", name) != name:
        raise DesiredError("maps[%d]: map of program %r, not of %s" % (i, mparams.get("name"), name))
    if (mparams.get("pin_root") or pin_root) != pin_root:
        raise DesiredError("maps[%d]: pin_root %s is not the program's (%s)" % (i, mparams.get("pin_root"), pin_root))
    return dict((k, mparams[k]) for k in state_params.MAP_SPEC if mparams.get(k) is not None)


def to_options(entry):
    """(pin_root, one programs option of ebpf_state) for one saved entry; raises DesiredError when the engine
    cannot take it."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params
    params = entry["program"]
    name = params["name"]
    pin_root = params.get("pin_root") or layout.PIN_ROOT
    unknown = sorted(set(params) - set(_program_keys()) - set(["pin_root"]))
    if unknown:
        raise DesiredError("unsupported program parameter(s) %s" % ", ".join(unknown))
    # the checks AnsibleModule makes with the same spec constants (ebpf_program's, then ebpf_state's), then
    # ebpf_state's own, for this program alone: a bad entry must not keep the others back
    try:
        checked = validate(without_none(params), program_runner.ARGUMENT_SPEC, required_if=program_runner.REQUIRED_IF)
        option = dict((k, _as_given(params[k], checked[k])) for k in _program_keys() if params.get(k) is not None)
        option["maps"] = [_map_option(name, pin_root, i, m) for i, m in enumerate(entry.get("maps") or [])]
        option["health"] = {"check": "none"}
        state = {"programs": [option], "pin_root": pin_root}
        option = _as_given(option, validate(without_none(state), state_params.ARGUMENT_SPEC)["programs"][0])
        state_params.parse({"programs": [option], "pin_root": pin_root})
    except (ParamError, state_params.StateError) as e:
        raise DesiredError(str(e))
    return pin_root, option


def _as_given(given, checked):
    """`checked`'s values (converted as AnsibleModule converts them) in the shape of `given`: the keys the saved
    entry has, a saved None kept as None."""
    if isinstance(given, dict) and isinstance(checked, dict):
        return dict((k, None if v is None else _as_given(v, checked.get(k))) for k, v in given.items())
    if isinstance(given, list) and isinstance(checked, list) and len(given) == len(checked):
        return [_as_given(g, c) for g, c in zip(given, checked)]
    return checked


def plan(doc):
    """The saved programs grouped by pin root, in the file's order: ([(pin_root, [option, ...])], errors) where
    errors maps (pin_root, name) to why an entry cannot be re-applied."""
    roots, options, errors = [], {}, {}
    for entry in doc["programs"]:
        name = entry["program"]["name"]
        pin_root = entry["program"].get("pin_root") or layout.PIN_ROOT
        if pin_root not in options:
            roots.append(pin_root)
            options[pin_root] = []
        try:
            if any(o["name"] == name for o in options[pin_root]):
                raise DesiredError("listed more than once under pin_root %s" % pin_root)
            options[pin_root].append(to_options(entry)[1])
        except DesiredError as e:
            errors[(pin_root, name)] = str(e)
    return [(r, options[r]) for r in roots if options[r]], errors


# ---- the engine, in its boot mode ---------------------------------------------------------------------------
def engine_params(pin_root, options, state_dir=None):
    """ebpf_state's options for the boot: the programs only, nothing saved, pruned, rolled back or checked."""
    return {"programs": options, "pin_root": pin_root, "state_dir": state_dir or layout.STATE_DIR,
            "persist": False, "rollback": False, "prune": False, "health_checks": "none"}


class Recording(object):
    """The engine's host functions, with what each map declaration wrote kept (the keys of the JSON lines)."""

    def __init__(self, ops):
        self._ops = ops
        self.maps = {}

    def __getattr__(self, attr):
        return getattr(self._ops, attr)

    def apply_entries(self, params, check_mode):
        res = self._ops.apply_entries(params, check_mode)
        self.maps[(params["name"], params["map"])] = res
        return res


def _engine():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_engine
    return state_engine.run, state_engine.HostOps


def _lines(entry, ops):
    yield {"program": entry["name"], "changed": bool(entry["changed"]), "state": entry.get("state"),
           "prog_id": entry.get("prog_id")}
    for m in entry["maps"]:
        res = ops.maps.get((entry["name"], m["map"])) or {}
        yield {"program": entry["name"], "map": m["map"], "changed": bool(m["changed"]),
               "added": res.get("added", []), "updated": res.get("updated", [])}


def apply_group(pin_root, options, check_mode, run, ops, out, state_dir=None):
    """Engine runs on `options` until each program converged, was set aside or failed: a failure after the
    first change stops a run (the programs before it are applied then), so the run is made again with the
    programs after it. Prints the lines of the programs applied; returns {name: why} of the others."""
    errors = {}
    todo = list(options)
    while todo:
        rec = Recording(ops)
        try:
            res = run(engine_params(pin_root, todo, state_dir), check_mode, ops=rec, set_aside_refused=True)
        except Exception as e:  # a bug or a refusal of the whole run: none of these converged this time
            for o in todo:
                errors[o["name"]] = "%s: %s" % (type(e).__name__, e)
            return errors
        entries = res["programs"]
        names = [e["name"] for e in entries]
        stop = len(entries)
        if res.get("failed"):
            if res.get("failed_program") not in names:  # not one program's failure: none counts as converged
                for o in todo:
                    errors[o["name"]] = res.get("msg")
                return errors
            stop = names.index(res["failed_program"])
            errors[names[stop]] = res.get("msg")
        for e in entries[:stop]:
            if e["action"] == "refused":
                errors[e["name"]] = e["reason"]
                continue
            for fields in _lines(e, rec):
                _line(out, **fields)
        rest = []
        for e in entries[stop + 1:]:  # not reached by a run that failed
            if e["action"] == "refused":
                errors[e["name"]] = e["reason"]
            else:
                rest.append(e["name"])
        todo = [o for o in todo if o["name"] in rest]
    return errors


def reapply(doc, check_mode=False, retry_seconds=0.0, out=sys.stdout, sleep=time.sleep, clock=time.time,
            engine=None, ops=None, state_dir=None):
    """Apply every program of `doc` (see load_desired) through state_engine's boot mode. Returns the names that
    failed (empty: all converged). `engine` replaces state_engine.run and `ops` its host functions (tests);
    state_dir: the records' directory (default layout.STATE_DIR)."""
    run, host_ops = _engine() if engine is None else (engine, None)
    if ops is None:
        ops = host_ops(state_dir)
    deadline = clock() + retry_seconds
    groups, fixed = plan(doc)
    pending = groups
    errors = {}
    while True:
        retry = []
        for pin_root, options in pending:
            failed = apply_group(pin_root, options, check_mode, run, ops, out, state_dir)
            for o in options:
                errors.pop((pin_root, o["name"]), None)
            for name, why in failed.items():
                errors[(pin_root, name)] = why
            if failed:
                retry.append((pin_root, [o for o in options if o["name"] in failed]))
        if not retry or clock() >= deadline:
            break
        pending = retry
        sleep(2)
    errors.update(fixed)
    for key in sorted(errors, key=lambda k: (k[1], k[0] or "")):
        _line(out, program=key[1], failed=True, error=errors[key])
    return sorted(k[1] for k in errors)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hypermesh-ebpf-reapply",
                                     description="Re-apply the host's eBPF desired state saved by "
                                                 "hypermesh.ebpf's ebpf_state (run at boot by %s)." % layout.REAPPLY_UNIT)
    parser.add_argument("--desired", default=layout.DESIRED, help="desired state file (default %(default)s)")
    parser.add_argument("--state-dir", default=layout.STATE_DIR,
                        help="the modules' records directory, ebpf_state's state_dir (default %(default)s)")
    parser.add_argument("--check", action="store_true", help="only report what would change")
    parser.add_argument("--retry-seconds", type=float, default=30.0,
                        help="keep retrying, every 2 s, the programs set aside or failed this long (late "
                             "interfaces); default %(default)s")
    args = parser.parse_args(argv)
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
    try:
        # one hold of the host lock for the whole pass, retries included, and desired.json read under it: a
        # rollout that commits while this waits is applied as committed, never undone by an older read
        with lock.HostLock():
            doc = load_desired(args.desired)
            failed = reapply(doc, check_mode=args.check, retry_seconds=args.retry_seconds,
                             state_dir=args.state_dir)
    except DesiredError as e:
        _line(sys.stdout, failed=True, error=str(e))
        return 2
    except lock.LockTimeout as e:
        _line(sys.stdout, failed=True, error="host lock: %s" % e)
        return 1
    _line(sys.stdout, summary=True, programs=len(doc["programs"]), failed=failed)
    return 1 if failed else 0


if __name__ == "__main__":
    # the command of hypermesh-ebpf-reapply.service, not a module: its exit status is the unit's result
    sys.exit(main())  # pylint: disable=ansible-bad-function
