#!/usr/bin/env python3
"""Check the example objects against the running kernel (root only).

    python3 examples/verify.py [--libbpf=/path/to/libbpf.so.N ...]

1. Every objects/*.bpf.o is loaded with `bpftool prog loadall` (maps pinned
   beside it); its programs and maps must match the CONTRACT below (names,
   program types, map types, key/value sizes, max_entries). bad_verifier must
   be rejected by the verifier.
2. Counters must move under real traffic and real system calls:
   xdp_count, xdp_blocklist, tc_count on a veth pair between two network
   namespaces made here (10.199.0.0/24, static neighbours, IPv6 off, so the
   counts are exact), cgroup_egress_bytes on a cgroup made here,
   count_sys_enter through BPF_RAW_TRACEPOINT_OPEN and count_openat through a
   tracepoint perf event.
3. With --libbpf=PATH (repeatable): every object is opened and loaded through
   that libbpf's own API (e.g. Debian 11's libbpf.so.0.3.0, extracted from
   the libbpf0 package): program names, sections and maps as that version sees
   them, and the load result.
Everything it creates (pins under /sys/fs/bpf/_examples_check, the two
namespaces, the cgroup) is removed at the end, also on failure.

fentry and lsm programs need BPF trampolines; a kernel that refuses them
(EPERM at load, as the 6.18 kernel of our CI does) is reported, not failed.
Kprobes are loaded only: attaching needs CONFIG_KPROBES. uprobe_counter is loaded
only here (its attach point is a binary the user names: the ebpf_program
integration tests attach it, tests/integration/test_ebpf_program_uprobe.py).
"""
import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PIN = "/sys/fs/bpf/_examples_check"
NS_A, NS_B = "hmxex_a", "hmxex_b"
DEV_A, DEV_B = "hmxex0", "hmxex1"
ADDR_A, ADDR_B = "10.199.0.1", "10.199.0.2"
CGROUP = "/sys/fs/cgroup/unified/hmxex_cg"
PINGS = 5
FRAME = 98   # ping's default 56 data bytes + ICMP 8 + IPv4 20 + Ethernet 14
PACKET = 84  # the same without the Ethernet header (cgroup skb sees L3)

# object -> ({program: bpftool prog type}, {map: (type, key size, value size, max_entries)})
CONTRACT = {
    "xdp_counter": ({"xdp_count": "xdp"}, {"xdp_stats": ("percpu_array", 4, 16, 1)}),
    "xdp_blocklist": ({"xdp_blocklist": "xdp"}, {"blocklist": ("hash", 4, 8, 65536),
                                                 "verdicts": ("percpu_array", 4, 8, 2)}),
    "tc_counter": ({"tc_count": "sched_cls"}, {"tc_stats": ("percpu_array", 4, 16, 1)}),
    "tc_next": ({"tc_next": "sched_cls"}, {"next_stats": ("percpu_array", 4, 16, 1)}),
    "tp_openat": ({"count_openat": "tracepoint"}, {"openat_count": ("array", 4, 8, 1)}),
    "rawtp_sys_enter": ({"count_sys_enter": "raw_tracepoint"},
                        {"sys_enter_count": ("percpu_array", 4, 8, 1)}),
    "kprobe_unlinkat": ({"kprobe_unlinkat": "kprobe"}, {"unlink_count": ("array", 4, 8, 1)}),
    "uprobe_counter": ({"uprobe_counter": "kprobe"}, {"uprobe_count": ("array", 4, 8, 1)}),
    "cgroup_egress": ({"cgroup_egress_bytes": "cgroup_skb"},
                      {"egress_bytes": ("percpu_array", 4, 16, 1)}),
    "fentry_unlinkat": ({"fentry_unlinkat": "tracing"}, {"fentry_count": ("array", 4, 8, 1)}),
    "lsm_file_open": ({"lsm_file_open": "lsm"}, {"file_open_count": ("percpu_array", 4, 8, 1)}),
    "xdp_multi": ({"xdp_pass_a": "xdp", "xdp_pass_b": "xdp"},
                  {"count_a": ("array", 4, 8, 1), "count_b": ("array", 4, 8, 1)}),
    "xdp_pinned_shared": ({"xdp_shared": "xdp"}, {"shared_counter": ("array", 4, 8, 1)}),
}
COUNTERS_STRUCT = ("xdp_counter", "tc_counter", "cgroup_egress")
TRAMPOLINE = ("fentry_unlinkat", "lsm_file_open")

