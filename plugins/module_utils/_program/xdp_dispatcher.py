# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An XDP program in libxdp's dispatcher (attach.xdp with priority or proceed_on): check the interface, attach,
verify, detach by program id.

One job: the libxdp route of one attach point (_kernel/libxdp.py does the calls). Several programs share an
interface through the dispatcher, each run in priority order and the next one only after an action of the
previous one's proceed_on; programs xdp-loader attached are in the same dispatcher and are never touched here.
Every libxdp call runs with the calling thread in the spec's network namespace (netlink.in_netns: setns only, so
libxdp sees the host's bpffs, where it pins its dispatchers).

What this checks, because libxdp does not say:
- before a change (check mode too): what the interface holds. A plain XDP program (not a dispatcher) or a
  dispatcher whose pins are gone (libxdp reads it as legacy) cannot take a second program: refused, naming it;
  a dispatcher in another mode than attach.xdp.mode: refused (libxdp would answer EBUSY after its retries); a
  full dispatcher (libxdp.MAX_PROGRAMS; for a replace of ours too, since the new copy goes in first): refused.
- after the attach: libxdp answers 0 but falls back to a plain XDP attach when its bpffs or the kernel's freplace
  fails it. The program must be a program extension (BPF_PROG_TYPE_EXT) listed by a dispatcher on the interface,
  with the priority and proceed_on asked for; anything else is detached again (a plain program through netlink,
  only while it is that program) and the attach fails with what libxdp logged.
