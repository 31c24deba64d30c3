"""netlink.py on the real kernel: XDP, tc and tcx attachment proven with ping across a veth pair between two
network namespaces, and cross-checked with what bpftool and tc read from the same interfaces.

Programs are two instructions long (r0 = verdict; exit), loaded with bpf_syscall: no libbpf, no object files.
"""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import needs_root
from tests.integration.netns import ping
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as b
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink as nl
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes

pytestmark = needs_root

XDP_DROP, XDP_PASS = 1, 2
TC_ACT_OK, TC_ACT_SHOT = 0, 2
TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Progs(object):
    """Loads tiny programs and closes their fds at the end of the test."""

    def __init__(self):
        self.fds = []

    def load(self, prog_type, verdict, name):
        fd = b.prog_load(prog_type, b.MOV64_IMM(0, verdict) + b.EXIT(), prog_name=name)
        self.fds.append(fd)
        return fd, b.prog_info(fd)["id"]

    def xdp(self, verdict):
        return self.load(b.BPF_PROG_TYPE_XDP, verdict, "hm_t_xdp%d" % verdict)

    def tc(self, verdict):
        return self.load(b.BPF_PROG_TYPE_SCHED_CLS, verdict, "hm_t_tc%d" % verdict)

    def close(self):
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def progs():
    p = Progs()
    yield p
    p.close()


def bpftool_net(ns):
    out = subprocess.check_output(["ip", "netns", "exec", ns, "bpftool", "-j", "net", "show"])
    return json.loads(out)[0]


def qdiscs(ns, ifname):
    return subprocess.check_output(["tc", "-n", ns, "qdisc", "show", "dev", ifname], text=True)


# ---- errors ---------------------------------------------------------------------------------------------------
def test_unknown_namespace_and_interface_are_clear(veth_pair, progs):
    with pytest.raises(nl.NetlinkError, match=r"network namespace hm-nope does not exist \(/run/netns/hm-nope\)"):
        nl.xdp_query("lo", netns="hm-nope")
    assert not os.path.exists("/run/netns/hm-nope")        # and it was not created on the way
    with pytest.raises(nl.NetlinkError, match="interface eth9 not found in network namespace %s" % veth_pair.ns_b):
        nl.ifindex("eth9", netns=veth_pair.ns_b)
    with pytest.raises(nl.NetlinkError, match="interface %s not found in the current network namespace"
                       % veth_pair.if_b):
        nl.tc_query(veth_pair.if_b, "ingress")
    fd, _unused = progs.tc(TC_ACT_OK)
    with pytest.raises(nl.NetlinkError, match="interface nope0 not found in network namespace"):
        nl.tcx_attach("nope0", "ingress", fd, netns=veth_pair.ns_b)
    with pytest.raises(nl.NetlinkError, match="invalid direction"):
        nl.tc_attach(veth_pair.if_b, "sideways", fd, netns=veth_pair.ns_b)
    with pytest.raises(nl.NetlinkError, match="invalid XDP mode"):
        nl.xdp_attach(veth_pair.if_b, fd, mode="turbo", netns=veth_pair.ns_b)
    assert "clsact" not in qdiscs(veth_pair.ns_b, veth_pair.if_b)


def test_in_netns_moves_only_the_thread_and_comes_back(veth_pair):
    home = os.stat("/proc/thread-self/ns/net").st_ino
    target = os.stat("/run/netns/" + veth_pair.ns_a).st_ino
    with nl.in_netns(veth_pair.ns_a):
        assert os.stat("/proc/thread-self/ns/net").st_ino == target
        assert os.stat("/proc/self/ns/net").st_ino == target      # main thread: the one we are on here
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    with pytest.raises(RuntimeError):
        with nl.in_netns("/run/netns/" + veth_pair.ns_b):
            raise RuntimeError("boom")
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    with pytest.raises(nl.NetlinkError, match="cannot enter network namespace"):
        with nl.in_netns("/proc/self/stat"):
            pass
    assert os.stat("/proc/thread-self/ns/net").st_ino == home


