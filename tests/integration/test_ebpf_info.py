"""ebpf_info on this machine's kernel, through real `ansible` runs, checked against bpftool and netlink.

Setup through ebpf_program under a private pin root: the example XDP blocklist as managed program "blk",
attached in generic mode to the b side of a veth pair (netlink), tc_counter as "tcc" on the b side's tc egress
hook (cls_bpf) and as "tcxc" attached with a tcx link (a pinned BPF link) to the a side; an unpinned map stands
for something this collection does not manage.
"""
import json
import os
import shutil
import subprocess
import threading

import pytest

from tests.conftest import needs_root
from test_ebpf_map_common import bpftool_json, drop_program, module, ping, program, veth_netns

pytestmark = needs_root

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs  # noqa: E402


@pytest.fixture(scope="module")
def world():
    root = "/sys/fs/bpf/hm-test-info-%d" % os.getpid()
    os.makedirs(root)
    foreign = bs.map_create(bs.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="hm_foreign")
    try:
        with veth_netns() as pair:
            blk = program(root, "blk", "xdp_blocklist.bpf.o",
                          attach={"xdp": {"interface": pair["b_if"], "netns": pair["b"], "mode": "generic"}})
            tcx = program(root, "tcxc", "tc_counter.bpf.o",
                          attach={"tcx": {"interface": pair["a_if"], "netns": pair["a"], "direction": "ingress"}})
            tc = program(root, "tcc", "tc_counter.bpf.o",
                         attach={"tc": {"interface": pair["b_if"], "netns": pair["b"], "direction": "egress"}})
            link_fd = bs.obj_get(os.path.join(root, "tcxc", "link"))
            link_id = bs.link_info(link_fd)["id"]
            bs.close(link_fd)
            try:
                yield {"root": root, "pair": pair, "prog_id": blk["prog_id"], "map_ids": sorted(blk["maps"].values()),
                       "tcx_prog_id": tcx["prog_id"], "link_id": link_id, "tc_prog_id": tc["prog_id"],
                       "foreign_map_id": bs.map_info(foreign)["id"]}
            finally:
                drop_program(root, "tcc")
                drop_program(root, "tcxc")
                drop_program(root, "blk")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        bs.close(foreign)


def by_id(items):
    return dict((i["id"], i) for i in items)


def test_lists_what_bpftool_lists_and_flags_ours(world):
    before = set(p["id"] for p in bpftool_json("prog", "show"))
    maps_before = set(m["id"] for m in bpftool_json("map", "show"))
    r = module("ebpf_info", {"pin_root": world["root"], "netns": [world["pair"]["b"], world["pair"]["a"]]})
    after = set(p["id"] for p in bpftool_json("prog", "show"))
    assert not r.get("failed"), r
    progs = by_id(r["programs"])
    assert before & after <= set(progs), "programs bpftool lists are missing"
    mine = progs[world["prog_id"]]
    assert (mine["managed"], mine["managed_name"], mine["type_name"], mine["name"]) == (
        True, "blk", "xdp", "xdp_blocklist")
    assert mine["pin"].startswith(world["root"] + "/blk/")
    maps = by_id(r["maps"])
    maps_after = set(m["id"] for m in bpftool_json("map", "show"))
    assert maps_before & maps_after <= set(maps), "maps bpftool lists are missing"
    for map_id in world["map_ids"]:
        assert maps[map_id]["managed"] and maps[map_id]["managed_name"] == "blk"
    assert maps[world["foreign_map_id"]]["managed"] is False
    assert maps[world["foreign_map_id"]]["name"] == "hm_foreign"
    links = by_id(r["links"])
    link = links[world["link_id"]]
    assert (link["managed"], link["managed_name"], link["type_name"], link["prog_id"]) == (
        True, "tcxc", "tcx", world["tcx_prog_id"])
    assert progs[world["tcx_prog_id"]]["managed_name"] == "tcxc"
    assert set(["blk", "tcxc", "tcc"]) <= set(r["managed_names"])
    # every link bpftool shows is there too
    assert set(l["id"] for l in bpftool_json("link", "show")) & set(links) >= set([world["link_id"]])

    pair = world["pair"]
    ifaces = dict(((i["netns"], i["ifname"]), i) for i in r["interfaces"])
    b_side = ifaces[(pair["b"], pair["b_if"])]
    assert b_side["xdp"]["prog_id"] == world["prog_id"] and b_side["xdp"]["mode"] == "generic", b_side
    assert "dispatcher" not in b_side["xdp"], b_side  # a plain XDP program, not libxdp's dispatcher
    assert [f["prog_id"] for f in b_side["tc"]["egress"]] == [world["tc_prog_id"]], b_side
    assert b_side["tc"]["ingress"] == [] and progs[world["tc_prog_id"]]["managed_name"] == "tcc"
    a_side = ifaces[(pair["a"], pair["a_if"])]
    assert a_side["xdp"]["prog_id"] == 0 and a_side["tcx"]["ingress"] == [world["tcx_prog_id"]], a_side
    assert (pair["b"], "lo") in ifaces and (None, "lo") in ifaces
    assert "stats" not in r


