"""ebpf_program `globals` on the real kernel: a load-time value in .rodata changes what the program does.

examples/xdp_port_drop.bpf.o drops UDP datagrams to its `const volatile __u16 drop_port`. Attached (XDP, generic)
to the receiving end of a veth pair between two network namespaces of this test, with drop_port 9: datagrams to
port 9 are dropped (the drop counter moves by exactly their number) and the receiver gets only those to port 10.
Then drop_port 10, through the four-run check (check mode: changed, the kernel untouched, same program id;
apply: a new program id in the slot, replaced atomically, the counters map kept; then check and apply: no
change): now the reverse. An unknown name and a value that does not fit (70000 for a __u16) are refused with the
program, its pins and its record as they were; without `globals` the compiled default (0: drop nothing) is back.
The same through ebpf_state: a globals change is a `replace` (its reason names the values), saved in the desired
state, and a value that does not fit refuses the whole run with nothing changed.
"""
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.conftest import ansible_module, needs_root
from test_ebpf_program_common import obj, pin_root_fixture, run, run_with_diff_text

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state

pytestmark = needs_root

pin_root = pin_root_fixture("hm-prog-glob")

CONTROL = 11  # the receiver stops at a datagram to this port (after the others, on the same path)
RECEIVER = r"""
import json, select, socket, sys
ports = [int(p) for p in sys.argv[1:]]
socks = {}
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", p))
    socks[s] = p
print("ready", flush=True)
got = dict((p, 0) for p in ports)
while True:
    ready, _w, _x = select.select(list(socks), [], [], 10)
    if not ready:
        break
    stop = False
    for s in ready:
        s.recv(2048)
        got[socks[s]] += 1
        stop = stop or socks[s] == %d
    if stop:
        break
print(json.dumps(got), flush=True)
""" % CONTROL
SENDER = r"""
import socket, sys, time
addr, count, ports, control = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3].split(",")], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    for p in ports:
        s.sendto(b"datagram %d" % i, (addr, p))
        time.sleep(0.01)
time.sleep(0.2)
s.sendto(b"stop", (addr, control))
"""