# ---- XDP ------------------------------------------------------------------------------------------------------
def test_xdp_drop_blocks_ping_and_detach_restores_it(veth_pair, progs):
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    assert ping(veth_pair.ns_a, veth_pair.addr_b)
    assert nl.xdp_query(dev, ns) == {"prog_id": 0, "mode": None, "modes": {}}
    drop_fd, drop_id = progs.xdp(XDP_DROP)
    nl.xdp_attach(dev, drop_fd, netns=ns)
    state = nl.xdp_query(dev, ns)
    assert state["prog_id"] == drop_id and state["mode"] == "native"      # auto picks native on veth
    xdp_seen = bpftool_net(ns)["xdp"]
    assert [(x["devname"], x["mode"], x["id"]) for x in xdp_seen] == [(dev, "driver", drop_id)]
    assert not ping(veth_pair.ns_a, veth_pair.addr_b)
    assert nl.xdp_detach(dev, ns) is True
    assert nl.xdp_query(dev, ns)["prog_id"] == 0
    assert ping(veth_pair.ns_a, veth_pair.addr_b)
    assert nl.xdp_detach(dev, ns) is False          # nothing left: no change


@pytest.mark.parametrize("mode,expected,bpftool_mode", [
    ("generic", "generic", "generic"),
    ("native", "native", "driver"),
    ("auto", "native", "driver"),
])
def test_xdp_modes_on_veth(veth_pair, progs, mode, expected, bpftool_mode):
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    drop_fd, drop_id = progs.xdp(XDP_DROP)
    nl.xdp_attach(dev, drop_fd, mode=mode, netns=ns)
    assert nl.xdp_query(dev, ns) == {"prog_id": drop_id, "mode": expected, "modes": {expected: drop_id}}
    assert [(x["mode"], x["id"]) for x in bpftool_net(ns)["xdp"]] == [(bpftool_mode, drop_id)]
    assert not ping(veth_pair.ns_a, veth_pair.addr_b, count=2)
    assert nl.xdp_detach(dev, ns, mode=expected) is True
    assert bpftool_net(ns)["xdp"] == []
    assert ping(veth_pair.ns_a, veth_pair.addr_b)


def test_xdp_offload_and_mixed_modes_are_refused_and_change_nothing(veth_pair, progs):
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    pass_fd, pass_id = progs.xdp(XDP_PASS)
    with pytest.raises(nl.NetlinkError, match="attaching XDP program \\(offload mode\\) to %s" % dev):
        nl.xdp_attach(dev, pass_fd, mode="offload", netns=ns)
    assert nl.xdp_query(dev, ns)["prog_id"] == 0
    nl.xdp_attach(dev, pass_fd, mode="generic", netns=ns)
    drop_fd, _unused = progs.xdp(XDP_DROP)
    with pytest.raises(nl.NetlinkError, match="attached now: program id %d in generic mode" % pass_id) as err:
        nl.xdp_attach(dev, drop_fd, mode="native", netns=ns)
    assert err.value.errno == errno.EEXIST
    assert "can't be active at the same time" in str(err.value)     # the kernel's extended ack text
    assert nl.xdp_query(dev, ns)["modes"] == {"generic": pass_id}
    assert ping(veth_pair.ns_a, veth_pair.addr_b)


def test_xdp_atomic_replace(veth_pair, progs):
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    pass_fd, pass_id = progs.xdp(XDP_PASS)
    drop_fd, drop_id = progs.xdp(XDP_DROP)
    other_fd, other_id = progs.xdp(XDP_PASS)
    nl.xdp_attach(dev, pass_fd, netns=ns, replace_prog_id=0)        # 0: only when nothing is attached
    assert ping(veth_pair.ns_a, veth_pair.addr_b)
    with pytest.raises(nl.NetlinkError, match="the slot was free when read, and program id %d is attached now"
                       % pass_id):
        nl.xdp_attach(dev, drop_fd, netns=ns, replace_prog_id=0)    # something is attached now
    with pytest.raises(nl.NetlinkError, match="program id %d is no longer the one attached \\(now: program id %d\\)"
                       % (other_id, pass_id)):
        nl.xdp_attach(dev, drop_fd, netns=ns, replace_prog_id=other_id)
    assert nl.xdp_query(dev, ns)["prog_id"] == pass_id
    assert ping(veth_pair.ns_a, veth_pair.addr_b)
    nl.xdp_attach(dev, drop_fd, netns=ns, replace_prog_id=pass_id)
    assert nl.xdp_query(dev, ns) == {"prog_id": drop_id, "mode": "native", "modes": {"native": drop_id}}
    assert not ping(veth_pair.ns_a, veth_pair.addr_b)
    with pytest.raises(nl.NetlinkError, match="program id %d is attached .*not the expected %d" % (drop_id, pass_id)):
        nl.xdp_detach(dev, ns, expected_prog_id=pass_id)
    assert nl.xdp_query(dev, ns)["prog_id"] == drop_id
    assert nl.xdp_detach(dev, ns, expected_prog_id=drop_id) is True
    assert ping(veth_pair.ns_a, veth_pair.addr_b)


