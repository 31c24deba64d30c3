#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ebpf_program
short_description: Load, pin and attach an eBPF program from an ELF object, or remove it
description:
  - Loads one program of an ELF object with the host's libbpf, pins it and its maps under
    C(<pin_root>/<name>/), attaches it (XDP and tc through netlink; tcx, tracepoint, raw_tracepoint, kprobe,
    uprobe, fentry/fexit, LSM and cgroup through pinned bpf links, so the attachment outlives the module).
  - Where the kernel cannot pin the attachment (tracepoint, kprobe and uprobe before 5.15, which lack perf links;
    raw_tracepoint before 5.7, without bpf_link), the program stays pinned and the holder service
    C(hypermesh-ebpf-holder.service) keeps its perf event or raw tracepoint open - installed (its code in
    C(/usr/lib/hypermesh-ebpf-holder)), enabled and started by this module on a host booted with systemd,
    restarted by systemd within a second if it dies, re-attaching every held program from the requests in
    C(/run/hypermesh-ebpf/held/). The result and the diff say C(held); state, check mode, diff and
    O(state=absent) work as for any attachment.
  - The kernel is the source of truth. Only what the kernel cannot tell (the object's digest, the program name,
    the attach point) is recorded in C(<state_dir>/programs/<name>.json) (O(state_dir)).
  - A changed object, attach point or O(globals) replaces the program atomically where the kernel allows (XDP replace,
    tc filter replace, BPF_LINK_UPDATE for tcx and cgroup links).
  - Every feature is gated by the same probes as M(hypermesh.ebpf.ebpf_facts) before anything changes. A
    feature found supported is remembered until the next boot (C(/run/hypermesh-ebpf/features.json)); a
    refusal is probed again every run.
  - A re-apply with nothing to do reads the record, the pins and the attach point (one netlink query for
    XDP and tc) and does not load libbpf (the record keeps the object's program list by digest).
  - The module_utils it runs are copied once per host into C(/var/cache/hypermesh-ebpf/pycache/ebpf_program/) and
    compiled there, so later runs do not compile them again.
  - A failed run rolls back what it created; a run killed at any step leaves pins the next run adopts.
  - Runs under the host-wide lock C(/run/hypermesh-ebpf/lock).
  - Several XDP programs share an interface through libxdp's dispatcher when O(attach.xdp.priority) or
    O(attach.xdp.proceed_on) is set (programs C(xdp-loader) attached run in the same dispatcher and are left
    alone); without them a program holds the interface alone.
  - XDP and tc slots are taken only as they were read before the change - a free slot must still be free, an
    occupied one must still hold the program read (XDP replaces atomically with C(XDP_FLAGS_REPLACE)) - so a
    program another agent attached in the meantime is never overwritten; the run fails and names it.
  - Program and map names in the object must be printable ASCII without C(/) (and not C(.) or C(..)); an
    object with other names is refused before anything is pinned.
version_added: 0.1.0
author: hypermesh engineers (@hypermesh)
options:
  name:
    description: Identity of the managed program; everything it owns lives under C(<pin_root>/<name>/).
    type: str
    required: true
  object:
    description:
      - Absolute path of the ELF object on the managed host. Required unless O(state=absent).
      - The object is read once and its bytes are what is loaded. It must be a regular file (not a symbolic link)
        owned by root, writable by no one else, in directories that are root's and writable by no one else (a
        sticky directory such as C(/tmp) above them is fine), so that root loads no object another user could have
        planted or can change. Otherwise the task fails naming the path and the problem, with nothing changed.
    type: path
  program:
    description: Function name of the program in the object; may be omitted when the object has one program.
    type: str
  sha256:
    description: Refuse the object when its SHA-256 digest differs.
    type: str
  state:
    description: C(attached) loads, pins and attaches; C(loaded) loads and pins without attaching;
      C(absent) detaches and removes every pin.
    type: str
    choices: [attached, loaded, absent]
    default: attached
  attach:
    description:
      - At most one attach point. When omitted, the ELF section decides as libbpf does
        (for example C(tracepoint/syscalls/sys_enter_openat)).
    type: dict
    suboptions:
      xdp:
        type: dict
        suboptions:
          interface: {type: str, required: true, description: Interface name.}
          netns: {type: str, description: Network namespace name (/run/netns) or path.}
          mode:
            type: str
            choices: [auto, generic, native, offload]
            default: auto
            description:
              - XDP mode. With O(attach.xdp.priority) or O(attach.xdp.proceed_on), C(auto) takes the mode of the
                dispatcher already on the interface (native, else generic when there is none); another mode than
                the dispatcher's is refused with nothing changed, and C(offload) is refused.
          priority:
            type: int
            description:
              - Run this program in libxdp's dispatcher, beside other programs on the interface (ours and those
                C(xdp-loader) attached), in priority order (lower runs first; 0 to 1000, libxdp's default 50).
                Setting it or O(attach.xdp.proceed_on) chooses this route; without both, the program holds the
                interface's XDP hook alone, through netlink, as before.
              - Needs libxdp 1.3+ on the host (C(libxdp1), Debian 12 and newer) and a kernel that can run program
                extensions (freplace) for the dispatcher (5.10+; feature C(xdp_multiprog) of
                M(hypermesh.ebpf.ebpf_facts)); elsewhere the task is refused before anything changes, with a
                message that says what is missing.
              - The program is loaded by libxdp as an extension of the dispatcher and pinned under
                C(<pin_root>/<name>/) as any other; a new priority or O(attach.xdp.proceed_on) loads a new copy
                (the maps are kept), puts it into the dispatcher, then takes the old copy out, each step one atomic
                swap of the dispatcher. At most 10 programs share an interface.
          proceed_on:
            type: list
            elements: str
            choices: [aborted, drop, pass, tx, redirect]
            description:
              - The XDP actions of this program after which the next program in the dispatcher runs (libxdp's
                chain-call actions; default C([pass])). After any other action the packet gets this program's
                verdict and no later program sees it. An empty list makes this program's verdict final.
        description: XDP on an interface; several programs on one interface through libxdp with
          O(attach.xdp.priority) or O(attach.xdp.proceed_on).
      tc:
        type: dict
        suboptions:
          interface: {type: str, required: true, description: Interface name.}
          netns: {type: str, description: Network namespace name or path.}
          direction: {type: str, choices: [ingress, egress], default: ingress, description: Hook.}
          priority: {type: int, default: 1, description: Filter priority (the slot this program owns).}
        description: tc cls_bpf (direct action, clsact qdisc).
      tcx:
        type: dict
        suboptions:
          interface: {type: str, required: true, description: Interface name.}
          netns: {type: str, description: Network namespace name or path.}
          direction: {type: str, choices: [ingress, egress], description: Hook (default from the section).}
          order:
            type: dict
            description:
              - Where the program runs among the programs on its tcx hook; exactly one key. Without it the
                program is appended after those already there (the kernel's default) and never moved.
              - Checked on every run against the hook's run order; a program out of its place is moved by a
                new link created in the right place first, then the old link detached, so the hook never lacks it.
              - A relative (O(attach.tcx.order.before), O(attach.tcx.order.after)) must be another
                program this collection manages, tcx-attached on the same interface, netns and direction; anything
                else is refused with nothing changed.
            suboptions:
              first: {type: bool, description: Run before every other program on the hook.}
              last: {type: bool, description: Run after every other program on the hook.}
              before: {type: str, description: Run before this managed program (its name).}
              after: {type: str, description: Run after this managed program (its name).}
        description: tcx bpf link (kernel 6.6+); several programs share a hook, in O(attach.tcx.order).
      tracepoint: {type: str, description: Tracepoint C(category/name).}
      raw_tracepoint: {type: str, description: Raw tracepoint name.}
      kprobe: {type: str, description: Kernel function name.}
      kretprobe: {type: str, description: Kernel function name.}
      fentry: {type: str, description: Kernel function name.}
      fexit: {type: str, description: Kernel function name.}
      lsm: {type: str, description: LSM hook name (for example C(file_open)).}
      cgroup:
        type: dict
        suboptions:
          path: {type: path, required: true, description: cgroup v2 directory.}
          type:
            type: str
            choices: [ingress, egress, sock_create, sock_ops, device, bind4, bind6, connect4, connect6, sysctl]
            description: Attach type (default from the section).
        description: cgroup bpf link.
      uprobe:
        type: dict
        description:
          - A uprobe at the start of a function (or at a file offset) of an executable or shared library, through
            a pinned perf-event link (kernel 5.15+; the uprobe perf PMU, 4.17+).
          - The binary is read (to find the function) and handed to the kernel only when no other user can have
            planted it or can change it - the file and every directory up to C(/) owned by root and writable by no
            one else, no symbolic link on the way - else the run is refused with nothing changed.
          - The function's offset is looked up on every run; a binary rebuilt or replaced at the same path is
            attached again (the kernel keeps a uprobe on the file it found when it was attached).
        suboptions:
          path: {type: path, required: true, description: Absolute path of the executable or shared library.}
          symbol:
            type: str
            description: Function name in the binary's C(.symtab) or C(.dynsym) (STT_FUNC, defined in it).
              Exactly one of O(attach.uprobe.symbol) and O(attach.uprobe.offset).
          offset:
            type: int
            description: File offset of the probed instruction, inside an executable segment of the binary.
          pid:
            type: int
            description: Only this process (it must exist when the probe is attached); every process when omitted.
      uretprobe:
        type: dict
        description: A uretprobe (the function's return), with the options of O(attach.uprobe).
        suboptions:
          path: {type: path, required: true, description: Absolute path of the executable or shared library.}
          symbol: {type: str, description: Function name in the binary (exactly one of symbol and offset).}
          offset: {type: int, description: File offset of the function's entry (in an executable segment).}
          pid: {type: int, description: Only this process; every process when omitted.}
  pin_root:
    description: bpffs directory under which programs are pinned. Must be on a mounted bpffs.
    type: path
    default: /sys/fs/bpf/hypermesh
  state_dir:
    description: Where the program's state record is kept (C(<state_dir>/programs/<name>.json)). A directory of
      root's, writable by no one else; made when missing. Every module that works on the same programs
      (M(hypermesh.ebpf.ebpf_state), M(hypermesh.ebpf.ebpf_info)) must be given the same one.
    type: path
    default: /var/lib/hypermesh-ebpf
  force:
    description: Take over an XDP or tc slot held by a program this collection did not attach for O(name).
    type: bool
    default: false
  globals:
    description:
      - Values for the object's global variables (C(const volatile) ones in C(.rodata), and those in C(.data)
        and C(.bss)), variable name to value, set before the program is loaded; variables not listed keep the
        values they were compiled with. Needs kernel 5.2+ (feature C(global_data) of M(hypermesh.ebpf.ebpf_facts)).
      - Each value is typed by the variable's BTF type - an integer (a number or C(0x..) text, range-checked), a
        bool, an enum (a name or a number), a struct (a dict), an array (a list), a char array (a string); an
        unsigned integer or byte array of 4, 16 or 6 bytes also takes an IPv4, IPv6 or MAC address as text,
        stored in network byte order (as map keys with C(ipv4), C(ipv6), C(mac)); a byte array takes hex.
      - An unknown name or a value that does not fit is refused with nothing changed.
      - Other values replace the program atomically, as a changed object does; the values are kept in the record
        and shown in the diff and RV(globals) (normalised, for example C(0x35) as C(53)).
    type: dict
extends_documentation_fragment:
  - hypermesh.ebpf.attributes
attributes:
  check_mode: {support: full}
  diff_mode: {support: full}
"""

EXAMPLES = r"""
- name: Count packets on eth0 with XDP
  hypermesh.ebpf.ebpf_program:
    name: xdp-counter
    object: /usr/local/lib/bpf/xdp_counter.bpf.o
    attach:
      xdp: {interface: eth0}

- name: A filter that runs before the counter on eth0, both in libxdp's dispatcher (Debian 12+, kernel 5.10+)
  hypermesh.ebpf.ebpf_program:
    name: port-drop
    object: /usr/local/lib/bpf/xdp_port_drop.bpf.o
    attach:
      xdp: {interface: eth0, priority: 10, proceed_on: [pass]}

- name: The counter, after the filter (it sees only what the filter passed)
  hypermesh.ebpf.ebpf_program:
    name: xdp-counter
    object: /usr/local/lib/bpf/xdp_counter.bpf.o
    attach:
      xdp: {interface: eth0, priority: 20}

- name: Count openat() calls (the section says tracepoint/syscalls/sys_enter_openat)
  hypermesh.ebpf.ebpf_program:
    name: openat
    object: /usr/local/lib/bpf/tp_openat.bpf.o

- name: Remove it
  hypermesh.ebpf.ebpf_program:
    name: openat
    state: absent

- name: Drop UDP datagrams to port 9 (the object's const volatile drop_port), set at load time
  hypermesh.ebpf.ebpf_program:
    name: port-drop
    object: /usr/local/lib/bpf/xdp_port_drop.bpf.o
    attach:
      xdp: {interface: eth0}
    globals:
      drop_port: 9

- name: Count calls of a function of a root-owned binary, in every process that runs it
  hypermesh.ebpf.ebpf_program:
    name: tick-counter
    object: /usr/local/lib/bpf/uprobe_counter.bpf.o
    attach:
      uprobe: {path: /usr/local/bin/ticker, symbol: hm_tick}

- name: A tcx filter that runs before the managed program tcx-counter on eth0 (kernel 6.6+)
  hypermesh.ebpf.ebpf_program:
    name: tcx-filter
    object: /usr/local/lib/bpf/tc_filter.bpf.o
    attach:
      tcx: {interface: eth0, direction: ingress, order: {before: tcx-counter}}
"""

RETURN = r"""
state:
  description: The state after the run (predicted in check mode).
  returned: always
  type: str
  sample: attached
prog_id:
  description: Kernel id of the pinned program.
  returned: when present and not in check mode
  type: int
  sample: 42
link_id:
  description: Kernel id of the pinned link (link-based attach points).
  returned: when a link is pinned
  type: int
maps:
  description: Maps pinned under C(<pin_root>/<name>/maps/), name to kernel id.
  returned: when present
  type: dict
  sample: {xdp_stats: 7}
pin_dir:
  description: Directory holding the pins.
  returned: always
  type: str
  sample: /sys/fs/bpf/hypermesh/xdp-counter
attach:
  description: The attach point, normalised.
  returned: when attached
  type: dict
held:
  description: True when the attachment is kept by the holder service (the kernel cannot pin it), false when it is
    a pinned link or a netlink attachment.
  returned: when attached
  type: bool
globals:
  description: The values of the object's global variables set by O(globals), normalised (predicted in check
    mode; C({}) when O(globals) was dropped and the program goes back to the compiled values).
  returned: when O(globals) is set, or was set before
  type: dict
  sample: {drop_port: 9}
verifier_log:
  description: Tail of the verifier log when the kernel rejected the program.
  returned: on verifier rejection
  type: str
"""

import gc

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import pycache

pycache.use_host_copy("ebpf_program")  # the module_utils below: compiled once per host, not on every run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_runner import (  # noqa: E402
    ARGUMENT_SPEC, REQUIRED_IF, apply, errors)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, required_if=REQUIRED_IF)
    try:
        result = apply(module.params, module.check_mode)
    except Exception as e:  # narrowed below: anything else is a bug and gets the traceback
        if not isinstance(e, errors()):
            raise
        extra = {}
        tail = getattr(e, "log_tail", "")
        if tail:
            extra["verifier_log"] = tail
        module.fail_json(msg=str(e), **extra)
    if not module._diff:
        result.pop("diff", None)  # shown only with --diff: not worth carrying back otherwise
    module.exit_json(**result)


if __name__ == "__main__":
    gc.freeze()  # what the imports built lives until exit: no collection walks it (docs/DESIGN.md)
    main()
