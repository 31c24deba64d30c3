# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach points: check that one exists, read who holds it, verify ours is attached, attach, detach.

One job: the per-kind kernel calls. XDP and tc go through netlink (netlink.py); tcx, tracing, LSM, cgroup,
raw_tracepoint and perf (tracepoint/kprobe/uprobe) attachments are bpf links that the caller pins, so they outlive
the process. A spec is the dict from program_spec.normalize(); a uprobe's after resolve() (the file offset of its
symbol in the binary as it is now). Importable without ansible.
"""
import errno
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs, libc
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import tcx_order

NETLINK_KINDS = ("xdp", "tc")
LINK_KINDS = ("tcx", "tracepoint", "raw_tracepoint", "kprobe", "kretprobe", "fentry", "fexit", "lsm", "cgroup",
              "uprobe", "uretprobe")
UPROBE_KINDS = ("uprobe", "uretprobe")
CGROUP2_SUPER_MAGIC = 0x63677270
TC_HANDLE = 1
_TRACING_ATTACH = {"fentry": bs.BPF_TRACE_FENTRY, "fexit": bs.BPF_TRACE_FEXIT, "lsm": bs.BPF_LSM_MAC}
_LINK_TYPE = {"tcx": bs.BPF_LINK_TYPE_TCX, "tracepoint": bs.BPF_LINK_TYPE_PERF_EVENT,
              "kprobe": bs.BPF_LINK_TYPE_PERF_EVENT, "kretprobe": bs.BPF_LINK_TYPE_PERF_EVENT,
              "raw_tracepoint": bs.BPF_LINK_TYPE_RAW_TRACEPOINT, "fentry": bs.BPF_LINK_TYPE_TRACING,
              "fexit": bs.BPF_LINK_TYPE_TRACING, "lsm": bs.BPF_LINK_TYPE_TRACING,
              "cgroup": bs.BPF_LINK_TYPE_CGROUP, "uprobe": bs.BPF_LINK_TYPE_PERF_EVENT,
              "uretprobe": bs.BPF_LINK_TYPE_PERF_EVENT}
_PERF_EVENT_TYPE = {"uprobe": bs.BPF_PERF_EVENT_UPROBE, "uretprobe": bs.BPF_PERF_EVENT_URETPROBE}


class AttachError(Exception):
    pass


def _netlink():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
    return netlink


def interface_call(name, spec):
    """netlink.<name>(interface, netns) for the interface of `spec` (`ifindex`, `xdp_query`: {"prog_id", "mode",
    "modes"}); AttachError when netlink refuses (no such interface or netns)."""
    nl = _netlink()
    try:
        return getattr(nl, name)(spec["interface"], spec.get("netns"))
    except nl.NetlinkError as e:
        raise AttachError(str(e))


def _xdp_state(spec):
    return interface_call("xdp_query", spec)


def _cgroup_attach_type(spec):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_spec import CGROUP_TYPES
    return CGROUP_TYPES[spec["cgroup_type"]]


def _tcx_attach_type(spec):
    return bs.BPF_TCX_INGRESS if spec["direction"] == "ingress" else bs.BPF_TCX_EGRESS


def describe(spec):
    """A short human form of an attach spec for messages and diffs."""
    if not spec:
        return "not attached"
    kind = spec["type"]
    if kind in ("xdp", "tc", "tcx"):
        where = spec["interface"] + (" in netns %s" % spec["netns"] if spec.get("netns") else "")
        extra = spec.get("direction") or spec.get("mode")
        if "priority" in spec and kind == "xdp":
            extra += ", libxdp dispatcher, priority %d, proceed_on %s" % (
                spec["priority"], ",".join(spec["proceed_on"]) or "none")
        if spec.get("order"):
            extra += ", " + tcx_order.describe(spec["order"])
        return "%s on %s (%s)" % (kind, where, extra)
    if kind == "cgroup":
        return "cgroup %s on %s" % (spec["cgroup_type"], spec["path"])
    if kind in UPROBE_KINDS:
        where = "%s:%s" % (spec["path"], spec["symbol"]) if spec.get("symbol") else spec["path"]
        if spec.get("offset") is not None:
            where += " (offset 0x%x)" % spec["offset"] if spec.get("symbol") else " offset 0x%x" % spec["offset"]
        return "%s %s%s" % (kind, where, " for pid %d" % spec["pid"] if spec.get("pid") else "")
    return "%s %s" % (kind, spec["target"])


def _elf_symbols():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import elf_symbols
    return elf_symbols


def _locate(spec):
    """(file offset, "st_dev:st_ino") of a uprobe spec in its binary (its symbol's, or the given offset checked),
    reading the binary only when no other user can have planted or can change it; AttachError otherwise."""
    elf = _elf_symbols()
    try:
        return elf.locate(spec["path"], symbol=spec.get("symbol"), offset=spec.get("offset"))
    except elf.ElfError as e:
        raise AttachError("attach.%s: %s" % (spec["type"], e))
    except host_paths.UnsafePath as e:
        real = os.path.realpath(spec["path"])
        hint = "; give the binary's own path (%s)" % real if "symbolic link" in str(e) and real != spec["path"] else ""
        raise AttachError("attach.%s.path: %s%s" % (spec["type"], e, hint))


def resolve(spec):
    """A uprobe spec with "offset" (where its symbol is in the binary now) and "inode" (the binary's st_dev:st_ino)
    set: a binary rebuilt or replaced at the same path is attached again, since the kernel keeps a uprobe on the
    file it resolved at attach time. Any other spec as it is."""
    if not spec or spec["type"] not in UPROBE_KINDS:
        return spec
    out = dict(spec)
    out["offset"], out["inode"] = _locate(spec)
    return out


def check_target(spec):
    """Raise a clear error when the attach target does not exist; change nothing."""
    kind = spec["type"]
    if kind in ("xdp", "tc", "tcx"):
        interface_call("ifindex", spec)
    elif kind == "tracepoint":
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf
        perf.tracepoint_id(spec["target"])
    elif kind == "cgroup":
        if not os.path.isdir(spec["path"]) or libc.statfs(spec["path"]) != CGROUP2_SUPER_MAGIC:
            raise AttachError("attach.cgroup.path %s is not a cgroup v2 directory" % spec["path"])
    elif kind in UPROBE_KINDS:
        _locate(spec)
        if spec.get("pid") and not os.path.isdir("/proc/%d" % spec["pid"]):
            raise AttachError("attach.%s.pid: no process with pid %d" % (kind, spec["pid"]))


def slot_holder(spec):
    """XDP/tc: the prog id occupying the slot we want (0 when free). Link kinds share their hook: None."""
    kind = spec["type"]
    if kind == "xdp":
        return _xdp_state(spec)["prog_id"] or 0
    if kind == "tc":
        for f in _netlink().tc_query(spec["interface"], spec["direction"], spec.get("netns")):
            if f.get("priority") == spec["priority"] and f.get("handle") in (TC_HANDLE, None):
                return f.get("prog_id") or 0
        return 0
    return None


def link_matches(spec, link):
    """Does the pinned link `link` (link_info dict) serve attach point `spec`? (prog id checked by caller)"""
    kind = spec["type"]
    if not link or link.get("type") != _LINK_TYPE.get(kind):
        return False
    if kind == "raw_tracepoint":
        return link.get("tp_name") == spec["target"]
    if kind in _TRACING_ATTACH:
        return link.get("attach_type") == _TRACING_ATTACH[kind]
    if kind == "cgroup":
        try:
            ino = os.stat(spec["path"]).st_ino
        except OSError:
            return False
        return link.get("cgroup_id") == ino and link.get("attach_type") == _cgroup_attach_type(spec)
    if kind == "tcx":
        nl = _netlink()
        try:
            ifindex = nl.ifindex(spec["interface"], spec.get("netns"))
        except nl.NetlinkError:
            return False
        return link.get("ifindex") == ifindex and link.get("attach_type") == _tcx_attach_type(spec)
    if kind in UPROBE_KINDS and link.get("perf_event_type"):  # 6.6+ reports the uprobe; before, the record names it
        if link["perf_event_type"] != _PERF_EVENT_TYPE[kind]:
            return False
        if "uprobe_path" in link:  # the path and offset given to perf_event_open (the kernel reports 32 bits)
            offset = (spec.get("offset") or 0) & 0xffffffff
            return link["uprobe_path"] == spec["path"] and link.get("uprobe_offset") == offset
    return True  # perf links: the kernel does not report the tracepoint; the record names it


def is_attached(spec, prog_id, link):
    """True when the kernel shows prog_id attached at spec."""
    if not prog_id:
        return False
    kind = spec["type"]
    if kind == "xdp":
        try:
            state = _xdp_state(spec)
        except (OSError, _netlink().NetlinkError):  # the interface or netns is gone, or netlink refused
            return False
        if (state["prog_id"] or 0) != prog_id:
            return False
        return spec.get("mode", "auto") == "auto" or state["mode"] == spec["mode"]
    if kind == "tc":
        try:
            return slot_holder(spec) == prog_id
        except (OSError, _netlink().NetlinkError):  # the interface or netns is gone, or netlink refused
            return False
    return bool(link) and link.get("prog_id") == prog_id and link_matches(spec, link)


def attach_netlink(spec, prog_fd, expected_prog_id, name):
    """Attach through netlink, taking the slot only as the caller read it: expected_prog_id 0 means "the slot is
    free" (the kernel refuses if a program was attached meanwhile), an id means "that program holds it" (XDP:
    replaced atomically only while it does; tc: checked just before the replace, tc has no compare-and-swap)."""
    nl = _netlink()
    try:
        if spec["type"] == "xdp":
            nl.xdp_attach(spec["interface"], prog_fd, mode=spec.get("mode", "auto"), netns=spec.get("netns"),
                          replace_prog_id=expected_prog_id)
        else:
            nl.tc_attach(spec["interface"], spec["direction"], prog_fd, priority=spec["priority"], handle=TC_HANDLE,
                         name=name, netns=spec.get("netns"), expected_prog_id=expected_prog_id)
    except nl.NetlinkError as e:
        raise AttachError(str(e))


def _target_gone(spec):
    """True when the interface (or its network namespace) of an XDP/tc spec no longer exists."""
    nl = _netlink()
    try:
        nl.ifindex(spec["interface"], spec.get("netns"))
    except nl.NetlinkError as e:
        return e.errno in (errno.ENODEV, errno.ENOENT)
    return False


def detach_netlink(spec, expected_prog_ids):
    """Remove our XDP/tc attachment at spec if the slot still holds one of expected_prog_ids."""
    try:
        holder = slot_holder(spec)
    except Exception:
        if _target_gone(spec):
            return False  # interface or netns gone: nothing of ours is attached there any more
        raise             # anything else: say so, rather than leave our program attached without its pins
    if not holder or holder not in expected_prog_ids:
        return False
    if spec["type"] == "xdp":
        nl = _netlink()
        try:
            nl.xdp_detach(spec["interface"], netns=spec.get("netns"), expected_prog_id=holder)
        except nl.NetlinkError as e:
            raise AttachError(str(e))
    else:
        _netlink().tc_detach(spec["interface"], spec["direction"], spec["priority"], TC_HANDLE, netns=spec.get("netns"))
    return True


def create_link(spec, prog_fd, pin_root=None, state_dir=None):
    """Create the bpf link for a link kind; returns the link fd (the caller pins it, then closes it). A tcx
    spec with an order is placed there (tcx_order.attach; a relative is looked up under pin_root)."""
    kind = spec["type"]
    if kind == "raw_tracepoint":
        return bs.raw_tracepoint_open(spec["target"], prog_fd)
    if kind in _TRACING_ATTACH:
        return bs.raw_tracepoint_open(None, prog_fd)
    if kind == "cgroup":
        cg = os.open(spec["path"], os.O_RDONLY | os.O_DIRECTORY)
        try:
            return bs.link_create(prog_fd, cg, _cgroup_attach_type(spec))
        finally:
            os.close(cg)
    if kind == "tcx":
        if spec.get("order"):
            return tcx_order.attach(spec, prog_fd, pin_root, state_dir)
        return _netlink().tcx_attach(spec["interface"], spec["direction"], prog_fd, netns=spec.get("netns"))
    if kind in ("tracepoint", "kprobe", "kretprobe") + UPROBE_KINDS:
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf
        if kind == "tracepoint":
            pfd = perf.open_tracepoint(spec["target"])
        elif kind in UPROBE_KINDS:
            pfd = perf.open_uprobe(spec["path"], spec["offset"], retprobe=(kind == "uretprobe"),
                                   pid=spec.get("pid") or -1)
        else:
            pfd = perf.open_kprobe(spec["target"], retprobe=(kind == "kretprobe"))
        try:
            return bs.link_create(prog_fd, pfd, bs.BPF_PERF_EVENT)
        finally:
            os.close(pfd)
    raise AttachError("cannot attach %s" % kind)


# ---- cgroup programs on kernels without bpf_link (before 5.7): BPF_PROG_ATTACH, one of several on the hook ----
def _cgroup_fd(spec):
    return os.open(spec["path"], os.O_RDONLY | os.O_DIRECTORY)


def cgroup_attached_ids(spec):
    """The program ids attached at spec's cgroup hook (BPF_PROG_QUERY); [] when the cgroup is gone."""
    try:
        cg = _cgroup_fd(spec)
    except OSError:
        return []
    try:
        return bs.prog_query(cg, _cgroup_attach_type(spec))
    finally:
        os.close(cg)


def cgroup_prog_attach(spec, prog_fd):
    """Attach prog_fd at spec's cgroup hook beside what runs there (BPF_F_ALLOW_MULTI): a replace attaches the new
    program first and detaches the old one after, so the hook is never without ours."""
    cg = _cgroup_fd(spec)
    try:
        bs.prog_attach(cg, prog_fd, _cgroup_attach_type(spec), bs.BPF_F_ALLOW_MULTI)
    except OSError as e:
        hint = (": a program attached there without BPF_F_ALLOW_MULTI holds the hook alone"
                if e.errno == errno.EPERM else "")
        raise AttachError("cannot attach at %s (BPF_PROG_ATTACH: %s)%s" % (describe(spec), e, hint))
    finally:
        os.close(cg)


def cgroup_prog_detach(spec, prog_id):
    """Detach program prog_id from spec's cgroup hook; False when it is not attached there (or is gone)."""
    if prog_id not in cgroup_attached_ids(spec):
        return False
    fd = bs.get_fd_by_id("prog", prog_id)
    try:
        cg = _cgroup_fd(spec)
        try:
            bs.prog_detach(cg, _cgroup_attach_type(spec), fd)
        finally:
            os.close(cg)
    finally:
        bs.close(fd)
    return True


def can_update_link(old_spec, new_spec, link, pin_root=None, state_dir=None):
    """link_update swaps the program behind an existing link atomically when the attach point is the same (for an
    ordered tcx program: and the link is in its position; else a new link goes there, see tcx_order). A changed
    order that the link's position already satisfies keeps the link where it is."""
    if not (bool(link) and tcx_order.same_point(old_spec, new_spec) and link_matches(new_spec, link) and
            new_spec["type"] in ("tcx", "cgroup")):  # the link types with BPF_LINK_UPDATE
        return False
    return tcx_order.in_position(new_spec, link.get("prog_id"), pin_root, state_dir)
