"""Rollout benchmarks (issue #14): the demo's programs through the role, against bpftool, on this machine (root).

The demo's programs (playbooks/demo.yml): xdp-counter (XDP, generic mode, on the veth end in namespace b),
openat (the syscalls/sys_enter_openat tracepoint), blocklist (XDP, generic, on the veth end in namespace a, with
one declared entry: the peer's address). Every side is a fresh `ansible-playbook` run of a playbook in bench/
on the same inventory (localhost, ansible_connection=local, this machine's root, no become, the venv's Python
as the interpreter):
  role          rollout_role.yml: hypermesh.ebpf.ebpf_programs, ebpf_programs_health=none (bpftool checks
                nothing; the fair comparison), persist on (the role's default: desired state, module_utils for
                the boot-time re-apply; no unit, this machine has no systemd), prune on (as the demo)
  role_health   the same with the demo's health checks (ebpf_programs_health=changed, its default: the three
                counters must move; traffic runs the whole bench, UDP from a to b every 50 ms, b's ICMP answers
                are what the blocklist drops)
  noop          rollout_role.yml again right after role_health, on the host it left: the rollout that changes
                nothing
  role_cold     as `role`, on a host that never ran the collection: /var/cache/hypermesh-ebpf/pycache (the
                modules' bytecode of the collection's module_utils, pycache.py) removed first
  bpftool       rollout_bpftool.yml, hand-written: the objects copied (one copy task, a loop), then one shell task:
                `bpftool prog load ... pinmaps` for each program, `bpftool net attach xdpgeneric pinned ... dev`
                (under `nsenter --net`) for the two XDP programs, the tracepoint attached by python3 through the
                system's libbpf (perf_event_open + BPF_LINK_CREATE, the link pinned: bpftool 7.1 here cannot attach
                a tracepoint, `prog loadall ... autoattach` came with 7.3), `bpftool map update pinned ... noexist`
  ping          rollout_ping.yml: one ansible.builtin.ping task
Every rollout starts from a clean host: XDP off both veth ends, the pins (a directory of this bench under
/sys/fs/bpf, one per side), the objects, state, configuration and lib directories (in a temporary directory)
removed, and checked gone (no XDP, no perf_event link of the tracepoint program left). After every rollout the
bench checks the work was done, both sides alike: an XDP program on each veth end, the tracepoint program's
counter moving when a file is opened, the blocklist entry in the pinned map; the no-op must report no change.
Each repetition (BENCH_ROLLOUT_REPEAT, default 7) runs every side once, the order rotating; one untimed warm-up
of role, bpftool and ping first. The figures are medians. BENCH_COLLECTIONS_PATH: run another copy of the
collection (a collections directory; default: the checkout's, .cache/collections), e.g. a snapshot of a working
tree that is being edited while the bench runs.

Two times of each run: `play` (the callback plugin bench/callback_plugins/hm_module_runs.py: from the play's
start to its end, in the ansible-playbook process: what the play's tasks cost, the role's loading, argument
validation and controller-side work included) and `whole` (the ansible-playbook process, start to exit: plus
Python's and ansible-core's start and the inventory and playbook parse, the same ~1 s on every side). The
targets apply to `play`, the stricter of the two; `whole` rows are reported.
Module runs per host, from the same callback: task results (a loop's items each) that ran a module on the host,
not skipped, not controller-only (set_fact, debug, assert, include_role, validate_argument_spec, ...), not
delegated to localhost; also `executions` (module payloads executed, e.g. 2 for one copy: stat then copy).

Rows (run.py): first rollout role vs bpftool (target 1.0), the other first rollouts vs bpftool (reported), the
no-op vs ping (target 2.5), and the module runs per host (no-op: at most 3; first: reported).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
for path in (TOP, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from play_timer import PYTHON, ansible_env  # noqa: E402

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(PYTHON), "ansible-playbook")
OBJECTS = os.path.join(TOP, "examples", "objects")
CALLBACKS = os.path.join(HERE, "callback_plugins")
PYCACHE = "/var/cache/hypermesh-ebpf/pycache"
COLLECTIONS = os.environ.get("BENCH_COLLECTIONS_PATH")   # default: the checkout's (.cache/collections)
REPEAT = int(os.environ.get("BENCH_ROLLOUT_REPEAT", "7"))
TP_PROG = "count_openat"           # the tracepoint program's function in tp_openat.bpf.c
CASES = ("bpftool", "role", "role_health", "role_cold", "ping")     # noop runs right after role_health
TRAFFIC = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b"hm-bench-rollout", (sys.argv[1], 9))
    time.sleep(0.05)
"""


