# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""THE requirements table: what each eBPF feature needs from a kernel, and the refusal message built from it.

Every feature name used by probes and by the gating in the other modules is a key of REQUIREMENTS.
`min_kernel` is the upstream release that brought the feature; `needs` completes the sentence
"<feature> needs kernel >= <min_kernel> ..." with what else must be true (config options, mounts, LSMs).
Whether a host really has a feature is decided by probes.py on the running kernel, never by this version
number alone (distributions backport); the table only explains a refusal.

Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout


REQUIREMENTS = {
    "xdp": {
        "min_kernel": "4.8",
        "what": "xdp programs",
        "needs": "with CONFIG_BPF_SYSCALL; native mode needs a driver with XDP support, generic mode works on any "
                 "interface",
    },
    "xdp_multiprog": {
        "min_kernel": "5.10",
        "what": "several xdp programs on one interface (libxdp's dispatcher: attach.xdp.priority, proceed_on)",
        "needs": "with BPF program extensions (freplace, 5.6+) attachable to several programs (5.10+), BTF and the "
                 "JIT, libxdp 1.3+ on the host (libxdp1, Debian 12 and newer) and bpffs at /sys/fs/bpf; without "
                 "them, one xdp program per interface (attach.xdp without priority and proceed_on)",
    },
    "tc": {
        "min_kernel": "4.4",
        "what": "tc (cls_bpf) programs",
        "needs": "with CONFIG_NET_CLS_BPF and CONFIG_NET_SCH_INGRESS (clsact qdisc, direct-action mode)",
    },
    "tcx": {
        "min_kernel": "6.6",
        "what": "tcx programs",
        "needs": "(tcx links: BPF_TCX_INGRESS/BPF_TCX_EGRESS attach types)",
    },
    "tracepoint": {
        "min_kernel": "4.7",
        "what": "tracepoint programs",
        "needs": "with CONFIG_BPF_EVENTS and the tracepoint under tracefs events/ (syscall tracepoints need "
                 "CONFIG_FTRACE_SYSCALLS)",
    },
    "raw_tracepoint": {
        "min_kernel": "4.17",
        "what": "raw_tracepoint programs",
        "needs": "with CONFIG_BPF_EVENTS",
    },
    "kprobe": {
        "min_kernel": "4.1",
        "what": "kprobe programs",
        "needs": "built with CONFIG_KPROBES, CONFIG_KPROBE_EVENTS and CONFIG_BPF_EVENTS (the kprobe perf PMU or "
                 "tracefs kprobe_events)",
    },
    "uprobe": {
        "min_kernel": "4.17",
        "what": "uprobe programs",
        "needs": "built with CONFIG_UPROBE_EVENTS and CONFIG_BPF_EVENTS (the uprobe perf PMU, %s)" % layout.UPROBE_PMU,
    },
    "fentry": {
        "min_kernel": "5.5",
        "what": "fentry/fexit programs",
        "needs": "with CONFIG_DEBUG_INFO_BTF (/sys/kernel/btf/vmlinux) and a BPF trampoline for the architecture "
                 "(CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS on x86_64)",
    },
    "cgroup": {
        "min_kernel": "4.10",
        "what": "cgroup programs",
        "needs": "with CONFIG_CGROUP_BPF and a mounted cgroup v2 hierarchy",
    },
    "lsm": {
        "min_kernel": "5.7",
        "what": "lsm programs",
        "needs": "with CONFIG_BPF_LSM, CONFIG_DEBUG_INFO_BTF and bpf in the active LSM list (boot with lsm=...,bpf)",
    },
    "bpf_link": {
        "min_kernel": "5.7",
        "what": "bpf links",
        "needs": "(the BPF_LINK_CREATE command)",
    },
    "perf_link": {
        "min_kernel": "5.15",
        "what": "perf-event links (pinnable links for tracepoint, kprobe and uprobe programs)",
        "needs": "(BPF_LINK_CREATE with the BPF_PERF_EVENT attach type)",
    },
    "holder": {
        "min_kernel": "4.7",
        "what": "held attachments (tracepoint, kprobe and uprobe programs kept attached by the holder service, "
                "%s, where the kernel cannot pin them)" % layout.HOLDER_UNIT,
        "needs": "with perf events that run bpf programs (PERF_EVENT_IOC_SET_BPF) and a host booted with systemd, "
                 "which keeps the holder running",
    },
    "ringbuf": {
        "min_kernel": "5.8",
        "what": "ring buffer maps",
        "needs": "(BPF_MAP_TYPE_RINGBUF)",
    },
    "global_data": {
        "min_kernel": "5.2",
        "what": "global variables (.rodata, .data, .bss of an object)",
        "needs": "(direct map value access from programs, BPF_PSEUDO_MAP_VALUE, and read-only maps for .rodata, "
                 "BPF_F_RDONLY_PROG)",
    },
    "btf": {
        "min_kernel": "5.4",
        "what": "kernel BTF types",
        "needs": "built with CONFIG_DEBUG_INFO_BTF (/sys/kernel/btf/vmlinux)",
    },
    "bpf_stats": {
        "min_kernel": "5.8",
        "what": "bpf run-time statistics",
        "needs": "(the BPF_ENABLE_STATS command, CAP_SYS_ADMIN)",
    },
}

FEATURES = sorted(REQUIREMENTS)


def min_kernel(feature):
    """The upstream kernel release ("X.Y") that brought `feature`; KeyError for an unknown feature."""
    return _entry(feature)["min_kernel"]


def needs(feature):
    """Human text: what `feature` needs, starting with the minimum kernel."""
    entry = _entry(feature)
    return "kernel >= %s %s" % (entry["min_kernel"], entry["needs"])


def refusal(feature, release, reason):
    """The one refusal message of the collection.

    Names the feature, the host's kernel release and what the feature needs, e.g.
    "lsm programs are not supported on kernel 5.10.0-30-cloud-amd64: bpf is not in the active LSM list (...);
    lsm needs kernel >= 5.7 with CONFIG_BPF_LSM, ... and bpf in the active LSM list (boot with lsm=...,bpf)".
    """
    entry = _entry(feature)
    reason = (reason or "").strip().rstrip(".") or "the probe on this kernel failed"
    return "%s are not supported on kernel %s: %s; %s needs %s" % (
        entry["what"], release or "(unknown release)", reason, feature, needs(feature))


def _entry(feature):
    try:
        return REQUIREMENTS[feature]
    except KeyError:
        raise KeyError("unknown eBPF feature %r (known: %s)" % (feature, ", ".join(FEATURES)))
