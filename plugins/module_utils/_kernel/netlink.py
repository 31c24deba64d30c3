# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XDP, tc (cls_bpf on clsact) and tcx attachment of BPF programs to network interfaces, netns aware.

One job: attach, query and detach programs on interfaces, through rtnetlink (pyroute2) for XDP and tc, and
through bpf(BPF_LINK_CREATE / BPF_PROG_QUERY) for tcx; and read the XDP features drivers announce (the netdev
generic netlink family, kernel 6.3+, same messages and socket) for ebpf_facts.

Works with pyroute2 0.5.14 (Debian 11), 0.7.2 (Debian 12) and 0.9.x. Those versions differ in how much of
IFLA_XDP and TCA_OPTIONS(bpf) they parse (0.5.14 leaves IFLA_XDP as hex; none of them knows TCA_BPF_ID or
TCA_BPF_TAG), in how they spell tc requests, and in their sockets (0.9's IPRoute runs an asyncio loop per
request). So the messages are our own small subclasses of pyroute2's `nlmsg`/`nla`, which encode and decode the
same on every version (pyroute2 builds and parses every byte we send and receive, acks and errors with the
kernel's extended ack text included, and its NetlinkError carries the kernel's errno), and `_Rtnl` below moves
them over a NETLINK_ROUTE socket of the standard library: open, send one request, read to the ack or the end
of the dump.

pyroute2 is imported through pyroute2_netlink.load(): pyroute2.netlink only, not the whole package (it says why).

Network namespaces: every operation runs with the calling thread switched into the namespace (`in_netns`,
setns(2) on /run/netns/NAME, and back to where the thread was). The netlink socket is created inside, so it
talks to that namespace; bpf(BPF_LINK_CREATE) for tcx resolves its ifindex there too. pyroute2's own NetNS
is not used: before 0.9 it forks a helper process, and in every version it creates a missing namespace.

Importable without ansible; pyroute2 is only needed when a function is called.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import os
import socket
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall, libc, pyroute2_netlink


try:
    _nl, _nlexc = pyroute2_netlink.load()
    nla, nlmsg, genlmsg = _nl.nla, _nl.nlmsg, _nl.genlmsg
    NLA_F_NESTED = _nl.NLA_F_NESTED
    _PyrouteNetlinkError = _nlexc.NetlinkError
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError as exc:  # classes below still need a base to be defined
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = exc
    nla = nlmsg = genlmsg = object
    NLA_F_NESTED = 1 << 15

    class _PyrouteNetlinkError(Exception):
        pass

# ---- constants (include/uapi/linux/rtnetlink.h, if_link.h, pkt_sched.h) -------------------------------------
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_GETQDISC = 38
RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46

NLM_F_REQUEST = 0x1     # include/uapi/linux/netlink.h
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100    # in an ack: the request is not echoed back
NLM_F_ACK_TLVS = 0x200  # in an ack: extended ack attributes follow
NLMSG_ERROR = 2
NLMSG_DONE = 3
NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10     # include/uapi/linux/genetlink.h
CTRL_CMD_GETFAMILY = 3
NETDEV_CMD_DEV_GET = 1  # include/uapi/linux/netdev.h (kernel 6.3+)
NETDEV_XDP_ACT = {
    1: "basic", 2: "redirect", 4: "ndo_xmit", 8: "xsk_zerocopy", 16: "hw_offload", 32: "rx_sg", 64: "ndo_xmit_sg",
}
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
_NLMSGHDR = struct.Struct("=IHHII")

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_HW_MODE = 8
XDP_FLAGS_REPLACE = 16
XDP_MODE_FLAGS = {"auto": 0, "generic": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE,
                  "offload": XDP_FLAGS_HW_MODE}
# IFLA_XDP_ATTACHED values
_XDP_ATTACHED = {0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi"}

TC_H_CLSACT = 0xFFFFFFF1            # parent of the clsact qdisc (same as TC_H_INGRESS)
CLSACT_HANDLE = 0xFFFF0000          # ffff:
TC_PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}   # ffff:fff2, ffff:fff3
TCA_BPF_FLAG_ACT_DIRECT = 1
ETH_P_ALL = 0x0003

TCX_ATTACH_TYPES = {"ingress": bpf_syscall.BPF_TCX_INGRESS, "egress": bpf_syscall.BPF_TCX_EGRESS}

NETNS_RUN_DIR = "/run/netns"