def _run(argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc


def _bpftool_json(*args):
    out = _run(["bpftool", "-j"] + list(args)).stdout
    return json.loads(out) if out.strip() else []


def _tp_links():
    """Ids of the perf_event links whose program is the tracepoint program (anyone's)."""
    names = dict((p["id"], p.get("name")) for p in _bpftool_json("prog", "show"))
    return set(link["id"] for link in _bpftool_json("link", "show")
               if link.get("type") == "perf_event" and names.get(link.get("prog_id")) == TP_PROG)


def _xdp_prog(ns, ifname):
    """The id of the XDP program on the interface, or None."""
    out = _run(["ip", "-n", ns, "-d", "-j", "link", "show", "dev", ifname]).stdout
    link = json.loads(out)[0]
    xdp = link.get("xdp") or {}
    return (xdp.get("prog") or {}).get("id")


def _map_u64(path, key):
    """The value (little-endian u64, summed over CPUs for a per-CPU map) of `key` (bytes) in a pinned map."""
    out = _bpftool_json("map", "lookup", "pinned", path, "key", *[str(b) for b in key])
    if isinstance(out, dict) and "values" in out:        # per-CPU: one value per CPU
        vals = [v["value"] for v in out["values"]]
    else:
        vals = [out["value"]]
    return sum(int.from_bytes(bytes(int(b, 16) for b in v), "little") if isinstance(v, list) else int(v)
               for v in vals)


class Host(object):
    """This machine as the bench's managed host: the veth pair, the bench's directories, clean and check."""

    def __init__(self, pair, work):
        self.pair = pair
        self.work = work
        base = "/sys/fs/bpf/hm-bench-rollout-%d" % os.getpid()
        self.pins = {"role": base + "-role", "bpftool": base + "-bpftool"}
        host = os.path.join(work, "host")
        os.mkdir(host, 0o755)
        self.dirs = dict((n, os.path.join(host, n)) for n in ("state", "config", "lib", "bpftool-objects"))
        self.blocked = pair.addr_b
        self.tp_links_before = _tp_links()

    def vars(self, health="none", persist=True):
        return {"hm_objects": OBJECTS, "hm_pin_root": self.pins["role"], "hm_state_dir": self.dirs["state"],
                "hm_config_dir": self.dirs["config"], "hm_lib_dir": self.dirs["lib"], "hm_health": health,
                "hm_persist": persist, "hm_bpftool_objects": self.dirs["bpftool-objects"],
                "hm_bpftool_pins": self.pins["bpftool"], "hm_ns_a": self.pair.ns_a, "hm_ns_b": self.pair.ns_b,
                "hm_if_a": self.pair.if_a, "hm_if_b": self.pair.if_b, "hm_blocked": self.blocked}

    def clean(self):
        """Everything a rollout made removed, then checked gone."""
        for ns, ifname in ((self.pair.ns_a, self.pair.if_a), (self.pair.ns_b, self.pair.if_b)):
            _run(["ip", "-n", ns, "link", "set", "dev", ifname, "xdpgeneric", "off"])
        for path in list(self.pins.values()) + list(self.dirs.values()):
            if os.path.lexists(path):
                shutil.rmtree(path)
        for ns, ifname in ((self.pair.ns_a, self.pair.if_a), (self.pair.ns_b, self.pair.if_b)):
            if _xdp_prog(ns, ifname) is not None:
                raise RuntimeError("XDP still attached on %s in %s after the cleanup" % (ifname, ns))
        deadline = time.monotonic() + 20      # a link is freed once its last reference is gone (deferred)
        while _tp_links() - self.tp_links_before:
            if time.monotonic() > deadline:
                raise RuntimeError("the tracepoint link is still there after the cleanup: %s"
                                   % sorted(_tp_links() - self.tp_links_before))
            time.sleep(0.1)

    def check_rolled_out(self, side):
        """The work was done: XDP on both veth ends, the tracepoint counting, the blocklist entry there."""
        pins = self.pins[side]
        for ns, ifname in ((self.pair.ns_a, self.pair.if_a), (self.pair.ns_b, self.pair.if_b)):
            if _xdp_prog(ns, ifname) is None:
                raise RuntimeError("%s: no XDP program on %s in %s" % (side, ifname, ns))
        if len(_tp_links() - self.tp_links_before) != 1:
            raise RuntimeError("%s: not one tracepoint link: %s" % (side, sorted(_tp_links())))
        counter = os.path.join(pins, "openat", "maps", "openat_count")
        before = _map_u64(counter, b"\0\0\0\0")
        with open(os.devnull):
            pass
        if _map_u64(counter, b"\0\0\0\0") <= before:
            raise RuntimeError("%s: the tracepoint program does not count openat calls" % side)
        key = bytes(int(b) for b in self.blocked.split("."))
        _map_u64(os.path.join(pins, "blocklist", "maps", "blocklist"), key)   # raises when the entry is missing


def _playbook(work, name, extra_vars, label):
    """Run bench/<name> once; {"play_s", "whole_s", "hosts": {...}, "tasks": [...]} (hm_module_runs)."""
    out = os.path.join(work, "runs-%s.json" % label)
    for p in (out, out + ".exec"):
        if os.path.exists(p):
            os.unlink(p)
    vars_file = os.path.join(work, "vars.json")
    with open(vars_file, "w") as f:
        json.dump(extra_vars, f)
    env = ansible_env(ANSIBLE_CALLBACK_PLUGINS=CALLBACKS, ANSIBLE_CALLBACKS_ENABLED="hm_module_runs",
                      HM_BENCH_RUNS_OUT=out)
    if COLLECTIONS:
        env["ANSIBLE_COLLECTIONS_PATH"] = COLLECTIONS
    argv = [ANSIBLE_PLAYBOOK, "-i", os.path.join(work, "inventory.ini"), os.path.join(HERE, name),
            "-e", "@" + vars_file]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=TOP, check=False)
    whole = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError("%s (%s) failed:\n%s\n%s" % (name, label, proc.stdout[-4000:], proc.stderr[-2000:]))
    with open(out) as f:
        res = json.load(f)
    res["whole_s"] = whole
    res["changed"] = any(t.get("changed") for t in res["tasks"])
    return res


