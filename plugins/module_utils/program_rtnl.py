# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Minimal rtnetlink for XDP, without importing pyroute2: an interface's index and XDP program (RTM_GETLINK),
and setting or clearing its XDP program (RTM_SETLINK with IFLA_XDP), in a network namespace.

One job: the XDP slot of one interface through a plain AF_NETLINK socket. ebpf_program must cost about what
`ping` (no-op re-apply) and a bpftool shell task (attach) cost through Ansible; importing pyroute2 alone takes
0.15-0.3 s, more than that whole budget. tc and tcx still go through netlink.py (pyroute2).
XDP replace is atomic: XDP_FLAGS_REPLACE with IFLA_XDP_EXPECTED_FD (kernel 5.7+), so traffic is never left
unfiltered between the old and the new program. Importable without ansible.
"""
import contextlib
import ctypes
import errno
import os
import socket
import struct

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR = 2
RTM_SETLINK = 19
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1
IFLA_IFNAME, IFLA_EXT_MASK, IFLA_XDP = 3, 29, 43
IFLA_XDP_FD, IFLA_XDP_ATTACHED, IFLA_XDP_FLAGS, IFLA_XDP_PROG_ID, IFLA_XDP_EXPECTED_FD = 1, 2, 3, 4, 8
XDP_FLAGS = {"auto": 0, "generic": 1 << 1, "native": 1 << 2, "offload": 1 << 3}
XDP_FLAGS_REPLACE = 1 << 4
RTEXT_FILTER_SKIP_STATS = 1 << 3
XDP_MODES = {0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi"}


class RtnlError(Exception):
    pass


def _where(netns):
    return "network namespace %s" % netns if netns else "the current network namespace"


@contextlib.contextmanager
def _socket_in(netns):
    """A NETLINK_ROUTE socket created inside `netns` (a socket stays in the namespace it was created in)."""
    if not netns:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    else:
        path = netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)
        if not netns.startswith("/") and ("/" in netns or netns in (".", "..")):
            raise RtnlError("invalid network namespace name %r" % netns)
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise RtnlError("network namespace %s does not exist (%s)" % (netns, path))
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise RtnlError("cannot enter network namespace %s: %s" % (netns, os.strerror(err)))
            try:
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            finally:
                libc.setns(home, CLONE_NEWNET)
        finally:
            os.close(home)
            os.close(target)
    try:
        yield s
    finally:
        s.close()


def _attrs(data, off):
    while off + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        yield atype & 0x3fff, data[off + 4:off + alen]
        off += (alen + 3) & ~3


def link(ifname, netns=None):
    """{"ifindex", "xdp_prog_id" (0 none), "xdp_mode"} of interface `ifname` in `netns`."""
    if not ifname or len(ifname) > 15 or "/" in ifname:
        raise RtnlError("invalid interface name %r" % (ifname,))
    name = ifname.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(name), IFLA_IFNAME) + name + b"\0" * ((4 - len(name) % 4) % 4)
    attr += struct.pack("=HHI", 8, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    body = struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, 0, 0, 0) + attr
    msg = struct.pack("=IHHII", 16 + len(body), RTM_GETLINK, NLM_F_REQUEST, 1, 0) + body
    with _socket_in(netns) as s:
        s.sendto(msg, (0, 0))
        data = s.recv(65536)
    mlen, mtype = struct.unpack_from("=IH", data, 0)
    if mtype == NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, 16)[0]
        if code in (errno.ENODEV, errno.ENOENT):
            raise RtnlError("interface %s not found in %s" % (ifname, _where(netns)))
        raise RtnlError("reading interface %s in %s: %s" % (ifname, _where(netns), os.strerror(code)))
    if mtype != RTM_NEWLINK:
        raise RtnlError("unexpected rtnetlink reply %d for %s" % (mtype, ifname))
    index = struct.unpack_from("=i", data, 16 + 4)[0]
    out = {"ifindex": index, "xdp_prog_id": 0, "xdp_mode": None}
    for atype, payload in _attrs(data[:mlen], 16 + 16):
        if atype == IFLA_XDP:
            for xtype, xval in _attrs(payload, 0):
                if xtype == IFLA_XDP_PROG_ID:
                    out["xdp_prog_id"] = struct.unpack_from("=I", xval)[0]
                elif xtype == IFLA_XDP_ATTACHED:
                    out["xdp_mode"] = XDP_MODES.get(xval[0])
    return out


def _attr(atype, payload):
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * ((4 - len(payload) % 4) % 4)


def _set_xdp(ifindex, netns, fd, flags, expected_fd, what):
    xdp = _attr(IFLA_XDP_FD, struct.pack("=i", fd)) + _attr(IFLA_XDP_FLAGS, struct.pack("=I", flags))
    if expected_fd is not None:
        xdp += _attr(IFLA_XDP_EXPECTED_FD, struct.pack("=i", expected_fd))
    body = struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, ifindex, 0, 0) + _attr(IFLA_XDP | 0x8000, xdp)
    msg = struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
    with _socket_in(netns) as s:
        try:
            s.setsockopt(270, NETLINK_EXT_ACK, 1)  # SOL_NETLINK: the kernel's reason in text
        except OSError:
            pass
        s.sendto(msg, (0, 0))
        data = s.recv(65536)
    mlen, mtype, mflags = struct.unpack_from("=IHH", data, 0)
    if mtype != NLMSG_ERROR:
        raise RtnlError("%s: unexpected rtnetlink reply %d" % (what, mtype))
    code = -struct.unpack_from("=i", data, 16)[0]
    if code == 0:
        return
    text = os.strerror(code)
    inner_len = struct.unpack_from("=I", data, 20)[0]
    tlv_off = 20 + (16 if mflags & 0x100 else inner_len)  # NLM_F_CAPPED: only the request header is echoed
    for atype, payload in _attrs(data[:mlen], tlv_off):
        if atype == NLMSGERR_ATTR_MSG:
            text += " (%s)" % payload.rstrip(b"\0").decode("utf-8", "replace")
    err = RtnlError("%s: %s" % (what, text))
    err.errno = code
    raise err


def xdp_attach(ifname, prog_fd, mode="auto", netns=None, replace_prog_id=None, get_fd=None, close=None):
    """Attach prog_fd as the XDP program of ifname; atomically replacing replace_prog_id when given
    (get_fd(prog_id) -> fd and close(fd) open and close the expected program)."""
    cur = link(ifname, netns)
    where = "attaching XDP on %s in %s" % (ifname, _where(netns))
    if replace_prog_id:
        if mode == "auto" and cur["xdp_mode"] in XDP_FLAGS:
            mode = cur["xdp_mode"]  # replace in the slot the old program uses
        expected = get_fd(replace_prog_id)
        try:
            _set_xdp(cur["ifindex"], netns, prog_fd, XDP_FLAGS[mode] | XDP_FLAGS_REPLACE, expected, where)
        finally:
            close(expected)
        return
    _set_xdp(cur["ifindex"], netns, prog_fd, XDP_FLAGS[mode], None, where)


def xdp_detach(ifname, netns=None, expected_prog_id=None, get_fd=None, close=None):
    """Remove the XDP program of ifname (only if it is still expected_prog_id, when given)."""
    cur = link(ifname, netns)
    if not cur["xdp_prog_id"]:
        return False
    flags = XDP_FLAGS.get(cur["xdp_mode"], 0)
    where = "detaching XDP from %s in %s" % (ifname, _where(netns))
    if expected_prog_id:
        if cur["xdp_prog_id"] != expected_prog_id:
            return False
        expected = get_fd(expected_prog_id)
        try:
            _set_xdp(cur["ifindex"], netns, -1, flags | XDP_FLAGS_REPLACE, expected, where)
        finally:
            close(expected)
        return True
    _set_xdp(cur["ifindex"], netns, -1, flags, None, where)
    return True
