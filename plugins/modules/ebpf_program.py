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
    fentry/fexit, LSM and cgroup through pinned bpf links, so the attachment outlives the module).
  - The kernel is the source of truth. Only what the kernel cannot tell (the object's digest, the program name,
    the attach point) is recorded in C(/var/lib/hypermesh-ebpf/programs/<name>.json).
  - A changed object or attach point replaces the program atomically where the kernel allows (XDP replace,
    tc filter replace, BPF_LINK_UPDATE for tcx and cgroup links).
  - Every feature is gated by the same probes as M(hypermesh.ebpf.ebpf_facts) before anything changes.
  - A failed run rolls back what it created; a run killed at any step leaves pins the next run adopts.
  - Runs under the host-wide lock C(/run/lock/hypermesh-ebpf.lock).
  - For tests only, the environment variable C(HYPERMESH_EBPF_TEST_KILL_AT=<step>) makes the module SIGKILL
    itself after that step (journal, load, pin, attach, swap, record, cleanup). Never set it in production.
version_added: 0.1.0
author: hypermesh engineers
options:
  name:
    description: Identity of the managed program; everything it owns lives under C(<pin_root>/<name>/).
    type: str
    required: true
  object:
    description: Path of the ELF object on the managed host. Required unless O(state=absent).
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
  pin_root:
    description: bpffs directory under which programs are pinned. Must be on a mounted bpffs.
    type: path
    default: /sys/fs/bpf/hypermesh
  force:
    description: Take over an XDP or tc slot held by a program this collection did not attach for O(name).
    type: bool
    default: false
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

- name: Count openat() calls (the section says tracepoint/syscalls/sys_enter_openat)
  hypermesh.ebpf.ebpf_program:
    name: openat
    object: /usr/local/lib/bpf/tp_openat.bpf.o

- name: Remove it
  hypermesh.ebpf.ebpf_program:
    name: openat
    state: absent
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
verifier_log:
  description: Tail of the verifier log when the kernel rejected the program.
  returned: on verifier rejection
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_spec as spec_mod
from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_attach as pa
from ansible_collections.hypermesh.ebpf.plugins.module_utils.program_apply import ApplyError, Program
from ansible_collections.hypermesh.ebpf.plugins.module_utils.lock import HostLock, LockTimeout

_IF = dict(interface=dict(type="str", required=True), netns=dict(type="str"))
ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    object=dict(type="path"),
    program=dict(type="str"),
    sha256=dict(type="str"),
    state=dict(type="str", choices=["attached", "loaded", "absent"], default="attached"),
    attach=dict(type="dict", options=dict(
        xdp=dict(type="dict", options=dict(_IF, mode=dict(type="str", default="auto",
                                                         choices=["auto", "generic", "native", "offload"]))),
        tc=dict(type="dict", options=dict(_IF, direction=dict(type="str", choices=["ingress", "egress"],
                                                              default="ingress"),
                                          priority=dict(type="int", default=1))),
        tcx=dict(type="dict", options=dict(_IF, direction=dict(type="str", choices=["ingress", "egress"]))),
        tracepoint=dict(type="str"), raw_tracepoint=dict(type="str"), kprobe=dict(type="str"),
        kretprobe=dict(type="str"), fentry=dict(type="str"), fexit=dict(type="str"), lsm=dict(type="str"),
        cgroup=dict(type="dict", options=dict(path=dict(type="path", required=True),
                                              type=dict(type="str", choices=sorted(spec_mod.CGROUP_TYPES)))),
    ), mutually_exclusive=[list(spec_mod.ATTACH_KINDS)]),
    pin_root=dict(type="path", default="/sys/fs/bpf/hypermesh"),
    force=dict(type="bool", default=False),
)

CAP_SYS_ADMIN = 21
CAP_BPF = 39


def has_privileges():
    """CAP_SYS_ADMIN or CAP_BPF in the effective set (root without capabilities is not enough)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << CAP_SYS_ADMIN) or caps & (1 << CAP_BPF))
    except (IOError, OSError, ValueError):
        pass
    return os.geteuid() == 0


def gate(spec):
    """Refuse before any change when this kernel lacks a feature the attach point needs."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils import probes
    for feature in spec_mod.FEATURES[spec["type"]]:
        probes.require(feature)


