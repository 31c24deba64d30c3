"""netlink.py without touching the host: the bytes our messages encode to, the answers we decode (built here as
the kernel lays them out), and input checks that must refuse before anything is sent.

The real-kernel behaviour (attach, traffic, detach) is in tests/integration/test_netlink.py.
"""
import os
import struct
import subprocess
import sys

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink as nl

from tests.conftest import TOP  # noqa: E402
NESTED = 0x8000


# ---- netlink wire format, written by hand -------------------------------------------------------------------
def attr(kind, payload, nested=False):
    body = struct.pack("=HH", 4 + len(payload), kind | (NESTED if nested else 0)) + payload
    return body + b"\0" * ((4 - len(body) % 4) % 4)


def u32(kind, value):
    return attr(kind, struct.pack("=I", value))


def s32(kind, value):
    return attr(kind, struct.pack("=i", value))


def asciiz(kind, text):
    return attr(kind, text.encode() + b"\0")


def message(msg_type, body, flags=2, seq=1):
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def ifinfomsg(index, ifi_type=0):
    return struct.pack("=BxHiII", 0, ifi_type, index, 0, 0)


def tcmsg(index, parent, handle, info):
    return struct.pack("=BBHiIII", 0, 0, 0, index, handle, parent, info)


class Reply(object):
    """What pyroute2 hands back for one message: the receive buffer and where the message sits in it."""

    def __init__(self, data, offset, length):
        self.data, self.offset, self.length = data, offset, length


class FakeRtnl(object):
    """Answers every request with the messages of one receive buffer; records what was asked."""

    def __init__(self, *messages):
        self.buffer = b"".join(messages)
        self.asked = []

    def nlm_request(self, msg, msg_type, msg_flags):
        self.asked.append((msg_type, msg_flags, msg))
        out, offset = [], 0
        while offset < len(self.buffer):
            length = struct.unpack_from("=I", self.buffer, offset)[0]
            out.append(Reply(self.buffer, offset, length))
            offset += length
        return out


# ---- encoding -----------------------------------------------------------------------------------------------
def body_of(msg):
    msg.encode()
    return bytes(msg.data)[16:]      # after struct nlmsghdr, which pyroute2 fills when sending


def test_xdp_set_message_bytes():
    msg = nl._xdp_msg(7, 5, nl.XDP_FLAGS_DRV_MODE | nl.XDP_FLAGS_REPLACE, 9)
    expected = ifinfomsg(7) + attr(43, s32(1, 5) + u32(3, 20) + s32(8, 9), nested=True)
    assert body_of(msg) == expected


def test_xdp_detach_message_bytes():
    msg = nl._xdp_msg(3, -1, nl.XDP_FLAGS_SKB_MODE, None)
    assert body_of(msg) == ifinfomsg(3) + attr(43, s32(1, -1) + u32(3, 2), nested=True)


def test_xdp_auto_mode_sends_no_flags():
    assert body_of(nl._xdp_msg(3, 4, 0, None)) == ifinfomsg(3) + attr(43, s32(1, 4), nested=True)


def test_tc_filter_message_bytes():
    info = nl._filter_info(3)
    assert info == (3 << 16) | 0x0300                 # priority, htons(ETH_P_ALL)
    msg = nl._tc_msg(4, nl.TC_PARENTS["egress"], 5, info, "bpf",
                     [("TCA_BPF_FD", 11), ("TCA_BPF_NAME", "prog"), ("TCA_BPF_FLAGS", 1)])
    expected = (tcmsg(4, 0xFFFFFFF3, 5, info) + asciiz(1, "bpf")
                + attr(2, u32(6, 11) + asciiz(7, "prog") + u32(8, 1), nested=True))
    assert body_of(msg) == expected


def test_clsact_message_bytes():
    msg = nl._tc_msg(2, nl.TC_H_CLSACT, nl.CLSACT_HANDLE, kind="clsact")
    assert body_of(msg) == tcmsg(2, 0xFFFFFFF1, 0xFFFF0000, 0) + asciiz(1, "clsact")