def test_xdp_replace_of_unloaded_program_is_clear(veth_pair, progs):
    pass_fd, _unused = progs.xdp(XDP_PASS)
    with pytest.raises(nl.NetlinkError, match="XDP program id 4000000000 to be replaced is not loaded"):
        nl.xdp_attach(veth_pair.if_b, pass_fd, netns=veth_pair.ns_b, replace_prog_id=4000000000)
    assert nl.xdp_query(veth_pair.if_b, veth_pair.ns_b)["prog_id"] == 0


def test_xdp_held_by_a_bpf_link_is_refused_with_the_reason(veth_pair, progs):
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    drop_fd, drop_id = progs.xdp(XDP_DROP)
    pass_fd, _unused = progs.xdp(XDP_PASS)
    with nl.in_netns(ns):  # a link made here: the collection attaches XDP through netlink only
        link = b.link_create(drop_fd, socket.if_nametoindex(dev), b.BPF_XDP, flags=nl.XDP_FLAGS_SKB_MODE)
    try:
        assert nl.xdp_query(dev, ns) == {"prog_id": drop_id, "mode": "generic", "modes": {"generic": drop_id}}
        assert b.link_info(link)["type_name"] == "xdp"
        assert not ping(veth_pair.ns_a, veth_pair.addr_b, count=2)
        with pytest.raises(nl.NetlinkError, match="held by a bpf link"):
            nl.xdp_attach(dev, pass_fd, mode="generic", netns=ns)
        with pytest.raises(nl.NetlinkError, match="held by a bpf link"):
            nl.xdp_detach(dev, ns)
        assert nl.xdp_query(dev, ns)["prog_id"] == drop_id
    finally:
        os.close(link)
    assert nl.xdp_query(dev, ns)["prog_id"] == 0
    assert ping(veth_pair.ns_a, veth_pair.addr_b)


# ---- tc -------------------------------------------------------------------------------------------------------
def test_tc_ingress_shot_blocks_ping_query_replace_detach(veth_pair, progs):
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    shot_fd, shot_id = progs.tc(TC_ACT_SHOT)
    ok_fd, ok_id = progs.tc(TC_ACT_OK)
    assert nl.tc_query(dev, "ingress", ns) == []
    assert nl.tc_attach(dev, "ingress", shot_fd, priority=3, handle=5, name="hm_shot", netns=ns) == \
        {"created_qdisc": True, "previous_prog_id": 0}
    assert "clsact" in qdiscs(ns, dev)
    found = nl.tc_query(dev, "ingress", ns)
    assert [(f["prog_id"], f["priority"], f["handle"], f["name"], f["direct_action"], f["kind"]) for f in found] \
        == [(shot_id, 3, 5, "hm_shot", True, "bpf")]
    assert found[0]["tag"] == b.prog_info(shot_fd)["tag"]
    assert nl.tc_query(dev, "egress", ns) == []
    tc_seen = bpftool_net(ns)["tc"]
    assert [(t["devname"], t["kind"], t["id"]) for t in tc_seen] == [(dev, "clsact/ingress", shot_id)]
    assert not ping(veth_pair.ns_a, veth_pair.addr_b)
    # same priority and handle: replaced in place
    assert nl.tc_attach(dev, "ingress", ok_fd, priority=3, handle=5, name="hm_ok", netns=ns) == \
        {"created_qdisc": False, "previous_prog_id": shot_id}
    assert [(f["prog_id"], f["name"]) for f in nl.tc_query(dev, "ingress", ns)] == [(ok_id, "hm_ok")]
    assert ping(veth_pair.ns_a, veth_pair.addr_b)
    assert nl.tc_detach(dev, "ingress", 3, 5, ns, remove_qdisc_if_empty=True) == \
        {"removed": True, "removed_qdisc": True}
    assert "clsact" not in qdiscs(ns, dev)
    assert nl.tc_detach(dev, "ingress", 3, 5, ns, remove_qdisc_if_empty=True) == \
        {"removed": False, "removed_qdisc": False}