failures = []


def run(*argv, **kw):
    check = kw.pop("check", True)
    return subprocess.run(list(argv), capture_output=True, text=True,
                          env=dict(os.environ, LANG="C", LC_ALL="C"), check=check, **kw)


def in_ns(ns, *argv):
    """Run in a network namespace WITHOUT `ip netns exec`, which remounts /sys
    and so hides the pins under /sys/fs/bpf."""
    return run("nsenter", "--net=/run/netns/" + ns, *argv)


def bpftool_json(*argv):
    return json.loads(run("bpftool", "-j", *argv).stdout)


def check(ok, what):
    print("  %-4s %s" % ("ok" if ok else "FAIL", what))
    if not ok:
        failures.append(what)


def map_total(path):
    """Sum of the values of every key (per-CPU values summed) -> {key: value}."""
    out = {}
    for entry in bpftool_json("map", "dump", "pinned", path):
        f = entry["formatted"]
        if "values" in f:  # per-CPU
            vals = [v["value"] for v in f["values"]]
            if isinstance(vals[0], dict):
                out[f["key"]] = dict((k, sum(v[k] for v in vals)) for k in vals[0])
            else:
                out[f["key"]] = sum(vals)
        else:
            out[f["key"]] = f["value"]
    return out


SHARED_PIN = "/sys/fs/bpf/shared_counter"  # LIBBPF_PIN_BY_NAME under libbpf's default pin root


def load(name, pin_dir=None, pinmaps=True):
    obj = os.path.join(HERE, "objects", name + ".bpf.o")
    argv = ["bpftool", "prog", "loadall", obj, PIN + "/" + (pin_dir or name)]
    if pinmaps:
        argv += ["pinmaps", PIN + "/" + name + "_maps"]
    return run(*argv, check=False)


def check_shared():
    """Two loads of xdp_pinned_shared must share one shared_counter map."""
    if os.path.exists(SHARED_PIN):
        print("  note %s exists already (not ours): sharing not checked" % SHARED_PIN)
        return
    try:
        for pin_dir in ("xdp_pinned_shared", "xdp_pinned_shared_2"):
            res = load("xdp_pinned_shared", pin_dir, pinmaps=False)
            check(res.returncode == 0, "xdp_pinned_shared loads (%s)" % pin_dir)
        info = bpftool_json("map", "show", "pinned", SHARED_PIN)
        got = (info["type"], info["bytes_key"], info["bytes_value"], info["max_entries"])
        check(got == ("array", 4, 8, 1), "xdp_pinned_shared: map shared_counter is array 4 8 1 (%s)" % (got,))
        users = [bpftool_json("prog", "show", "pinned", "%s/%s/xdp_shared" % (PIN, d))["map_ids"]
                 for d in ("xdp_pinned_shared", "xdp_pinned_shared_2")]
        check(users == [[info["id"]], [info["id"]]],
              "xdp_pinned_shared: both loads use the map pinned at %s (map ids %s)" % (SHARED_PIN, users))
    finally:
        if os.path.exists(SHARED_PIN):
            os.unlink(SHARED_PIN)


