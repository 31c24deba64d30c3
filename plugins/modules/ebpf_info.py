#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ebpf_info
short_description: List the host's eBPF programs, links and maps, and which ones this collection manages
description:
  - Lists every BPF program, link and map the kernel holds (what C(bpftool prog show), C(bpftool link show) and
    C(bpftool map show) list), read through bpf(2) (C(BPF_*_GET_NEXT_ID), C(BPF_OBJ_GET_INFO_BY_FD)).
  - Each object is flagged RV(programs[].managed) when it is pinned under O(pin_root) by this collection, with
    the managed program's name (RV(programs[].managed_name); maps pinned by name show C(_shared)). A program is
    managed when C(<pin_root>/<name>/) exists and this collection holds a state record for it under that
    O(pin_root); directories other tools pinned there (and C(_shared)) are not managed.
  - Lists the XDP, tc (cls_bpf) and tcx programs of every interface, in this network namespace and in each
    namespace of O(netns).
  - Program run counts and run time (RV(programs[].run_cnt), RV(programs[].run_time_ns)) only grow while the
    kernel's BPF statistics are on. With O(stats=true) they are turned on for O(stats_seconds) and while the
    programs are read, through C(BPF_ENABLE_STATS) (kernel 5.8+; off again when the module's fd is closed,
    also when the process is killed) or, on older kernels and outside check mode only, the
    C(kernel.bpf_stats_enabled) sysctl, set under the host-wide lock and put back to 0 afterwards (a run
    killed meanwhile leaves a marker next to the lock, and the next such run puts the sysctl back first).
    In check mode the module writes nothing. RV(stats.method) says how (C(bpf_enable_stats), C(sysctl),
    C(already_enabled) when the sysctl was already on and nothing was touched, C(not_enabled_check_mode) when
    check mode left the sysctl alone on a kernel without C(BPF_ENABLE_STATS)).
