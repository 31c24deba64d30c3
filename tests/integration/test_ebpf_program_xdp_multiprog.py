"""ebpf_program with attach.xdp.priority / proceed_on (several programs on one interface through libxdp's
dispatcher), on this machine's kernel.

Here the kernel refuses program extensions (freplace, lockdown), so libxdp would fall back to one plain program
per interface: the module must refuse before anything changes, with the refusal of feature xdp_multiprog (the
kernel, the reason, what it needs), in check mode too, and leave a program xdp-loader attached as it was. Where
the probe says the kernel can, these tests skip: the attach itself is proven in the qemu guests (Debian 12+).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS, needs_root
from test_ebpf_program_common import (counter, pin_root_fixture, kernel_ids, kname, leaked, obj, ping,
                                      private_object, run)
from test_ebpf_program_globals import exchange, verdicts

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libxdp, netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state, xdp_dispatcher
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_attach import AttachError

pytestmark = needs_root
pin_root = pin_root_fixture("hm-prog-multi")
OURS = (kname("xdp_count"),)
OUR_MAPS = (kname("xdp_stats"),)


@pytest.fixture(scope="module")
def cannot():
    """Skip unless this kernel refuses feature xdp_multiprog (the refusal is what runs here)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    result = probes.probe("xdp_multiprog")
    if result["supported"]:
        pytest.skip("probe: this kernel runs libxdp's dispatcher (%s); the refusal is for hosts that cannot"
                    % result["reason"])
    return result


def counter_object():
    return private_object("xdp_counter", ["xdp_count", "xdp_stats"])