class Bench(object):
    def __init__(self, host, work):
        self.host = host
        self.work = work
        self.runs = dict((c, []) for c in CASES + ("noop",))

    def rollout(self, case, keep=True):
        h = self.host
        if case == "ping":
            r = _playbook(self.work, "rollout_ping.yml", h.vars(), case)
            if keep:
                self.runs[case].append(r)
            return
        h.clean()
        if case == "role_cold" and os.path.isdir(PYCACHE):
            shutil.rmtree(PYCACHE)
        if case == "bpftool":
            r = _playbook(self.work, "rollout_bpftool.yml", h.vars(), case)
        else:
            health = "changed" if case == "role_health" else "none"
            r = _playbook(self.work, "rollout_role.yml", h.vars(health=health), case)
        h.check_rolled_out("bpftool" if case == "bpftool" else "role")
        if keep:
            self.runs[case].append(r)
        if case == "role_health":
            n = _playbook(self.work, "rollout_role.yml", h.vars(health="changed"), "noop")
            if n["changed"]:
                raise RuntimeError("the second rollout changed something: %s"
                                   % [t["task"] for t in n["tasks"] if t.get("changed")])
            h.check_rolled_out("role")
            if keep:
                self.runs["noop"].append(n)
        h.clean()


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


def _runs_per_host(runs, key="module_runs"):
    """The count of every run (the one host): a sorted list of the distinct values seen."""
    return sorted(set(list(r["hosts"].values())[0][key] for r in runs))