def test_tc_egress_and_ordering(veth_pair, progs):
    ns, dev = veth_pair.ns_a, veth_pair.if_a
    ok_fd, ok_id = progs.tc(TC_ACT_OK)
    shot_fd, shot_id = progs.tc(TC_ACT_SHOT)
    nl.tc_attach(dev, "egress", shot_fd, priority=20, netns=ns)
    assert not ping(veth_pair.ns_a, veth_pair.addr_b)
    # a direct-action OK at a lower priority number runs first and ends the chain: traffic flows again
    assert nl.tc_attach(dev, "egress", ok_fd, priority=10, netns=ns)["created_qdisc"] is False
    assert [(f["priority"], f["prog_id"]) for f in nl.tc_query(dev, "egress", ns)] == [(10, ok_id), (20, shot_id)]
    assert ping(veth_pair.ns_a, veth_pair.addr_b)
    # removing one filter keeps the qdisc while another one is left
    assert nl.tc_detach(dev, "egress", 10, 1, ns, remove_qdisc_if_empty=True) == \
        {"removed": True, "removed_qdisc": False}
    assert not ping(veth_pair.ns_a, veth_pair.addr_b)
    assert nl.tc_detach(dev, "egress", 20, 1, ns) == {"removed": True, "removed_qdisc": False}
    assert "clsact" in qdiscs(ns, dev)
    assert ping(veth_pair.ns_a, veth_pair.addr_b)


def test_tc_refused_attach_leaves_no_qdisc(veth_pair, progs):
    xdp_fd, _unused = progs.xdp(XDP_PASS)          # wrong program type for cls_bpf
    with pytest.raises(nl.NetlinkError, match="attaching tc ingress filter \\(priority 1, handle 1\\) to %s"
                       % veth_pair.if_b) as err:
        nl.tc_attach(veth_pair.if_b, "ingress", xdp_fd, netns=veth_pair.ns_b)
    assert err.value.errno is not None
    assert "clsact" not in qdiscs(veth_pair.ns_b, veth_pair.if_b)


def test_tc_refuses_foreign_ingress_qdisc(veth_pair, progs):
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    subprocess.check_call(["tc", "-n", ns, "qdisc", "add", "dev", dev, "ingress"])
    ok_fd, _unused = progs.tc(TC_ACT_OK)
    with pytest.raises(nl.NetlinkError, match="has a ingress qdisc where clsact is needed"):
        nl.tc_attach(dev, "ingress", ok_fd, netns=ns)
    assert nl.tc_query(dev, "ingress", ns) == []


# ---- tcx ------------------------------------------------------------------------------------------------------
def test_tcx_attach_query_and_close_detaches(veth_pair, progs):
    found = probes.probe("tcx")  # decided before tcx_attach runs: where the probe says yes, it must attach
    if not found["supported"]:
        pytest.skip("probes.probe('tcx'): not supported here: %s" % found["reason"])
    ns, dev = veth_pair.ns_b, veth_pair.if_b
    shot_fd, shot_id = progs.tc(TC_ACT_SHOT)
    link = nl.tcx_attach(dev, "ingress", shot_fd, netns=ns)
    try:
        assert nl.tcx_query(dev, "ingress", ns) == [shot_id]
        assert nl.tcx_query(dev, "egress", ns) == []
        info = b.link_info(link)
        assert (info["type_name"], info["prog_id"], info["ifindex"]) == ("tcx", shot_id, nl.ifindex(dev, ns))
        # (bpftool 7.1 predates tcx and does not list it: traffic is the independent witness here)
        assert not ping(veth_pair.ns_a, veth_pair.addr_b)
    finally:
        os.close(link)                       # not pinned: the last fd going away detaches the program
    assert nl.tcx_query(dev, "ingress", ns) == []
    assert ping(veth_pair.ns_a, veth_pair.addr_b)


# ---- the same on every pyroute2 version the managed hosts carry -----------------------------------------------
SMOKE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from tests.integration.netns import make_veth_pair, ping
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as b, netlink as nl
def load(t, v):
    fd = b.prog_load(t, b.MOV64_IMM(0, v) + b.EXIT(), prog_name="hm_t_smoke")
    return fd, b.prog_info(fd)["id"]
