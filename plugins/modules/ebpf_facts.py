#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ebpf_facts
short_description: Gather eBPF facts by probing the running kernel
description:
  - Returns C(ansible_facts.ebpf) with three parts, each one optional (O(gather)).
  - C(kernel) describes the running kernel as eBPF sees it, read from C(/proc) and C(/sys) - release and parsed
    version, the BPF-relevant kernel config options, kernel BTF, JIT and unprivileged-BPF sysctls, the active
    LSM list, the lockdown mode, how BPF memory is charged, where bpffs, tracefs, debugfs, cgroup v2 and
    securityfs are mounted, and the module's effective capabilities.
  - C(hardware) lists CPUs, memory, block devices and the network interfaces of the module's network namespace
    with driver, MTU, queues and the XDP modes the driver offers.
  - C(features) says, for each eBPF feature the collection uses, whether it works on this kernel. Each feature
    is B(probed) - a minimal program of that type is loaded, a map created or a command issued, and the attach
    point checked - rather than guessed from the kernel version. Probes close every file descriptor they open
    and leave nothing loaded or attached.
  - >-
    Works without libbpf (it uses the bpf(2) system call directly) and without root. Without the privileges a
    probe needs, the feature is reported with C(probed=false) and a reason such as
    C(could not probe: needs CAP_BPF or CAP_SYS_ADMIN), and a warning lists what was not probed.
  - Where securityfs or tracefs is not mounted, the module reads the LSM list through the lsm_list_modules(2)
    system call (kernel 6.8+) or mounts the file system in a private mount namespace of a short-lived
    C(unshare) child (needs CAP_SYS_ADMIN, see O(private_mounts)). The host's mount table is never changed.
version_added: "0.1.0"
author: hypermesh engineers (@hypermesh)
options:
  gather:
    description:
      - Which parts to gather.
    type: list
    elements: str
    choices: [all, kernel, hardware, features]
    default: [all]
  features:
    description:
      - Features to probe (default all). Ignored unless O(gather) includes C(features) or C(all).
    type: list
    elements: str
    choices: [xdp, tc, tcx, tracepoint, raw_tracepoint, kprobe, uprobe, fentry, cgroup, lsm, bpf_link, perf_link,
              holder, ringbuf, btf, bpf_stats, global_data, xdp_multiprog]
  private_mounts:
    description:
      - Allow mounting securityfs or tracefs in a private, throw-away mount namespace to read what an
        unmounted file system holds (the active LSM list, the lockdown mode, tracepoints, kprobe_events).
      - With C(false), such facts are reported as unknown with the reason.
    type: bool
    default: true
notes:
  - Interfaces are those of the network namespace the module runs in.
  - The C(min_kernel) of each feature comes from the collection's one requirements table; it is the upstream
    release that brought the feature, for the refusal messages. Whether a feature is supported is decided by
    the probe only, because distributions backport.
seealso:
  - module: hypermesh.ebpf.ebpf_info
extends_documentation_fragment:
  - hypermesh.ebpf.attributes.INFO_MODULE
  - hypermesh.ebpf.attributes.FACTS
"""

EXAMPLES = r"""
- name: Gather every eBPF fact
  hypermesh.ebpf.ebpf_facts:

- name: Stop early on hosts without tcx
  ansible.builtin.assert:
    that: ansible_facts.ebpf.features.tcx.supported
    fail_msg: "{{ ansible_facts.ebpf.features.tcx.reason }}"

- name: Only probe the features this play needs
  hypermesh.ebpf.ebpf_facts:
    gather: [features]
    features: [xdp, tcx, ringbuf]