class NetlinkError(Exception):
    """An attach/query/detach failed; the message names the interface, the namespace and the kernel's reason.

    `.errno` is the kernel's errno when the kernel refused (else None)."""

    def __init__(self, msg, err=None):
        super(NetlinkError, self).__init__(msg)
        self.errno = err


# ---- our messages: pyroute2 message classes, our attribute maps ---------------------------------------------
class _LinkMsg(nlmsg):
    """struct ifinfomsg + the two attributes we use."""
    fields = (("family", "B"), ("__align", "x"), ("ifi_type", "H"), ("index", "i"), ("flags", "I"),
              ("change", "I"))
    nla_map = ((3, "IFLA_IFNAME", "asciiz"),
               (43, "IFLA_XDP", "xdp"))

    class xdp(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (("IFLA_XDP_UNSPEC", "none"),
                   ("IFLA_XDP_FD", "int32"),
                   ("IFLA_XDP_ATTACHED", "uint8"),
                   ("IFLA_XDP_FLAGS", "uint32"),
                   ("IFLA_XDP_PROG_ID", "uint32"),
                   ("IFLA_XDP_DRV_PROG_ID", "uint32"),
                   ("IFLA_XDP_SKB_PROG_ID", "uint32"),
                   ("IFLA_XDP_HW_PROG_ID", "uint32"),
                   ("IFLA_XDP_EXPECTED_FD", "int32"))


class _TcMsg(nlmsg):
    """struct tcmsg + TCA_KIND and TCA_OPTIONS (decoded as cls_bpf options only when the kind is bpf)."""
    fields = (("family", "B"), ("pad1", "B"), ("pad2", "H"), ("index", "i"), ("handle", "I"), ("parent", "I"),
              ("info", "I"))
    nla_map = (("TCA_UNSPEC", "none"),
               ("TCA_KIND", "asciiz"),
               ("TCA_OPTIONS", "get_options"))

    @staticmethod
    def get_options(msg, *argv, **kwarg):
        """The nla class of TCA_OPTIONS; pyroute2 calls it with the message being decoded (TCA_KIND read)."""
        if msg.get_attr("TCA_KIND") == "bpf":
            return msg.bpf_options
        return msg.hex

    class bpf_options(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (("TCA_BPF_UNSPEC", "none"),
                   ("TCA_BPF_ACT", "hex"),
                   ("TCA_BPF_POLICE", "hex"),
                   ("TCA_BPF_CLASSID", "uint32"),
                   ("TCA_BPF_OPS_LEN", "uint16"),
                   ("TCA_BPF_OPS", "hex"),
                   ("TCA_BPF_FD", "uint32"),
                   ("TCA_BPF_NAME", "asciiz"),
                   ("TCA_BPF_FLAGS", "uint32"),
                   ("TCA_BPF_FLAGS_GEN", "uint32"),
                   ("TCA_BPF_TAG", "hex"),
                   ("TCA_BPF_ID", "uint32"))


class _AckMsg(nlmsg):
    """struct nlmsgerr with NETLINK_CAP_ACK (the request's header only) + the extended ack message."""
    fields = (("error", "i"), ("req_length", "I"), ("req_type", "H"), ("req_flags", "H"), ("req_seq", "I"),
              ("req_pid", "I"))
    nla_map = ((1, "NLMSGERR_ATTR_MSG", "asciiz"),)


class _CtrlMsg(genlmsg):
    """The generic netlink controller's family message (the two attributes we use)."""
    nla_map = ((1, "CTRL_ATTR_FAMILY_ID", "uint16"),
               (2, "CTRL_ATTR_FAMILY_NAME", "asciiz"))


class _NetdevMsg(genlmsg):
    """The netdev family's device message (NETDEV_CMD_DEV_GET)."""
    nla_map = ((1, "NETDEV_A_DEV_IFINDEX", "uint32"),
               (3, "NETDEV_A_DEV_XDP_FEATURES", "uint64"))


def _redecode(msg, cls):
    """Decode one received message (raw buffer, offset, length) with our class."""
    raw = bytes(msg.data[msg.offset:msg.offset + msg.length])
    mine = cls(raw)
    mine.decode()
    return mine


class _Reply(object):
    """One message of a receive buffer (the shape pyroute2's replies have: data, offset, length)."""

    def __init__(self, data, offset, length):
        self.data, self.offset, self.length = data, offset, length


class _Rtnl(object):
    """A netlink socket (NETLINK_ROUTE unless told) in the network namespace of the calling thread; one request
    at a time.

    nlm_request() sends a message our pyroute2 classes encode and returns the kernel's answers (for the
    caller to decode with the same classes); a refusal raises pyroute2's NetlinkError with the errno and the
    kernel's extended ack text."""

    def __init__(self, protocol=NETLINK_ROUTE, timeout=None):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.settimeout(timeout)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass            # older kernels (before 4.3 / 4.12): plain acks without the kernel's text
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        self.sock.close()

    def nlm_request(self, msg, msg_type, msg_flags):
        self.seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = msg_flags
        msg["header"]["sequence_number"] = self.seq
        msg["header"]["pid"] = 0
        msg.encode()
        self.sock.send(bytes(msg.data))
        dump = (msg_flags & NLM_F_DUMP) == NLM_F_DUMP
        replies = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, mflags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size or offset + length > len(data):
                    raise _PyrouteNetlinkError(errno.EBADMSG, "truncated netlink message")
                here, offset = offset, offset + ((length + 3) & ~3)
                if seq != self.seq:
                    continue    # not an answer to this request
                if mtype == NLMSG_ERROR:
                    self._check_ack(_redecode(_Reply(data, here, length), _AckMsg))
                    return replies
                if mtype == NLMSG_DONE:
                    if length >= _NLMSGHDR.size + 4:
                        code = struct.unpack_from("=i", data, here + _NLMSGHDR.size)[0]
                        if code < 0:
                            raise _PyrouteNetlinkError(-code)
                    return replies
                replies.append(_Reply(data, here, length))
                if not dump and not (msg_flags & NLM_F_ACK) and not (mflags & NLM_F_MULTI):
                    return replies

    @staticmethod
    def _check_ack(ack):
        code = -ack["error"]
        if not code:
            return
        text = None
        flags = ack["header"]["flags"]
        if flags & NLM_F_ACK_TLVS and flags & NLM_F_CAPPED:
            text = ack.get_attr("NLMSGERR_ATTR_MSG")
        raise _PyrouteNetlinkError(code, text or None)


# ---- network namespaces -------------------------------------------------------------------------------------
def netns_path(netns):
    """/run/netns/NAME for a name, the path itself for an absolute path (e.g. /proc/PID/ns/net)."""
    if not netns or not isinstance(netns, str):
        raise NetlinkError("invalid network namespace name %r" % (netns,))
    if netns.startswith("/"):
        return netns
    if "/" in netns or netns in (".", ".."):
        raise NetlinkError("invalid network namespace name %r" % (netns,))
    return os.path.join(NETNS_RUN_DIR, netns)


def _where(netns):
    return "the current network namespace" if netns is None else "network namespace %s" % netns


@contextlib.contextmanager
def in_netns(netns):
    """Run the body with the calling thread in network namespace `netns` (a name under /run/netns or a path);
    `None` means stay where we are. The thread is switched back to its own namespace on exit."""
    if netns is None:
        yield
        return
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NetlinkError("network namespace %s does not exist (%s)" % (netns, path), exc.errno)
        raise NetlinkError("cannot open network namespace %s (%s): %s" % (netns, path, exc.strerror), exc.errno)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                libc.setns(target)
            except OSError as exc:
                raise NetlinkError("cannot enter network namespace %s (%s): %s"
                                   % (netns, path, exc.strerror), exc.errno)
            try:
                yield
            finally:
                libc.setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _need_pyroute2():
    if not HAS_PYROUTE2:
        raise NetlinkError("the Python library pyroute2 is required on the managed host (python3-pyroute2): %s"
                           % PYROUTE2_IMPORT_ERROR)


@contextlib.contextmanager
def _rtnl(netns):
    """A NETLINK_ROUTE socket (_Rtnl) in `netns`, with the calling thread inside it for the whole body."""
    _need_pyroute2()
    with in_netns(netns):
        rtnl = _Rtnl()
        try:
            yield rtnl
        finally:
            rtnl.close()


def _errno_of(exc):
    """The errno of a pyroute2 NetlinkError (`.code`, or its first argument), or None."""
    return getattr(exc, "code", None) or (exc.args[0] if exc.args and isinstance(exc.args[0], int) else None)


def _kernel_error(exc, what):
    """NetlinkError from a pyroute2 NetlinkError, with the kernel's extended ack message when there is one."""
    code = _errno_of(exc)
    text = os.strerror(code) if code else str(exc)
    extack = exc.args[1] if len(exc.args) > 1 and exc.args[1] else None
    if extack and extack != text:
        text = "%s (%s)" % (text, extack)
    return NetlinkError("%s: %s" % (what, text), code)


def _request(ipr, msg, msg_type, flags, what):
    try:
        return list(ipr.nlm_request(msg, msg_type=msg_type, msg_flags=flags))
    except _PyrouteNetlinkError as exc:
        raise _kernel_error(exc, what)


def _check_ifname(ifname):
    if not ifname or not isinstance(ifname, str) or len(ifname) > 15 or "/" in ifname or " " in ifname:
        raise NetlinkError("invalid interface name %r" % (ifname,))


def _lookup(ipr, ifname, netns):
    """ifindex of `ifname` in the namespace the calling thread is in (inside _rtnl/in_netns)."""
    return _ifindex_here(ifname, netns)


def _check_direction(direction):
    if direction not in TC_PARENTS:
        raise NetlinkError("invalid direction %r: must be ingress or egress" % (direction,))


def ifindex(ifname, netns=None):
    """The interface index of `ifname` in `netns`."""
    with _rtnl(netns) as ipr:
        return _lookup(ipr, ifname, netns)


# ---- XDP ----------------------------------------------------------------------------------------------------
def _xdp_state(ipr, index, ifname, netns):
    msg = _LinkMsg()
    msg["index"] = index
    replies = _request(ipr, msg, RTM_GETLINK, NLM_F_REQUEST, "reading interface %s in %s" % (ifname, _where(netns)))
    for reply in replies:
        link = _redecode(reply, _LinkMsg)
        if link["index"] != index:
            continue
        xdp = link.get_attr("IFLA_XDP")
        if xdp is None:
            return {"prog_id": 0, "mode": None, "modes": {}}
        attached = _XDP_ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED") or 0, "unknown")
        modes = {}
        for name, attr in (("native", "IFLA_XDP_DRV_PROG_ID"), ("generic", "IFLA_XDP_SKB_PROG_ID"),
                           ("offload", "IFLA_XDP_HW_PROG_ID")):
            prog = xdp.get_attr(attr)
            if prog:
                modes[name] = prog
        prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
        mode = attached
        if attached == "multi":     # offload together with native or generic: report the host-side one
            mode = "native" if "native" in modes else ("generic" if "generic" in modes else "offload")
            prog_id = modes.get(mode, 0)
        if attached and not modes and prog_id:
            modes[attached] = prog_id
        return {"prog_id": prog_id, "mode": mode, "modes": modes}
    raise NetlinkError("interface %s not found in %s" % (ifname, _where(netns)), errno.ENODEV)


def xdp_query(ifname, netns=None):
    """{"prog_id": id or 0, "mode": "native"|"generic"|"offload"|None, "modes": {mode: prog_id}}.

    `modes` lists every attached program by mode (offload can sit next to native or generic); `mode` and
    `prog_id` name the host-side one."""
    with _rtnl(netns) as ipr:
        index = _lookup(ipr, ifname, netns)
        return _xdp_state(ipr, index, ifname, netns)


def _xdp_msg(index, fd, flags, expected_fd):
    msg = _LinkMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    attrs = [("IFLA_XDP_FD", fd)]
    if flags:
        attrs.append(("IFLA_XDP_FLAGS", flags))
    if expected_fd is not None:
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    msg["attrs"] = [("IFLA_XDP", {"attrs": attrs})]
    return msg


def _set_xdp(ipr, index, fd, flags, expected_fd, what):
    _request(ipr, _xdp_msg(index, fd, flags, expected_fd), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, what)


def _attached_text(prog_id):
    return ("program id %d" % prog_id) if prog_id else "none"


def _set_xdp_expecting(ipr, index, fd, flags, expected_id, ifname, netns, what):
    """Set XDP only while program `expected_id` is the one attached: atomically with XDP_FLAGS_REPLACE (5.7+),
    else after checking it (older kernels reject the flag with EINVAL; a plain set still swaps atomically)."""
    try:
        old_fd = bpf_syscall.get_fd_by_id("prog", expected_id)
    except OSError as exc:
        raise NetlinkError("%s: XDP program id %d to be replaced is not loaded (%s)"
                           % (what, expected_id, os.strerror(exc.errno)), exc.errno)
    try:
        _set_xdp(ipr, index, fd, flags | XDP_FLAGS_REPLACE, old_fd, what)
        return
    except NetlinkError as exc:
        if exc.errno == errno.EEXIST:
            current = _xdp_state(ipr, index, ifname, netns)
            raise NetlinkError("%s: program id %d is no longer the one attached (now: %s)"
                               % (what, expected_id, _attached_text(current["prog_id"])), exc.errno)
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(old_fd)
    current = _xdp_state(ipr, index, ifname, netns)
    if current["prog_id"] != expected_id:
        raise NetlinkError("%s: program id %d is no longer the one attached (now: %s)"
                           % (what, expected_id, _attached_text(current["prog_id"])), errno.EEXIST)
    _set_xdp(ipr, index, fd, flags, None, what)


def _set_xdp_if_free(ipr, index, fd, flags, ifname, netns, what):
    """Set XDP only while no program is attached (XDP_FLAGS_UPDATE_IF_NOEXIST): one attached since the caller
    read the slot is refused by the kernel, never replaced."""
    try:
        _set_xdp(ipr, index, fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST, None, what)
    except NetlinkError as exc:
        if exc.errno not in (errno.EBUSY, errno.EEXIST):
            raise
        now = _xdp_state(ipr, index, ifname, netns)
        if not now["prog_id"]:
            raise
        raise NetlinkError("%s: the slot was free when read, and program id %d is attached now: not replacing it"
                           % (what, now["prog_id"]), errno.EEXIST)


def _explain_xdp_refusal(ipr, index, ifname, netns, exc):
    """Say what is in the way when the kernel refuses with EEXIST/EBUSY (pyroute2 0.5.14 does not pass the
    kernel's own explanation on)."""
    if exc.errno not in (errno.EEXIST, errno.EBUSY) or "no longer the one attached" in str(exc) \
            or "not replacing it" in str(exc):
        return exc
    now = _xdp_state(ipr, index, ifname, netns)
    held = ", ".join("program id %d in %s mode" % (p, m) for m, p in sorted(now["modes"].items()))
    by_link = " (held by a bpf link)" if exc.errno == errno.EBUSY else ""
    return NetlinkError("%s; attached now: %s%s" % (exc, held or "nothing", by_link), exc.errno)


def xdp_attach(ifname, prog_fd, mode="auto", netns=None, replace_prog_id=None):
    """Attach XDP program `prog_fd` to `ifname`.

    mode: auto (no flag: native where the driver has it, else generic), native, generic or offload.
    replace_prog_id: None attaches over whatever is there in that mode; an id swaps only that program, in one
    step (no moment without a program); 0 attaches only when no program is attached (UPDATE_IF_NOEXIST)."""
    if mode not in XDP_MODE_FLAGS:
        raise NetlinkError("invalid XDP mode %r: must be one of auto, native, generic, offload" % (mode,))
    flags = XDP_MODE_FLAGS[mode]
    what = "attaching XDP program (%s mode) to %s in %s" % (mode, ifname, _where(netns))
    with _rtnl(netns) as ipr:
        index = _lookup(ipr, ifname, netns)
        try:
            if replace_prog_id is None:
                _set_xdp(ipr, index, prog_fd, flags, None, what)
            elif replace_prog_id == 0:
                _set_xdp_if_free(ipr, index, prog_fd, flags, ifname, netns, what)
            else:
                _set_xdp_expecting(ipr, index, prog_fd, flags, replace_prog_id, ifname, netns, what)
        except NetlinkError as exc:
            raise _explain_xdp_refusal(ipr, index, ifname, netns, exc)


def xdp_detach(ifname, netns=None, expected_prog_id=None, mode=None):
    """Detach the XDP program of `ifname`. Returns True when one was detached, False when none was attached.

    mode: None detaches the attached host-side program in whatever mode it is; or native/generic/offload.
    expected_prog_id: detach only that program (raises NetlinkError when another one is attached)."""
    if mode is not None and mode not in ("native", "generic", "offload"):
        raise NetlinkError("invalid XDP mode %r: must be native, generic or offload" % (mode,))
    with _rtnl(netns) as ipr:
        index = _lookup(ipr, ifname, netns)
        state = _xdp_state(ipr, index, ifname, netns)
        if mode is None:
            mode = state["mode"]
        current = state["modes"].get(mode, 0) if mode else 0
        if not current:
            return False
        if expected_prog_id and current != expected_prog_id:
            raise NetlinkError("not detaching XDP from %s in %s: program id %d is attached (%s mode), not the "
                               "expected %d" % (ifname, _where(netns), current, mode, expected_prog_id),
                               errno.EEXIST)
        what = "detaching XDP program id %d (%s mode) from %s in %s" % (current, mode, ifname, _where(netns))
        try:
            if expected_prog_id:
                _set_xdp_expecting(ipr, index, -1, XDP_MODE_FLAGS[mode], expected_prog_id, ifname, netns, what)
            else:
                _set_xdp(ipr, index, -1, XDP_MODE_FLAGS[mode], None, what)
        except NetlinkError as exc:
            raise _explain_xdp_refusal(ipr, index, ifname, netns, exc)
        return True


# ---- XDP features the drivers announce (netdev generic netlink, kernel 6.3+) --------------------------------
def _genl_msg(cls, cmd, attrs=()):
    msg = cls()
    msg["cmd"], msg["version"] = cmd, 1
    msg["attrs"] = list(attrs)
    return msg


def _genl(sock, msg, family, flags):
    """One generic netlink request; the kernel's refusal as OSError (errno, "netlink: <reason>")."""
    try:
        return sock.nlm_request(msg, family, flags)
    except _PyrouteNetlinkError as exc:
        code = _errno_of(exc) or errno.EIO
        raise OSError(code, "netlink: %s" % os.strerror(code))


def xdp_features():
    """{ifindex: [feature names]} of the interfaces of the calling thread's network namespace, from the netdev
    generic netlink family. Only reads. Raises OSError when the family does not exist (kernel < 6.3) or netlink
    fails, NetlinkError without pyroute2."""
    _need_pyroute2()
    sock = _Rtnl(NETLINK_GENERIC, timeout=2.0)
    try:
        ask = _genl_msg(_CtrlMsg, CTRL_CMD_GETFAMILY, [("CTRL_ATTR_FAMILY_NAME", "netdev")])
        try:
            replies = _genl(sock, ask, GENL_ID_CTRL, NLM_F_REQUEST)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise OSError(exc.errno, "the kernel has no netdev generic netlink family (kernel < 6.3)")
            raise
        family = None
        for reply in replies:
            family = _redecode(reply, _CtrlMsg).get_attr("CTRL_ATTR_FAMILY_ID") or family
        if family is None:
            raise OSError(errno.ENOENT, "no netdev generic netlink family")
        dump = _genl_msg(_NetdevMsg, NETDEV_CMD_DEV_GET)
        result = {}
        for reply in _genl(sock, dump, family, NLM_F_REQUEST | NLM_F_DUMP):
            dev = _redecode(reply, _NetdevMsg)
            ifindex = dev.get_attr("NETDEV_A_DEV_IFINDEX")
            if ifindex is None:
                continue
            bits = dev.get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0
            result[ifindex] = [name for bit, name in sorted(NETDEV_XDP_ACT.items()) if bits & bit]
        return result
    except socket.timeout:
        raise OSError(errno.ETIMEDOUT, "netdev generic netlink did not answer")
    finally:
        sock.close()


# ---- tc: cls_bpf in direct-action mode on the clsact qdisc --------------------------------------------------
def _tc_msg(index, parent, handle=0, info=0, kind=None, options=None):
    msg = _TcMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["parent"] = parent
    msg["handle"] = handle
    msg["info"] = info
    attrs = []
    if kind:
        attrs.append(("TCA_KIND", kind))
    if options is not None:
        attrs.append(("TCA_OPTIONS", {"attrs": options}))
    msg["attrs"] = attrs
    return msg


def _filter_info(priority):
    if not isinstance(priority, int) or not 1 <= priority <= 0xFFFF:
        raise NetlinkError("invalid tc priority %r: must be 1..65535" % (priority,))
    return (priority << 16) | socket.htons(ETH_P_ALL)


def _clsact_kind(ipr, index, ifname, netns):
    """Kind of the qdisc at ffff:fff1 (clsact, ingress) or None."""
    replies = _request(ipr, _tc_msg(index, 0), RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP,
                       "reading qdiscs of %s in %s" % (ifname, _where(netns)))
    for reply in replies:
        qdisc = _redecode(reply, _TcMsg)
        if qdisc["index"] == index and qdisc["parent"] == TC_H_CLSACT:
            return qdisc.get_attr("TCA_KIND")
    return None


def _filters(ipr, index, direction, ifname, netns):
    replies = _request(ipr, _tc_msg(index, TC_PARENTS[direction]), RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP,
                       "reading tc %s filters of %s in %s" % (direction, ifname, _where(netns)))
    found = []
    for reply in replies:
        flt = _redecode(reply, _TcMsg)
        options = flt.get_attr("TCA_OPTIONS")
        if flt["index"] != index or options is None:
            continue            # the first entry of each priority is the classifier itself, without options
        kind = flt.get_attr("TCA_KIND")
        entry = {"priority": flt["info"] >> 16, "handle": flt["handle"], "kind": kind, "prog_id": 0,
                 "name": "", "direct_action": False, "tag": ""}
        if kind == "bpf":
            tag = options.get_attr("TCA_BPF_TAG") or ""
            entry.update({"prog_id": options.get_attr("TCA_BPF_ID") or 0,
                          "name": options.get_attr("TCA_BPF_NAME") or "",
                          "direct_action": bool((options.get_attr("TCA_BPF_FLAGS") or 0) & TCA_BPF_FLAG_ACT_DIRECT),
                          "tag": tag.replace(":", "")})
        found.append(entry)
    return found


def tc_query(ifname, direction, netns=None):
    """Filters on the clsact `direction` hook of `ifname`, in the order the kernel runs them:
    [{"prog_id", "priority", "handle", "name", "direct_action", "kind", "tag"}]. Empty without clsact.
    Non-bpf filters are listed too (kind != "bpf", prog_id 0) because they occupy priorities."""
    _check_direction(direction)
    with _rtnl(netns) as ipr:
        index = _lookup(ipr, ifname, netns)
        if _clsact_kind(ipr, index, ifname, netns) is None:
            return []
        return _filters(ipr, index, direction, ifname, netns)


def tc_attach(ifname, direction, prog_fd, priority=1, handle=1, name="", netns=None, expected_prog_id=None):
    """Attach SCHED_CLS program `prog_fd` as a direct-action cls_bpf filter at (priority, handle) of the clsact
    `direction` hook; adds clsact when absent. A filter already at (priority, handle) is replaced in one step.
    expected_prog_id: None replaces whatever is there; 0 only creates (NLM_F_EXCL: the kernel refuses when a
    filter appeared there meanwhile); an id replaces only while that program is the one found there (checked
    just before the request: tc has no compare-and-swap).
    Returns {"created_qdisc": bool, "previous_prog_id": id of the replaced program or 0}."""
    _check_direction(direction)
    info = _filter_info(priority)
    if not isinstance(handle, int) or not 1 <= handle <= 0xFFFFFFFF:
        raise NetlinkError("invalid tc handle %r: must be 1..4294967295" % (handle,))
    where = "%s in %s" % (ifname, _where(netns))
    with _rtnl(netns) as ipr:
        index = _lookup(ipr, ifname, netns)
        kind = _clsact_kind(ipr, index, ifname, netns)
        if kind is not None and kind != "clsact":
            raise NetlinkError("%s has a %s qdisc where clsact is needed; remove it first" % (where, kind))
        previous = 0
        if kind:
            for flt in _filters(ipr, index, direction, ifname, netns):
                if flt["priority"] == priority and flt["handle"] == handle:
                    previous = flt["prog_id"] or -1  # -1: a filter that is not bpf
        if expected_prog_id is not None and previous != expected_prog_id:
            raise NetlinkError("not attaching tc %s filter (priority %d, handle %d) to %s: expected %s there, "
                               "found %s" % (direction, priority, handle, where, _slot_text(expected_prog_id),
                                             _slot_text(previous)), errno.EEXIST)
        created = False
        if kind is None:
            _request(ipr, _tc_msg(index, TC_H_CLSACT, CLSACT_HANDLE, kind="clsact"), RTM_NEWQDISC,
                     NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, "adding clsact qdisc to %s" % where)
            created = True
        options = [("TCA_BPF_FD", prog_fd)]
        if name:
            options.append(("TCA_BPF_NAME", name))
        options.append(("TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT))
        msg = _tc_msg(index, TC_PARENTS[direction], handle, info, "bpf", options)
        mode = NLM_F_EXCL if expected_prog_id == 0 else NLM_F_REPLACE
        try:
            _request(ipr, msg, RTM_NEWTFILTER, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | mode,
                     "attaching tc %s filter (priority %d, handle %d) to %s" % (direction, priority, handle, where))
        except NetlinkError:
            if created:     # leave the host as it was
                _request(ipr, _tc_msg(index, TC_H_CLSACT, CLSACT_HANDLE, kind="clsact"), RTM_DELQDISC,
                         NLM_F_REQUEST | NLM_F_ACK, "removing clsact qdisc from %s" % where)
            raise
        return {"created_qdisc": created, "previous_prog_id": max(previous, 0)}


def _slot_text(prog_id):
    if prog_id == 0:
        return "no filter"
    if prog_id < 0:
        return "a filter that is not bpf"
    return "program id %d" % prog_id


def tc_detach(ifname, direction, priority, handle, netns=None, remove_qdisc_if_empty=False):
    """Remove the filter at (priority, handle) of the clsact `direction` hook.
    Returns {"removed": bool (False when there was none), "removed_qdisc": bool}; with remove_qdisc_if_empty
    the clsact qdisc goes too when neither direction has a filter left."""
    _check_direction(direction)
    info = _filter_info(priority)
    where = "%s in %s" % (ifname, _where(netns))
    with _rtnl(netns) as ipr:
        index = _lookup(ipr, ifname, netns)
        if _clsact_kind(ipr, index, ifname, netns) != "clsact":
            return {"removed": False, "removed_qdisc": False}
        present = [f for f in _filters(ipr, index, direction, ifname, netns)
                   if f["priority"] == priority and f["handle"] == handle]
        removed = False
        if present:
            _request(ipr, _tc_msg(index, TC_PARENTS[direction], handle, info, present[0]["kind"]), RTM_DELTFILTER,
                     NLM_F_REQUEST | NLM_F_ACK,
                     "removing tc %s filter (priority %d, handle %d) from %s" % (direction, priority, handle, where))
            removed = True
        removed_qdisc = False
        if remove_qdisc_if_empty and not any(_filters(ipr, index, d, ifname, netns) for d in TC_PARENTS):
            _request(ipr, _tc_msg(index, TC_H_CLSACT, CLSACT_HANDLE, kind="clsact"), RTM_DELQDISC,
                     NLM_F_REQUEST | NLM_F_ACK, "removing clsact qdisc from %s" % where)
            removed_qdisc = True
        return {"removed": removed, "removed_qdisc": removed_qdisc}


# ---- tcx (kernel 6.6+): bpf links on the interface ----------------------------------------------------------
def _ifindex_here(ifname, netns):
    """ifindex in the namespace the calling thread is in right now (inside in_netns)."""
    _check_ifname(ifname)
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise NetlinkError("interface %s not found in %s" % (ifname, _where(netns)), errno.ENODEV)


TCX_POSITIONS = (None, "first", "last", "before", "after")


def _tcx_flags(position, relative_link_fd):
    """BPF_LINK_CREATE flags for a tcx position: first/last = BPF_F_BEFORE/BPF_F_AFTER with no relative,
    before/after = the same relative to a link (BPF_F_LINK, its fd); None = appended (no flag)."""
    if position not in TCX_POSITIONS:
        raise NetlinkError("tcx position must be one of first, last, before, after, got %r" % (position,))
    relative = position in ("before", "after")
    if relative != bool(relative_link_fd):
        raise NetlinkError("tcx position %s %s a relative link" % (position, "needs" if relative else "takes no"))
    flags = {None: 0, "first": bpf_syscall.BPF_F_BEFORE, "last": bpf_syscall.BPF_F_AFTER,
             "before": bpf_syscall.BPF_F_BEFORE, "after": bpf_syscall.BPF_F_AFTER}[position]
    return flags | (bpf_syscall.BPF_F_LINK if relative else 0)


def tcx_attach(ifname, direction, prog_fd, netns=None, position=None, relative_link_fd=None, expected_revision=0):
    """Attach SCHED_CLS program `prog_fd` to the tcx `direction` hook of `ifname`. position None appends it after
    the programs already there; "first"/"last" put it in front of/behind all of them; "before"/"after" right
    before/after the program of the tcx link `relative_link_fd` (a link on the same hook). A nonzero
    expected_revision makes the kernel refuse (ESTALE) unless the hook is still at that revision.
    Returns the bpf link fd: the program stays attached while the fd is open or the link is pinned. Raises
    bpf_syscall.BpfError when the kernel refuses (EINVAL on kernels without tcx, ENOENT for a relative that is
    not on this hook, EEXIST for a program already on it)."""
    _check_direction(direction)
    flags = _tcx_flags(position, relative_link_fd)
    with in_netns(netns):
        index = _ifindex_here(ifname, netns)
        return bpf_syscall.link_create(prog_fd, index, TCX_ATTACH_TYPES[direction], flags=flags,
                                       relative_fd=relative_link_fd or 0, expected_revision=expected_revision)


def tcx_query(ifname, direction, netns=None):
    """Program ids on the tcx `direction` hook of `ifname`, in the order they run."""
    _check_direction(direction)
    with in_netns(netns):
        index = _ifindex_here(ifname, netns)
        try:
            return bpf_syscall.prog_query(index, TCX_ATTACH_TYPES[direction])
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise NetlinkError("tcx query on %s in %s refused (EINVAL): this kernel has no tcx (needs 6.6+)"
                                   % (ifname, _where(netns)), exc.errno)
            raise
