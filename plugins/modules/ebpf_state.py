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
  - B(Objects first.) Under the same hold, before the gate, the objects the programs use are stored in
    O(objects_dir) (the gate opens them); a refused run removes those it stored. When an object or the re-apply
    code is missing or damaged and its content was not given, the run lists it in RV(missing) and changes
    nothing.
  - B(Gate.) Every program and map declaration goes through the check mode of M(hypermesh.ebpf.ebpf_program)
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
              priority:
                type: int
                description:
                  - Run this program in libxdp's dispatcher beside other programs on the interface, lower first (0 to
                    1000, libxdp's default 50), as M(hypermesh.ebpf.ebpf_program) takes it; with
                    O(programs[].attach.xdp.proceed_on), this chooses the route. Needs libxdp 1.3+ and kernel 5.10+
                    (feature C(xdp_multiprog)); elsewhere the run is refused at the gate, nothing changed.
              proceed_on:
                type: list
                elements: str
                choices: [aborted, drop, pass, tx, redirect]
                description: The actions after which the next program of the dispatcher runs (default C([pass])).
            description: XDP on an interface; several on one interface through libxdp with
              O(programs[].attach.xdp.priority) or O(programs[].attach.xdp.proceed_on).
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
                  - A relative (O(programs[].attach.tcx.order.before), O(programs[].attach.tcx.order.after)) must be another
                    program this collection manages, tcx-attached on the same interface, netns and direction; anything
                    else is refused with nothing changed.
                suboptions:
                  first: {type: bool, description: Run before every other program on the hook.}
                  last: {type: bool, description: Run after every other program on the hook.}
                  before: {type: str, description: Run before this managed program (its name).}
                  after: {type: str, description: Run after this managed program (its name).}
            description: tcx bpf link (kernel 6.6+); several programs share a hook, in O(programs[].attach.tcx.order).
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
                  Exactly one of O(programs[].attach.uprobe.symbol) and O(programs[].attach.uprobe.offset).
              offset:
                type: int
                description: File offset of the probed instruction, inside an executable segment of the binary.
              pid:
                type: int
                description: Only this process (it must exist when the probe is attached); every process when omitted.
          uretprobe:
            type: dict
            description: A uretprobe (the function's return), with the options of O(programs[].attach.uprobe).
            suboptions:
              path: {type: path, required: true, description: Absolute path of the executable or shared library.}
              symbol: {type: str, description: Function name in the binary (exactly one of symbol and offset).}
              offset: {type: int, description: File offset of the function's entry (in an executable segment).}
              pid: {type: int, description: Only this process; every process when omitted.}
      force:
        description: Take over an XDP or tc slot held by a program this collection did not attach for
          O(programs[].name).
        type: bool
        default: false
      globals:
        description:
          - Values for the object's global variables (C(.rodata), C(.data), C(.bss)), variable name to value, set
            before load and typed by their BTF types, as M(hypermesh.ebpf.ebpf_program) takes them; other values
            replace the program atomically. An unknown name or a value that does not fit refuses the run.
        type: dict
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
  objects_dir:
    description: The content-addressed object store, C(<objects_dir>/<sha256>.bpf.o) (root's, files 0644, the
      directory 0755, made when missing; a directory on its path that is a link or that another user owns or
      can write is refused).
    type: path
    default: /var/lib/hypermesh-ebpf/objects
  objects:
    description:
      - The objects the programs use. One that is there intact (a regular file of root's nobody else can
        write, with that digest) is left alone.
      - A missing or damaged one is written atomically from O(objects[].content), also in check mode (the gate
        reads it); without a content it is listed in RV(missing) and the run changes nothing.
    type: list
    elements: dict
    default: []
    suboptions:
      sha256:
        description: Digest of the object (its name in O(objects_dir)).
        type: str
        required: true
      content:
        description: The object, base64. Refused, with nothing changed, when its digest is not O(objects[].sha256).
        type: str
  reapply_code:
    description:
      - The collection's module_utils (C(plugins/module_utils/_*/*.py)) the boot-time re-apply runs, kept in
        C(<lib_dir>/ansible_collections/hypermesh/ebpf/plugins/module_utils/). Only with O(persist=true).
      - The installed directory is current when its digest is O(reapply_code.digest) and every directory from
        O(lib_dir) down and every file in it is root's, not a link and writable by no one else. Otherwise it is
        replaced whole from O(reapply_code.files) (files 0644, directories 0755), or, without them, reported in
        RV(missing) and the run changes nothing. Check mode predicts.
    type: dict
    suboptions:
      digest:
        description: sha256 of the concatenation, over the files sorted by name, of C(<name> <sha256 of content>\n).
        type: str
        required: true
      files:
        description: The files; refused, with nothing changed, when their digest is not O(reapply_code.digest).
        type: list
        elements: dict
        suboptions:
          name:
            description: The file's name below module_utils, C(<package>/<file>.py) (for example C(_kernel/libbpf.py)).
            type: str
            required: true
          content:
            description: The file (base64).
            type: str
            required: true
  lib_dir:
    description: Where O(reapply_code) is installed (the unit's C(PYTHONPATH)).
    type: path
    default: /usr/lib/hypermesh-ebpf
  reapply_unit:
    description: With O(persist=true) on a host booted with systemd, write
      C(/etc/systemd/system/hypermesh-ebpf-reapply.service) when it differs (then C(systemctl daemon-reload)) and
      enable it when it is not. It runs the module's Python with the code in O(lib_dir) on O(desired), after
      C(sys-fs-bpf.mount) and C(network-online.target). Check mode predicts.
    type: bool
    default: true
  pin_root:
    description: bpffs directory under which the programs are pinned.
    type: path
    default: /sys/fs/bpf/hypermesh
  state_dir:
    description: Where the programs' state records are kept (C(<state_dir>/programs/<name>.json)), for every
      program of O(programs); the boot-time re-apply unit is given the same one (C(--state-dir)).
    type: path
    default: /var/lib/hypermesh-ebpf
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
    objects: [{sha256: 1bc4...}, {sha256: 77aa...}]   # contents given only for those the host lacks
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
missing:
  description: What the host lacks and no content was given for (O(objects) digests, O(reapply_code)); nothing
    else was done.
  returned: when something is missing
  type: dict
  sample: {objects: [1bc4...], code: false}
installed:
  description: What was installed (O(objects) digests written before the gate, also in check mode; the
    re-apply code and unit after the commit, predicted in check mode).
  returned: unless something is missing
  type: dict
  sample: {objects: [1bc4...], code: true, unit: false}
programs:
  description: Per program (pruned ones first), what was done (or would be, in check mode) and why.
  returned: unless something is missing
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
  returned: unless something is missing
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

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import pycache

pycache.use_host_copy("ebpf_state")  # the module_utils below: compiled once per host, not on every run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_engine  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_install  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state.state_params import (  # noqa: E402
    ARGUMENT_SPEC, StateError, parse)


def _missing_message(missing):
    parts = ["objects %s" % ", ".join(missing["objects"])] if missing["objects"] else []
    if missing["code"]:
        parts.append("the re-apply code (reapply_code.files)")
    return "missing on the host, nothing changed: %s; run again with their contents" % "; ".join(parts)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        parse(module.params)  # the programs checked before anything is touched
        with lock.HostLock():  # one hold for install and transaction (the engine takes it again inside)
            result = _run(module)
    except (StateError, lock.LockTimeout) as e:
        module.fail_json(msg="refused, nothing changed: %s" % e, changed=False)
    if not module._diff:
        result.pop("diff", None)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


def _run(module):
    """Objects before the gate (it opens them), the transaction, then the re-apply code and unit (only after a
    commit: a refused or rolled-back run leaves them as they were)."""
    try:
        inst = state_install.Install(module.params, state_dir=module.params["state_dir"])
        if inst.missing:
            return dict(changed=False, missing=inst.missing, msg=_missing_message(inst.missing))
        installed = {"objects": inst.objects(), "code": False, "unit": False}
    except (state_install.InstallError, host_paths.UnsafePath) as e:
        module.fail_json(msg="refused, nothing changed: %s" % e, changed=False)
    except (IOError, OSError) as e:
        module.fail_json(msg="could not store the objects (no program changed): %s" % e, changed=True)
    try:
        result = state_engine.run(module.params, module.check_mode)
    except (state_engine.Refused, StateError) as e:
        inst.undo_objects()  # the objects this run stored where there were none: the host as it was
        module.fail_json(msg="refused, nothing changed: %s" % e, changed=False)
    if not result.get("failed"):
        try:
            installed.update(inst.rest(module.check_mode))
        except (IOError, OSError, host_paths.UnsafePath) as e:
            result.update(failed=True, msg="applied and committed, but the re-apply code or unit could not be "
                                           "installed: %s" % e)
    result["installed"] = installed
    result["changed"] = bool(result.get("changed") or any(installed.values()))
    return result


if __name__ == "__main__":
    gc.freeze()  # what the imports built lives until exit: no collection walks it (docs/DESIGN.md)
    main()