def errors():
    """The exceptions that mean 'clear error, host unchanged' (import lazily what is heavy)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils.libbpf import LibbpfError
    from ansible_collections.hypermesh.ebpf.plugins.module_utils.perf import PerfError
    from ansible_collections.hypermesh.ebpf.plugins.module_utils import probes
    out = [spec_mod.SpecError, LibbpfError, PerfError, probes.Unsupported, ApplyError, pa.AttachError,
           LockTimeout, OSError]
    try:
        from ansible_collections.hypermesh.ebpf.plugins.module_utils.netlink import NetlinkError
        out.append(NetlinkError)
    except ImportError:
        pass
    return tuple(out)


class ProgramModule(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.obj = None
        self.spec = None

    def desired(self):
        """Open the object with libbpf (no kernel change), choose the program, normalise the attach point."""
        from ansible_collections.hypermesh.ebpf.plugins.module_utils.libbpf import BpfObject
        p = self.p
        if not p["object"]:
            raise spec_mod.SpecError("object is required when state is %s" % p["state"])
        digest = spec_mod.check_object(p["object"], p["sha256"])
        self.obj = BpfObject(p["object"], pin_root_path=os.path.join(p["pin_root"], "_shared"))
        chosen = spec_mod.choose_program(self.obj.programs(), p["program"], p["object"])
        try:
            spec = spec_mod.normalize(p["attach"], chosen["section"])
        except spec_mod.SpecError:
            if p["state"] != "loaded" or p["attach"]:
                raise
            spec = None  # loaded only: an XDP/tc/cgroup program needs no attach point yet
        self.spec = spec
        retarget = spec_mod.retarget(spec, chosen["section"]) if spec else None
        self.obj.select(chosen["name"], attach_target=retarget)
        if p["state"] == "attached":
            pa.check_target(spec)
        return {"state": p["state"], "sha256": digest, "program": chosen["name"],
                "attach": spec if p["state"] == "attached" else None}

    def run(self):
        p = self.p
        spec_mod.check_name(p["name"])
        pin_root = spec_mod.check_pin_root(p["pin_root"])
        if not has_privileges():
            raise spec_mod.SpecError("ebpf_program needs root (or CAP_BPF/CAP_SYS_ADMIN with CAP_NET_ADMIN and "
                                     "CAP_PERFMON) to load and attach programs: run it with become: true")
        with HostLock():
            prog = Program(p["name"], pin_root)
            managed_at = (prog.record or {}).get("pin_root")
            if managed_at and managed_at != pin_root:
                raise spec_mod.SpecError("program %s is managed under pin_root %s, not %s: remove it there first "
                                         "(state: absent, pin_root: %s)" % (p["name"], managed_at, pin_root,
                                                                            managed_at))
            before = prog.before()
            if p["state"] == "absent":
                return self.absent(prog, before)
            want = self.desired()
            if p["state"] == "attached":
                prog.check_slot(want["attach"], p["force"])
            return self.present(prog, before, want)

    def result(self, changed, prog, before, after):
        out = {"changed": changed, "state": after["state"], "pin_dir": prog.dir,
               "diff": {"before": before, "after": after}}
        live = prog.live
        if live.prog_id and not (self.module.check_mode and changed):
            out.update(prog_id=live.prog_id, maps=live.maps)
            if live.link_id:
                out["link_id"] = live.link_id
        if after.get("attach"):
            out["attach"] = after["attach"]
        return out

    def present(self, prog, before, want):
        p = self.p
        after = {"state": want["state"], "object": p["object"], "sha256": want["sha256"],
                 "program": want["program"], "attach": want["attach"]}
        if prog.in_sync(want):
            after["kernel"] = before.get("kernel")
            return self.result(False, prog, before, after)
        if self.spec:
            gate(self.spec)  # before any change (and in check mode, so it predicts the refusal too)
        if not self.module.check_mode:
            prog.converge(want, p["object"], self.obj, force=p["force"])
            after["kernel"] = prog.live.summary()
        return self.result(True, prog, before, after)

    def absent(self, prog, before):
        after = {"state": "absent"}
        if before["state"] == "absent":
            return self.result(False, prog, before, after)
        if not self.module.check_mode:
            extra = None
            if self.p["attach"]:
                try:
                    extra = spec_mod.normalize(self.p["attach"], "")
                except spec_mod.SpecError:
                    extra = None
            prog.remove(extra)
        return self.result(True, prog, before, after)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "attached", ("object",)), ("state", "loaded", ("object",))])
    runner = ProgramModule(module)
    try:
        result = runner.run()
    except Exception as e:  # narrowed below: anything else is a bug and gets the traceback
        if not isinstance(e, errors()):
            raise
        extra = {}
        tail = getattr(e, "log_tail", "")
        if tail:
            extra["verifier_log"] = tail
        module.fail_json(msg=str(e), **extra)
    finally:
        if runner.obj is not None:
            runner.obj.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
