"""Metrics where users look: metrics_export's file served by the real prometheus-node-exporter (Debian's), scraped
on 127.0.0.1, against what bpftool reads at the same moment; and the role ebpf_metrics through ansible-playbook.

Setup: two veth pairs between network namespaces made here. xdp_counter (managed program `counter`) counts on
the b side of the first, xdp_blocklist (`blocklist`) on the b side of the second, with the a side's address in
its blocklist; pings run inside the namespaces only (IPv6 off on the veths, so nothing else moves the counters
once the pings stop). BPF statistics are on (BPF_ENABLE_STATS, held by this process) while the pings run.
node_exporter is started here, on 127.0.0.1 and a free port, with only its textfile collector, reading a temp
directory; it is stopped at the end.

The role runs against localhost (connection local) with its own pin root, state, config, lib and textfile
directories, inside a mount namespace whose /etc/systemd/system is a temp directory (so the unit files it
installs never reach the host). This machine has no systemd (PID 1 is not systemd): the role refuses
ebpf_metrics_timer=true here, and with ebpf_metrics_timer=false the test runs the installed service's
ExecStart itself, as the timer would, and sees the file appear and refresh.
"""
import json
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

from tests.conftest import COLLECTIONS, TOP, ansible_module, needs_root
from tests.integration.netns import make_veth_pair
from test_ebpf_map_common import bpftool_json, drop_program, module, ping, program

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs

pytestmark = needs_root

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
EXPORT = "ansible_collections.hypermesh.ebpf.plugins.module_utils._maps.metrics_export"
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _node_exporter_probe():
    """None when Debian's node_exporter is here (installed now with apt-get when missing), else why not."""
    if not os.path.exists(NODE_EXPORTER):
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus-node-exporter"],
                              capture_output=True, text=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                              check=False)
        if proc.returncode != 0 or not os.path.exists(NODE_EXPORTER):
            return "probe: %s missing and `apt-get install prometheus-node-exporter` failed: %s" % (
                NODE_EXPORTER, proc.stderr.strip()[-300:])
    return None


def parse_scrape(text):
    """{(name, frozenset of (label, value))): float} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SERIES.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                           for k, v in _LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def pick(samples, name, **labels):
    want = set(labels.items())
    hits = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def node_exporter():
    """Debian's node_exporter on 127.0.0.1:<free port>, textfile collector only, reading a temp directory."""
    reason = _node_exporter_probe()
    if reason:
        pytest.skip(reason)
    textfile = tempfile.mkdtemp(prefix="hm-textfile-")
    os.chmod(textfile, 0o755)
    port = _free_port()
    proc = subprocess.Popen([NODE_EXPORTER, "--web.listen-address=127.0.0.1:%d" % port, "--collector.disable-defaults",
                             "--collector.textfile", "--collector.textfile.directory=" + textfile],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = "http://127.0.0.1:%d/metrics" % port
    deadline = time.time() + 15
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError("node_exporter did not answer on %s: %s" % (url, proc.stderr.read()))
            time.sleep(0.2)
    try:
        yield {"url": url, "dir": textfile, "proc": proc}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(textfile, ignore_errors=True)


def scrape(url):
    return urllib.request.urlopen(url, timeout=5).read().decode("utf-8")


def _quiet(pair):
    for ns, ifname in ((pair.ns_a, pair.if_a), (pair.ns_b, pair.if_b)):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % ifname],
                       check=True)


@pytest.fixture(scope="module")
def demo():
    """counter and blocklist loaded and attached under a private pin root, one veth pair each."""
    pin_root = "/sys/fs/bpf/hm-test-metrics-%d" % os.getpid()
    os.makedirs(pin_root)
    try:
        with make_veth_pair() as p1, make_veth_pair() as p2:
            _quiet(p1)
            _quiet(p2)
            program(pin_root, "counter", "xdp_counter.bpf.o",
                    attach={"xdp": {"interface": p1.if_b, "netns": p1.ns_b, "mode": "generic"}})
            program(pin_root, "blocklist", "xdp_blocklist.bpf.o",
                    attach={"xdp": {"interface": p2.if_b, "netns": p2.ns_b, "mode": "generic"}})
            r = module("ebpf_map", {"name": "blocklist", "map": "blocklist", "pin_root": pin_root,
                                    "key_format": "ipv4", "entries": [{"key": p2.addr_a, "value": 0}]})
            assert not r.get("failed"), r
            try:
                yield {"pin_root": pin_root, "counter": p1, "blocklist": p2}
            finally:
                for name in ("counter", "blocklist"):
                    drop_program(pin_root, name)
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)


