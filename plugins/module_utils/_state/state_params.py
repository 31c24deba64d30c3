# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options of ebpf_state (a host's whole desired state) and their translation into the parameters of the
single-object functions the engine composes: program_runner.apply (ebpf_program), map_runner.apply_entries
(ebpf_map), and the health check of each program.

One job: declare and check the input; nothing here reads or changes the host. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy

from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_codec
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.params import with_defaults

HEALTH_CHECKS = ("run_count", "counter", "none")

MAP_SPEC = dict(
    map=dict(type="str", required=True),
    entries=dict(type="list", elements="dict", default=[]),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    exact=dict(type="bool", default=False),
    key_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
    value_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
)
HEALTH_SPEC = dict(
    check=dict(type="str", choices=list(HEALTH_CHECKS), default="run_count"),
    map=dict(type="str"),
    key=dict(type="raw", default=0, no_log=False),  # a map key, not a secret
    field=dict(type="str"),
    key_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
    value_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
    timeout=dict(type="float"),
)
# pin_root and state_dir are the host's, set once for all programs (the top-level options)
HOST_OPTIONS = ("pin_root", "state_dir")
_PROGRAM_OPTIONS = dict((k, copy.deepcopy(v)) for k, v in program_runner.ARGUMENT_SPEC.items() if k not in HOST_OPTIONS)
_PROGRAM_OPTIONS.update(
    maps=dict(type="list", elements="dict", default=[], options=MAP_SPEC),
    health=dict(type="dict", options=HEALTH_SPEC),
)
OBJECT_SPEC = dict(
    sha256=dict(type="str", required=True),
    content=dict(type="str", no_log=True),
)
CODE_FILE_SPEC = dict(
    name=dict(type="str", required=True),
    content=dict(type="str", required=True, no_log=True),
)
REAPPLY_CODE_SPEC = dict(
    digest=dict(type="str", required=True),
    files=dict(type="list", elements="dict", options=CODE_FILE_SPEC),
)
ARGUMENT_SPEC = dict(
    programs=dict(type="list", elements="dict", default=[], options=_PROGRAM_OPTIONS),
    objects_dir=dict(type="path", default=layout.OBJECTS_DIR),
    objects=dict(type="list", elements="dict", default=[], options=OBJECT_SPEC),
    reapply_code=dict(type="dict", options=REAPPLY_CODE_SPEC),
    lib_dir=dict(type="path", default=layout.LIB_DIR),
    reapply_unit=dict(type="bool", default=True),
    pin_root=dict(type="path", default=layout.PIN_ROOT),
    state_dir=dict(type="path", default=layout.STATE_DIR),
    prune=dict(type="bool", default=False),
    rollback=dict(type="bool", default=True),
    health_checks=dict(type="str", choices=["changed", "all", "none"], default="changed"),
    health_timeout=dict(type="float", default=30.0),
    persist=dict(type="bool", default=True),
    desired=dict(type="path", default=layout.DESIRED),
)


class StateError(ValueError):
    """The desired state is not valid: refused before anything is read or changed."""


class Wanted(object):
    """One program of the desired state: `program` (program_runner.apply parameters), `maps` (a list of
    map_runner.apply_entries parameters) and `health` ({check, map, key, field, key_format, value_format,
    timeout})."""

    def __init__(self, program, maps, health):
        self.name = program["name"]
        self.program = program
        self.maps = maps
        self.health = health

    def saved(self):
        """The entry of desired.json (the format reapply.py reads; state_dir is the re-apply's --state-dir)."""
        program = dict((k, v) for k, v in self.program.items() if k != "state_dir")
        if not program.get("globals"):
            program.pop("globals", None)  # not set: the entry stays as one saved before the option existed
        return {"program": program, "maps": [dict(m) for m in self.maps], "health": dict(self.health)}


def _program(p, pin_root, state_dir):
    params = dict((k, p.get(k)) for k in program_runner.ARGUMENT_SPEC if k not in HOST_OPTIONS)
    params["pin_root"] = pin_root
    params["state_dir"] = state_dir
    return with_defaults(params, program_runner.ARGUMENT_SPEC)


def _maps(p, pin_root):
    out = []
    for i, m in enumerate(p.get("maps") or []):
        m = with_defaults(m, MAP_SPEC)
        if not m["map"]:
            raise StateError("program %s: maps[%d] needs `map`" % (p["name"], i))
        if p.get("state") == "absent":
            raise StateError("program %s: state absent takes no maps" % p["name"])
        out.append({"name": p["name"], "map": m["map"], "path": None, "pin_root": pin_root,
                    "entries": m["entries"] or [], "state": m["state"], "exact": bool(m["exact"]),
                    "key_format": m["key_format"], "value_format": m["value_format"]})
    return out


def _health(p, default_timeout):
    h = with_defaults(p.get("health") or {}, HEALTH_SPEC)
    if h["timeout"] is None:
        h["timeout"] = float(default_timeout)
    if h["timeout"] < 0:
        raise StateError("program %s: health.timeout must be 0 or more" % p["name"])
    if h["check"] == "counter" and not h["map"]:
        raise StateError("program %s: health.check=counter needs health.map" % p["name"])
    if p.get("state") != "attached" and h["check"] != "none":
        h["check"] = "none"  # only an attached program runs
    return h


def parse(params):
    """The checked desired state: (list of Wanted, options dict). Raises StateError before any host access."""
    p = with_defaults(params, ARGUMENT_SPEC)
    if p["health_timeout"] < 0:
        raise StateError("health_timeout must be 0 or more")
    seen, wanted = set(), []
    for i, prog in enumerate(p["programs"] or []):
        prog = dict(prog)
        prog.setdefault("state", "attached")
        if not prog.get("name"):
            raise StateError("programs[%d] needs a name" % i)
        if prog["name"] in seen:
            raise StateError("program %s is listed more than once" % prog["name"])
        seen.add(prog["name"])
        for key, value, needed in program_runner.REQUIRED_IF:  # ebpf_program's own rule, not a copy of it
            if prog.get(key) == value and any(not prog.get(n) for n in needed):
                raise StateError("program %s: %s is required when %s is %s"
                                 % (prog["name"], ", ".join(needed), key, value))
        unknown = sorted(set(prog) - set(_PROGRAM_OPTIONS))
        if unknown:
            raise StateError("program %s: unsupported option(s) %s" % (prog["name"], ", ".join(unknown)))
        wanted.append(Wanted(_program(prog, p["pin_root"], p["state_dir"]), _maps(prog, p["pin_root"]),
                             _health(prog, p["health_timeout"])))
    options = dict((k, v) for k, v in p.items() if k != "programs")
    return wanted, options
