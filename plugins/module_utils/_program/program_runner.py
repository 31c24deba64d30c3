# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the ebpf_program module does, as a function: apply(params, check_mode) -> result.

One job: read the live state, decide, act unless in check mode, and report (changed, diff). The module file
only declares its options and calls apply(); the boot-time re-apply (reapply.py) calls the very same apply()
with the parameters the ebpf_programs role saved. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import kernel_info
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec as spec_mod
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import tcx_order
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.params import with_defaults
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_lifecycle import ApplyError, Program
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.lock import HostLock, LockTimeout

_IF = dict(interface=dict(type="str", required=True), netns=dict(type="str"))


def _uprobe():
    return dict(type="dict", options=dict(path=dict(type="path", required=True), symbol=dict(type="str"),
                                          offset=dict(type="int"), pid=dict(type="int")),
                mutually_exclusive=[["symbol", "offset"]], required_one_of=[["symbol", "offset"]])


ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    object=dict(type="path"),
    program=dict(type="str"),
    sha256=dict(type="str"),
    state=dict(type="str", choices=["attached", "loaded", "absent"], default="attached"),
    attach=dict(type="dict", options=dict(
        xdp=dict(type="dict", options=dict(_IF, mode=dict(type="str", default="auto",
                                                          choices=["auto", "generic", "native", "offload"]),
                                           priority=dict(type="int"),
                                           proceed_on=dict(type="list", elements="str",
                                                           choices=list(spec_mod.XDP_ACTIONS)))),
        tc=dict(type="dict", options=dict(_IF, direction=dict(type="str", choices=["ingress", "egress"],
                                                              default="ingress"),
                                          priority=dict(type="int", default=1))),
        tcx=dict(type="dict", options=dict(_IF, direction=dict(type="str", choices=["ingress", "egress"]),
                                           order=dict(type="dict", options=dict(
                                               first=dict(type="bool"), last=dict(type="bool"),
                                               before=dict(type="str"), after=dict(type="str")),
                                               mutually_exclusive=[list(tcx_order.POSITIONS)]))),
        tracepoint=dict(type="str"), raw_tracepoint=dict(type="str"), kprobe=dict(type="str"),
        kretprobe=dict(type="str"), fentry=dict(type="str"), fexit=dict(type="str"), lsm=dict(type="str"),
        cgroup=dict(type="dict", options=dict(path=dict(type="path", required=True),
                                              type=dict(type="str", choices=sorted(spec_mod.CGROUP_TYPES)))),
        uprobe=_uprobe(), uretprobe=_uprobe(),
    ), mutually_exclusive=[list(spec_mod.ATTACH_KINDS)]),
    pin_root=dict(type="path", default=layout.PIN_ROOT),
    state_dir=dict(type="path", default=layout.STATE_DIR),
    force=dict(type="bool", default=False),
    globals=dict(type="dict"),  # {variable: value} of the object's .rodata/.data/.bss, set before load
)


def has_privileges():
    """CAP_SYS_ADMIN or CAP_BPF in the effective set (root without capabilities is not enough); root when the
    set cannot be read."""
    caps = kernel_info.capabilities()
    if caps["effective"] is None:
        return os.geteuid() == 0
    return caps["cap_sys_admin"] or caps["cap_bpf"]


def gate(spec):
    """Refuse before any change when this kernel lacks a feature the attach point needs (program_gate: the
    probes' answer, remembered for the boot once it is yes). Returns how to attach where the kernel lacks only
    the pinnable link (the last of the kind's features): "holder" for the kinds the holder keeps (perf_link, or
    bpf_link for a raw tracepoint, and the holder works), "prog_attach" for a cgroup hook (BPF_PROG_ATTACH, one
    of several on the hook); None when the kernel has everything."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_gate
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    features = spec_mod.features(spec)
    try:
        program_gate.require(features)
        return None
    except probes.Unsupported as e:
        if e.feature != features[-1] or spec["type"] not in spec_mod.HELD_KINDS + ("cgroup",):
            raise
        if spec["type"] == "cgroup":
            program_gate.require(features[:-1])
            return "prog_attach"
        try:
            program_gate.require(features[:-1] + ("holder",))
        except probes.Unsupported as h:
            raise probes.Unsupported(e.feature, e.reason, "%s; nor can the holder keep it: %s" % (e, h))
        return "holder"


def gate_global_data(obj):
    """Refuse an object with global variables (.rodata/.data/.bss maps) on a kernel without global data."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_gate, program_globals
    if program_globals.uses_global_data(obj.map_defs()):
        program_gate.require(("global_data",))


