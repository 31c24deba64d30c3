#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ebpf_state
short_description: Apply a host's whole eBPF desired state as one transaction, on the host
description:
  - Takes every program the host must run (with its attach point, map entries and health check) and applies
    them in one module run, under one hold of the host lock C(/run/hypermesh-ebpf/lock).
  - B(Gate first.) Every program and map declaration goes through the check mode of M(hypermesh.ebpf.ebpf_program)
    and M(hypermesh.ebpf.ebpf_map) (the same probes, requirements table, object, attach point and entry checks);
    when any is refused nothing changes.
  - B(Apply.) With O(prune=true), managed programs (a state record of ours under O(pin_root)) that are not
    listed are removed; then each program is loaded, pinned and attached (replaced atomically where the kernel
    allows, as M(hypermesh.ebpf.ebpf_program) does), then its map entries declared.
  - B(Health check.) The programs this run changed (O(health_checks)) must show they work within their
    timeout, shown by their kernel run count growing (C(run_count), BPF statistics on for the wait) or a counter
    in one of their maps passing the value read right after the apply (C(counter)).
  - B(Commit or roll back.) When everything passed, the desired state is saved atomically in O(desired) with
    the next generation number (read by the boot-time re-apply). When anything failed after the first
    change, the host is put back to the snapshot taken before it, the very same programs (same kernel ids,
    their objects are held by the run), attach points, maps and the declared map entries' values; programs the
    run added are removed and keys it added deleted; the desired state is left as it was. Programs applied by
    hand with M(hypermesh.ebpf.ebpf_program) come back like any other.
  - The transaction does not depend on the controller. SIGHUP, SIGINT and SIGPIPE are ignored while it runs, so
    a dropped SSH connection or a killed controller does not stop it half way; the host ends committed or
    rolled back. SIGTERM rolls back.
  - The modules M(hypermesh.ebpf.ebpf_program) and M(hypermesh.ebpf.ebpf_map) remain for managing one thing at a
    time.
version_added: "0.2.0"
author: hypermesh engineers (@hypermesh)
options:
  programs:
    description: The programs the host must run, each with the options of M(hypermesh.ebpf.ebpf_program)
      (without O(pin_root)) plus O(programs[].maps) and O(programs[].health).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Identity of the managed program; everything it owns lives under C(<pin_root>/<name>/).
        type: str
        required: true
      object:
        description: Path of the ELF object on the managed host. Required unless O(programs[].state=absent).
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
              mode: {type: str, choices: [auto, generic, native, offload], default: auto, description: XDP mode.}
            description: XDP on an interface.
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
            description: tcx bpf link (kernel 6.6+).
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
      force:
        description: Take over an XDP or tc slot held by a program this collection did not attach for
          O(programs[].name).
        type: bool
        default: false
      maps:
        description: Map entries to declare once the program is in place (the options of
          M(hypermesh.ebpf.ebpf_map) for a map of this program).
        type: list
        elements: dict
        default: []
        suboptions:
          map: {type: str, required: true, description: Name of the map within this program.}
          entries:
            type: list
            elements: dict
            default: []
            description: Entries C({key, value}); a value left out means the key only has to exist.
          state: {type: str, choices: [present, absent], default: present, description: Add or remove the entries.}
          exact: {type: bool, default: false, description: Remove every entry not listed.}
          key_format:
            type: str
            choices: [auto, int, hex, ipv4, ipv6, mac, string]
            default: auto
            description: How keys are written.
          value_format:
            type: str
            choices: [auto, int, hex, ipv4, ipv6, mac, string]
            default: auto
            description: How values are written.
      health:
        description: How this program shows it works after the apply (attached programs only).
        type: dict
        suboptions:
          check:
            type: str
            choices: [run_count, counter, none]
            default: run_count
            description: C(run_count) (its kernel run count grows), C(counter) (the value at O(programs[].health.key)
              of O(programs[].health.map) grows past the value right after the apply) or C(none).
          map: {type: str, description: The map of the counter (C(counter)).}
          key: {type: raw, default: 0, description: Key of the counter.}
          field: {type: str, description: Member of a struct value to compare.}
          key_format:
            type: str
            choices: [auto, int, hex, ipv4, ipv6, mac, string]
            default: auto
            description: How O(programs[].health.key) is written.
          value_format:
            type: str
            choices: [auto, int, hex, ipv4, ipv6, mac, string]
            default: auto
            description: How the counter's value is read.
          timeout: {type: float, description: Seconds to wait (default O(health_timeout)).}
  pin_root:
    description: bpffs directory under which the programs are pinned.
    type: path
    default: /sys/fs/bpf/hypermesh
  prune:
    description: Remove the managed programs under O(pin_root) (those with a state record of this collection)
      that are not in O(programs). Directories without a record of ours are never touched.
    type: bool
    default: false
  rollback:
    description: On a failure after the first change, put the host back to what it ran before the run.
    type: bool
    default: true
  health_checks:
    description: Which programs are health checked; C(changed) (loaded, replaced or moved by this run), C(all)
      listed attached programs, or C(none).
    type: str
    choices: [changed, all, none]
    default: changed
  health_timeout:
    description: Default seconds a program has to show it works.
    type: float
    default: 30
  persist:
    description: Save the desired state in O(desired) after a healthy run (for the boot-time re-apply).
    type: bool
    default: true
  desired:
    description: The desired state file (written atomically, with a generation number).
    type: path
    default: /etc/hypermesh-ebpf/desired.json