def _args(pin_root, pair, **xdp):
    spec = {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic", "priority": 10, "proceed_on": ["pass"]}
    spec.update(xdp)
    return {"name": "multi-%d" % os.getpid(), "object": counter_object(), "pin_root": pin_root,
            "attach": {"xdp": spec}}


def _refused(args, pin_root, needles):
    before = kernel_ids()
    for check in (True, False):
        r = run(args, check=check)
        assert r.get("failed"), r
        for needle in needles:
            assert needle in r["msg"], (needle, r["msg"])
    assert not os.path.exists(os.path.join(pin_root, args["name"]))
    assert program_state.read_record(args["name"]) is None
    assert not any(leaked(before, list(OURS), list(OUR_MAPS)).values())
    return r


def test_refused_before_anything_changes(pin_root, pair, cannot):
    r = _refused(_args(pin_root, pair), pin_root, [
        "several xdp programs on one interface", "are not supported on kernel %s: " % os.uname().release,
        cannot["reason"], "xdp_multiprog needs kernel >= 5.10", "libxdp 1.3+ on the host"])
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0, r


def test_proceed_on_alone_takes_the_same_route(pin_root, pair, cannot):
    args = _args(pin_root, pair)
    del args["attach"]["xdp"]["priority"]
    _refused(args, pin_root, ["xdp_multiprog needs kernel >= 5.10"])


@pytest.mark.skipif(not shutil.which("xdp-loader"), reason="probe: no xdp-loader on this machine (xdp-tools)")
def test_a_program_xdp_loader_attached_stays_attached_and_running(pin_root, pair, cannot):
    """xdp-loader on this kernel falls back to a plain program; ours is refused, theirs keeps the interface."""
    nsenter = ["nsenter", "--net=/run/netns/" + pair.ns_b, "xdp-loader"]
    subprocess.check_call(nsenter + ["load", "-m", "skb", pair.if_b, counter_object()])
    try:
        theirs = netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"]
        assert theirs
        _refused(_args(pin_root, pair), pin_root, ["xdp_multiprog needs kernel >= 5.10"])
        # what libxdp reads there (in the netns, through setns): a plain program, which no second one can join
        spec = dict(_args(pin_root, pair)["attach"]["xdp"], type="xdp")
        state = xdp_dispatcher.read(spec)
        assert state["legacy"] and state["main"]["id"] == theirs and state["programs"] == [], state
        with pytest.raises(AttachError, match="holds XDP program id %d .* attached without libxdp's dispatcher"
                           % theirs):
            xdp_dispatcher.check_slot(spec, set())
        assert not xdp_dispatcher.is_attached(spec, theirs)
        assert xdp_dispatcher.detach(spec, set([theirs + 100000])) is False  # not ours: nothing touched
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == theirs
        assert ping(pair.ns_a, pair.addr_b)
    finally:
        subprocess.call(nsenter + ["unload", "--all", pair.if_b])
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0


@pytest.mark.parametrize("xdp, needle", [
    ({"priority": 1001}, "attach.xdp.priority must be an integer from 0 to 1000"),
    ({"priority": -3}, "attach.xdp.priority must be an integer from 0 to 1000"),
    ({"proceed_on": ["accept"]}, "proceed_on"),
    ({"mode": "offload"}, "attach.xdp.mode offload cannot be used with attach.xdp.priority"),
])
def test_bad_input(pin_root, pair, xdp, needle):
    args = _args(pin_root, pair, **xdp)
    before = kernel_ids()
    for check in (True, False):
        r = run(args, check=check)
        assert r.get("failed") and needle in r["msg"], r
    assert not os.path.exists(os.path.join(pin_root, args["name"]))
    assert not any(leaked(before, list(OURS), list(OUR_MAPS)).values())
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0


_FALLBACK = """
import json, sys
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libbpf, libxdp
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import xdp_dispatcher
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_attach import AttachError
spec = json.loads(sys.argv[1])
before = xdp_dispatcher.read(spec)
with libbpf.BpfObject(sys.argv[2]) as obj:
    obj.select(sys.argv[3])
    try:
        xdp_dispatcher.attach(spec, obj, sys.argv[3])
        print(json.dumps({"before": before, "error": None}))
    except (AttachError, libxdp.LibxdpError) as e:
        print(json.dumps({"before": before, "error": str(e), "kind": type(e).__name__}))
"""


@pytest.mark.skipif(not libxdp.available(), reason="probe: no libxdp.so.1 (libxdp1) on this machine")
def test_libxdp_falling_back_to_a_plain_program_is_caught_and_undone(pair, cannot):
    """Bypassing the gate: libxdp on this kernel cannot use its dispatcher, attaches a plain XDP program and answers
    0 (its silent fallback); the attach must see that, take the program off again and fail. Run in a process of
    its own, as a module runs (libxdp 1.3.1 keeps one descriptor of the interface's program per read of it until
    the process exits: xdp_multiprog__from_id dups the fd it opened and never closes it)."""
    spec = dict(_args("/unused", pair)["attach"]["xdp"], type="xdp")
    before = kernel_ids()
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    proc = subprocess.run([sys.executable, "-c", _FALLBACK, json.dumps(spec), counter_object(), kname("xdp_count")],
                          capture_output=True, text=True, env=env, check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] is None, out  # nothing on the interface, as libxdp reads it
    assert out["error"], out
    if out["kind"] == "AttachError":
        assert "libxdp attached a plain xdp program, not an extension in its dispatcher" in out["error"], out
        assert "Falling back to loading single prog without dispatcher" in out["error"], out
        assert "detached again" in out["error"], out
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0
    assert not any(leaked(before, list(OURS), list(OUR_MAPS)).values())


# ---- where the kernel can (Debian 12+ guests, kernel 5.10+ with libxdp1): the dispatcher itself --------------
@pytest.fixture(scope="module")
def can():
    """Skip unless this host runs libxdp's dispatcher (feature xdp_multiprog) and has xdp-loader."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    result = probes.probe("xdp_multiprog")
    if not result["supported"]:
        pytest.skip("probe: %s" % result["reason"])
    if not shutil.which("xdp-loader"):
        pytest.skip("probe: no xdp-loader on this machine (xdp-tools)")
    return result


def _loader_status(pair):
    return subprocess.run(["nsenter", "--net=/run/netns/" + pair.ns_b, "xdp-loader", "status", pair.if_b],
                          capture_output=True, text=True, check=True).stdout


def test_two_programs_in_priority_order_swapped_without_a_gap(pin_root, pair, can):
    """A drop filter (UDP port 9) and a counter on one interface: both see what the filter passes, the counter
    after it sees none of what it drops; the counter moved before the filter then sees those too; moving the
    filter lets no datagram through while the dispatcher is swapped; xdp-loader lists both; removing both leaves
    the interface empty."""
    where = {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}
    filt = {"name": "mp-filter-%d" % os.getpid(), "object": obj("xdp_port_drop"), "pin_root": pin_root,
            "globals": {"drop_port": 9}, "attach": {"xdp": dict(where, priority=10, proceed_on=["pass"])}}
    count = {"name": "mp-count-%d" % os.getpid(), "object": counter_object(), "pin_root": pin_root,
             "attach": {"xdp": dict(where, priority=20)}}
    stats = os.path.join(pin_root, count["name"], "maps", kname("xdp_stats"))
    fdir = os.path.join(pin_root, filt["name"])
    # the four-run check for each, then what the kernel holds
    for args in (filt, count):
        runs = [run(args, check=True), run(args), run(args), run(args, check=True)]
        assert [r["changed"] for r in runs] == [True, True, False, False], runs
        assert not any(r.get("failed") for r in runs), runs
    status = _loader_status(pair)
    assert "xdp_dispatcher" in status and "xdp_port_drop" in status and kname("xdp_count") in status, status

    c0, (p0, d0) = counter(stats), verdicts(fdir)
    got = exchange(pair, count=5, ports=(9, 10))
    assert got == {9: 0, 10: 5}, got
    p1, d1 = verdicts(fdir)
    assert d1 - d0 == 5 and p1 - p0 >= 5
    c1 = counter(stats)
    assert 5 <= c1 - c0 < 10, (c0, c1)  # port 10 and the control datagram, never the 5 dropped

    # the counter before the filter: it now counts the dropped datagrams too (its map kept across the replace)
    moved = dict(count, attach={"xdp": dict(where, priority=5)})
    r = run(moved)
    assert r["changed"] and not r.get("failed"), r
    assert counter(stats) >= c1
    c2 = counter(stats)
    assert exchange(pair, count=5, ports=(9, 10)) == {9: 0, 10: 5}
    assert counter(stats) - c2 >= 10

    # moving the filter (a new copy first, then the old one out): not one datagram to port 9 gets through
    flood = subprocess.Popen(["ip", "netns", "exec", pair.ns_b, "python3", "-c", _LISTEN, "9", "6"],
                             stdout=subprocess.PIPE, text=True)
    sender = subprocess.Popen(["ip", "netns", "exec", pair.ns_a, "python3", "-c", _FLOOD, pair.addr_b, "9", "5"])
    r = run(dict(filt, attach={"xdp": dict(where, priority=3, proceed_on=["pass"])}))
    sender.wait(timeout=60)
    out, _err = flood.communicate(timeout=60)
    assert r["changed"] and not r.get("failed"), r
    assert out.strip() == "0", out

    # xdp-loader's own program joins the same dispatcher; ours stay as they are; removing ours leaves it
    subprocess.check_call(["nsenter", "--net=/run/netns/" + pair.ns_b, "xdp-loader", "load", "-m", "skb", pair.if_b,
                           obj("xdp_counter")])
    try:
        assert not run(moved)["changed"]
        for args in (filt, count):
            assert run({"name": args["name"], "state": "absent", "pin_root": pin_root})["changed"]
        status = _loader_status(pair)
        assert "xdp_count " in status and "xdp_port_drop" not in status, status
    finally:
        subprocess.call(["nsenter", "--net=/run/netns/" + pair.ns_b, "xdp-loader", "unload", "--all", pair.if_b])
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0


_LISTEN = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.2)
end, n = time.time() + float(sys.argv[2]), 0
while time.time() < end:
    try:
        s.recv(64)
        n += 1
    except socket.timeout:
        pass
print(n)
"""
_FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + float(sys.argv[3])
while time.time() < end:
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.001)
"""