version_added: "0.1.0"
author: hypermesh engineers (@hypermesh)
options:
  pin_root:
    description: The bpffs directory managed programs are pinned under.
    type: path
    default: /sys/fs/bpf/hypermesh
  state_dir:
    description: Where the modules keep their state records (C(<state_dir>/programs/<name>.json)), which tell
      the managed programs; the O(hypermesh.ebpf.ebpf_program#module:state_dir) of the runs that made them.
    type: path
    default: /var/lib/hypermesh-ebpf
  netns:
    description: Names of network namespaces (C(/run/netns/<name>)) whose interfaces to list as well.
    type: list
    elements: str
    default: []
  stats:
    description: Turn the kernel's BPF run-time statistics on while reading (see above).
    type: bool
    default: false
  stats_seconds:
    description: With O(stats=true), keep statistics on this many seconds before reading, so programs that
      run in that window are counted.
      With O(wait_for_runs), the longest time to wait.
    type: float
    default: 0
  wait_for_runs:
    description:
      - Names of managed programs (under O(pin_root)) to wait for, with statistics on from the start of the wait
        (implies O(stats=true)). The module polls their run counts until each has grown or O(stats_seconds)
        passed, and says which ran in RV(stats.ran) and which did not in RV(stats.stalled). The wait itself only
        makes bpf(2) calls, so it cannot run a program by itself. The health check of the ebpf_programs role.
      - A name without a pinned program counts as stalled (and is listed in RV(stats.missing)).
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - hypermesh.ebpf.attributes.INFO_MODULE
"""

EXAMPLES = r"""
- name: What runs on this host
  hypermesh.ebpf.ebpf_info:
  register: bpf

- name: Count program runs for two seconds, include the interfaces of namespace blue
  hypermesh.ebpf.ebpf_info:
    stats: true
    stats_seconds: 2
    netns: [blue]

- name: Wait up to 30 s for the managed programs openat and sched to run
  hypermesh.ebpf.ebpf_info:
    wait_for_runs: [openat, sched]
    stats_seconds: 30
  register: runs
  failed_when: runs.stats.stalled | length > 0
"""

RETURN = r"""
programs:
  description: Every loaded program.
  returned: always
  type: list
  elements: dict
  sample: [{id: 42, type_name: xdp, name: xdp_blocklist, tag: 0123456789abcdef, run_cnt: 10,
            run_time_ns: 12345, map_ids: [7, 8], managed: true, managed_name: blocklist,
            pin: /sys/fs/bpf/hypermesh/blocklist/prog}]
  contains:
    id:
      description: The kernel's id of the program.
      type: int
      returned: always
    type_name:
      description: The program type (C(xdp), C(sched_cls), C(tracepoint), ...; the number for a type this module
        does not know).
      type: str
      returned: always
    name:
      description: The program's name (the kernel keeps 15 characters of it).
      type: str
      returned: always
    tag:
      description: The kernel's tag of the program's instructions (hex).
      type: str
      returned: always
    map_ids:
      description: Ids of the maps the program uses.
      type: list
      elements: int
      returned: always
    run_cnt:
      description: How often the program ran while the kernel's BPF statistics were on.
      type: int
      returned: always
    run_time_ns:
      description: Nanoseconds the program ran while the kernel's BPF statistics were on.
      type: int
      returned: always
    managed:
      description: Whether the program is managed by this collection (see above).
      type: bool
      returned: always
    managed_name:
      description: The managed program's name, C(null) when not managed.
      type: str
      returned: always
    pin:
      description: Where the program is pinned under O(pin_root), C(null) when not managed.
      type: str
      returned: always
maps:
  description: Every map, flagged like RV(programs).
  returned: always
  type: list
  elements: dict
links:
  description: Every BPF link, flagged like RV(programs).
  returned: always
  type: list
  elements: dict
interfaces:
  description:
    - Each interface with its XDP program (C(prog_id), C(mode)), tc filters and tcx programs per direction
      (C(null) where the kernel has no tcx).
    - Where the XDP program is libxdp's dispatcher (several programs on the interface, see
      O(hypermesh.ebpf.ebpf_program#module:attach.xdp.priority)), C(xdp.dispatcher) lists its programs in run
      order - C(id), C(name), C(priority), C(proceed_on) and C(managed_name) (null for a program of another tool,
      such as C(xdp-loader)).
  returned: always
  type: list
  elements: dict
  sample: [{ifname: veth0, ifindex: 5, netns: blue, xdp: {prog_id: 42, mode: generic},
            tc: {ingress: [], egress: []}, tcx: {ingress: [], egress: []}}]
managed_names:
  description: Names of the managed programs under O(pin_root) (a directory there and a state record of ours;
    never C(_shared), never another tool's directory).
  returned: always
  type: list
  elements: str
held:
  description:
    - The attachments the holder service (C(hypermesh-ebpf-holder.service)) keeps on a kernel that cannot pin them
      (no perf links before 5.15, no bpf_link before 5.7), as the kernel confirms them (C(BPF_TASK_FD_QUERY) on
      the holder's descriptors) - C(name), C(pin_root), C(prog_id), C(attach), C(holder_pid), C(fd), C(fd_type),
      C(managed) and the program's C(run_cnt) and C(run_time_ns) (with O(stats)).
  returned: always
  type: list
  elements: dict
  sample: [{name: tp_openat, pin_root: /sys/fs/bpf/hypermesh, prog_id: 38, fd_type: tracepoint, holder_pid: 342,
            fd: 4, attach: {type: tracepoint, target: syscalls/sys_enter_openat}, managed: true, run_cnt: 1901,
            run_time_ns: 2417305}]
stats:
  description: How statistics were turned on; with O(wait_for_runs), also what the wait saw.
  returned: when O(stats=true) or O(wait_for_runs)
  type: dict
  sample: {method: bpf_enable_stats, seconds: 0, ran: {openat: 212, sched: 0}, stalled: [sched], missing: [],
           waited: 30.0}
  contains:
    method:
      description: How statistics were on (bpf_enable_stats, sysctl, already_enabled, not_enabled_check_mode).
      type: str
      returned: always
    seconds:
      description: Seconds statistics were on before the programs were read (O(stats_seconds); 0 with
        O(wait_for_runs), whose wait is RV(stats.waited)).
      type: float
      returned: always
    ran:
      description: With O(wait_for_runs), runs counted during the wait, per program.
      type: dict
      returned: with O(wait_for_runs)
    stalled:
      description: With O(wait_for_runs), the programs that did not run during the wait (missing ones too).
      type: list
      elements: str
      returned: with O(wait_for_runs)
    missing:
      description: With O(wait_for_runs), the names without a pinned program under O(pin_root).
      type: list
      elements: str
      returned: with O(wait_for_runs)
    waited:
      description: With O(wait_for_runs), seconds waited.
      type: float
      returned: with O(wait_for_runs)
"""

import gc
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.lock import LockTimeout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.netlink import NetlinkError
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import inventory


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pin_root=dict(type="path", default=layout.PIN_ROOT),
            state_dir=dict(type="path", default=layout.STATE_DIR),
            netns=dict(type="list", elements="str", default=[]),
            stats=dict(type="bool", default=False),
            stats_seconds=dict(type="float", default=0),
            wait_for_runs=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["stats_seconds"] < 0:
        module.fail_json(msg="stats_seconds must be 0 or more")
    for ns in p["netns"]:
        if "/" not in ns and not os.path.exists("/run/netns/" + ns):
            module.fail_json(msg="network namespace %s does not exist (/run/netns/%s)" % (ns, ns))
    try:
        result = inventory.collect(p["pin_root"], p["netns"], p["stats"], p["stats_seconds"],
                                   wait_for=p["wait_for_runs"], check_mode=module.check_mode,
                                   state_dir=p["state_dir"])
    except (OSError, NetlinkError, LockTimeout) as e:  # the host's state (errno from bpf(2)/netlink, a held lock)
        module.fail_json(msg="reading the host's BPF objects failed: %s" % e)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    gc.freeze()  # what the imports built lives until exit: no collection walks it (docs/DESIGN.md)
    main()