def test_stats_count_runs_and_turn_back_off(world):
    sysctl = "/proc/sys/kernel/bpf_stats_enabled"
    with open(sysctl) as f:
        was = f.read().strip()
    pair = world["pair"]
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            ping(pair["a"], pair["b_ip"], 5)
    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        r = module("ebpf_info", {"pin_root": world["root"], "stats": True, "stats_seconds": 2})
    finally:
        stop.set()
        thread.join()
    assert not r.get("failed"), r
    assert r["stats"]["method"] in ("bpf_enable_stats", "sysctl", "already_enabled")
    mine = by_id(r["programs"])[world["prog_id"]]
    assert mine["run_cnt"] > 0 and mine["run_time_ns"] > 0, mine
    if r["stats"]["method"] == "sysctl":
        with open(sysctl) as f:
            assert f.read().strip() == was
    # with bpf_enable_stats the stats stay on only while the module's fd is open: it exited, nothing to undo
    # (the sysctl itself reads 1 whenever any process on the host holds such an fd, so it is not checked here)
    bt = bpftool_json("prog", "show", "id", str(world["prog_id"]))
    assert bt.get("run_cnt", 0) >= mine["run_cnt"]


def test_wait_for_runs_returns_when_the_program_ran_and_names_the_ones_that_did_not(world):
    """With traffic (from 1.5 s into the wait), blk (XDP on b) is seen running well before the 20 s timeout; a
    program nothing runs is stalled after the whole timeout, and so is a name not pinned."""
    pair = world["pair"]
    stop = threading.Event()

    def traffic():
        stop.wait(1.5)
        while not stop.is_set():
            ping(pair["a"], pair["b_ip"], 2)
    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        r = module("ebpf_info", {"pin_root": world["root"], "wait_for_runs": ["blk"], "stats_seconds": 20})
    finally:
        stop.set()
        thread.join()
    assert not r.get("failed"), r
    assert r["stats"]["stalled"] == [] and r["stats"]["ran"]["blk"] > 0, r["stats"]
    assert r["stats"]["waited"] < 15, r["stats"]  # it returned when blk ran, not at the timeout

    # "idle" is loaded and pinned but attached nowhere: nothing can run it
    program(world["root"], "idle", "xdp_counter.bpf.o", state="loaded")
    try:
        r = module("ebpf_info", {"pin_root": world["root"], "wait_for_runs": ["idle", "nosuch"],
                                 "stats_seconds": 2})
    finally:
        drop_program(world["root"], "idle")
    assert not r.get("failed"), r
    assert r["stats"]["stalled"] == ["idle", "nosuch"] and r["stats"]["missing"] == ["nosuch"], r["stats"]
    assert r["stats"]["ran"] == {"idle": 0} and r["stats"]["waited"] >= 2, r["stats"]


def test_unknown_netns_is_a_clear_error(world):
    r = module("ebpf_info", {"pin_root": world["root"], "netns": ["hm-no-such-ns"]})
    assert r.get("failed") and "hm-no-such-ns does not exist" in r["msg"], r