# ---- decoding -----------------------------------------------------------------------------------------------
def link_reply(index, xdp_attrs=None, seq=1):
    body = ifinfomsg(index, 1) + asciiz(3, "veth%d" % index) + u32(4, 1500)
    if xdp_attrs is not None:
        body += attr(43, xdp_attrs, nested=True)
    return message(16, body, seq=seq)


@pytest.mark.parametrize("xdp_attrs,expected", [
    (None, {"prog_id": 0, "mode": None, "modes": {}}),
    (attr(2, b"\0"), {"prog_id": 0, "mode": None, "modes": {}}),
    (attr(2, b"\1") + u32(4, 41) + u32(5, 41),
     {"prog_id": 41, "mode": "native", "modes": {"native": 41}}),
    (attr(2, b"\2") + u32(4, 42) + u32(6, 42),
     {"prog_id": 42, "mode": "generic", "modes": {"generic": 42}}),
    (attr(2, b"\3") + u32(4, 43) + u32(7, 43),
     {"prog_id": 43, "mode": "offload", "modes": {"offload": 43}}),
    (attr(2, b"\4") + u32(5, 44) + u32(7, 45),          # multi: native + offload, no IFLA_XDP_PROG_ID
     {"prog_id": 44, "mode": "native", "modes": {"native": 44, "offload": 45}}),
    (attr(2, b"\2") + u32(4, 46),                         # kernels before per-mode ids (4.x)
     {"prog_id": 46, "mode": "generic", "modes": {"generic": 46}}),
])
def test_xdp_state_decoding(xdp_attrs, expected):
    rtnl = FakeRtnl(link_reply(9, xdp_attrs))
    assert nl._xdp_state(rtnl, 9, "veth9", "blue") == expected
    assert rtnl.asked[0][0] == nl.RTM_GETLINK


def test_xdp_state_of_vanished_interface():
    with pytest.raises(nl.NetlinkError, match="interface veth9 not found in network namespace blue"):
        nl._xdp_state(FakeRtnl(link_reply(8)), 9, "veth9", "blue")


def filter_reply(index, parent, priority, handle, kind="bpf", options=None, seq=1):
    body = tcmsg(index, parent, handle, (priority << 16) | 0x0300) + asciiz(1, kind)
    if options is not None:
        body += attr(2, options, nested=True)
    body += u32(11, 0)                    # TCA_CHAIN: unknown to us, skipped
    return message(44, body, seq=seq)


def test_filter_decoding_with_prog_id_tag_and_flags():
    tag = bytes.fromhex("59f4a931744dcdc6")
    bpf = (asciiz(7, "hm_prog") + u32(11, 812) + attr(10, tag) + u32(8, 1) + u32(9, 0))
    rtnl = FakeRtnl(
        filter_reply(3, 0xFFFFFFF2, 1, 0),                      # the classifier head: no options
        filter_reply(3, 0xFFFFFFF2, 1, 1, options=bpf),
        filter_reply(3, 0xFFFFFFF2, 7, 0x10, options=u32(11, 813)),         # no name, not direct-action
        filter_reply(3, 0xFFFFFFF2, 9, 0x800, kind="u32", options=u32(1, 0x10001) + attr(5, b"\xff" * 12)),
        filter_reply(4, 0xFFFFFFF2, 1, 1, options=u32(11, 999)),           # another interface
    )
    found = nl._filters(rtnl, 3, "ingress", "veth3", None)
    assert found == [
        {"priority": 1, "handle": 1, "kind": "bpf", "prog_id": 812, "name": "hm_prog", "direct_action": True,
         "tag": "59f4a931744dcdc6"},
        {"priority": 7, "handle": 0x10, "kind": "bpf", "prog_id": 813, "name": "", "direct_action": False,
         "tag": ""},
        {"priority": 9, "handle": 0x800, "kind": "u32", "prog_id": 0, "name": "", "direct_action": False,
         "tag": ""},
    ]
    msg_type, flags, request = rtnl.asked[0]
    assert msg_type == nl.RTM_GETTFILTER and request["parent"] == 0xFFFFFFF2 and request["index"] == 3


