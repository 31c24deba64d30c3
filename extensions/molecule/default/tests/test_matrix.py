"""Verify, inside each guest, what converge did: pins, programs and links the kernel lists, counters that
move with traffic and syscalls made here, and gating both ways (refused exactly where the probe says no).

Runs under Molecule's testinfra verifier (one SSH connection per guest). Counters found are written to
$HYPERMESH_RESULTS/<guest>.verify.json for the report.
"""
import base64
import json
import os

import pytest

PIN_ROOT = "/sys/fs/bpf/hypermesh"
RESULTS = os.environ.get("HYPERMESH_RESULTS") or os.path.join(
    os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp"), "results")

# program -> (map, how to make its counter move inside the guest)
# 20 UDP datagrams from hm1 to 10.199.0.1 (across the veth pair), written without any quote but the outer
# ones, so that it nests in `sh -c "..."` below
UDP = ("python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
       "[s.sendto(bytes(56), (socket.inet_ntoa(bytes([10, 199, 0, 1])), 9)) for _ in range(20)]'")
TRAFFIC_UDP = "ip netns exec hm1 " + UDP
# the same from hm0 (10.199.0.1) to hm1: every datagram reaches hm-b's XDP with the blocklisted source
# (replies to TRAFFIC_UDP would not do: ICMP errors are rate limited and XDP sees them before tc)
BLOCKED_UDP = "ip netns exec hm0 " + UDP.replace("[10, 199, 0, 1]", "[10, 199, 0, 2]")
TRAFFIC = {
    "xdp_counter": ("xdp_stats", TRAFFIC_UDP),
    "tc_counter": ("tc_stats", TRAFFIC_UDP),
    "tcx_counter": ("tc_stats", TRAFFIC_UDP),
    "tcx_first": ("next_stats", TRAFFIC_UDP),
    "tp_openat": ("openat_count", "for i in 1 2 3 4 5 6 7 8 9 10; do cat /etc/hostname >/dev/null; done"),
    "rawtp_sys_enter": ("sys_enter_count", "for i in 1 2 3 4 5; do true; done; ls / >/dev/null"),
    "kprobe_unlinkat": ("unlink_count", "for i in 1 2 3; do touch /tmp/hm-unlink-$i; rm /tmp/hm-unlink-$i; done"),
    "fentry_unlinkat": ("fentry_count", "for i in 1 2 3; do touch /tmp/hm-unlink-$i; rm /tmp/hm-unlink-$i; done"),
    # from a process inside the cgroup, in the host's namespace (to 10.199.0.1 unreachable from here: the
    # datagrams are still sent, and counted on egress, then dropped for want of a route)
    "cgroup_egress": ("egress_bytes", 'sh -c "echo \\$\\$ > /sys/fs/cgroup/hm-test/cgroup.procs; exec %s"' % UDP),
    "lsm_file_open": ("file_open_count", "cat /etc/hostname /etc/hosts >/dev/null"),
    # ebpf_map put 10.199.0.1 in the blocklist: XDP on hm-b drops what hm0 sends and counts it under that key
    "xdp_blocklist": ("blocklist", BLOCKED_UDP),
    # 50 calls of getpid() from one process (other processes may add theirs)
    "uprobe_getpid": ("uprobe_count", "python3 -c 'import os; [os.getpid() for _ in range(50)]'"),
}


# Features an attach point needs beyond its program type. Tracepoint, kprobe and uprobe attachments outlive
# the module as pinned perf-event links (perf_link, 5.15+) or, where the kernel has none, through the holder
# service (holder); "a|b" is either.
EXTRA_NEEDS = {"tracepoint": ["perf_link|holder"], "kprobe": ["perf_link|holder"], "uprobe": ["perf_link|holder"],
               "raw_tracepoint": ["bpf_link|holder"], "global_data": ["xdp"]}
# the pinnable link each kind the holder can keep needs; without it (and with the holder) it is held
LINK_OF = {"tracepoint": "perf_link", "kprobe": "perf_link", "uprobe": "perf_link", "raw_tracepoint": "bpf_link"}
HOLDER_UNIT = "hypermesh-ebpf-holder.service"


def needs(feature):
    return [feature] + EXTRA_NEEDS.get(feature, [])


def supported(result, need):
    return any(result["features"][f]["supported"] for f in need.split("|"))


def missing_needs(result, program):
    return [n for n in needs(result["programs"][program]["feature"]) if not supported(result, n)]


def probed_supported(result, program):
    """True when the guest's probes (ebpf_facts, before any program was loaded) say every feature `program`
    needs works: then it must be attached, whatever the module did."""
    return not missing_needs(result, program)


def held_programs(result):
    """The converge programs attached through the holder; the test skips, with the reason, where none is."""
    held = dict((n, p) for n, p in result["programs"].items() if p.get("held"))
    if not held:
        pytest.skip("no program is held in this guest: perf links %s" % (
            "work here" if result["features"]["perf_link"]["supported"] else "are missing, and so is the holder"))
    return held


def perf_fds(host):
    """{prog_id: [(pid, fd, fd_type)]} of `bpftool perf` (BPF_TASK_FD_QUERY over every process)."""
    out = {}
    for e in bpftool(host, "perf") or []:
        out.setdefault(e["prog_id"], []).append((e["pid"], e["fd"], e.get("fd_type")))
    return out


def kernel_links(host, result):
    """{id: link} of `bpftool link show`; {} on a kernel without bpf_link (before 5.7), where bpftool answers
    "kernel too old" and exits 255 (the probes must agree that it has none)."""
    # `|| true`: testinfra's SSH backend takes an exit status of 255 (bpftool's) for a lost connection
    out = host.check_output("bpftool -j link show || true")
    listed = json.loads(out or "null") or []
    if isinstance(listed, list) and listed and "error" in listed[0]:
        assert "kernel too old" in listed[0]["error"], listed
        assert not result["features"]["bpf_link"]["supported"], listed
        return {}
    return dict((link["id"], link) for link in listed)


def holder_pid(host):
    return int(host.check_output("systemctl show -p MainPID --value %s" % HOLDER_UNIT) or 0)


# Run in the guest (its own clock, no SSH round trip in the figure): SIGKILL the holder, then the milliseconds
# until a new main process of the unit has a perf event open for every one of the program ids (20 s at most).
KILL_AND_WAIT = """
import json, os, signal, subprocess, sys, time
old, want = int(sys.argv[1]), sorted(json.loads(sys.argv[2]))
def out(*argv):
    return subprocess.run(argv, stdout=subprocess.PIPE, universal_newlines=True).stdout
os.kill(old, signal.SIGKILL)
t0 = time.monotonic()
while time.monotonic() - t0 < 20:
    pid = int(out("systemctl", "show", "-p", "MainPID", "--value", "%s") or 0)
    if pid and pid != old:
        held = sorted(set(e["prog_id"] for e in json.loads(out("bpftool", "-j", "perf") or "[]") if e["pid"] == pid))
        if held == want:
            break
    time.sleep(0.05)
print(int((time.monotonic() - t0) * 1000))
""" % HOLDER_UNIT


def kill_holder_and_wait(host, old, want):
    script = base64.b64encode(KILL_AND_WAIT.encode()).decode()
    return int(host.check_output("echo %s | base64 -d > /tmp/hm-kill.py && python3 /tmp/hm-kill.py %d '%s'"
                                 % (script, old, json.dumps(want))))


def converge_result(name):
    with open(os.path.join(RESULTS, name + ".converge.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def result(host):
    return converge_result(host.backend.get_hostname())


def bpftool(host, *args):
    out = host.check_output("bpftool -j " + " ".join(args))
    return json.loads(out or "null")


def map_total(host, path, key=None):
    """Sum of every number in the entries of a pinned map (per-CPU values and struct fields added up), or in
    the entry of integer `key` only."""
    dump = bpftool(host, "map", "dump", "pinned", path)
    total = 0

    def add(v):
        if isinstance(v, bool):
            return 0
        if isinstance(v, (int, float)):
            return v
        if isinstance(v, dict):
            return sum(add(x) for k, x in v.items() if k not in ("cpu",))
        if isinstance(v, list) and v and all(isinstance(x, str) and x.startswith("0x") for x in v):
            return int.from_bytes(bytes(int(x, 16) for x in v), "little")  # raw bytes (no BTF)
        if isinstance(v, list):
            return sum(add(x) for x in v)
        return 0

    def key_of(k):
        if isinstance(k, list):
            return int.from_bytes(bytes(int(x, 16) for x in k), "little")
        return int(k)

    for entry in dump or []:
        if "formatted" in entry:
            entry = entry["formatted"]
        if key is not None and key_of(entry["key"]) != key:
            continue
        for field in ("value", "values"):
            if field in entry:
                total += add(entry[field])
    return total


def test_kernel_is_the_one_we_booted(host, result):
    assert host.check_output("uname -r") == result["release"]


def test_gating_agrees_with_the_probes(result):
    """A program attaches exactly when ebpf_facts says every feature it needs is supported; else it is
    refused, with the collection's refusal message naming a feature the probe said no to."""
    wrong = {}
    for name, p in result["programs"].items():
        missing = missing_needs(result, name)
        if not missing and p["outcome"] != "attached":
            wrong[name] = "probes say %s work, module: %s %s" % (needs(p["feature"]), p["outcome"], p["message"])
        if missing and p["outcome"] != "refused":
            wrong[name] = "probe says %s does not work, module: %s" % (missing, p["outcome"])
        named = [f for n in missing for f in n.split("|")]
        if missing and not any(p["message"].find(f + " needs") >= 0 for f in named):
            wrong[name] = "refusal does not name %s: %s" % (missing, p["message"])
        # held exactly where the kernel lacks the kind's pinnable link (and the holder works)
        link = LINK_OF.get(p["feature"])
        want_held = bool(link) and not missing and not result["features"][link]["supported"]
        if p["outcome"] == "attached" and bool(p.get("held")) != want_held:
            wrong[name] = "held %s, but %s supported=%s" % (p.get("held"), link, link and
                                                            result["features"][link]["supported"])
    assert not wrong


def test_held_attachments_are_the_holders(host, result):
    """Each held program runs through a perf event that the holder service's process has open (bpftool perf
    asks the kernel, BPF_TASK_FD_QUERY), no link is pinned for it, and the service is enabled for the boot."""
    held = held_programs(result)
    pid = holder_pid(host)
    assert pid, "%s has no main process" % HOLDER_UNIT
    assert host.check_output("systemctl is-enabled %s" % HOLDER_UNIT) == "enabled"
    fds = perf_fds(host)
    for name, p in held.items():
        assert [x for x in fds.get(p["prog_id"], []) if x[0] == pid], (name, p["prog_id"], fds)
        assert not host.file("%s/%s/link" % (PIN_ROOT, name)).exists, name


def test_holder_killed_is_back_within_5s_and_counting(host, result):
    """SIGKILL the holder: its descriptors, and so the held attachments, die with it; systemd starts it again
    and it attaches every held program from the pins within 5 s, and their counters move again."""
    held = held_programs(result)
    old = holder_pid(host)
    want = sorted(p["prog_id"] for p in held.values())
    back_ms = kill_holder_and_wait(host, old, want)
    assert back_ms <= 5000, "the holder held %s again only after %d ms" % (want, back_ms)
    assert holder_pid(host) != old
    moved = {}
    for name in held:
        if name in TRAFFIC:
            mapname, cmd = TRAFFIC[name]
            path = "%s/%s/maps/%s" % (PIN_ROOT, name, mapname)
            before = map_total(host, path)
            host.check_output(cmd)
            moved[name] = map_total(host, path) - before
    assert moved and all(v > 0 for v in moved.values()), moved
    with open(os.path.join(RESULTS, host.backend.get_hostname() + ".holder.json"), "w") as f:
        json.dump({"back_ms": back_ms, "held": sorted(held), "moved": moved}, f, indent=1, sort_keys=True)


def test_lsm_gating_both_ways(host, result):
    """bpf in the active LSM list exactly when the kernel was booted with it; LSM programs follow."""
    lsm_active = "bpf" in host.file("/sys/kernel/security/lsm").content_string.split(",")
    booted_with = "bpf" in host.file("/proc/cmdline").content_string.split("lsm=")[-1].split()[0].split(",") \
        if "lsm=" in host.file("/proc/cmdline").content_string else None
    if booted_with is not None:
        assert lsm_active == booted_with
    assert result["features"]["lsm"]["supported"] == lsm_active
    assert result["programs"]["lsm_file_open"]["outcome"] == ("attached" if lsm_active else "refused")


def test_tcx_gating(result):
    """tcx_counter sits on hm-b egress (the datagrams hm1 sends), so the blocklist's XDP drops never hide
    its traffic; refused below 6.6."""
    major, minor = [int(x) for x in result["release"].split(".")[:2]]
    expect = (major, minor) >= (6, 6)
    assert result["features"]["tcx"]["supported"] == expect
    for name in ("tcx_counter", "tcx_first"):
        assert result["programs"][name]["outcome"] == ("attached" if expect else "refused"), name


def test_tcx_order(host, result):
    """Two tcx programs on hm-b egress run in the declared order: tcx_first (tc_next, order first: true, hands
    every packet on) before tcx_counter (tc_counter, appended, its TC_ACT_OK ends the hook's run), so the same
    datagrams move both counters; appended behind the counter, tcx_first would see none of them. Skipped where
    ebpf_facts says tcx does not work (below 6.6), with its reason."""
    tcx = result["features"]["tcx"]
    if not tcx["supported"]:
        pytest.skip("ebpf_facts: tcx not supported in this guest: %s" % tcx.get("reason"))
    progs = dict((n, result["programs"][n]) for n in ("tcx_first", "tcx_counter"))
    assert all(p["outcome"] == "attached" for p in progs.values()), progs
    # the kernel's whole link list: `link show pinned` prints a tcx link, then may exit 255 (files/check_rollout.py)
    listed = dict((l["id"], l) for l in bpftool(host, "link", "show") or [])
    links = dict((n, listed.get(p["link_id"])) for n, p in progs.items())
    assert all(l and l.get("type") == "tcx" for l in links.values()), (progs, links)
    assert links["tcx_first"]["ifindex"] == links["tcx_counter"]["ifindex"], links  # one hook
    assert links["tcx_first"]["attach_type"] == links["tcx_counter"]["attach_type"] == "tcx_egress", links
    paths = {"tcx_first": "%s/tcx_first/maps/next_stats" % PIN_ROOT,
             "tcx_counter": "%s/tcx_counter/maps/tc_stats" % PIN_ROOT}
    before = dict((n, map_total(host, p)) for n, p in paths.items())
    host.check_output(TRAFFIC_UDP)
    moved = dict((n, map_total(host, p) - before[n]) for n, p in paths.items())
    assert moved["tcx_counter"] > 0 and moved["tcx_first"] > 0, moved


def test_globals_drop_port(host, result):
    """xdp_port_drop was loaded with drop_port 7 (globals): on hm0's loopback, datagrams to port 7 are dropped
    (its key 1 counts them) and those to port 8 pass; the object's compiled default (0) would drop none."""
    if not probed_supported(result, "xdp_port_drop"):
        pytest.skip("ebpf_facts' probes: %s not supported in this guest" % missing_needs(result, "xdp_port_drop"))
    assert result["programs"]["xdp_port_drop"]["outcome"] == "attached", result["programs"]["xdp_port_drop"]
    path = "%s/xdp_port_drop/maps/port_verdicts" % PIN_ROOT
    send = ("ip netns exec hm0 python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "[s.sendto(bytes(8), (\"127.0.0.1\", p)) for p in [7] * 10 + [8] * 6]'")
    before = dict((k, map_total(host, path, key=k)) for k in (0, 1))
    host.check_output(send)
    after = dict((k, map_total(host, path, key=k)) for k in (0, 1))
    assert after[1] - before[1] == 10, (before, after)  # dropped: port 7 only
    assert after[0] - before[0] >= 6, (before, after)   # passed: port 8 (and whatever else lo carried)


def dispatcher_programs(host):
    """{prog_id: (priority, name)} of the programs in libxdp's dispatcher on hm1's loopback, as `xdp-loader
    status` lists them (its " =>" lines: priority, name, id, tag, chain actions)."""
    out = host.check_output("nsenter --net=/run/netns/hm1 xdp-loader status lo")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("=>")]
    return dict((int(r[3]), (int(r[1]), r[2])) for r in rows)


def xdp_count_packets(host, where):
    """The packets field of an xdp_counter program's map (key 0, summed over the CPUs); `where`: "pinned PATH"
    or "id N"."""
    total = 0
    for entry in bpftool(host, "map", "dump", where) or []:
        for v in entry.get("formatted", entry)["values"]:
            total += v["value"]["packets"]
    return total


def test_xdp_multiprog(host, result):
    """libxdp's dispatcher on hm1's loopback runs three programs: ours, xdp_multi_drop (drop_port 9, priority
    10) and xdp_multi_count (priority 20), attached without force beside xdp-loader's counter (prepare.yml,
    priority 50), which stays. xdp-loader status lists the three in that order. Of 10 datagrams to port 9 and
    6 to port 8, the first program drops the 10, and both counters behind it see exactly what it passed (a
    drop stops the chain). Skipped where the probes say xdp_multiprog does not work (bullseye: no libxdp)."""
    if not probed_supported(result, "xdp_multi_drop"):
        pytest.skip("ebpf_facts' probes: %s not supported in this guest" % missing_needs(result, "xdp_multi_drop"))
    ours = dict((n, result["programs"][n]) for n in ("xdp_multi_drop", "xdp_multi_count"))
    assert all(p["outcome"] == "attached" for p in ours.values()), ours
    chain = dispatcher_programs(host)
    assert chain.get(ours["xdp_multi_drop"]["prog_id"], (None,))[0] == 10, chain
    assert chain.get(ours["xdp_multi_count"]["prog_id"], (None,))[0] == 20, chain
    theirs = [i for i, (prio, name) in chain.items() if prio == 50 and name == "xdp_count"]
    assert len(theirs) == 1 and len(chain) == 3, chain
    their_map = "id %d" % bpftool(host, "prog", "show", "id", str(theirs[0]))["map_ids"][0]
    verdicts = "%s/xdp_multi_drop/maps/port_verdicts" % PIN_ROOT
    counters = {"ours": "pinned %s/xdp_multi_count/maps/xdp_stats" % PIN_ROOT, "theirs": their_map}

    def read():
        got = dict((k, xdp_count_packets(host, w)) for k, w in counters.items())
        got.update(passed=map_total(host, verdicts, key=0), dropped=map_total(host, verdicts, key=1))
        return got
    send = ("ip netns exec hm1 python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "[s.sendto(bytes(8), (\"127.0.0.1\", p)) for p in [9] * 10 + [8] * 6]'")
    before = read()
    host.check_output(send)
    moved = dict((k, v - before[k]) for k, v in read().items())
    assert moved["dropped"] == 10 and moved["passed"] >= 6, moved
    assert moved["ours"] == moved["theirs"] == moved["passed"], moved


def test_pins_and_kernel_objects(host, result):
    """Every attached program is pinned, and the kernel lists it (and its link, where it has one)."""
    progs = {p["id"]: p for p in bpftool(host, "prog", "show")}
    links = kernel_links(host, result)
    for name, p in result["programs"].items():
        if p["outcome"] != "attached":
            assert not host.file("%s/%s" % (PIN_ROOT, name)).exists, name
            continue
        assert host.file("%s/%s/prog" % (PIN_ROOT, name)).exists, name
        assert p["prog_id"] in progs, name
        if p.get("link_id"):
            assert p["link_id"] in links, name
            assert links[p["link_id"]]["prog_id"] == p["prog_id"], name


def test_blocklist_entry_from_ebpf_map(host, result):
    """ebpf_map wrote the key 10.199.0.1 (network byte order) into the pinned blocklist map."""
    if not probed_supported(result, "xdp_blocklist"):
        pytest.skip("ebpf_facts' probes: %s not supported in this guest" % missing_needs(result, "xdp_blocklist"))
    assert result["programs"]["xdp_blocklist"]["outcome"] == "attached", result["programs"]["xdp_blocklist"]
    dump = bpftool(host, "map", "dump", "pinned", "%s/xdp_blocklist/maps/blocklist" % PIN_ROOT)
    keys = [[int(b, 16) for b in e["key"]] if isinstance(e["key"], list) else e["key"] for e in dump]
    assert [10, 199, 0, 1] in keys or 0x0100C70A in keys


def test_counters_move(host, result):
    """Traffic and syscalls made inside the guest move the counter of each program the probes say can attach
    (one that did not attach fails here: its pinned map is missing)."""
    counters = {}
    for name, p in sorted(result["programs"].items()):
        if not probed_supported(result, name) or name not in TRAFFIC:
            continue
        mapname, cmd = TRAFFIC[name]
        path = "%s/%s/maps/%s" % (PIN_ROOT, name, mapname)
        before = map_total(host, path)
        host.check_output(cmd)
        after = map_total(host, path)
        counters[name] = {"before": before, "after": after}
    with open(os.path.join(RESULTS, host.backend.get_hostname() + ".verify.json"), "w") as f:
        json.dump(counters, f, indent=1, sort_keys=True)
    stuck = {n: c for n, c in counters.items() if c["after"] <= c["before"]}
    assert counters and not stuck, counters