def test_no_pin_root_means_nothing_managed():
    r = module("ebpf_info", {"pin_root": "/sys/fs/bpf/hm-none-%d" % os.getpid()})
    assert not r.get("failed"), r
    assert r["managed_names"] == [] and not any(p["managed"] for p in r["programs"])
    assert subprocess.call(["test", "-e", "/sys/fs/bpf/hm-none-%d" % os.getpid()]) == 1


# ---- statistics: read-only means read-only ----------------------------------------------------------------------
SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
# a child running inventory.run_stats as ebpf_info does, on "a kernel before 5.8": BPF_ENABLE_STATS made to fail
# from the test side (the product code has no switch for it)
OLD_KERNEL_CHILD = r"""
import errno, json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import inventory
def no_enable_stats(*a):
    raise bs.BpfError(errno.EINVAL, "BPF_ENABLE_STATS")
def announced_sleep(seconds):  # say when the statistics window starts (the test kills or reads in it)
    print("WINDOW", flush=True)
    time.sleep(seconds)
bs.enable_stats = no_enable_stats
inventory._sleep = announced_sleep
with inventory.run_stats(float(sys.argv[2]), check_mode=sys.argv[3] == "check") as how:
    print(json.dumps(how), flush=True)
"""


def _sysctl():
    with open(SYSCTL) as f:
        return f.read().strip()


def _marker():
    return os.path.join(layout.RUN_DIR, "bpf_stats_enabled.ours")


def _old_kernel_child(seconds, mode):
    from tests.conftest import COLLECTIONS
    import sys
    return subprocess.Popen([sys.executable, "-c", OLD_KERNEL_CHILD, COLLECTIONS, str(seconds), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def sysctl_off():
    """Probe: the sysctl must read 0 before the test (on, it is someone else's and rightly left alone)."""
    if _sysctl() != "0":
        pytest.skip("kernel.bpf_stats_enabled is 1 before the test (someone else's): nothing to check")
    try:
        yield
    finally:
        left = _sysctl()
        if left != "0":  # a failed test must not leave statistics on for the host
            with open(SYSCTL, "w") as f:
                f.write("0")
        if os.path.exists(_marker()):
            os.unlink(_marker())
    assert left == "0"


def test_stats_in_check_mode_write_nothing(world, sysctl_off):
    r = module("ebpf_info", {"pin_root": world["root"], "stats": True, "stats_seconds": 1}, check=True)
    assert not r.get("failed"), r
    assert r["stats"]["method"] == "bpf_enable_stats", r["stats"]  # this kernel has it: a descriptor, no write
    assert _sysctl() == "0" and not os.path.exists(_marker())


def test_sysctl_fallback_in_check_mode_is_not_used(sysctl_off):
    child = _old_kernel_child(1.0, "check")
    assert child.stdout.readline().strip() == "WINDOW"
    assert _sysctl() == "0" and not os.path.exists(_marker())  # during the window too
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert json.loads(out)["method"] == "not_enabled_check_mode", out
    assert _sysctl() == "0" and not os.path.exists(_marker())


def test_sysctl_fallback_runs_under_the_lock_and_a_kill_is_put_back_by_the_next_run(sysctl_off):
    import fcntl
    child = _old_kernel_child(30, "real")
    try:
        line = child.stdout.readline()
        assert line.strip() == "WINDOW", (line, child.stderr.read() if not line else "")
        assert _sysctl() == "1" and os.path.exists(_marker())
        fd = os.open(layout.LOCK_PATH, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the host lock is held while the sysctl is ours
        finally:
            os.close(fd)
    finally:
        child.kill()   # SIGKILL: no finally of the child runs
        child.communicate(timeout=30)
    assert _sysctl() == "1" and os.path.exists(_marker())  # a killed run could not put it back itself...
    after = _old_kernel_child(0, "real")                  # ...the next run on that host does, first
    out, err = after.communicate(timeout=30)
    assert after.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["method"] == "sysctl"
    assert _sysctl() == "0" and not os.path.exists(_marker())