def test_clsact_detection():
    qdisc_root = message(36, tcmsg(3, 0xFFFFFFFF, 0, 2) + asciiz(1, "noqueue"))
    clsact = message(36, tcmsg(3, 0xFFFFFFF1, 0xFFFF0000, 1) + asciiz(1, "clsact"))
    other = message(36, tcmsg(5, 0xFFFFFFF1, 0xFFFF0000, 1) + asciiz(1, "ingress"))
    assert nl._clsact_kind(FakeRtnl(qdisc_root, clsact, other), 3, "veth3", None) == "clsact"
    assert nl._clsact_kind(FakeRtnl(qdisc_root, other), 3, "veth3", None) is None
    assert nl._clsact_kind(FakeRtnl(other), 5, "veth5", None) == "ingress"


# ---- input checks: refused before anything is sent ------------------------------------------------------------
@pytest.mark.parametrize("netns,path", [
    ("blue", "/run/netns/blue"),
    ("/proc/1/ns/net", "/proc/1/ns/net"),
    ("/var/run/netns/x", "/var/run/netns/x"),
])
def test_netns_path(netns, path):
    assert nl.netns_path(netns) == path


@pytest.mark.parametrize("netns", ["", "..", ".", "a/b", 7])
def test_netns_path_refuses(netns):
    with pytest.raises(nl.NetlinkError, match="invalid network namespace name"):
        nl.netns_path(netns)


def test_missing_namespace_is_clear_and_not_created():
    name = "hm-unit-missing-%d" % os.getpid()
    with pytest.raises(nl.NetlinkError) as err:
        with nl.in_netns(name):
            pytest.fail("entered a namespace that does not exist")
    assert str(err.value) == "network namespace %s does not exist (/run/netns/%s)" % (name, name)
    assert not os.path.exists("/run/netns/" + name)


def test_in_netns_none_stays():
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with nl.in_netns(None):
        assert os.stat("/proc/thread-self/ns/net").st_ino == before