Importable without ansible.
"""
import errno
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libxdp
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_attach import AttachError, describe

# attach.xdp.mode -> the libxdp mode asked for when the interface has no dispatcher yet
LIBXDP_MODES = {"auto": libxdp.MODE_UNSPEC, "native": libxdp.MODE_NATIVE, "generic": libxdp.MODE_SKB}
# a dispatcher's mode -> attach.xdp.mode
SPEC_MODES = {libxdp.MODE_NATIVE: "native", libxdp.MODE_SKB: "generic", libxdp.MODE_HW: "offload"}
DISPATCHER_NAME = "xdp_dispatcher"  # the name libxdp gives its dispatcher program


def _netlink():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
    return netlink


def _ifindex(spec):
    return pa.interface_call("ifindex", spec)


def read(spec):
    """What the interface of `spec` holds, as libxdp reads it: {"ifindex", "legacy", "mode" (attach.xdp.mode
    words, or "unspec"), "main" ({"id", "name", ...} or None), "programs" (run order)}; None when no XDP
    program is attached there."""
    ifindex = _ifindex(spec)
    with _netlink().in_netns(spec.get("netns")):
        disp = libxdp.Dispatcher.read(ifindex)
        if disp is None:
            return None
        with disp:
            return {"ifindex": ifindex, "legacy": disp.legacy, "mode": SPEC_MODES.get(disp.mode, "unspec"),
                    "main": disp.main, "programs": disp.programs}


def _listed(state, prog_id):
    if not state or state["legacy"]:
        return None
    for prog in state["programs"]:
        if prog["id"] == prog_id:
            return prog
    return None


def _matches(spec, state, prog):
    return (prog is not None and prog["priority"] == spec["priority"] and prog["proceed_on"] == spec["proceed_on"]
            and spec.get("mode", "auto") in ("auto", state["mode"]))


def is_attached(spec, prog_id):
    """True when the dispatcher on spec's interface runs prog_id with spec's priority, proceed_on and mode."""
    if not prog_id:
        return False
    try:
        state = read(spec)
    except (AttachError, OSError, libxdp.LibxdpError, _netlink().NetlinkError):
        return False  # the interface, its netns or libxdp is gone: not attached as asked
    return _matches(spec, state, _listed(state, prog_id))


def position(spec, prog_id):
    """For the diff: where prog_id runs on its interface ({"priority", "proceed_on", "of": n programs}), or None."""
    try:
        state = read(spec)
    except (AttachError, OSError, libxdp.LibxdpError, _netlink().NetlinkError):
        return None
    prog = _listed(state, prog_id)
    if prog is None:
        return None
    order = [p["id"] for p in state["programs"]]
    return {"priority": prog["priority"], "proceed_on": prog["proceed_on"], "index": order.index(prog_id),
            "of": len(order), "mode": state["mode"]}


def programs_of(spec, prog_id):
    """The programs (run order) of libxdp's dispatcher `prog_id` on spec's interface; None when that program is
    not a dispatcher libxdp can read, or libxdp is not installed."""
    if not libxdp.available():
        return None
    try:
        state = read(spec)
    except libxdp.LibxdpError:
        return None  # not one libxdp can read: the caller says what holds the hook
    if not state or state["legacy"] or (state["main"] or {}).get("id") != prog_id:
        return None
    return state["programs"]


def check_slot(spec, owned_prog_ids):
    """Refuse (AttachError, nothing changed) an interface whose XDP hook cannot take this program through the
    dispatcher. Programs of ours (owned_prog_ids) in the dispatcher are replaced, so they do not count."""
    state = read(spec)
    if state is None:
        return
    where = describe(spec)
    main = state["main"] or {}
    if state["legacy"]:
        if main.get("name") == DISPATCHER_NAME:
            raise AttachError(
                "%s: the interface runs a libxdp dispatcher (program id %d) whose pins under the bpffs are gone "
                "(removed by hand, or by xdp-loader clean from another network namespace), so libxdp cannot add a "
                "program to it; remove it (xdp-loader unload --all %s) and run again"
                % (where, main.get("id", 0), spec["interface"]))
        if main.get("id") in owned_prog_ids:
            raise AttachError(
                "%s: this program is attached there alone (without priority and proceed_on); libxdp cannot add "
                "programs beside it: remove it first (state: absent), then attach it with priority or proceed_on"
                % where)
        raise AttachError(
            "%s: the interface holds XDP program id %d (%s) attached without libxdp's dispatcher, so no second "
            "program can join it: detach that program, or attach it with xdp-loader (which uses the dispatcher)"
            % (where, main.get("id", 0), main.get("name") or "?"))
    mode = spec.get("mode", "auto")
    if mode != "auto" and mode != state["mode"]:
        raise AttachError(
            "%s: the interface's libxdp dispatcher runs in %s mode; every program on it must use that mode "
            "(set attach.xdp.mode to %s or auto)" % (where, state["mode"], state["mode"]))
    progs = state["programs"]
    if len(progs) >= libxdp.MAX_PROGRAMS:  # a replace too: the new copy goes in before the old one comes out
        raise AttachError("%s: the interface's libxdp dispatcher already runs %d programs, its most (%s)%s"
                          % (where, len(progs), ", ".join("%s id %d" % (p["name"], p["id"]) for p in progs),
                             "; replacing ours needs one free slot, since the new copy is attached before the old "
                             "one is taken out" if any(p["id"] in owned_prog_ids for p in progs) else ""))


def attach(spec, bpf_object, prog_name):
    """Load program `prog_name` of the opened, not yet loaded `bpf_object` (maps to reuse already set) through
    libxdp into the dispatcher on spec's interface, with spec's priority and proceed_on. Returns (fd, prog_id):
    an fd of the caller's own (pin it, close it). The mode is the dispatcher's when there is one already."""
    if not hasattr(bpf_object, "pointer"):  # a program loaded already (a rollback's held one), not a libbpf object
        raise AttachError("%s: a program already loaded cannot be put back into libxdp's dispatcher with its "
                          "priority and proceed_on (libxdp sets them only before it loads a program); apply the "
                          "object again" % describe(spec))
    state = read(spec)
    ifindex = state["ifindex"] if state else _ifindex(spec)
    mode = LIBXDP_MODES[spec.get("mode", "auto")]
    if state and not state["legacy"]:
        mode = LIBXDP_MODES.get(state["mode"], mode)  # the dispatcher's own mode
    with libxdp.Program(bpf_object, prog_name) as prog:
        prog.configure(spec["priority"], spec["proceed_on"])
        with _netlink().in_netns(spec.get("netns")):
            prog.attach(ifindex, mode)
        prog_id = prog.describe()["id"]
        fd = os.dup(prog.fd())
    try:
        _verify(spec, fd, prog_id)
    except BaseException:
        try:
            detach(spec, set([prog_id]))
        finally:
            bs.close(fd)
        raise
    return fd, prog_id


def _verify(spec, fd, prog_id):
    """What libxdp attached must be an extension in a dispatcher on the interface, as asked (see the doc)."""
    said = libxdp.log_text(min_level=1).strip().replace("libxdp: ", "").replace("\n", "; ")
    info = bs.prog_info(fd)
    state = read(spec)
    prog = _listed(state, prog_id)
    if info.get("type") != bs.BPF_PROG_TYPE_EXT or prog is None:
        got = "a plain %s program" % (info.get("type_name") or "xdp") if info.get("type") != bs.BPF_PROG_TYPE_EXT \
            else "a program missing from the interface's dispatcher"
        raise AttachError("%s: libxdp attached %s, not an extension in its dispatcher (it falls back when its "
                          "bpffs or the kernel's freplace fails it; libxdp said: %s): detached again"
                          % (describe(spec), got, said or "nothing"))
    if not _matches(spec, state, prog):
        raise AttachError("%s: libxdp attached program id %d with priority %d and proceed_on %s, not as asked: "
                          "detached again" % (describe(spec), prog_id, prog["priority"], prog["proceed_on"]))


def detach(spec, prog_ids):
    """Take every program of prog_ids out of the dispatcher on spec's interface (or off the interface, when libxdp
    had fallen back to attaching it as a plain XDP program); True when one was there. An interface or netns that
    is gone holds nothing of ours any more (False)."""
    nl = _netlink()
    try:
        ifindex = nl.ifindex(spec["interface"], spec.get("netns"))
    except nl.NetlinkError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise AttachError(str(e))  # anything else: say so, rather than leave ours attached without its pins
    done = False
    for prog_id in sorted(prog_ids):
        with nl.in_netns(spec.get("netns")):
            disp = libxdp.Dispatcher.read(ifindex)
            if disp is None:
                break
            with disp:
                plain = disp.legacy and (disp.main or {}).get("id") == prog_id
                if not plain:
                    done = disp.detach(prog_id) or done
                    continue
        # libxdp fell back to a plain XDP program (it does so silently): that one program, by its id, via netlink
        try:
            done = nl.xdp_detach(spec["interface"], spec.get("netns"), expected_prog_id=prog_id) or done
        except nl.NetlinkError as e:
            raise AttachError(str(e))
    return done