with make_veth_pair() as p:
    ns, dev = p.ns_b, p.if_b
    xp, xp_id = load(b.BPF_PROG_TYPE_XDP, 2)
    xd, xd_id = load(b.BPF_PROG_TYPE_XDP, 1)
    ts, ts_id = load(b.BPF_PROG_TYPE_SCHED_CLS, 2)
    nl.xdp_attach(dev, xp, netns=ns)
    assert nl.xdp_query(dev, ns)["prog_id"] == xp_id
    assert ping(p.ns_a, p.addr_b)
    nl.xdp_attach(dev, xd, netns=ns, replace_prog_id=xp_id)
    assert nl.xdp_query(dev, ns) == {"prog_id": xd_id, "mode": "native", "modes": {"native": xd_id}}
    assert not ping(p.ns_a, p.addr_b, count=2)
    assert nl.xdp_detach(dev, ns, expected_prog_id=xd_id)
    nl.xdp_attach(dev, xd, mode="generic", netns=ns)
    assert nl.xdp_query(dev, ns)["mode"] == "generic"
    assert nl.xdp_detach(dev, ns)
    assert ping(p.ns_a, p.addr_b)
    assert nl.tc_attach(dev, "ingress", ts, name="smoke", netns=ns)["created_qdisc"]
    found = nl.tc_query(dev, "ingress", ns)
    assert [(f["prog_id"], f["name"], f["direct_action"]) for f in found] == [(ts_id, "smoke", True)], found
    assert not ping(p.ns_a, p.addr_b, count=2)
    assert nl.tc_detach(dev, "ingress", 1, 1, ns, remove_qdisc_if_empty=True)["removed_qdisc"]
    assert ping(p.ns_a, p.addr_b)
    try:
        nl.ifindex("eth9", ns)
        raise AssertionError("no error")
    except nl.NetlinkError as exc:
        assert str(exc) == "interface eth9 not found in network namespace " + ns
# netlink.py imported only pyroute2.netlink (not the whole package, which costs 130-200 ms) ...
assert "pyroute2.iproute" not in sys.modules, sorted(m for m in sys.modules if m.startswith("pyroute2"))
# ... and the package still loads whole on first use, for code that wants more of it
import pyroute2
from pyroute2 import IPRoute
assert "pyroute2.iproute" in sys.modules
print("SMOKE-OK", getattr(pyroute2, "__version__", "?"))
"""


def _pyroute2_0514():
    """pyroute2 0.5.14 (Debian 11's) in .cache, installed with pip on first use."""
    target = os.path.join(TOP, ".cache", "pyroute2-0.5.14")
    if not os.path.isdir(os.path.join(target, "pyroute2")):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
                               "pyroute2==0.5.14"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip("cannot install pyroute2 0.5.14: %s" % proc.stderr[-300:])
    return target


def _system_python(with_pyroute2):
    """/usr/bin/python3 (the interpreter the managed hosts run modules with); with_pyroute2: its own pyroute2
    (Debian's python3-pyroute2) is needed too. Both are facts of the machine, checked before the test runs."""
    py = "/usr/bin/python3"
    if not os.path.exists(py):
        pytest.skip("no system python3 (/usr/bin/python3)")
    if with_pyroute2 and subprocess.run([py, "-c", "import pyroute2"], capture_output=True,
                                        check=False).returncode != 0:
        pytest.skip("the system python3 cannot import pyroute2 (Debian's python3-pyroute2 is not installed)")
    return py


@pytest.mark.parametrize("flavour", ["venv", "system", "0.5.14"])
def test_same_behaviour_on_each_pyroute2(flavour):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if flavour == "venv":
        python = sys.executable
    else:
        python = _system_python(with_pyroute2=flavour == "system")
        if flavour == "0.5.14":
            env["PYTHONPATH"] = _pyroute2_0514()
    proc = subprocess.run([python, "-c", SMOKE, os.path.join(TOP, ".cache", "collections"), TOP],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0 and "SMOKE-OK" in proc.stdout, proc.stdout + proc.stderr
    if flavour == "0.5.14":
        assert "SMOKE-OK 0.5.14" in proc.stdout
