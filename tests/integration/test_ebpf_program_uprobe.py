"""ebpf_program's uprobe and uretprobe attach points on this machine's kernel, through real `ansible` runs.

A tiny C program (`hm_tick`, a noinline function it calls N times) is built here into a root-owned 0755 directory.
examples/uprobe_counter.bpf.c (built with hmt_-prefixed names) is attached to hm_tick by symbol as a uprobe and as
a uretprobe: the four-run check (check, apply, apply, check: changed, changed, not changed, not changed), the
kernel's link list shows our perf-event link with the binary's path and offset, N calls move the pinned counter by
exactly N, and `absent` leaves no pin, no program and no link of ours (bpftool -j prog show / link show). Also: by
file offset for one pid only (the other process's calls are not counted); a binary rebuilt at the same path is
attached again by the next run; a binary in a directory uid 65534 can write (planted by uid 65534 itself, or root's
own copy there) and an unknown symbol are refused in check mode and for real, with nothing changed; ebpf_state
applies one (health check, desired.json), changes nothing the second time and prunes it.
Skipped, with the probe's reason, only where probes.probe() says uprobes or perf-event links are unsupported.
"""
import json
import os
import shutil
import subprocess
import tempfile
import threading

import pytest

from tests.conftest import ansible_module, needs_root
from test_ebpf_program_common import (pin_root_fixture, PREFIX, counter, kernel_ids, kname, leaked, private_object,
                                      run, run_with_diff_text)

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import elf_symbols, probes
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state

pytestmark = needs_root

pin_root = pin_root_fixture("hm-uprobe-test")

TICKER = r"""
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int hm_tick(int x)
{
    __asm__ volatile("" ::: "memory");
    return x + 1;
}

/* ticker N: call hm_tick N times. ticker -: for each line "N" on stdin, call it N times and answer "ok". */
int main(int argc, char **argv)
{
    char line[32];
    int i, n, sum = 0;

    if (argc > 1 && argv[1][0] != '-') {
        n = atoi(argv[1]);
        for (i = 0; i < n; i++)
            sum += hm_tick(i);
        printf("%d\n", sum);
        return 0;
    }
    while (fgets(line, sizeof(line), stdin)) {
        n = atoi(line);
        for (i = 0; i < n; i++)
            sum += hm_tick(i);
        printf("ok %d\n", sum);
        fflush(stdout);
    }
    return 0;
}
"""
PROG, MAP = "uprobe_counter", "uprobe_count"


def _skip_unless_supported():
    for feature in ("uprobe", "perf_link"):
        found = probes.probe(feature)
        if not found["supported"]:
            pytest.skip("probes.probe(%r): not supported here: %s" % (feature, found["reason"]))


def _build(directory, name="ticker", extra=""):
    src = os.path.join(directory, name + ".c")
    with open(src, "w") as f:
        f.write(TICKER + extra)
    out = os.path.join(directory, name)
    subprocess.check_call(["clang", "-O0", "-o", out, src])
    os.unlink(src)
    os.chmod(out, 0o755)
    return out