extends_documentation_fragment:
  - hypermesh.ebpf.attributes
attributes:
  check_mode: {support: full}
  diff_mode: {support: full}
"""

EXAMPLES = r"""
- name: The whole eBPF state of the host, one transaction
  hypermesh.ebpf.ebpf_state:
    prune: true
    programs:
      - name: blocklist
        object: /var/lib/hypermesh-ebpf/objects/1bc4.bpf.o
        sha256: 1bc4...
        attach: {xdp: {interface: eth0, mode: generic}}
        maps:
          - map: blocklist
            key_format: ipv4
            entries: [{key: 192.0.2.10}]
        health: {check: counter, map: verdicts, key: 0}
      - name: openat
        object: /var/lib/hypermesh-ebpf/objects/77aa.bpf.o
        attach: {tracepoint: syscalls/sys_enter_openat}
"""

RETURN = r"""
programs:
  description: Per program (pruned ones first), what was done (or would be, in check mode) and why.
  returned: always
  type: list
  elements: dict
  sample: [{name: blocklist, action: replace, changed: true, reason: "object sha256 1bc4 -> 77aa",
            prog_id: 42, maps: [{map: blocklist, changed: true, counts: {added: 1, updated: 0, removed: 0}}],
            health: ok}]
  contains:
    action:
      description: none, load, replace, attach, detach, move, repair or remove.
      type: str
    reason:
      description: Why.
      type: str
pruned:
  description: Names removed (or to be removed) by O(prune).
  returned: always
  type: list
  elements: str
generation:
  description: The generation of the saved desired state after the run (predicted in check mode).
  returned: when O(persist=true)
  type: int
desired_changed:
  description: Whether the saved desired state was (or would be) rewritten.
  returned: when O(persist=true)
  type: bool
failed_program:
  description: The program whose step failed (null when the failure is not one program's).
  returned: on failure after the first change
  type: str
rolled_back:
  description: Whether the host was put back to the snapshot, completely.
  returned: on failure after the first change
  type: bool
rollback:
  description: What the rollback did (C(restored), C(removed), C(maps), C(errors)).
  returned: on failure after the first change, with O(rollback=true)
  type: dict
"""

import gc

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils import pycache

pycache.use_host_copy("ebpf_state")  # the module_utils below: compiled once per host, not on every run

from ansible_collections.hypermesh.ebpf.plugins.module_utils import state_engine  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils.state_params import (  # noqa: E402
    ARGUMENT_SPEC, StateError)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = state_engine.run(module.params, module.check_mode)
    except (state_engine.Refused, StateError) as e:
        module.fail_json(msg="refused, nothing changed: %s" % e, changed=False)
    if not module._diff:
        result.pop("diff", None)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    gc.freeze()  # what the imports built lives until exit: no collection walks it (docs/DESIGN.md)
    main()