def _traffic(demo):
    """Pings through both pairs with BPF statistics on; returns once they stopped."""
    fd = bs.enable_stats()
    try:
        assert ping(demo["counter"].ns_a, demo["counter"].addr_b, count=5)
        assert not ping(demo["blocklist"].ns_a, demo["blocklist"].addr_b, count=4), "the blocklist let pings through"
    finally:
        bs.close(fd)


def _bpftool_view(pin_root):
    """What bpftool reads: run counts and run time of both programs, map values summed over CPUs."""
    def prog(name):
        info = bpftool_json("prog", "show", "pinned", os.path.join(pin_root, name, "prog"))
        return info.get("run_cnt", 0), info.get("run_time_ns", 0)

    def dump(name, map_name):
        return [e["formatted"] for e in bpftool_json("map", "dump", "pinned",
                                                     os.path.join(pin_root, name, "maps", map_name))]

    def summed(entry):
        values = [v["value"] for v in entry["values"]]
        if isinstance(values[0], dict):
            return dict((k, sum(v[k] for v in values)) for k in values[0])
        return sum(values)
    stats = dump("counter", "xdp_stats")
    return {
        "runs": {"counter": prog("counter"), "blocklist": prog("blocklist")},
        "xdp_stats": summed(stats[0]),
        "verdicts": dict((e["key"], summed(e)) for e in dump("blocklist", "verdicts")),
        # the hash key is the address in network byte order, shown by bpftool as the u32 it is on this host
        "blocklist": dict((socket.inet_ntoa(struct.pack("=I", e["key"])), e["value"])
                          for e in dump("blocklist", "blocklist")),
    }


def _export(out_dir, pin_root, *extra):
    env = dict(os.environ, PYTHONPATH=COLLECTIONS, LANG="C")
    return subprocess.run([sys.executable, "-m", EXPORT, "--out", out_dir, "--pin-root", pin_root, "--host",
                           "hm-test"] + list(extra), capture_output=True, text=True, env=env, check=False)


def test_a_scrape_shows_the_demo_counters_equal_to_bpftool(demo, node_exporter):
    _traffic(demo)
    pin_root = demo["pin_root"]
    for _attempt in range(5):
        before = _bpftool_view(pin_root)
        proc = _export(node_exporter["dir"], pin_root, "--key-format", "blocklist/blocklist=ipv4")
        text = scrape(node_exporter["url"])
        after = _bpftool_view(pin_root)
        if before == after:        # nothing ran between the two bpftool reads: the scrape saw the same moment
            break
    assert before == after, "the counters kept moving with no traffic: %r -> %r" % (before, after)
    assert proc.returncode == 0, proc.stderr
    s = parse_scrape(text)
    assert pick(s, "node_textfile_scrape_error") == 0, "node_exporter could not parse the file"
    print("bpftool:", json.dumps(before, sort_keys=True))
    print("scrape:", "\n".join(line for line in text.splitlines() if line.startswith("hypermesh_ebpf_")))

    stats = before["xdp_stats"]
    assert stats["packets"] >= 5 and stats["bytes"] > 0, stats    # the 5 echo requests, at least
    for field in ("packets", "bytes"):
        assert pick(s, "hypermesh_ebpf_map_value", host="hm-test", program="counter", map="xdp_stats", key="0",
                    field=field) == stats[field]
    for key, value in before["verdicts"].items():
        assert pick(s, "hypermesh_ebpf_map_value", program="blocklist", map="verdicts", key=str(key)) == value
    assert before["verdicts"][1] >= 4, before                    # the 4 pings were dropped
    src = demo["blocklist"].addr_a
    assert before["blocklist"] == {src: before["blocklist"][src]} and before["blocklist"][src] >= 4
    assert pick(s, "hypermesh_ebpf_map_value", program="blocklist", map="blocklist", key=src) == \
        before["blocklist"][src]
    assert pick(s, "hypermesh_ebpf_map_entries", program="blocklist", map="blocklist") == 1
    for name, (runs, run_ns) in before["runs"].items():
        assert runs > 0, (name, runs)
        assert pick(s, "hypermesh_ebpf_program_runs_total", host="hm-test", program=name) == runs
        assert pick(s, "hypermesh_ebpf_program_run_time_seconds_total", program=name) == pytest.approx(
            run_ns / 1e9, rel=1e-9)
    # XDP runs once per packet received; the kernel counted runs only while statistics were on
    assert 5 <= before["runs"]["counter"][0] <= stats["packets"], (before["runs"], stats)
    assert pick(s, "hypermesh_ebpf_export_errors") == 0
    assert os.stat(os.path.join(node_exporter["dir"], "hypermesh_ebpf.prom")).st_mode & 0o777 == 0o644