def errors():
    """The exceptions that mean 'clear error, host unchanged' (import lazily what is heavy)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.libbpf import LibbpfError
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.libxdp import LibxdpError
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.perf import PerfError
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.held import HoldError
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.holder_service import HolderUnavailable
    out = [spec_mod.SpecError, LibbpfError, LibxdpError, PerfError, probes.Unsupported, ApplyError, pa.AttachError,
           HoldError, HolderUnavailable, LockTimeout, OSError]
    try:
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.netlink import NetlinkError
        out.append(NetlinkError)
    except ImportError:
        pass
    return tuple(out)


class ProgramRun(object):
    def __init__(self, params, check_mode=False, planned=None):
        self.check_mode = check_mode
        self.planned = planned
        self.p = params
        self.obj = None
        self.spec = None
        self.chosen = None
        self.globals = None  # program_globals.Plan of the `globals` option
        self.data = None  # the object's bytes, read once (program_spec.read_object)

    def _open(self):
        """The object opened with libbpf (no kernel change); opened once, closed by apply()."""
        if self.obj is None:
            from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.libbpf import BpfObject
            self.obj = BpfObject(self.p["object"], pin_root_path=os.path.join(self.p["pin_root"], layout.SHARED),
                                 data=self.data)
        return self.obj

    def desired(self, record):
        """What the parameters ask for: {"state", "sha256", "program", "attach", "programs"}. Choosing the
        program needs the object's program list: the record keeps the one libbpf read from the object with this
        digest, so a re-apply of an unchanged object neither loads libbpf nor opens the object with it."""
        p = self.p
        if not p["object"]:
            raise spec_mod.SpecError("object is required when state is %s" % p["state"])
        self.data, digest = spec_mod.read_object(p["object"], p["sha256"])
        record = record or {}
        if record.get("sha256") == digest and record.get("programs"):
            programs = record["programs"]
        else:
            programs = self._open().programs()
            spec_mod.check_elf_names(p["object"], programs)
        self.chosen = spec_mod.choose_program(programs, p["program"], p["object"])
        try:
            spec = spec_mod.normalize(p["attach"], self.chosen["section"])
        except spec_mod.SpecError:
            if p["state"] != "loaded" or p["attach"]:
                raise
            spec = None  # loaded only: an XDP/tc/cgroup program needs no attach point yet
        if spec and p["state"] == "attached":
            spec = pa.resolve(spec)  # a uprobe: its symbol's offset in the binary as it is now
        self.spec = spec
        if p.get("globals"):
            from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_globals
            self.globals = program_globals.plan(p["object"], p["globals"], self.data)  # unknown name, bad value: refused
        return {"state": p["state"], "sha256": digest, "program": self.chosen["name"],
                "attach": spec if p["state"] == "attached" else None,
                "programs": [{"name": x["name"], "section": x["section"]} for x in programs],
                "globals": self.globals.values if self.globals else {}}

    def prepare(self):
        """Before a change (and in check mode, to predict it): open the object with libbpf, select the program,
        check that the attach target exists. Changes nothing."""
        obj = self._open()
        spec_mod.check_elf_names(self.p["object"], obj.programs(), obj.map_defs())  # before any pin
        retarget = spec_mod.retarget(self.spec, self.chosen["section"]) if self.spec else None
        obj.select(self.chosen["name"], attach_target=retarget)
        if self.globals:
            from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_globals
            program_globals.load_into(obj, self.globals)  # the values the program is loaded with
        if self.p["state"] == "attached":
            pa.check_target(self.spec)

    def run(self):
        p = self.p
        spec_mod.check_name(p["name"])
        pin_root = spec_mod.check_pin_root(p["pin_root"])
        if not has_privileges():
            raise spec_mod.SpecError("ebpf_program needs root (or CAP_BPF/CAP_SYS_ADMIN with CAP_NET_ADMIN and "
                                     "CAP_PERFMON) to load and attach programs: run it with become: true")
        with HostLock():
            prog = Program(p["name"], pin_root, p["state_dir"])
            managed_at = (prog.record or {}).get("pin_root")
            if managed_at and managed_at != pin_root:
                raise spec_mod.SpecError("program %s is managed under pin_root %s, not %s: remove it there first "
                                         "(state: absent, pin_root: %s)" % (p["name"], managed_at, pin_root,
                                                                            managed_at))
            before = prog.before()
            if p["state"] == "absent":
                return self.absent(prog, before)
            return self.present(prog, before, self.desired(prog.record))

    def result(self, changed, prog, before, after):
        out = {"changed": changed, "state": after["state"], "pin_dir": prog.dir,
               "diff": {"before": before, "after": after}}
        live = prog.live
        if live.prog_id and not (self.check_mode and changed):
            out.update(prog_id=live.prog_id, maps=live.maps)
            if live.link_id:
                out["link_id"] = live.link_id
        if after.get("attach"):
            out["attach"] = after["attach"]
            out["held"] = bool(after.get("held"))
        if "globals" in after:
            out["globals"] = after["globals"]
        return out

    def present(self, prog, before, want):
        p = self.p
        after = {"state": want["state"], "object": p["object"], "sha256": want["sha256"],
                 "program": want["program"], "attach": want["attach"]}
        if want["globals"] or before.get("globals"):
            after["globals"] = want["globals"]
        if prog.in_sync(want):
            after["kernel"] = before.get("kernel")
            after["held"] = before.get("held", False)
            return self.result(False, prog, before, after)
        self.prepare()
        if self.spec:
            route = gate(self.spec)  # before any change, in check mode too
            route = route if p["state"] == "attached" else None
            want["held"] = after["held"] = route == "holder"
            want["prog_attach"] = route == "prog_attach"
            if want["prog_attach"]:
                after["prog_attach"] = True
        if p["state"] == "attached":
            prog.check_slot(want["attach"], p["force"])  # after the gate: a host that cannot is told what it needs
        gate_global_data(self.obj)
        if p["state"] == "attached":
            tcx_order.check(want["attach"], prog.pin_root, prog.name, p["state_dir"], self.planned)  # a relative: managed, same hook
        if not self.check_mode:
            if want.get("held"):
                from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import holder_service
                holder_service.ensure()  # installed, enabled, running (nothing changes if it already is)
            prog.converge(want, p["object"], self.obj, force=p["force"])
            after["kernel"] = prog.live.summary()
        return self.result(True, prog, before, after)

    def absent(self, prog, before):
        after = {"state": "absent"}
        if before["state"] == "absent":
            return self.result(False, prog, before, after)
        if not self.check_mode:
            extra = None
            if self.p["attach"]:
                try:
                    extra = spec_mod.normalize(self.p["attach"], "")
                except spec_mod.SpecError:
                    extra = None
            prog.remove(extra)
        return self.result(True, prog, before, after)


REQUIRED_IF = [("state", "attached", ("object",)), ("state", "loaded", ("object",))]


def apply(params, check_mode=False, planned=None):
    """Converge one program to `params` (ebpf_program's options; defaults filled in). Returns the result dict;
    raises one of errors() for a clear refusal with the host unchanged. planned: {name: attach spec} of the
    programs a run of several (ebpf_state) applies before this one, which a tcx order may name before they are
    managed (check mode only: when this one is applied, they are)."""
    params = with_defaults(params, ARGUMENT_SPEC)
    for key, value, needed in REQUIRED_IF:
        if params[key] == value and any(params[n] is None for n in needed):
            raise spec_mod.SpecError("state is %s but missing: %s" % (value, ", ".join(needed)))
    runner = ProgramRun(params, check_mode, planned)
    try:
        return runner.run()
    finally:
        if runner.obj is not None:
            runner.obj.close()
