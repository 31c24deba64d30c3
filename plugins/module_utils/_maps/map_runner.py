# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the ebpf_map module does, as a function: apply_entries(params, check_mode, diff) -> result.

One job: encode and check every entry (given in `entries`, or read from the `src` file), plan the change
against the map's live contents, write it all or nothing, report. The module file only declares its options
and calls apply_entries(); the boot-time re-apply (reapply.py) calls the very same function with the
parameters the ebpf_programs role saved.
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_codec
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.params import with_defaults

ARGUMENT_SPEC = dict(
    path=dict(type="path"),
    name=dict(type="str"),
    map=dict(type="str"),
    pin_root=dict(type="path", default=layout.PIN_ROOT),
    entries=dict(type="list", elements="dict", default=[]),
    src=dict(type="path"),
    report_keys=dict(type="bool", default=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    exact=dict(type="bool", default=False),
    key_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
    value_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
)
MUTUALLY_EXCLUSIVE = [("path", "name"), ("path", "map")]
ERRORS = (map_codec.CodecError, pinned_map.MapError, map_file.EntriesFileError, lock.LockTimeout, OSError)


def _labels(codec, keys):
    return codec.labels_many(b"".join(keys), len(keys))


def _show(pm, vcodec, buf):
    if buf is None:
        return None
    values = [vcodec.decode(c) for c in pm.cpu_values(buf)]
    if len(values) == 1 or all(v == values[0] for v in values):
        return values[0]
    return values


def apply_entries(params, check_mode=False, diff=False):
    """Make the map hold (or not hold) params' entries (ebpf_map's options; defaults filled in). Returns the
    result dict; raises one of ERRORS with the map left as it was."""
    p = with_defaults(params, ARGUMENT_SPEC)
    for a, b in MUTUALLY_EXCLUSIVE:
        if p[a] is not None and p[b] is not None:
            raise pinned_map.MapError("parameters are mutually exclusive: %s|%s" % (a, b))
    if p["path"] is None and p["name"] is None:
        raise pinned_map.MapError("one of the following is required: path, name")
    if p["exact"] and p["state"] == "absent":
        raise pinned_map.MapError("exact=true removes every entry not listed; it needs state=present")
    entries, where = p["entries"], "entries"
    if p["src"] is not None:
        if entries:
            raise pinned_map.MapError("parameters are mutually exclusive: entries|src")
        entries, where = map_file.load_entries(p["src"]), p["src"] + ": entry"
    path = pinned_map.map_path(p["path"], p["name"], p["map"], p["pin_root"])
    with lock.HostLock():
        with pinned_map.PinnedMap(path, write=True) as pm:
            kcodec = pm.key_codec(p["key_format"])
            vcodec = pm.value_codec(p["value_format"])
            with_value = p["state"] == "present"
            key_items, value_items = [], []
            for i, entry in enumerate(entries):
                if entry.get("key") is None:
                    raise pinned_map.MapError("%s[%d] has no key" % (where, i))
                if len(entry) > 2 or (len(entry) == 2 and "value" not in entry):
                    extra = sorted(set(entry) - set(("key", "value")))
                    raise pinned_map.MapError("%s[%d]: unknown field(s) %s; an entry has key and value"
                                              % (where, i, ", ".join(extra)))
                key_items.append(entry["key"])
                value_items.append(entry.get("value") if with_value else None)
            keys = kcodec.encode_many(key_items, lambda i: "%s[%d].key" % (where, i))
            if pm.is_array:
                for key in keys:
                    pm.check_key(key, kcodec.label(key))
            given = [i for i, v in enumerate(value_items) if v is not None]
            encoded = vcodec.encode_many([value_items[i] for i in given],
                                         lambda j: "%s[%d].value" % (where, given[j]))
            values = [None] * len(keys)
            for i, value in zip(given, encoded):
                values[i] = pm.full_value(value)
            wanted = list(zip(keys, values))
            plan = pinned_map.plan(pm, wanted, p["state"], p["exact"])
            changed = bool(plan["deletes"] or plan["updates"])
            if changed and pm.read_only:
                raise pinned_map.MapError(
                    "map %s is read-only from user space (frozen with BPF_MAP_FREEZE); nothing was written" % path)
            if changed and not check_mode:
                pm.apply(plan["deletes"], plan["updates"], plan["previous"])
            added = [k for k, _v in plan["updates"] if plan["before"][k] is None]
            updated = [k for k, _v in plan["updates"] if plan["before"][k] is not None]
            result = {
                "changed": changed,
                "map": pm.describe(),
                "counts": {"added": len(added), "updated": len(updated), "removed": len(plan["deletes"])},
            }
            if p["report_keys"]:
                result["added"] = _labels(kcodec, added)
                result["updated"] = _labels(kcodec, updated)
                result["removed"] = _labels(kcodec, plan["deletes"])
            if diff:
                result["diff"] = {
                    "before": {"entries": dict((kcodec.label(k), _show(pm, vcodec, v))
                                               for k, v in plan["before"].items())},
                    "after": {"entries": dict((kcodec.label(k), _show(pm, vcodec, v))
                                              for k, v in plan["after"].items())},
                }
            # what `-vvv` shows as the module's arguments: not 10,000 entries echoed back (and walked by
            # AnsibleModule's no_log scrubbing, which costs more than the whole map update)
            params = dict(p)
            params["entries"] = "(%d entries)" % len(p["entries"])
            if p["src"] is not None:
                result["src_entries"] = len(entries)
            result["invocation"] = {"module_args": params}
            return result
