# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Gating of an attach point before any change: every feature it needs (program_spec.FEATURES) must be
supported here, as probes.require() says (the same probes as ebpf_facts, the same refusal messages).

One job, and a memo: a probe that said "supported" is remembered until the next boot, in
/run/hypermesh-ebpf/features.json (tmpfs, root only, keyed by the kernel's boot id), so the next change on this
host does not load the probe code and its tiny test programs again. Only successes are remembered: a feature
that was refused is probed again every time. What can still change within one boot (a lockdown level raised
at run time, an LSM policy) then shows as the kernel's own refusal of the real load or attach, which rolls
back like any other failure.
Importable without ansible.
"""
import json
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_id():
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except (IOError, OSError):
        return None


def _read(path, boot):
    try:
        with open(path) as f:
            memo = json.load(f)
    except (IOError, OSError, ValueError):
        return set()
    if not isinstance(memo, dict) or memo.get("boot_id") != boot or not isinstance(memo.get("supported"), list):
        return set()
    return set(memo["supported"])


def _write(path, boot, supported):
    """Best effort (a memo that cannot be written only costs the probes next time)."""
    try:
        d = os.path.dirname(path)
        if not os.path.isdir(d):
            os.makedirs(d, 0o700)
        atomic_file.write(path, json.dumps({"boot_id": boot, "supported": sorted(supported)}).encode("utf-8"))
    except (IOError, OSError):
        pass


def require(features, memo_path=None):
    """Raise probes.Unsupported (the collection's refusal) unless every feature in `features` is supported."""
    path = memo_path or layout.FEATURES_MEMO
    boot = _boot_id()
    known = _read(path, boot) if boot else set()
    missing = [f for f in features if f not in known]
    if not missing:
        return
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    for feature in missing:
        probes.require(feature)
    if boot:
        _write(path, boot, known | set(missing))


def attach_kinds(found):
    """What each attach kind gets on this host, from the probes' results `found` ({feature: probe result}, every
    feature program_spec.FEATURES names): {kind: {"supported", "held", "message"}}. A kind whose only missing
    feature is its pinnable link (perf_link, or bpf_link for a raw tracepoint) is supported through the holder
    when the holder works, a cgroup hook without bpf_link through BPF_PROG_ATTACH; else the message is the first
    missing feature's refusal."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec
    out = {}
    for kind, features in sorted(program_spec.FEATURES.items()):
        missing = [f for f in features if not found[f]["supported"]]
        if not missing:
            out[kind] = {"supported": True, "held": False, "message": "supported (%s)" % ", ".join(features)}
        elif missing == [features[-1]] and kind in program_spec.HELD_KINDS and found["holder"]["supported"]:
            out[kind] = {"supported": True, "held": True, "message": "supported through the holder (the kernel has "
                                                                     "no %s: %s)" % (missing[0], found[missing[0]]["reason"])}
        elif missing == [features[-1]] and kind == "cgroup":
            out[kind] = {"supported": True, "held": False, "message": "supported through BPF_PROG_ATTACH with "
                         "BPF_F_ALLOW_MULTI (the kernel has no %s: %s)" % (missing[0], found[missing[0]]["reason"])}
        else:
            out[kind] = {"supported": False, "held": False, "message": found[missing[0]].get("message")
                         or found[missing[0]]["reason"]}
    return out