def exchange(pair, count=5, ports=(9, 10)):
    """`count` datagrams from ns_a to each of `ports` on addr_b; {port: datagrams the receiver in ns_b got}."""
    recv = subprocess.Popen(["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", RECEIVER]
                            + [str(p) for p in ports] + [str(CONTROL)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert recv.stdout.readline().strip() == "ready", recv.stderr.read()
        subprocess.run(["ip", "netns", "exec", pair.ns_a, sys.executable, "-c", SENDER, pair.addr_b, str(count),
                        ",".join(str(p) for p in ports), str(CONTROL)], check=True, timeout=60)
        out, err = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    got = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    assert got is not None, err
    got = dict((int(k), v) for k, v in got.items())
    assert got.pop(CONTROL) == 1, got
    return got


def verdicts(pin_dir):
    """(passed, dropped) frames of port_verdicts, summed over the CPUs."""
    fd = bs.obj_get(os.path.join(pin_dir, "maps", "port_verdicts"))
    try:
        ncpu = bs.possible_cpus()
        out = []
        for key in (0, 1):
            raw = bs.map_lookup(fd, struct.pack("=I", key), 8 * ncpu)
            out.append(sum(struct.unpack("=%dQ" % ncpu, raw)) if raw else 0)
        return tuple(out)
    finally:
        bs.close(fd)


def rodata_drop_port(pin_dir):
    """drop_port as the kernel holds it: the first 2 bytes of the pinned .rodata map's value."""
    names = [m for m in os.listdir(os.path.join(pin_dir, "maps")) if m.endswith("_rodata")]
    assert len(names) == 1, names
    fd = bs.obj_get(os.path.join(pin_dir, "maps", names[0]))
    try:
        info = bs.map_info(fd)
        raw = bs.map_lookup(fd, struct.pack("=I", 0), info["value_size"])
    finally:
        bs.close(fd)
    return struct.unpack_from("=H", raw, 0)[0]


def held(pin_root, name, pair):
    """What the kernel and the record hold for `name`: program in the slot, pinned ids, the record."""
    live = program_state.Live(pin_root, name)
    return {"slot": netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"], "prog": live.prog_id,
            "maps": dict(live.maps), "record": program_state.read_record(name, layout.STATE_DIR)}


def dropped_between(pin_dir, pair):
    before = verdicts(pin_dir)
    got = exchange(pair)
    after = verdicts(pin_dir)
    return got, after[1] - before[1]


@pytest.fixture(scope="module")
def global_data():
    found = probes.probe("global_data")
    if not found["supported"]:
        pytest.skip("probes.probe('global_data'): %s" % found["reason"])


def test_drop_port_follows_the_global(pin_root, pair, global_data):
    name = "g-port-%d" % os.getpid()
    pin_dir = os.path.join(pin_root, name)
    attach = {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}
    args = {"name": name, "object": obj("xdp_port_drop"), "pin_root": pin_root, "attach": attach}

    r1 = run(dict(args, globals={"drop_port": 9}))
    assert r1["changed"] and not r1.get("failed"), r1
    assert r1["globals"] == {"drop_port": 9}
    assert rodata_drop_port(pin_dir) == 9
    got, dropped = dropped_between(pin_dir, pair)
    assert got == {9: 0, 10: 5} and dropped == 5, (got, dropped)

    # the four-run check for drop_port 9 -> 10 ("0xa": normalised to 10)
    want = dict(args, globals={"drop_port": "0xa"})
    before = held(pin_root, name, pair)
    c1 = run_with_diff_text(want, check=True)
    assert c1["changed"] and not c1.get("failed") and c1["globals"] == {"drop_port": 10}, c1
    shown = c1["_diff_text"]
    assert '"drop_port": 9' in shown and '"drop_port": 10' in shown, shown
    assert held(pin_root, name, pair) == before  # check mode: same program in the slot, same pins and record
    a1 = run(want, diff=True)
    assert a1["changed"] and not a1.get("failed"), a1
    assert a1["prog_id"] != r1["prog_id"] and netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == a1["prog_id"]
    assert a1["maps"]["port_verdicts"] == r1["maps"]["port_verdicts"], "the counters map was not kept"
    assert program_state.read_record(name, layout.STATE_DIR)["globals"] == {"drop_port": 10}
    assert rodata_drop_port(pin_dir) == 10
    c2 = run(want, check=True)
    a2 = run(want)
    assert [c2["changed"], a2["changed"]] == [False, False], (c2, a2)
    assert a2["prog_id"] == a1["prog_id"] and c2["prog_id"] == a1["prog_id"]
    got, dropped = dropped_between(pin_dir, pair)
    assert got == {9: 5, 10: 0} and dropped == 5, (got, dropped)

    # refused with nothing changed: an unknown name, a value that does not fit a __u16
    now = held(pin_root, name, pair)
    for bad, words in (({"drop_prot": 9}, "no global variable 'drop_prot'"),
                       ({"drop_port": 70000}, "70000 does not fit")):
        for check in (True, False):
            r = run(dict(args, globals=bad), check=check)
            assert r.get("failed") and words in r["msg"] and "nothing changed" in r["msg"], r
            assert held(pin_root, name, pair) == now
    assert rodata_drop_port(pin_dir) == 10

    # without globals: the compiled default (0) is loaded, a replace like any other
    r3 = run(args, diff=True)
    assert r3["changed"] and r3["globals"] == {} and r3["prog_id"] != a1["prog_id"], r3
    assert "globals" not in program_state.read_record(name, layout.STATE_DIR)
    assert rodata_drop_port(pin_dir) == 0
    got, dropped = dropped_between(pin_dir, pair)
    assert got == {9: 5, 10: 5} and dropped == 0, (got, dropped)
    assert not run(args)["changed"]

    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert not os.path.exists(pin_dir)
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0


def test_ebpf_state_replaces_on_a_globals_change(pin_root, pair, global_data, tmp_path):
    name = "g-state-%d" % os.getpid()
    pin_dir = os.path.join(pin_root, name)
    desired = str(tmp_path / "desired.json")

    def programs(globals_):
        return [{"name": name, "object": obj("xdp_port_drop"), "globals": globals_, "health": {"check": "none"},
                 "attach": {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}}]

    def state(globals_, check=False):
        return ansible_module("ebpf_state", {"programs": programs(globals_), "pin_root": pin_root,
                                             "desired": desired, "reapply_unit": False}, check=check)

    def saved():
        with open(desired) as f:
            doc = json.load(f)
        return doc["generation"], doc["programs"][0]["program"]["globals"]

    try:
        r1 = state({"drop_port": 9})
        assert r1["changed"] and not r1["failed"], r1
        assert rodata_drop_port(pin_dir) == 9 and saved() == (1, {"drop_port": 9})
        got, dropped = dropped_between(pin_dir, pair)
        assert got == {9: 0, 10: 5} and dropped == 5, (got, dropped)

        now = held(pin_root, name, pair)
        c = state({"drop_port": 10}, check=True)
        (entry,) = c["programs"]
        assert c["changed"] and entry["action"] == "replace" and "globals" in entry["reason"], c
        assert held(pin_root, name, pair) == now
        r2 = state({"drop_port": 10})
        (entry,) = r2["programs"]
        assert r2["changed"] and entry["action"] == "replace", r2
        assert held(pin_root, name, pair)["slot"] not in (0, now["slot"])
        assert rodata_drop_port(pin_dir) == 10 and saved() == (2, {"drop_port": 10})
        got, dropped = dropped_between(pin_dir, pair)
        assert got == {9: 5, 10: 0} and dropped == 5, (got, dropped)

        now = held(pin_root, name, pair)
        bad = state({"drop_port": 70000})
        assert bad["failed"] and "70000 does not fit" in bad["msg"], bad
        assert held(pin_root, name, pair) == now and saved() == (2, {"drop_port": 10})
        assert not state({"drop_port": 10})["changed"]
    finally:
        run({"name": name, "state": "absent", "pin_root": pin_root})
    assert not os.path.exists(pin_dir)