def _report(bench):
    w = sys.stderr.write
    for case in CASES + ("noop",):
        runs = bench.runs[case]
        w("  %-12s play median %.3f (min %.3f max %.3f)  whole median %.3f s  module runs %s  executions %s"
          "  commands %s  controller runs %s  (%d runs)\n" % (
              case, _median(runs, "play_s"), min(r["play_s"] for r in runs), max(r["play_s"] for r in runs),
              _median(runs, "whole_s"), _runs_per_host(runs), _runs_per_host(runs, "executions"),
              _runs_per_host(runs, "commands"), _runs_per_host(runs, "controller_runs"), len(runs)))
    for case in ("role", "noop", "bpftool", "ping"):
        w("  tasks of the median %s run (module runs / executions; seconds: task, of which building the payload"
          " on the controller, and in commands on the host):\n" % case)
        runs = sorted(bench.runs[case], key=lambda r: r["play_s"])
        for t in runs[len(runs) // 2]["tasks"]:
            where = " (delegated to localhost)" if t["delegated"] else ""
            cols = (t["task"][-60:], t["runs"], t.get("executions", 0), t["s"], t.get("build_s", 0),
                    t.get("commands_s", 0), where)
            w("    %-60s %2d / %2d %7.3f %7.3f %7.3f%s\n" % cols)


def run():
    from tests.integration.netns import make_veth_pair
    if os.geteuid() != 0:
        raise RuntimeError("bench_rollout needs root (network namespaces, bpffs, XDP)")
    work = tempfile.mkdtemp(prefix="hm-bench-rollout-")
    traffic = None
    try:
        with open(os.path.join(work, "inventory.ini"), "w") as f:
            f.write("localhost ansible_connection=local ansible_python_interpreter=%s\n" % PYTHON)
        with make_veth_pair() as pair:
            traffic = subprocess.Popen(["ip", "netns", "exec", pair.ns_a, "/usr/bin/python3", "-c", TRAFFIC,
                                        pair.addr_b], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            host = Host(pair, work)
            bench = Bench(host, work)
            try:
                for case in ("role", "bpftool", "ping"):
                    bench.rollout(case, keep=False)
                for i in range(REPEAT):
                    k = i % len(CASES)
                    for case in CASES[k:] + CASES[:k]:
                        bench.rollout(case)
            finally:
                try:
                    host.clean()
                finally:
                    traffic.terminate()
                    traffic.wait()
    finally:
        for p in ("/sys/fs/bpf/hm-bench-rollout-%d-role" % os.getpid(),
                  "/sys/fs/bpf/hm-bench-rollout-%d-bpftool" % os.getpid()):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    _report(bench)
    r = bench.runs
    rows = []
    for name, ours, base, key, target in (
            ("rollout: first, role vs bpftool playbook", "role", "bpftool", "play_s", 1.0),
            ("rollout: first, role vs bpftool (whole run)", "role", "bpftool", "whole_s", None),
            ("rollout: first, role+health vs bpftool", "role_health", "bpftool", "play_s", None),
            ("rollout: first, role cold cache vs bpftool", "role_cold", "bpftool", "play_s", None),
            ("rollout: no-op vs ping play", "noop", "ping", "play_s", 2.5),
            ("rollout: no-op vs ping (whole run)", "noop", "ping", "whole_s", None)):
        o, b = _median(r[ours], key), _median(r[base], key)
        rows.append({"name": name, "ours_s": o, "baseline_s": b, "ratio": o / b, "target": target})
    for name, ours, base, limit in (("rollout: module runs/host, first vs bpftool", "role", "bpftool", None),
                                    ("rollout: module runs/host, no-op vs ping", "noop", "ping", 3)):
        o, b = _runs_per_host(r[ours]), _runs_per_host(r[base])
        rows.append({"name": name, "ours_n": max(o), "baseline_n": max(b), "max_n": limit})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