- name: Kernel facts only, never mounting anything, not even privately
  hypermesh.ebpf.ebpf_facts:
    gather: [kernel]
    private_mounts: false
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    ebpf:
      description: The eBPF facts; only the parts named by O(gather) are present.
      returned: always
      type: dict
      contains:
        kernel:
          description: The running kernel.
          returned: when O(gather) includes C(kernel)
          type: dict
          contains:
            release:
              description: The kernel release, as C(uname -r) prints it.
              type: str
              returned: success
              sample: 6.1.0-50-cloud-amd64
            version:
              description: The release parsed as [major, minor, patch].
              type: list
              elements: int
              returned: success
              sample: [6, 1, 0]
            config_source:
              description: Where the config was read from (C(/proc/config.gz), C(/boot/config-RELEASE)), or
                C(not readable) followed by the reasons.
              type: str
              returned: success
              sample: /proc/config.gz
            config:
              description: The BPF-relevant options of the kernel config (C(y), C(m), C(n) for "is not set" or
                absent, or the option's value); empty when the config is not readable.
              type: dict
              returned: success
              sample: {CONFIG_BPF_SYSCALL: y, CONFIG_BPF_LSM: y, CONFIG_KPROBES: n, CONFIG_DEBUG_INFO_BTF: y}
            btf:
              description: Kernel BTF - C(vmlinux) (present), C(path), C(size) in bytes.
              type: dict
              returned: success
              sample: {vmlinux: true, path: /sys/kernel/btf/vmlinux, size: 5515646}
            jit:
              description: The C(net.core.bpf_jit_enable), C(bpf_jit_harden) and C(bpf_jit_kallsyms) sysctls
                (null where not readable).
              type: dict
              returned: success
              sample: {enable: 1, harden: 0, kallsyms: 1}
            unprivileged_bpf_disabled:
              description: The C(kernel.unprivileged_bpf_disabled) sysctl (null where not readable).
              type: int
              returned: success
              sample: 2
            lsm:
              description: The active LSM list (C(active), null when unknown), C(source) (where it was read) and
                C(reason) (why it is unknown).
              type: dict
              returned: success
              sample: {active: [lockdown, capability, landlock, bpf], source: /sys/kernel/security/lsm,
                       reason: ""}
            lockdown:
              description: The kernel lockdown mode (C(none), C(integrity), C(confidentiality)), null when it
                cannot be read.
              type: str
              returned: success
              sample: integrity
            memory_accounting:
              description: How BPF memory is charged - C(mode) C(memcg) (kernel 5.11+) or C(memlock), the
                C(reason), and the module's RLIMIT_MEMLOCK C(memlock_soft) and C(memlock_hard) in bytes (or
                C(unlimited)).
              type: dict
              returned: success
              sample: {mode: memcg, reason: kernel >= 5.11 charges BPF memory to the memory cgroup,
                       memlock_soft: 8388608, memlock_hard: 8388608}
            mounts:
              description: Mount points of C(bpffs), C(tracefs), C(debugfs), C(cgroup2) and C(securityfs), from
                C(/proc/self/mountinfo).
              type: dict
              returned: success
              sample: {bpffs: [/sys/fs/bpf], tracefs: [/sys/kernel/tracing], debugfs: [],
                       cgroup2: [/sys/fs/cgroup], securityfs: [/sys/kernel/security]}
            capabilities:
              description: The module's effective capabilities (C(effective) as hex, from CapEff in
                C(/proc/self/status)) and flags C(cap_bpf), C(cap_perfmon), C(cap_net_admin), C(cap_sys_admin),
                C(cap_sys_resource).
              type: dict
              returned: success
              sample: {effective: 000001ffffffffff, cap_bpf: true, cap_perfmon: true, cap_net_admin: true,
                       cap_sys_admin: true, cap_sys_resource: true}
        hardware:
          description: CPUs, memory, block devices and network interfaces.
          returned: when O(gather) includes C(hardware)
          type: dict
          contains:
            cpus:
              description: C(online) and C(possible) CPU lists as in C(/sys/devices/system/cpu), their counts
                (C(online_count), C(possible_count)), the C(model) and the C(arch).
              type: dict
              returned: success
              sample: {online: 0-1, online_count: 2, possible: 0-1, possible_count: 2,
                       model: Intel(R) Xeon(R) Processor, arch: x86_64}
            memory:
              description: C(total_bytes) and C(available_bytes) from C(/proc/meminfo).
              type: dict
              returned: success
              sample: {total_bytes: 25276510208, available_bytes: 24658141184}
            block_devices:
              description: Block devices of C(/sys/block) by name (empty loop, ram and zram devices skipped) with
                C(size_bytes), C(rotational), C(removable), C(model).
              type: dict
              returned: success
              sample: {vda: {size_bytes: 274877906944, rotational: true, removable: false, model: null}}
            interfaces:
              description:
                - Network interfaces of the module's network namespace, by name, with C(ifindex), C(driver)
                  and where it was found (C(driver_source) - C(sysfs) device link or uevent, C(ethtool)),
                  C(mtu), C(rx_queues), C(tx_queues).
                - C(xdp_modes) lists the XDP modes the interface offers - C(generic) always, C(native) and
                  C(offload) where the driver supports them. C(xdp_source) says how that was decided - the
                  kernel's own C(xdp_features) (netdev generic netlink, kernel 6.3+, listed in
                  C(xdp_features)), or the collection's table of drivers with native XDP on older kernels.
              type: dict
              returned: success
              sample: {lo: {ifindex: 1, driver: loopback, driver_source: sysfs, mtu: 65536, rx_queues: 1,
                            tx_queues: 1, xdp_features: [], xdp_modes: [generic], xdp_source: xdp_features},
                       eth0: {ifindex: 2, driver: virtio_net, driver_source: sysfs, mtu: 1500, rx_queues: 1,
                              tx_queues: 1, xdp_features: [basic, redirect, rx_sg],
                              xdp_modes: [generic, native], xdp_source: xdp_features}}
        features:
          description:
            - One entry per probed feature (C(xdp), C(tc), C(tcx), C(tracepoint), C(raw_tracepoint), C(kprobe),
              C(uprobe), C(fentry), C(cgroup), C(lsm), C(bpf_link), C(perf_link), C(holder), C(ringbuf), C(btf),
              C(bpf_stats), C(global_data), C(xdp_multiprog)), each with C(supported) (bool), C(probed) (false
              when the kernel could not be asked, for example without CAP_BPF; C(supported) is then false),
              C(reason) (what the probe saw) and C(min_kernel) (the upstream release that brought the feature, from the collection's requirements table).
            - An unsupported feature also has C(message), the collection's refusal text (the same the modules
              fail with) - the feature, the kernel release, the reason and what the feature needs.
          returned: when O(gather) includes C(features)
          type: dict
          sample:
            lsm: {supported: false, probed: true, min_kernel: "5.7",
                  reason: "bpf is not in the active LSM list (lockdown,capability,yama,apparmor,tomoyo); boot with
                           lsm=lockdown,capability,yama,apparmor,tomoyo,bpf",
                  message: "lsm programs are not supported on kernel 5.10.0-32-cloud-amd64: bpf is not in the
                            active LSM list (lockdown,capability,yama,apparmor,tomoyo); boot with
                            lsm=lockdown,capability,yama,apparmor,tomoyo,bpf; lsm needs kernel >= 5.7 with
                            CONFIG_BPF_LSM, CONFIG_DEBUG_INFO_BTF and bpf in the active LSM list (boot with
                            lsm=...,bpf)"}
            tcx: {supported: true, probed: true, min_kernel: "6.6",
                  reason: BPF_PROG_QUERY with BPF_TCX_INGRESS on lo succeeds}
        attach_kinds:
          description:
            - What each attach kind of M(hypermesh.ebpf.ebpf_program) gets on this host, from the features above
              (only when every feature is probed, O(features) unset) - C(supported), C(held) (true when the
              kernel cannot pin the attachment, no C(perf_link) or C(bpf_link), and the holder service
              C(hypermesh-ebpf-holder.service) keeps it instead) and C(message) (how, or the refusal).
          returned: when O(gather) includes C(features) and O(features) is not set
          type: dict
          sample:
            tracepoint: {supported: true, held: true,
                         message: "supported through the holder (the kernel has no perf_link: BPF_LINK_CREATE does
                                   not know the BPF_PERF_EVENT attach type (EINVAL))"}
            xdp: {supported: true, held: false, message: supported (xdp)}
"""

import gc

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import hardware, kernel_info, probes
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host.requirements import FEATURES
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_gate

PARTS = ["kernel", "hardware", "features"]


def gather(parts, features, private_mounts):
    """The ansible_facts.ebpf dict and the list of warnings (what could not be probed)."""
    facts, warnings = {}, []
    if "kernel" in parts:
        facts["kernel"] = kernel_info.facts(allow_private_mount=private_mounts)
    if "hardware" in parts:
        facts["hardware"] = hardware.facts()
    if "features" in parts:
        found = probes.probe_all(features or FEATURES, allow_private_mount=private_mounts)
        facts["features"] = found
        if not features:
            facts["attach_kinds"] = program_gate.attach_kinds(found)
        for name in sorted(found):
            if not found[name]["probed"]:
                warnings.append("eBPF feature %s: %s" % (name, found[name]["reason"]))
    return facts, warnings


def main():
    module = AnsibleModule(
        argument_spec=dict(
            gather=dict(type="list", elements="str", choices=["all"] + PARTS, default=["all"]),
            features=dict(type="list", elements="str", choices=FEATURES),
            private_mounts=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    wanted = module.params["gather"]
    parts = PARTS if "all" in wanted else [part for part in PARTS if part in wanted]
    try:
        facts, warnings = gather(parts, module.params["features"], module.params["private_mounts"])
    except kernel_info.KernelInfoError as exc:
        module.fail_json(msg=str(exc))
    for text in warnings:
        module.warn(text)
    module.exit_json(changed=False, ansible_facts={"ebpf": facts})


if __name__ == "__main__":
    gc.freeze()  # what the imports built lives until exit: no collection walks it (docs/DESIGN.md)
    main()