def step_load():
    print("load every object and compare it with the contract")
    for name in sorted(CONTRACT):
        progs, maps = CONTRACT[name]
        if name == "xdp_pinned_shared":
            check_shared()
            continue
        res = load(name)
        if res.returncode != 0:
            if name in TRAMPOLINE and "Operation not permitted" in res.stderr:
                print("  note %s: this kernel refuses trampoline programs (EPERM at load)" % name)
                continue
            check(False, "%s loads: %s" % (name, res.stderr.strip().splitlines()[-3:]))
            continue
        for prog, ptype in sorted(progs.items()):
            info = bpftool_json("prog", "show", "pinned", "%s/%s/%s" % (PIN, name, prog))
            check(info["type"] == ptype, "%s: program %s is %s (%s)" % (name, prog, ptype, info["type"]))
        pinned = sorted(os.listdir(PIN + "/" + name))
        check(pinned == sorted(progs), "%s: programs %s (found %s)" % (name, sorted(progs), pinned))
        for m, (mtype, ksz, vsz, maxe) in sorted(maps.items()):
            info = bpftool_json("map", "show", "pinned", "%s/%s_maps/%s" % (PIN, name, m))
            got = (info["type"], info["bytes_key"], info["bytes_value"], info["max_entries"])
            check(got == (mtype, ksz, vsz, maxe), "%s: map %s is %s (%s)" % (name, m, (mtype, ksz, vsz, maxe), got))
        if name in COUNTERS_STRUCT:
            c = run("bpftool", "btf", "dump", "file", os.path.join(HERE, "objects", name + ".bpf.o"),
                    "format", "c").stdout
            check("struct counters {\n\t__u64 packets;\n\t__u64 bytes;\n};" in c,
                  "%s: BTF has struct counters { __u64 packets; __u64 bytes; }" % name)
    res = load("bad_verifier")
    check(res.returncode != 0 and "invalid access to packet" in res.stderr,
          "bad_verifier is rejected by the verifier (invalid access to packet)")


def setup_netns():
    run("ip", "netns", "add", NS_A)
    run("ip", "netns", "add", NS_B)
    for ns in (NS_A, NS_B):
        in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    run("ip", "link", "add", DEV_A, "netns", NS_A, "type", "veth", "peer", "name", DEV_B, "netns", NS_B)
    mac = {}
    for ns, dev, addr in ((NS_A, DEV_A, ADDR_A), (NS_B, DEV_B, ADDR_B)):
        in_ns(ns, "ip", "addr", "add", addr + "/24", "dev", dev)
        in_ns(ns, "ip", "link", "set", dev, "up")
        mac[ns] = json.loads(in_ns(ns, "ip", "-j", "link", "show", dev).stdout)[0]["address"]
    # Static neighbours: no ARP, so every packet counted is one of our pings.
    in_ns(NS_A, "ip", "neigh", "replace", ADDR_B, "lladdr", mac[NS_B], "dev", DEV_A, "nud", "permanent")
    in_ns(NS_B, "ip", "neigh", "replace", ADDR_A, "lladdr", mac[NS_A], "dev", DEV_B, "nud", "permanent")


