"""The boot-time re-apply on the real kernel: the command hypermesh-ebpf-reapply.service runs
(python -m ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply, the collection on PYTHONPATH), on a
desired.json written here in ebpf_state's format, with a private pin root and state directory.

- an empty bpffs (what a reboot leaves): an XDP program (generic mode, on one end of a veth pair, with a map
  entry declared) and a tracepoint program come back: pins, the interface's XDP program (ip -j link), the
  map's key; exit 0;
- the same command again changes nothing (same kernel ids);
- a program on an interface that does not exist: reported failed with its reason, the others applied, exit 1;
- that interface made while the command retries (after its first round, which printed the others' lines): the
  program is applied on it, exit 0;
- at the end everything is removed through the module code (ebpf_program, state absent).
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS, TOP, needs_root
from tests.integration.netns import make_veth_pair
from test_ebpf_program_common import mounts, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps

pytestmark = needs_root

OBJECTS = os.path.join(TOP, "examples", "objects")
TAG = "hmra%d" % (os.getpid() % 100000)
BLK, TP, LATE = TAG + "_blk", TAG + "_tp", TAG + "_late"
LATE_PREFIX = "hmr%d" % (os.getpid() % 100000)
LATE_SUBNET = "10.197.%d.0/24" % (os.getpid() % 250 + 1)
REAPPLY = "ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """pin_root, state dir and desired.json path of this file; afterwards whatever is left of our programs is
    removed through the module code (state absent), then the pin root."""
    mounts()
    work = str(tmp_path_factory.mktemp("hm-reapply"))
    h = {"pin_root": "/sys/fs/bpf/hm-reapply-%d" % os.getpid(), "state": os.path.join(work, "state"),
         "desired": os.path.join(work, "etc", "desired.json")}
    os.makedirs(os.path.dirname(h["desired"]))
    yield h
    for name in (BLK, TP, LATE):
        remove(h, name)
    if os.path.isdir(h["pin_root"]):
        os.rmdir(h["pin_root"])


def remove(h, name):
    res = run({"name": name, "state": "absent", "pin_root": h["pin_root"], "state_dir": h["state"]})
    assert not res.get("failed"), res
    return res


def entry(h, name, obj, attach, maps=()):
    """One program as ebpf_state saves it (Wanted.saved(): every parameter, health beside)."""
    path = os.path.join(OBJECTS, obj + ".bpf.o")
    return {"program": {"name": name, "object": path, "sha256": sha256(path), "program": None,
                        "state": "attached", "attach": attach, "pin_root": h["pin_root"], "force": False},
            "maps": [{"name": name, "map": m, "path": None, "pin_root": h["pin_root"], "entries": entries,
                      "state": "present", "exact": False, "key_format": fmt, "value_format": "auto"}
                     for m, fmt, entries in maps],
            "health": {"check": "run_count", "map": None, "key": 0, "field": None, "key_format": "auto",
                       "value_format": "auto", "timeout": 30.0}}


def xdp(ifname, netns):
    return {"xdp": {"interface": ifname, "netns": netns, "mode": "generic"}}


def write_desired(h, pair, late=False):
    programs = [entry(h, BLK, "xdp_blocklist", xdp(pair.if_b, pair.ns_b),
                      [("blocklist", "ipv4", [{"key": "192.0.2.10"}])]),
                entry(h, TP, "tp_openat", {"tracepoint": "syscalls/sys_enter_openat"})]
    if late:
        programs.append(entry(h, LATE, "xdp_counter", xdp(LATE_PREFIX + "-a", LATE_PREFIX + "a")))
    with open(h["desired"], "w") as f:
        json.dump({"version": 1, "generation": 1, "programs": programs}, f, indent=1)


def command(h, retry_seconds=0):
    return [sys.executable, "-m", REAPPLY, "--desired", h["desired"], "--state-dir", h["state"],
            "--retry-seconds", str(retry_seconds)]


def env(h):
    # what the unit sets (PYTHONPATH: a collections directory holding the checkout)
    return dict(os.environ, PYTHONPATH=COLLECTIONS, PYTHONDONTWRITEBYTECODE="1", LANG="C")


def reapply(h, retry_seconds=0):
    proc = subprocess.run(command(h, retry_seconds), capture_output=True, text=True, env=env(h), cwd="/",
                          check=False)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def xdp_prog_id(ifname, netns):
    """The XDP program id on the interface, as `ip -j link` shows it (None: none)."""
    out = subprocess.run(["ip", "-n", netns, "-j", "-d", "link", "show", "dev", ifname], capture_output=True,
                         text=True, check=True).stdout
    link = json.loads(out)[0]
    x = link.get("xdp") or {}
    if "prog" in x:
        return x["prog"]["id"]
    for a in x.get("attached") or []:
        return a.get("prog", a).get("id")
    return None


def view(h, names):
    return dict((n, (ps.Live(h["pin_root"], n).prog_id, ps.Live(h["pin_root"], n).link_id,
                     dict(ps.Live(h["pin_root"], n).maps))) for n in names)


def by_program(lines):
    out = {}
    for line in lines:
        if "program" in line:
            out.setdefault(line["program"], []).append(line)
    return out


# ---- tests, in order (module-scoped state) -----------------------------------------------------------------
def test_reapply_puts_back_what_the_kernel_lost(host, pair):
    write_desired(host, pair)
    assert not os.path.exists(host["pin_root"])   # the empty bpffs a boot finds
    rc, lines, err = reapply(host)
    assert rc == 0, (lines, err)
    got = by_program(lines)
    assert [ln["changed"] for ln in got[BLK]] == [True, True] and got[TP][0]["changed"], lines
    assert got[BLK][1] == {"program": BLK, "map": "blocklist", "changed": True, "added": ["192.0.2.10"],
                           "updated": []}
    assert lines[-1] == {"summary": True, "programs": 2, "failed": []}
    blk, tp = ps.Live(host["pin_root"], BLK), ps.Live(host["pin_root"], TP)
    assert blk.prog_id and blk.prog_id == got[BLK][0]["prog_id"] and "blocklist" in blk.maps
    assert xdp_prog_id(pair.if_b, pair.ns_b) == blk.prog_id
    assert tp.prog_id and tp.link_id and os.path.exists(os.path.join(host["pin_root"], TP, "link"))
    assert ps.read_record(BLK, host["state"])["pin_root"] == host["pin_root"]


def test_reapply_again_changes_nothing(host, pair):
    before = view(host, [BLK, TP])
    rc, lines, err = reapply(host)
    assert rc == 0, (lines, err)
    assert [ln["changed"] for ln in lines if "program" in ln] == [False, False, False], lines
    assert view(host, [BLK, TP]) == before
    assert xdp_prog_id(pair.if_b, pair.ns_b) == before[BLK][0]


def test_a_program_on_a_missing_interface_fails_and_the_others_are_applied(host, pair):
    remove(host, TP)     # the tracepoint program lost too: it must come back although another one fails
    write_desired(host, pair, late=True)
    rc, lines, err = reapply(host)
    assert rc == 1, (lines, err)
    got = by_program(lines)
    assert got[TP][0]["changed"] and not got[BLK][0]["changed"], lines
    failed = got[LATE]
    assert len(failed) == 1 and failed[0]["failed"] and LATE_PREFIX in failed[0]["error"], failed
    assert lines[-1] == {"summary": True, "programs": 3, "failed": [LATE]}
    assert ps.Live(host["pin_root"], TP).link_id and not ps.Live(host["pin_root"], LATE).exists
    assert ps.read_record(LATE, host["state"]) is None


def test_an_interface_that_appears_while_it_retries_gets_its_program(host, pair):
    proc = subprocess.Popen(command(host, retry_seconds=120), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(host), cwd="/")
    lines = []
    try:
        # the first round prints the lines of the two programs it applied; LATE was set aside in it
        while not (set(by_program(lines)) >= set([BLK, TP])):
            line = proc.stdout.readline()
            assert line, "reapply ended before its first round: %s" % proc.stderr.read()
            lines.append(json.loads(line))
        assert LATE not in by_program(lines)
        with make_veth_pair(prefix=LATE_PREFIX, subnet=LATE_SUBNET) as late_pair:
            out, err = proc.communicate(timeout=180)
            lines += [json.loads(line) for line in out.splitlines()]
            assert proc.returncode == 0, (lines, err)
            got = by_program(lines)
            assert got[LATE] == [{"program": LATE, "changed": True, "state": "attached",
                                  "prog_id": got[LATE][0]["prog_id"]}], lines
            assert lines[-1] == {"summary": True, "programs": 3, "failed": []}
            live = ps.Live(host["pin_root"], LATE)
            assert live.prog_id == got[LATE][0]["prog_id"]
            assert xdp_prog_id(late_pair.if_a, late_pair.ns_a) == live.prog_id
            # removed through the module while its interface is there (detached from it first)
            assert remove(host, LATE)["changed"]
            assert xdp_prog_id(late_pair.if_a, late_pair.ns_a) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_everything_removed_through_the_module(host, pair):
    for name in (BLK, TP):
        assert remove(host, name)["changed"]
    assert xdp_prog_id(pair.if_b, pair.ns_b) is None
    assert ps.managed_names(host["pin_root"], host["state"]) == []