def test_the_exporter_refuses_a_link_and_a_directory_others_can_write(demo, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    link = tmp_path / "link"
    os.symlink(str(real), str(link))
    proc = _export(str(link), demo["pin_root"])
    assert proc.returncode == 2 and "symbolic link" in proc.stderr, proc.stderr
    os.chmod(str(real), 0o777)
    proc = _export(str(real), demo["pin_root"])
    assert proc.returncode == 2 and "writable by group or others" in proc.stderr, proc.stderr
    assert os.listdir(str(real)) == []


# ---------------------------------------------------------------------------------------------------------------
# the role

PLAY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: hypermesh.ebpf.ebpf_programs
      when: t_programs | bool
    - role: hypermesh.ebpf.ebpf_metrics
"""


def _playbook(play, units_dir, extra, check=False):
    """ansible-playbook in a mount namespace whose /etc/systemd/system is units_dir; (rc, stdout)."""
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
           'mount --bind "$1" /etc/systemd/system; shift; exec "$@"', "sh", units_dir,
           PLAYBOOK, "-i", "localhost,", "-c", "local", play, "-e", "ansible_python_interpreter=" + sys.executable,
           "-e", json.dumps(extra)]
    if check:
        cmd.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               ANSIBLE_NOCOLOR="1", LANG="C")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOP, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _recap(out):
    m = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert m, out[-3000:]
    return {"ok": int(m.group(1)), "changed": int(m.group(2)), "failed": int(m.group(4))}


def _run_unit(service_file):
    """Run the service's ExecStart with its Environment= lines, as systemd would (one quoted word per argument)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    exec_start = None
    with open(service_file) as f:
        for line in f:
            if line.startswith("Environment="):
                key, _sep, value = line[len("Environment="):].strip().partition("=")
                env[key] = value
            elif line.startswith("ExecStart="):
                exec_start = line[len("ExecStart="):].strip()
    assert exec_start and "%" not in exec_start.replace("%%", "")
    return subprocess.run(shlex.split(exec_start), capture_output=True, text=True, env=env, check=False)


def test_the_role_installs_the_exporter_idempotently(tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    top = tmp_path / "host"
    d = dict((k, str(top / k)) for k in ("state", "etc", "lib"))
    textfile = str(top / "textfile")
    pin_root = "/sys/fs/bpf/hmt_metrics_%s" % uuid.uuid4().hex[:8]
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    with make_veth_pair() as p:
        _quiet(p)
        prog = {"name": "counter", "object": os.path.join(TOP, "examples", "objects", "xdp_counter.bpf.o"),
                "attach": {"xdp": {"interface": p.if_b, "netns": p.ns_b, "mode": "generic"}}}
        extra = {"ebpf_programs": [prog], "ebpf_programs_pin_root": pin_root, "ebpf_programs_state_dir": d["state"],
                 "ebpf_programs_config_dir": d["etc"], "ebpf_programs_lib_dir": d["lib"],
                 "ebpf_programs_health": "none", "t_programs": False,
                 "ebpf_metrics_pin_root": pin_root, "ebpf_metrics_state_dir": d["state"],
                 "ebpf_metrics_lib_dir": d["lib"], "ebpf_metrics_textfile_dir": textfile,
                 "ebpf_metrics_host_label": "edge-1"}
        try:
            # no module_utils installed by ebpf_programs yet: refused, nothing made
            rc, out = _playbook(str(play), str(units), dict(extra, ebpf_metrics_timer=False))
            assert rc != 0 and "roll the programs out with the role hypermesh.ebpf.ebpf_programs first" in out, out
            assert not os.path.exists(textfile) and os.listdir(str(units)) == []
            # the programs rolled out (this installs the module_utils), then the metrics role
            extra["t_programs"] = True
            if os.path.exists("/run/systemd/system"):
                pytest.fail("this test is written for a host without systemd; run the timer case on one")
            rc, out = _playbook(str(play), str(units), extra)
            assert rc != 0 and "the timer needs systemd" in out, out
            assert not os.path.exists(textfile) and os.listdir(str(units)) == []
            extra["ebpf_metrics_timer"] = False
            rc, out = _playbook(str(play), str(units), extra, check=True)
            assert rc == 0, out[-3000:]
            assert not os.path.exists(textfile) and os.listdir(str(units)) == []
            rc, out = _playbook(str(play), str(units), extra)
            assert rc == 0 and _recap(out)["changed"] > 0, out[-3000:]
            assert sorted(os.listdir(str(units))) == ["hypermesh-ebpf-metrics.service", "hypermesh-ebpf-metrics.timer"]
            timer = (units / "hypermesh-ebpf-metrics.timer").read_text()
            assert "OnUnitActiveSec=15s" in timer and "OnActiveSec=0" in timer
            unit_files = [str(units / n) for n in sorted(os.listdir(str(units)))]
            verify = subprocess.run(["systemd-analyze", "verify", "--man=no"] + unit_files, capture_output=True,
                                    text=True, check=False)
            assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
            for again_check in (False, True):
                rc, out = _playbook(str(play), str(units), extra, check=again_check)
                assert rc == 0 and _recap(out)["changed"] == 0, out[-3000:]

            # the timer's run, twice: the file appears, then refreshes with the new counts
            proc = _run_unit(str(units / "hypermesh-ebpf-metrics.service"))
            assert proc.returncode == 0, proc.stderr
            prom = os.path.join(textfile, "hypermesh_ebpf.prom")
            first = parse_scrape(open(prom).read())
            packets = pick(first, "hypermesh_ebpf_map_value", host="edge-1", program="counter", map="xdp_stats",
                           field="packets")
            assert ping(p.ns_a, p.addr_b, count=3)
            time.sleep(0.01)
            proc = _run_unit(str(units / "hypermesh-ebpf-metrics.service"))
            assert proc.returncode == 0, proc.stderr
            second = parse_scrape(open(prom).read())
            assert pick(second, "hypermesh_ebpf_map_value", program="counter", map="xdp_stats", field="packets") \
                >= packets + 3
            assert pick(second, "hypermesh_ebpf_export_timestamp_seconds") > \
                pick(first, "hypermesh_ebpf_export_timestamp_seconds")

            # absent: the units and the file go
            rc, out = _playbook(str(play), str(units), dict(extra, ebpf_metrics_state="absent", t_programs=False))
            assert rc == 0 and _recap(out)["changed"] > 0, out[-3000:]
            assert os.listdir(str(units)) == [] and not os.path.exists(prom)
        finally:
            r = ansible_module("ebpf_program", {"name": "counter", "state": "absent", "pin_root": pin_root,
                                                "state_dir": d["state"]}) if os.path.isdir(pin_root) else None
            shutil.rmtree(pin_root, ignore_errors=True)
            assert r is None or not r.get("failed"), r