@pytest.fixture(scope="module")
def bindir():
    """A root-owned 0755 directory (under the sticky /tmp) holding the ticker binary."""
    d = tempfile.mkdtemp(prefix="hm-uprobe-bin-")
    os.chmod(d, 0o755)
    _build(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def bpf_object():
    return private_object("uprobe_counter", [PROG, MAP])


def _tick(binary, n):
    out = subprocess.run([binary, str(n)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(n * (n + 1) // 2), out


def _bpftool(*what):
    return json.loads(subprocess.run(["bpftool", "-j"] + list(what), capture_output=True, text=True,
                                     check=True).stdout or "[]")


def _link(link_id):
    fd = bs.get_fd_by_id("link", link_id)
    try:
        return bs.link_info(fd)
    finally:
        bs.close(fd)


def _nothing_of(name, pin_root, before, result=None):
    """No pin, no record, no program/map/link of ours new since `before`; the given ids are gone from bpftool's
    lists."""
    assert not os.path.exists(os.path.join(pin_root, name))
    assert program_state.read_record(name) is None
    assert not any(leaked(before, [kname(PROG)], [kname(MAP)]).values())
    if result:
        assert result["prog_id"] not in [p["id"] for p in _bpftool("prog", "show")]
        assert result["link_id"] not in [link["id"] for link in _bpftool("link", "show")]


def _remove(name, pin_root):
    absent = {"name": name, "state": "absent", "pin_root": pin_root}
    rc = run(absent, check=True)
    assert rc["changed"] and os.path.exists(os.path.join(pin_root, name, "prog"))
    ra = run(absent)
    assert ra["changed"] and not run(absent)["changed"]


@pytest.mark.parametrize("kind", ["uprobe", "uretprobe"])
def test_by_symbol_counts_each_call(kind, pin_root, bindir, bpf_object):
    _skip_unless_supported()
    binary = os.path.join(bindir, "ticker")
    name = "t-%s-%d" % (kind, os.getpid())
    args = {"name": name, "object": bpf_object, "pin_root": pin_root,
            "attach": {kind: {"path": binary, "symbol": "hm_tick"}}}
    before = kernel_ids()
    runs = [run_with_diff_text(args, check=True), run(args, diff=True), run(args, diff=True), run(args, check=True)]
    assert [r.get("changed") for r in runs] == [True, True, False, False], runs
    assert not any(r.get("failed") for r in runs), runs
    shown = runs[0]["_diff_text"]
    assert '-    "state": "absent"' in shown and '+    "state": "attached"' in shown, shown
    assert '"symbol": "hm_tick"' in shown, shown
    r = runs[1]
    offset = elf_symbols.function_offset(binary, "hm_tick")
    assert r["attach"]["type"] == kind and r["attach"]["offset"] == offset, r
    assert runs[2]["prog_id"] == r["prog_id"] and runs[2]["link_id"] == r["link_id"]
    link = _link(r["link_id"])
    assert link["prog_id"] == r["prog_id"] and link["type"] == bs.BPF_LINK_TYPE_PERF_EVENT, link
    want_type = bs.BPF_PERF_EVENT_UPROBE if kind == "uprobe" else bs.BPF_PERF_EVENT_URETPROBE
    if link.get("perf_event_type"):  # 6.6+ reports the uprobe itself
        assert (link["perf_event_type"], link["uprobe_path"], link["uprobe_offset"]) == (want_type, binary, offset)
    map_path = os.path.join(pin_root, name, "maps", PREFIX + MAP)
    c0 = counter(map_path)
    _tick(binary, 37)
    c1 = counter(map_path)
    assert c1 - c0 == 37, (kind, c0, c1)
    _tick(binary, 5)
    assert counter(map_path) - c1 == 5
    print("%s: prog %d, link %d, %s %d -> %d" % (kind, r["prog_id"], r["link_id"], MAP, c0, c1))
    _remove(name, pin_root)
    _nothing_of(name, pin_root, before, r)


def test_by_offset_for_one_pid(pin_root, bindir, bpf_object):
    """attach.uprobe.offset and pid: only that process's calls count, not another run of the same binary."""
    _skip_unless_supported()
    binary = os.path.join(bindir, "ticker")
    offset = elf_symbols.function_offset(binary, "hm_tick")
    proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    name = "t-uprobe-pid-%d" % os.getpid()
    try:
        args = {"name": name, "object": bpf_object, "pin_root": pin_root,
                "attach": {"uprobe": {"path": binary, "offset": offset, "pid": proc.pid}}}
        before = kernel_ids()
        runs = [run(args, check=True), run(args), run(args), run(args, check=True)]
        assert [r.get("changed") for r in runs] == [True, True, False, False], runs
        assert runs[1]["attach"] == {"type": "uprobe", "path": binary, "symbol": None, "offset": offset,
                                     "pid": proc.pid, "inode": runs[1]["attach"]["inode"]}, runs[1]
        map_path = os.path.join(pin_root, name, "maps", PREFIX + MAP)
        c0 = counter(map_path)
        _tick(binary, 11)  # another process: not counted
        proc.stdin.write("6\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("ok ")
        assert counter(map_path) - c0 == 6
        r = runs[1]
    finally:
        proc.stdin.close()
        proc.wait()
    _remove(name, pin_root)
    _nothing_of(name, pin_root, before, r)


def test_a_rebuilt_binary_is_attached_again(pin_root, bpf_object):
    """The kernel keeps a uprobe on the file it found at attach time: a binary replaced at the same path (a package
    upgrade renames the new file over the old) would no longer be counted, so the next run attaches again."""
    _skip_unless_supported()
    d = tempfile.mkdtemp(prefix="hm-uprobe-rebuild-")
    os.chmod(d, 0o755)
    try:
        binary = _build(d)
        name = "t-uprobe-rebuilt-%d" % os.getpid()
        args = {"name": name, "object": bpf_object, "pin_root": pin_root,
                "attach": {"uprobe": {"path": binary, "symbol": "hm_tick"}}}
        first = run(args)
        assert first["changed"] and not run(args)["changed"]
        new = _build(d, "ticker-new", extra="int hm_pad(int x) { return x * 5; }\n")
        os.rename(new, binary)
        check = run(args, check=True)
        assert check["changed"] and not check.get("failed"), check
        assert check["attach"]["inode"] != first["attach"]["inode"]
        again = run(args)
        assert again["changed"] and not run(args)["changed"]
        map_path = os.path.join(pin_root, name, "maps", PREFIX + MAP)
        c0 = counter(map_path)
        _tick(binary, 9)
        assert counter(map_path) - c0 == 9
        _remove(name, pin_root)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _refused(args, pin_root, words):
    before = kernel_ids()
    for check in (True, False):
        r = run(args, check=check)
        assert r.get("failed") and not r.get("changed"), r
        for word in words:
            assert word in r["msg"], (word, r["msg"])
    _nothing_of(args["name"], pin_root, before)


def test_a_binary_uid_65534_could_plant_or_change_is_refused(pin_root, bindir, bpf_object):
    """A directory uid 65534 can write: a binary uid 65534 planted there, and root's own copy there (uid 65534
    could rename another file over it), are refused before root reads them; nothing changes."""
    _skip_unless_supported()
    base = tempfile.mkdtemp(prefix="hm-uprobe-attack-")
    os.chmod(base, 0o755)
    drop = os.path.join(base, "drop")
    os.mkdir(drop)
    os.chown(drop, 65534, 65534)
    try:
        planted = os.path.join(drop, "ticker")
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cp",
                        os.path.join(bindir, "ticker"), planted], check=True)
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "chmod", "0755", planted],
                       check=True)
        assert os.stat(planted).st_uid == 65534
        name = "t-uprobe-planted-%d" % os.getpid()
        args = {"name": name, "object": bpf_object, "pin_root": pin_root,
                "attach": {"uprobe": {"path": planted, "symbol": "hm_tick"}}}
        _refused(args, pin_root, ["attach.uprobe.path", drop, "is owned by uid 65534", "refusing to use it"])
        os.unlink(planted)
        shutil.copy(os.path.join(bindir, "ticker"), planted)  # root's copy, in uid 65534's directory
        os.chmod(planted, 0o755)
        assert os.stat(planted).st_uid == 0
        _refused(args, pin_root, ["attach.uprobe.path", drop, "is owned by uid 65534"])
        os.chown(drop, 0, 0)
        os.chmod(drop, 0o777)  # root's directory, but writable by everyone
        _refused(dict(args, attach={"uretprobe": {"path": planted, "symbol": "hm_tick"}}), pin_root,
                 ["attach.uretprobe.path", drop, "is writable by group or others (mode 0777)"])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_unknown_symbol_is_refused(pin_root, bindir, bpf_object):
    _skip_unless_supported()
    binary = os.path.join(bindir, "ticker")
    name = "t-uprobe-nosym-%d" % os.getpid()
    args = {"name": name, "object": bpf_object, "pin_root": pin_root,
            "attach": {"uprobe": {"path": binary, "symbol": "hm_no_such_function"}}}
    _refused(args, pin_root, ["attach.uprobe: binary %s has no function symbol hm_no_such_function" % binary])
    imported = dict(args, attach={"uretprobe": {"path": binary, "symbol": "printf"}})
    _refused(imported, pin_root, ["only imports function printf", "attach to the shared library"])
    missing = dict(args, attach={"uprobe": {"path": os.path.join(bindir, "missing"), "symbol": "hm_tick"}})
    _refused(missing, pin_root, ["%s does not exist" % os.path.join(bindir, "missing")])


def test_ebpf_state_applies_checks_and_removes_a_uprobe(pin_root, bindir, bpf_object, tmp_path):
    """The same attach point through ebpf_state (programs[].attach.uprobe, the options ebpf_program's spec gives it):
    applied with a counter health check that the ticker's calls pass, saved in desired.json, a second run changes
    nothing, and prune with an empty list removes it."""
    _skip_unless_supported()
    binary = os.path.join(bindir, "ticker")
    name = "t-state-uprobe-%d" % os.getpid()
    desired = str(tmp_path / "desired.json")
    prog = {"name": name, "object": bpf_object, "attach": {"uretprobe": {"path": binary, "symbol": "hm_tick"}},
            "health": {"check": "counter", "map": PREFIX + MAP, "key": 0, "timeout": 20}}
    args = {"programs": [prog], "pin_root": pin_root, "desired": desired, "reapply_unit": False}
    before = kernel_ids()
    stop = threading.Event()

    def tick():
        while not stop.wait(0.2):
            _tick(binary, 3)
    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        check = ansible_module("ebpf_state", args, check=True)
        assert check["changed"] and not check.get("failed") and not os.path.exists(os.path.join(pin_root, name)), check
        first = ansible_module("ebpf_state", args)
        assert first["changed"] and not first.get("failed"), first
        second = ansible_module("ebpf_state", args)
        assert not second["changed"] and not second.get("failed"), second
    finally:
        stop.set()
        ticker.join()
    with open(desired) as f:
        saved = json.load(f)
    assert json.dumps(saved).count('"hm_tick"') == 1 and binary in json.dumps(saved), saved
    map_path = os.path.join(pin_root, name, "maps", PREFIX + MAP)
    c0 = counter(map_path)
    _tick(binary, 13)
    assert counter(map_path) - c0 == 13
    gone = ansible_module("ebpf_state", dict(args, programs=[], prune=True))
    assert gone["changed"] and not gone.get("failed"), gone
    _nothing_of(name, pin_root, before)


def test_ebpf_state_rollback_restores_the_uprobe(pin_root, bindir, bpf_object, tmp_path):
    """A run that replaces a uprobe program and whose health check cannot pass (no calls meanwhile) rolls back:
    the program that ran before is attached again from its record (a new link at the recorded path and offset) and
    counts each call as before."""
    _skip_unless_supported()
    binary = os.path.join(bindir, "ticker")
    name = "t-state-rollback-%d" % os.getpid()
    desired = str(tmp_path / "desired.json")
    variant = str(tmp_path / "variant.bpf.o")
    shutil.copyfile(bpf_object, variant)
    with open(variant, "ab") as f:
        f.write(b"\0")  # the same program, another digest: a replace
    prog = {"name": name, "object": bpf_object, "attach": {"uprobe": {"path": binary, "symbol": "hm_tick"}},
            "health": {"check": "none"}}
    args = {"programs": [prog], "pin_root": pin_root, "desired": desired, "reapply_unit": False}
    before = kernel_ids()
    first = ansible_module("ebpf_state", args)
    assert first["changed"] and not first.get("failed"), first
    old_prog = program_state.read_record(name)["prog_id"]
    bad = dict(prog, object=variant, health={"check": "counter", "map": PREFIX + MAP, "key": 0, "timeout": 1})
    failed = ansible_module("ebpf_state", dict(args, programs=[bad]))
    assert failed.get("failed") and name in failed["msg"], failed
    rec = program_state.read_record(name)
    assert rec["prog_id"] == old_prog and rec["attach"]["symbol"] == "hm_tick", rec
    map_path = os.path.join(pin_root, name, "maps", PREFIX + MAP)
    c0 = counter(map_path)
    _tick(binary, 8)
    assert counter(map_path) - c0 == 8
    gone = ansible_module("ebpf_state", dict(args, programs=[], prune=True))
    assert gone["changed"] and not gone.get("failed"), gone
    _nothing_of(name, pin_root, before)