def ping(expect_replies=True, cgroup=None):
    argv = ["ip", "netns", "exec", NS_A, "ping", "-q", "-n", "-c", str(PINGS), "-i", "0.2", "-W", "1", ADDR_B]
    pre = None
    if cgroup:
        def pre():
            with open(cgroup + "/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
    res = subprocess.run(argv, capture_output=True, text=True, preexec_fn=pre, check=False)
    check((res.returncode == 0) == expect_replies,
          "ping %s -> %s %s" % (ADDR_A, ADDR_B, "answered" if expect_replies else "unanswered"))


def step_traffic():
    print("counters under real traffic (veth pair %s/%s between netns %s and %s)" % (DEV_A, DEV_B, NS_A, NS_B))
    setup_netns()
    p = PIN + "/"
    # XDP counter on the receiving side.
    in_ns(NS_B, "bpftool", "net", "attach", "xdp", "pinned", p + "xdp_counter/xdp_count", "dev", DEV_B)
    ping()
    got = map_total(p + "xdp_counter_maps/xdp_stats")[0]
    check(got == {"packets": PINGS, "bytes": PINGS * FRAME}, "xdp_stats = %d packets, %d bytes (%s)"
          % (PINGS, PINGS * FRAME, got))
    in_ns(NS_B, "bpftool", "net", "detach", "xdp", "dev", DEV_B)
    # XDP blocklist: the key is the IPv4 address in network byte order.
    in_ns(NS_B, "bpftool", "net", "attach", "xdp", "pinned", p + "xdp_blocklist/xdp_blocklist", "dev", DEV_B)
    blocklist = p + "xdp_blocklist_maps/blocklist"
    key = ADDR_A.split(".")
    run("bpftool", "map", "update", "pinned", blocklist, "key", *key, "value", *["0"] * 8)
    ping(expect_replies=False)
    dropped = map_total(blocklist)
    check(list(dropped.values()) == [PINGS], "blocklist[%s] = %d (%s)" % (ADDR_A, PINGS, dropped))
    run("bpftool", "map", "delete", "pinned", blocklist, "key", *key)
    ping()
    got = map_total(p + "xdp_blocklist_maps/verdicts")
    check(got == {0: PINGS, 1: PINGS}, "verdicts = {passed: %d, dropped: %d} (%s)" % (PINGS, PINGS, got))
    in_ns(NS_B, "bpftool", "net", "detach", "xdp", "dev", DEV_B)
    # tc classifier on clsact ingress.
    in_ns(NS_B, "tc", "qdisc", "add", "dev", DEV_B, "clsact")
    in_ns(NS_B, "tc", "filter", "add", "dev", DEV_B, "ingress", "bpf", "direct-action",
          "object-pinned", p + "tc_counter/tc_count")
    ping()
    got = map_total(p + "tc_counter_maps/tc_stats")[0]
    check(got == {"packets": PINGS, "bytes": PINGS * FRAME}, "tc_stats = %d packets, %d bytes (%s)"
          % (PINGS, PINGS * FRAME, got))
    in_ns(NS_B, "tc", "qdisc", "del", "dev", DEV_B, "clsact")
    # cgroup egress: the ping process runs in a cgroup made for it.
    os.mkdir(CGROUP)
    run("bpftool", "cgroup", "attach", CGROUP, "egress", "pinned", p + "cgroup_egress/cgroup_egress_bytes")
    ping(cgroup=CGROUP)
    got = map_total(p + "cgroup_egress_maps/egress_bytes")[0]
    check(got == {"packets": PINGS, "bytes": PINGS * PACKET}, "egress_bytes = %d packets, %d bytes (%s)"
          % (PINGS, PINGS * PACKET, got))


def step_tracing():
    print("counters under real system calls")
    libbpf = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    libc = ctypes.CDLL(None, use_errno=True)
    p = PIN.encode() + b"/"
    # raw tracepoint sys_enter
    prog = libbpf.bpf_obj_get(p + b"rawtp_sys_enter/count_sys_enter")
    link = libbpf.bpf_raw_tracepoint_open(b"sys_enter", prog)
    check(prog >= 0 and link >= 0, "raw tracepoint sys_enter attached")
    if link >= 0:
        before = map_total(PIN + "/rawtp_sys_enter_maps/sys_enter_count")[0]
        for _unused in range(1000):
            os.getppid()
        after = map_total(PIN + "/rawtp_sys_enter_maps/sys_enter_count")[0]
        os.close(link)
        check(after - before >= 1000, "sys_enter_count grew by >= 1000 over 1000 getppid() (%d)" % (after - before))
    os.close(prog)
    # tracepoint syscalls:sys_enter_openat, through a perf event on this process
    with open("/sys/kernel/tracing/events/syscalls/sys_enter_openat/id") as f:
        tp_id = int(f.read())
    attr = bytearray(128)
    struct.pack_into("<IIQQ", attr, 0, 2, 128, tp_id, 1)  # PERF_TYPE_TRACEPOINT, size, config, sample_period
    attr_buf = ctypes.create_string_buffer(bytes(attr), 128)
    prog = libbpf.bpf_obj_get(p + b"tp_openat/count_openat")
    event = libc.syscall(298, attr_buf, 0, -1, -1, 8)  # perf_event_open(pid 0, cpu -1, CLOEXEC), x86_64
    check(event >= 0, "perf event on syscalls:sys_enter_openat opened")
    if event >= 0:
        fcntl.ioctl(event, 0x40042408, prog)  # PERF_EVENT_IOC_SET_BPF
        fcntl.ioctl(event, 0x2400, 0)         # PERF_EVENT_IOC_ENABLE
        before = map_total(PIN + "/tp_openat_maps/openat_count")[0]
        for _unused in range(100):
            os.close(os.open("/etc/hostname", os.O_RDONLY))
        after = map_total(PIN + "/tp_openat_maps/openat_count")[0]
        os.close(event)
        check(after - before >= 100, "openat_count grew by >= 100 over 100 open() (%d)" % (after - before))
    os.close(prog)


class OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts up to kconfig: the same offsets in libbpf 0.3 and 1.x."""
    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p),
                ("relaxed_maps", ctypes.c_bool), ("relaxed_core_relocs", ctypes.c_bool),
                ("pin_root_path", ctypes.c_char_p), ("attach_prog_fd", ctypes.c_uint32),
                ("kconfig", ctypes.c_char_p)]


def step_libbpf(path):
    """Open and load every object through the libbpf at PATH (say a libbpf.so.0.3.0
    taken from Debian 11's libbpf0): program names, sections, maps, load result."""
    print("open and load through %s" % path)
    lib = ctypes.CDLL(path, use_errno=True)
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    for fname, res, args in (("bpf_object__open_file", vp, [cp, vp]), ("libbpf_get_error", ctypes.c_long, [vp]),
                             ("bpf_object__load", ctypes.c_int, [vp]), ("bpf_object__close", None, [vp]),
                             ("bpf_program__name", cp, [vp]), ("bpf_program__section_name", cp, [vp]),
                             ("bpf_map__name", cp, [vp])):
        getattr(lib, fname).restype, getattr(lib, fname).argtypes = res, args
    if hasattr(lib, "bpf_object__next_program"):  # 0.7+
        next_prog, next_map = lib.bpf_object__next_program, lib.bpf_object__next_map

        def order(obj, cur):
            return obj, cur
    else:  # 0.3: (prev, obj)
        next_prog, next_map = lib.bpf_program__next, lib.bpf_map__next

        def order(obj, cur):
            return cur, obj
    for fn in (next_prog, next_map):
        fn.restype, fn.argtypes = vp, [vp, vp]

    def walk(fn, obj, name_of):
        out, cur = [], None
        while True:
            cur = fn(*order(obj, cur))
            if not cur:
                return out
            out.append(name_of(cur))

    pin_root = PIN + "/libbpf_pins"
    os.makedirs(pin_root, exist_ok=True)
    for name in sorted(CONTRACT) + ["bad_verifier"]:
        opts = OpenOpts(ctypes.sizeof(OpenOpts), None, False, False, pin_root.encode(), 0, None)
        obj = lib.bpf_object__open_file(os.path.join(HERE, "objects", name + ".bpf.o").encode(), ctypes.byref(opts))
        if lib.libbpf_get_error(obj):
            check(False, "%s opens" % name)
            continue
        progs = walk(next_prog, obj, lambda p: (lib.bpf_program__name(p).decode(),
                                                lib.bpf_program__section_name(p).decode()))
        maps = walk(next_map, obj, lambda m: lib.bpf_map__name(m).decode())
        want_progs, want_maps = CONTRACT.get(name, ({"xdp_bad": "xdp"}, {}))
        check(sorted(p for p, _unused in progs) == sorted(want_progs) and sorted(maps) == sorted(want_maps),
              "%s opens: programs %s, maps %s" % (name, progs, maps))
        rc = lib.bpf_object__load(obj)
        lib.bpf_object__close(obj)
        if name == "bad_verifier":
            check(rc != 0, "bad_verifier does not load (%d)" % rc)
        elif rc != 0 and name in TRAMPOLINE:
            print("  note %s does not load here (%d): trampolines refused, or vmlinux BTF too new for this libbpf"
                  % (name, rc))
        else:
            check(rc == 0, "%s loads (%d)" % (name, rc))
    shutil.rmtree(pin_root, ignore_errors=True)


def cleanup():
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    if os.path.isdir(CGROUP):
        subprocess.run(["bpftool", "cgroup", "detach", CGROUP, "egress", "pinned",
                        PIN + "/cgroup_egress/cgroup_egress_bytes"], capture_output=True, check=False)
        os.rmdir(CGROUP)
    shutil.rmtree(PIN, ignore_errors=True)


def main():
    if os.geteuid() != 0:
        sys.exit("verify.py needs root")
    if not os.path.ismount("/sys/fs/bpf"):
        run("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")
    if not os.path.isdir("/sys/kernel/tracing/events"):
        run("mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing", check=False)
    libbpfs = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--libbpf=")]
    cleanup()
    os.makedirs(PIN)
    try:
        step_load()
        step_traffic()
        step_tracing()
        for path in libbpfs:
            step_libbpf(path)
    finally:
        cleanup()
    print("%d failed" % len(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
