# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot-time re-apply: make the kernel hold again what the ebpf_programs role last rolled out.

bpffs is empty after a reboot, so every pinned program, link and map is gone. The role saves the desired
state of the host in /etc/hypermesh-ebpf/desired.json (the exact parameters it gave the ebpf_program and
ebpf_map modules), and the unit hypermesh-ebpf-reapply.service runs, after sys-fs-bpf.mount and
network-online.target:

    PYTHONPATH=/usr/lib/hypermesh-ebpf \
    python3 -m ansible_collections.hypermesh.ebpf.plugins.module_utils.reapply [--desired PATH] [--check]

It calls the SAME functions the modules call, with the same parameters (no second implementation):
    program_run.apply(params, check_mode=False) -> result dict   (what ebpf_program does)
    map_apply.apply_entries(params, check_mode=False) -> result dict   (what ebpf_map does)
A program whose attach point is not there yet (an interface that appears late) is retried for
--retry-seconds. One JSON line per program and map goes to stdout (the journal); the exit status is 0 when
everything converged, 1 when something failed (the rest is still applied), 2 for an unreadable desired file.

desired.json:
    {"version": 1,
     "programs": [{"name": "xdp-counter",
                   "program": {ebpf_program parameters: name, object, sha256, program, state, attach, pin_root},
                   "maps": [{ebpf_map parameters: name, map, pin_root, entries, state, exact, key_format, ...}]}]}

ebpf_state (state_desired.py) writes this file too, with `generation` (counts its commits) and each program's
`health` beside `program` and `maps`; both are ignored here. Still to do (issue #14, phase 2): the boot
re-apply becomes state_engine.run on the saved state (persist, health and rollback off, the retry for late
interfaces kept), so rollout and boot share one code path; until then it applies program by program with the
same single-object functions.

Importable without ansible; runs on Python 3.9+.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import sys
import time

DESIRED = "/etc/hypermesh-ebpf/desired.json"
VERSION = 1


class DesiredError(ValueError):
    """The desired state file is missing, unreadable or not what the role writes."""


def load_desired(path):
    """The desired state saved by the role, checked for shape (not for content: the modules check that)."""
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


def _functions():
    """The module code's entry points: (apply a program, apply map entries)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils import map_apply, program_run
    return program_run.apply, map_apply.apply_entries


def _line(out, **fields):
    out.write(json.dumps(fields, sort_keys=True) + "\n")
    out.flush()


def _one(entry, apply_program, apply_entries, check_mode):
    """Apply one program then its declared map entries. Returns a list of result lines (dicts)."""
    params = entry["program"]
    res = apply_program(dict(params), check_mode=check_mode)
    lines = [{"program": params["name"], "changed": bool(res.get("changed")), "state": res.get("state"),
              "prog_id": res.get("prog_id")}]
    for mparams in entry.get("maps") or []:
        mres = apply_entries(dict(mparams), check_mode=check_mode)
        lines.append({"program": params["name"], "map": mparams.get("map") or mparams.get("path"),
                      "changed": bool(mres.get("changed")), "added": mres.get("added", []),
                      "updated": mres.get("updated", [])})
    return lines


def reapply(doc, check_mode=False, retry_seconds=0.0, out=sys.stdout, sleep=time.sleep, functions=None):
    """Apply every program of `doc` (see load_desired). Returns the names that failed (empty: all converged)."""
    apply_program, apply_entries = functions or _functions()
    pending = list(doc["programs"])
    deadline = time.time() + retry_seconds
    errors = {}
    while True:
        failed = []
        for entry in pending:
            name = entry["program"]["name"]
            try:
                for fields in _one(entry, apply_program, apply_entries, check_mode):
                    _line(out, **fields)
                errors.pop(name, None)
            except Exception as e:  # one program's failure must not keep the others from coming back
                errors[name] = "%s: %s" % (type(e).__name__, e)
                failed.append(entry)
        if not failed or time.time() >= deadline:
            break
        pending = failed
        sleep(2)
    for name in sorted(errors):
        _line(out, program=name, failed=True, error=errors[name])
    return sorted(errors)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hypermesh-ebpf-reapply",
                                     description="Re-apply the eBPF programs saved by hypermesh.ebpf's "
                                                 "ebpf_programs role (run at boot by "
                                                 "hypermesh-ebpf-reapply.service).")
    parser.add_argument("--desired", default=DESIRED, help="desired state file (default %(default)s)")
    parser.add_argument("--check", action="store_true", help="only report what would change")
    parser.add_argument("--retry-seconds", type=float, default=30.0,
                        help="keep retrying failed programs this long (late interfaces); default %(default)s")
    args = parser.parse_args(argv)
    try:
        doc = load_desired(args.desired)
        failed = reapply(doc, check_mode=args.check, retry_seconds=args.retry_seconds)
    except DesiredError as e:
        _line(sys.stdout, failed=True, error=str(e))
        return 2
    _line(sys.stdout, summary=True, programs=len(doc["programs"]), failed=failed)
    return 1 if failed else 0


if __name__ == "__main__":
    # the command of hypermesh-ebpf-reapply.service, not a module: its exit status is the unit's result
    sys.exit(main())  # pylint: disable=ansible-bad-function