@pytest.mark.parametrize("call,message", [
    (lambda: nl.xdp_attach("eth0", 3, mode="fast"), "invalid XDP mode 'fast'"),
    (lambda: nl.xdp_detach("eth0", mode="auto"), "invalid XDP mode 'auto'"),
    (lambda: nl.tc_attach("eth0", "in", 3), "invalid direction 'in'"),
    (lambda: nl.tc_attach("eth0", "ingress", 3, priority=0), "invalid tc priority 0"),
    (lambda: nl.tc_attach("eth0", "ingress", 3, priority=70000), "invalid tc priority 70000"),
    (lambda: nl.tc_attach("eth0", "ingress", 3, handle=0), "invalid tc handle 0"),
    (lambda: nl.tc_detach("eth0", "up", 1, 1), "invalid direction 'up'"),
    (lambda: nl.tc_query("eth0", "both"), "invalid direction 'both'"),
    (lambda: nl.tcx_attach("eth0", "egres", 3), "invalid direction 'egres'"),
    (lambda: nl.tcx_query("a-name-longer-than-15", "ingress"), "invalid interface name"),
    (lambda: nl.xdp_query("eth0", netns="../etc"), "invalid network namespace name"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(nl.NetlinkError, match=message.replace("(", "\\(")):
        call()


def test_kernel_error_text_carries_extended_ack():
    from pyroute2.netlink.exceptions import NetlinkError as PyrouteError
    err = nl._kernel_error(PyrouteError(17, "Native and generic XDP can't be active at the same time"), "attaching")
    assert str(err) == "attaching: File exists (Native and generic XDP can't be active at the same time)"
    assert err.errno == 17
    assert str(nl._kernel_error(PyrouteError(22), "x")) == "x: Invalid argument"


# ---- the same bytes with every pyroute2 the managed hosts carry -------------------------------------------------
ENCODE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink as nl
out = []
for m in (nl._xdp_msg(7, 5, 20, 9), nl._tc_msg(4, 0xFFFFFFF3, 5, nl._filter_info(3), "bpf",
          [("TCA_BPF_FD", 11), ("TCA_BPF_NAME", "prog"), ("TCA_BPF_FLAGS", 1)]),
          nl._genl_msg(nl._CtrlMsg, nl.CTRL_CMD_GETFAMILY, [("CTRL_ATTR_FAMILY_NAME", "netdev")]),
          nl._genl_msg(nl._NetdevMsg, nl.NETDEV_CMD_DEV_GET)):
    m.encode()
    out.append(bytes(m.data)[16:].hex())
print(" ".join(out))
"""


@pytest.mark.parametrize("flavour", ["system", "0.5.14"])
def test_encoding_is_the_same_on_other_pyroute2(flavour):
    python = "/usr/bin/python3"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if not os.path.exists(python):
        pytest.skip("no system python3 (/usr/bin/python3)")
    if flavour == "0.5.14":
        env["PYTHONPATH"] = os.path.join(TOP, ".cache", "pyroute2-0.5.14")     # scripts/bootstrap.sh installs it
        if not os.path.isdir(os.path.join(env["PYTHONPATH"], "pyroute2")):
            pytest.skip("pyroute2 0.5.14 not in .cache (scripts/bootstrap.sh installs it)")
    elif subprocess.run([python, "-c", "import pyroute2"], env=env, capture_output=True, check=False).returncode:
        pytest.skip("the system python3 cannot import pyroute2 (Debian's python3-pyroute2 is not installed)")
    here = subprocess.run([sys.executable, "-c", ENCODE, os.path.join(TOP, ".cache", "collections")],
                          capture_output=True, text=True, check=True).stdout
    there = subprocess.run([python, "-c", ENCODE, os.path.join(TOP, ".cache", "collections")],
                           capture_output=True, text=True, env=env, check=False)
    assert there.returncode == 0, there.stderr
    assert there.stdout == here


# ---- the transport: what _Rtnl makes of the kernel's answers -------------------------------------------------
class FakeSocket(object):
    """Stands for the NETLINK_ROUTE socket: keeps what was sent, answers with the given receive buffers."""

    def __init__(self, *buffers):
        self.buffers = list(buffers)
        self.sent = []

    def send(self, data):
        self.sent.append(data)

    def recv(self, size):
        return self.buffers.pop(0)


def rtnl_with(*buffers):
    rtnl = nl._Rtnl.__new__(nl._Rtnl)
    rtnl.sock, rtnl.seq = FakeSocket(*buffers), 0
    return rtnl


def ack(seq, error=0, extack=None):
    flags = 0x100 | (0x200 if extack else 0)             # NLM_F_CAPPED, NLM_F_ACK_TLVS
    body = struct.pack("=i", error) + struct.pack("=IHHII", 32, 19, 5, seq, 0)
    if extack:
        body += asciiz(1, extack)
    return message(2, body, flags=flags, seq=seq)


def test_dump_over_two_buffers_until_done_skipping_other_sequence_numbers():
    q1 = message(36, tcmsg(3, 0xFFFFFFF1, 0xFFFF0000, 1) + asciiz(1, "clsact"), seq=1)
    stray = message(36, tcmsg(9, 0xFFFFFFF1, 0xFFFF0000, 1) + asciiz(1, "clsact"), seq=77)
    done = message(3, struct.pack("=i", 0), seq=1)
    rtnl = rtnl_with(q1 + stray, done)
    assert nl._clsact_kind(rtnl, 3, "veth3", None) == "clsact"
    header = struct.unpack_from("=IHHII", rtnl.sock.sent[0])
    assert header[1:4] == (nl.RTM_GETQDISC, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 1)


def test_get_without_ack_returns_after_its_answer():
    body = ifinfomsg(9, 1) + asciiz(3, "veth9") + attr(43, attr(2, b"\2") + u32(4, 42) + u32(6, 42), nested=True)
    rtnl = rtnl_with(message(16, body, flags=0))        # no NLM_F_MULTI: the one answer
    assert nl._xdp_state(rtnl, 9, "veth9", None)["prog_id"] == 42


def test_refusal_carries_errno_and_the_kernels_text():
    rtnl = rtnl_with(ack(1, -17, "Native and generic XDP can't be active at the same time"))
    with pytest.raises(nl.NetlinkError) as err:
        nl._set_xdp(rtnl, 3, 5, nl.XDP_FLAGS_DRV_MODE, None, "attaching")
    assert err.value.errno == 17
    assert str(err.value) == "attaching: File exists (Native and generic XDP can't be active at the same time)"
    rtnl = rtnl_with(ack(1, -22))
    with pytest.raises(nl.NetlinkError, match="^attaching: Invalid argument$"):
        nl._set_xdp(rtnl, 3, 5, 0, None, "attaching")


def test_ack_of_success_ends_the_request():
    rtnl = rtnl_with(ack(1))
    nl._set_xdp(rtnl, 3, 5, 0, None, "attaching")
    assert len(rtnl.sock.sent) == 1 and rtnl.sock.buffers == []


# ---- generic netlink: the XDP features drivers announce (netdev family) ---------------------------------------
def genl(cmd, version=1):
    return struct.pack("=BBH", cmd, version, 0)


class ClosingSocket(FakeSocket):
    closed = False

    def close(self):
        self.closed = True


def genl_with(monkeypatch, *buffers):
    rtnl = nl._Rtnl.__new__(nl._Rtnl)
    rtnl.sock, rtnl.seq = ClosingSocket(*buffers), 0
    monkeypatch.setattr(nl, "_Rtnl", lambda protocol, timeout=None: rtnl if protocol == nl.NETLINK_GENERIC else None)
    return rtnl


def test_xdp_features_finds_the_family_then_dumps_the_devices(monkeypatch):
    family = message(0x10, genl(1, 2) + attr(1, struct.pack("=H", 27)) + asciiz(2, "netdev"), flags=0, seq=1)
    dev4 = message(27, genl(1) + u32(1, 4) + attr(3, struct.pack("=Q", 0x1 | 0x2 | 0x20)), seq=2)
    dev1 = message(27, genl(1) + u32(1, 1) + attr(3, struct.pack("=Q", 0)), seq=2)
    done = message(3, struct.pack("=i", 0), seq=2)
    rtnl = genl_with(monkeypatch, family, dev4 + dev1, done)
    assert nl.xdp_features() == {4: ["basic", "redirect", "rx_sg"], 1: []}
    ask, dump = rtnl.sock.sent
    assert struct.unpack_from("=IHHII", ask)[1:4] == (nl.GENL_ID_CTRL, nl.NLM_F_REQUEST, 1)
    assert ask[16:] == genl(nl.CTRL_CMD_GETFAMILY) + asciiz(2, "netdev")
    assert struct.unpack_from("=IHHII", dump)[1:4] == (27, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 2)
    assert dump[16:] == genl(nl.NETDEV_CMD_DEV_GET)
    assert rtnl.sock.closed


def test_xdp_features_without_the_netdev_family_says_the_kernel_is_older(monkeypatch):
    rtnl = genl_with(monkeypatch, ack(1, -2))
    with pytest.raises(OSError) as err:
        nl.xdp_features()
    assert err.value.errno == 2
    assert err.value.strerror == "the kernel has no netdev generic netlink family (kernel < 6.3)"
    assert rtnl.sock.closed


def test_netlink_imports_pyroute2_netlink_only():
    """Not pyroute2/__init__.py (all of pyroute2, 130-200 ms); `import pyroute2` afterwards still gets it whole."""
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink\n"
            "assert netlink.HAS_PYROUTE2\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('pyroute2'))\n"
            "assert 'pyroute2.iproute' not in loaded and 'asyncio' not in sys.modules, loaded\n"
            "from pyroute2 import IPRoute\n"
            "assert 'pyroute2.iproute' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code, os.path.join(TOP, ".cache", "collections")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
