"""kill -9 during apply and removal, and other agents racing for the slot: the next run converges, nothing leaks.

Faults come from the test side only (product code has no test switch): tests/integration/kill_runner.py runs
ebpf_program's code (program_runner.apply, what the module's main calls) in a child process and either SIGKILLs
itself right after a named call returns (--kill-after), or this file SIGKILLs it at a random moment of its
measured run time. After every kill the next run must converge to exactly one program of ours per name, loaded,
pinned and attached (the kernel's prog list holds no other of ours, no stage is left, a further run changes
nothing), the maps keep their contents (a counter never goes back), and once removed the kernel's prog, map
and link lists hold none of ours and the XDP slot is free.

Races: "another agent" (kill_runner --before-attach) attaches its own program to the XDP or tc slot after our run
read the slot and before it attaches. Our run must refuse, naming that program, and leave the other agent's
program attached and our pins and record as they were.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import needs_root
from test_ebpf_program_common import pin_root_fixture, PREFIX, counter, kernel_ids, kname, leaked, obj, ping, \
    private_object, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec

pytestmark = needs_root

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_runner.py")
KINDS = {
    "xdp": ("xdp_counter", "xdp_count", "xdp_stats"),
    "raw_tracepoint": ("rawtp_sys_enter", "count_sys_enter", "sys_enter_count"),
}
# named kill points of an apply: (label, --kill-after values; the first one reached kills)
APPLY_POINTS = [
    ("journal", ["program_state.write_record:1"]),
    ("load", ["libbpf.BpfObject.load:1"]),
    ("pin-prog", ["bpf_syscall.obj_pin:1"]),
    ("pin-map", ["bpf_syscall.obj_pin:2"]),
    ("attach", ["program_attach.attach_netlink:1", "program_attach.create_link:1"]),
    ("swap-prog", ["os.rename@/sys/fs/bpf:1"]),
    ("swap-map", ["os.rename@/sys/fs/bpf:2"]),
    ("record", ["program_state.write_record:2"]),
    ("cleanup", ["program_state.remove_tree:1"]),
]
ABSENT_POINTS = [
    ("detach", ["program_attach.detach_netlink:1", "bpf_syscall.link_detach:1"]),
    ("forget", ["program_state.write_record:1"]),
]
RANDOM_REPLACES = 30
RANDOM_REMOVALS = 10

pin_root = pin_root_fixture("hm-prog-kill")


# ---- helpers --------------------------------------------------------------------------------------------------
def runner(args, *opts):
    """(returncode, result or None, stderr) of one kill_runner run."""
    proc = subprocess.run([sys.executable, RUNNER, json.dumps(args)] + list(opts), capture_output=True,
                          text=True, timeout=60, check=False)
    lines = proc.stdout.splitlines()
    result = json.loads(lines[-1]) if len(lines) >= 2 else None
    return proc.returncode, result, proc.stderr


def ok(args):
    rc, result, err = runner(args)
    assert rc == 0 and result and not result.get("failed"), (rc, result, err[-3000:])
    return result


def killed_at(args, points):
    opts = []
    for p in points:
        opts += ["--kill-after", p]
    rc, result, err = runner(args, *opts)
    assert rc == -signal.SIGKILL, ("the kill point %s was not reached" % points, rc, result, err[-3000:])


def timed(args):
    """Seconds from the runner's GO (imports done) to its exit, for a run that is not killed."""
    proc = subprocess.Popen([sys.executable, RUNNER, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("GO")
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    return time.monotonic() - t0


def kill_randomly(args, window):
    """Start a run and SIGKILL it a uniformly random time into `window` seconds after its GO; returns the delay
    and whether the kill landed (False: the run had already finished)."""
    proc = subprocess.Popen([sys.executable, RUNNER, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("GO")
    delay = random.uniform(0, window)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), (proc.returncode, out, err[-3000:])
    return delay, proc.returncode == -signal.SIGKILL


def _objects(kind, tmpdir):
    src, prog, m = KINDS[kind]
    o1 = private_object(src, [prog, m])
    o2 = os.path.join(tmpdir, src + "-v2.bpf.o")
    shutil.copyfile(o1, o2)
    with open(o2, "ab") as f:
        f.write(b"\0")
    return o1, o2


def _args(kind, name, pin_root, pair, objpath):
    a = {"name": name, "object": objpath, "pin_root": pin_root}
    if kind == "xdp":
        a["attach"] = {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}
    return a


def _absent(name, pin_root):
    return {"name": name, "state": "absent", "pin_root": pin_root}


def our_prog_ids(kind, before):
    """Ids of the programs of ours (by name) the kernel holds that were not there before the test."""
    want = kname(KINDS[kind][1])
    out = set()
    for pid in set(bs.iter_ids("prog")) - before["prog"]:
        try:
            fd = bs.get_fd_by_id("prog", pid)
        except OSError:
            continue
        try:
            if bs.prog_info(fd).get("name") == want:
                out.add(pid)
        finally:
            bs.close(fd)
    return out


def _only_one_program(kind, before, prog_id, wait=3.0):
    """Exactly one program of ours in the kernel's list: the recorded one (killed runs' others are freed after an
    RCU grace period, hence the wait)."""
    deadline = time.time() + wait
    while True:
        ids = our_prog_ids(kind, before)
        if ids == set([prog_id]) or time.time() > deadline:
            assert ids == set([prog_id]), "programs of ours in the kernel: %s, recorded: %d" % (sorted(ids), prog_id)
            return
        time.sleep(0.1)


def _map_path(kind, pin_root, name):
    return os.path.join(pin_root, name, "maps", PREFIX + KINDS[kind][2])


def assert_converged(kind, name, pin_root, pair, objpath, before, floor=0):
    """The next run converges: one program of ours, attached, recorded, no stage, maps kept (counter >= floor)."""
    r = ok(_args(kind, name, pin_root, pair, objpath))
    again = ok(_args(kind, name, pin_root, pair, objpath))
    assert again["changed"] is False and again["prog_id"] == r["prog_id"], (r, again)
    rec = program_state.read_record(name)
    assert rec["sha256"] == program_spec.read_object(objpath)[1] and rec["prog_id"] == r["prog_id"]
    assert not rec.get("pending"), rec
    entries = sorted(os.listdir(os.path.join(pin_root, name)))
    assert not [e for e in entries if e.startswith(program_state.STAGE_PREFIX)], entries
    if kind == "xdp":
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r["prog_id"]
    else:
        fd = bs.get_fd_by_id("link", r["link_id"])
        try:
            assert bs.link_info(fd)["prog_id"] == r["prog_id"]
        finally:
            bs.close(fd)
    _only_one_program(kind, before, r["prog_id"])
    path = _map_path(kind, pin_root, name)
    c0 = counter(path)
    assert c0 >= floor, "the map lost its contents: counter %d, was at least %d" % (c0, floor)
    if kind == "xdp":
        ping(pair.ns_a, pair.addr_b, count=2)
    else:
        os.getppid()
    assert counter(path) > c0
    return r


def assert_gone(kind, name, pin_root, pair, before):
    assert not os.path.exists(os.path.join(pin_root, name))
    assert program_state.read_record(name) is None
    src, prog, m = KINDS[kind]
    assert not any(leaked(before, [kname(prog)], [kname(m)]).values())
    if kind == "xdp":
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0


# ---- kills at named calls -------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", [p[0] for p in APPLY_POINTS])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("scenario", ["fresh", "replace"])
def test_kill_at_a_named_call_during_apply(scenario, kind, point, pin_root, pair, tmp_path):
    o1, o2 = _objects(kind, str(tmp_path))
    name = "k-%s-%s-%s" % (scenario[0], kind[:3], point)
    before = kernel_ids()
    floor = 0
    if scenario == "replace":
        assert ok(_args(kind, name, pin_root, pair, o1))["changed"]
        if kind == "xdp":
            ping(pair.ns_a, pair.addr_b, count=2)
        floor = counter(_map_path(kind, pin_root, name))
        assert floor > 0
        target = o2
    else:
        target = o1
    killed_at(_args(kind, name, pin_root, pair, target), dict(APPLY_POINTS)[point])
    assert_converged(kind, name, pin_root, pair, target, before, floor)
    assert ok(_absent(name, pin_root))["changed"]
    assert_gone(kind, name, pin_root, pair, before)


@pytest.mark.parametrize("point", [p[0] for p in ABSENT_POINTS])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kill_at_a_named_call_during_removal(kind, point, pin_root, pair, tmp_path):
    o1, _unused = _objects(kind, str(tmp_path))
    name = "k-a-%s-%s" % (kind[:3], point)
    before = kernel_ids()
    assert ok(_args(kind, name, pin_root, pair, o1))["changed"]
    killed_at(_absent(name, pin_root), dict(ABSENT_POINTS)[point])
    r = ok(_absent(name, pin_root))
    assert r["changed"] == (point != "forget"), r  # after "forget" only the killed run's return was missing
    assert not ok(_absent(name, pin_root))["changed"]
    assert_gone(kind, name, pin_root, pair, before)


# ---- kills at random moments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kill_at_random_moments_of_replaces_and_removals(kind, pin_root, pair, tmp_path):
    """RANDOM_REPLACES replaces (v1 <-> v2, the map reused each time) killed at a random moment of their measured
    run time, each followed by a run that must converge with the counter kept; then RANDOM_REMOVALS removals
    killed likewise, each followed by a removal that must leave the kernel as it was before the test."""
    o1, o2 = _objects(kind, str(tmp_path))
    name = "k-r-%s" % kind[:3]
    before = kernel_ids()
    ok(_args(kind, name, pin_root, pair, o1))
    window = max(timed(_args(kind, name, pin_root, pair, o)) for o in (o2, o1, o2, o1))
    if kind == "xdp":
        ping(pair.ns_a, pair.addr_b, count=2)
    landed = []
    target = o1
    for _unused in range(RANDOM_REPLACES):
        floor = counter(_map_path(kind, pin_root, name))
        target = o2 if target == o1 else o1
        delay, hit = kill_randomly(_args(kind, name, pin_root, pair, target), window)
        landed.append(hit)
        assert_converged(kind, name, pin_root, pair, target, before, floor)
    assert sum(landed) >= RANDOM_REPLACES // 3, "only %d of %d kills landed inside a run (window %.3f s)" % (
        sum(landed), RANDOM_REPLACES, window)
    # the module through real Ansible agrees: nothing to change
    assert run(_args(kind, name, pin_root, pair, target))["changed"] is False

    window = max(window, 0.05)
    for _unused in range(RANDOM_REMOVALS):
        kill_randomly(_absent(name, pin_root), window)
        ok(_absent(name, pin_root))
        assert_gone(kind, name, pin_root, pair, before)
        ok(_args(kind, name, pin_root, pair, target))
    assert ok(_absent(name, pin_root))["changed"]
    assert_gone(kind, name, pin_root, pair, before)


# ---- another agent takes the slot between our read and our attach ---------------------------------------------
RACE = {"xdp": ("xdp_counter", "xdp_count", "xdp_stats", "xdp_multi", "xdp"),
        "tc": ("tc_counter", "tc_count", "tc_stats", "xdp_multi", None)}


def _foreign(kind, path):
    """"Another agent's" program, loaded and pinned by bpftool (not by this collection)."""
    if kind == "xdp":
        subprocess.check_call(["bpftool", "prog", "load", obj("xdp_multi"), path, "type", "xdp"])
    else:
        subprocess.check_call(["bpftool", "prog", "load", obj("tc_counter"), path, "type", "classifier"])
    fd = bs.obj_get(path)
    try:
        return bs.prog_info(fd)["id"]
    finally:
        bs.close(fd)


def _slot(kind, pair):
    if kind == "xdp":
        return netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"]
    found = [f["prog_id"] for f in netlink.tc_query(pair.if_b, "ingress", pair.ns_b) if f["priority"] == 1]
    return found[0] if found else 0


def _free_slot(kind, pair, prog_id):
    if kind == "xdp":
        netlink.xdp_detach(pair.if_b, pair.ns_b, expected_prog_id=prog_id)
    else:
        netlink.tc_detach(pair.if_b, "ingress", 1, 1, pair.ns_b, remove_qdisc_if_empty=True)


def _race_args(kind, name, pin_root, pair, objpath):
    a = {"name": name, "object": objpath, "pin_root": pin_root}
    if kind == "xdp":
        a["attach"] = {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}
    else:
        a["attach"] = {"tc": {"interface": pair.if_b, "netns": pair.ns_b, "direction": "ingress", "priority": 1}}
    return a


@pytest.mark.parametrize("kind", ["xdp", "tc"])
@pytest.mark.parametrize("scenario", ["free", "ours"])
def test_a_program_attached_meanwhile_is_never_overwritten(scenario, kind, pin_root, pair, tmp_path):
    src, prog, m = RACE[kind][:3]
    o1 = private_object(src, [prog, m])
    o2 = os.path.join(str(tmp_path), "v2.bpf.o")
    shutil.copyfile(o1, o2)
    with open(o2, "ab") as f:
        f.write(b"\0")
    name = "k-race-%s-%s" % (kind, scenario)
    foreign_pin = "/sys/fs/bpf/hm-foreign-%d-%s-%s" % (os.getpid(), kind, scenario)
    before = kernel_ids()
    rec_before = None
    if scenario == "ours":
        rec_before = ok(_race_args(kind, name, pin_root, pair, o1))
        assert _slot(kind, pair) == rec_before["prog_id"]
    foreign = _foreign(kind, foreign_pin)
    try:
        pins_before = sorted(os.listdir(os.path.join(pin_root, name))) if rec_before else None
        record_before = program_state.read_record(name)
        rc, result, err = runner(_race_args(kind, name, pin_root, pair, o2), "--before-attach", foreign_pin)
        assert rc == 1 and result["failed"], (rc, result, err[-3000:])
        assert ("program id %d" % foreign) in result["msg"], result["msg"]
        assert _slot(kind, pair) == foreign  # the other agent's program is still the one attached
        assert program_state.read_record(name) == record_before
        if rec_before:
            assert sorted(os.listdir(os.path.join(pin_root, name))) == pins_before
            assert program_state.Live(pin_root, name).prog_id == rec_before["prog_id"]
        else:
            assert not os.path.exists(os.path.join(pin_root, name))
            assert not any(leaked(before, [kname(prog)], [kname(m)]).values())
    finally:
        if _slot(kind, pair) == foreign:
            _free_slot(kind, pair, foreign)
        os.unlink(foreign_pin)
        runner(_absent(name, pin_root))
    assert not any(leaked(before, [kname(prog)], [kname(m)]).values())
    assert _slot(kind, pair) == 0
