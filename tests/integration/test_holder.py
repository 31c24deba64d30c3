"""The holder (plugins/module_utils/_program/holder.py) as a real process on this kernel, asked through held.py.

This machine has perf links, so ebpf_program never takes the held route here: the daemon runs as a subprocess
(`python -m ...holder --held-dir D --status F`, the collection on its PYTHONPATH as the unit gives it), with its
held directory and status in a root-owned 0700 temporary directory, and held.Held asks it directly. The programs
(private builds of examples/tp_openat and rawtp_sys_enter, so the kernel's lists tell them apart) are loaded with
libbpf and pinned under a temporary bpffs directory; our own descriptors are closed at once, so a program runs only
through the holder's perf event or raw tracepoint descriptor.

Every claim is checked in the kernel, not in the holder's status alone: the program's counter map moves (or stays
still) while this process opens files, `bpftool perf` lists the holder's descriptors (BPF_TASK_FD_QUERY from
another tool), and program ids disappear from the kernel once nothing holds them.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import glob

import pytest

from tests.conftest import COLLECTIONS, TOP, mounts, needs_root
from tests.integration.test_ebpf_program_common import PREFIX, counter, kernel_ids, kname, leaked, private_object

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libbpf
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import holder as holder_mod
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.held import Held, HoldError

pytestmark = needs_root

TP = ("tp_openat", "count_openat", "openat_count")
RAWTP = ("rawtp_sys_enter", "count_sys_enter", "sys_enter_count")
TRACEPOINT = {"type": "tracepoint", "target": "syscalls/sys_enter_openat"}
RAW_TRACEPOINT = {"type": "raw_tracepoint", "target": "sys_enter"}
HOLDER_MODULE = "ansible_collections.hypermesh.ebpf.plugins.module_utils._program.holder"
OPENS = 50
LOADED = set()  # every program id this file loaded: none may be left at the end
BEFORE = []  # the kernel's ids before the first test


# ---------------------------------------------------------------- helpers

class Prog(object):
    """A private build loaded and pinned (program and counter map) under `pins`; no descriptor of ours stays open."""

    def __init__(self, which, pins, tag):
        src, prog, cmap = which
        path = private_object(src, [prog, cmap])
        self.prog_pin = os.path.join(pins, tag + "-prog")
        self.map_pin = os.path.join(pins, tag + "-map")
        obj = libbpf.BpfObject(path)
        try:
            obj.select(PREFIX + prog)
            obj.load()
            fd = obj.program_fd(PREFIX + prog)
            self.id = bs.prog_info(fd)["id"]
            LOADED.add(self.id)
            bs.obj_pin(fd, self.prog_pin)
            bs.obj_pin([m["fd"] for m in obj.maps() if m["name"] == PREFIX + cmap][0], self.map_pin)
        finally:
            obj.close()

    def count(self):
        return counter(self.map_pin)

    def unpin(self):
        for path in (self.prog_pin, self.map_pin):
            if os.path.exists(path):
                os.unlink(path)


def open_files(n=OPENS):
    """n openat(2) calls (and a few more system calls each) from this process."""
    for _i in range(n):
        with open("/etc/hostname", "rb") as f:
            f.read()


def assert_counts(prog):
    before = prog.count()
    open_files()
    assert prog.count() - before >= OPENS, "program id %d did not run on our %d opens" % (prog.id, OPENS)


def assert_still(prog):
    """Nothing runs the program: its counter does not move while we open files."""
    time.sleep(0.05)
    before = prog.count()
    open_files()
    time.sleep(0.05)
    assert prog.count() == before, "program id %d still runs (counter %d -> %d)" % (prog.id, before, prog.count())


def perf_fds(pid):
    """`bpftool perf` entries of process `pid`: the attachments it holds, as the kernel answers for it."""
    out = json.loads(subprocess.check_output(["bpftool", "-j", "perf", "list"]))
    return sorted((e for e in out if e.get("pid") == pid), key=lambda e: e["fd"])


def ours_attached():
    """`bpftool perf` entries, of any process, that run a program of this file."""
    out = json.loads(subprocess.check_output(["bpftool", "-j", "perf", "list"]))
    return [e for e in out if e.get("prog_id") in LOADED]


def prog_exists(prog_id):
    try:
        fd = bs.get_fd_by_id("prog", prog_id)
    except OSError:
        return False
    bs.close(fd)
    return True


def wait_for(what, cond, timeout=5.0):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError("not within %.1f s: %s" % (timeout, what))
        time.sleep(0.02)
    return time.time()


def read_status(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class HolderProc(object):
    """The holder daemon in a subprocess, its held dir and status under a private temporary directory."""

    def __init__(self, python=sys.executable):
        self.python = python
        self.work = tempfile.mkdtemp(prefix="hm-holdtests-")  # root's, 0700
        self.held_dir = os.path.join(self.work, "run", "held")
        self.status = os.path.join(self.work, "run", "holder.json")
        self.log = os.path.join(self.work, "holder.log")
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=COLLECTIONS, PYTHONDONTWRITEBYTECODE="1", LANG="C")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.python, "-m", HOLDER_MODULE, "--held-dir", self.held_dir,
                                          "--status", self.status], env=env, cwd=TOP, stdout=log, stderr=log)
        wait_for("the holder (pid %d) writes its status" % self.proc.pid,
                 lambda: (read_status(self.status) or {}).get("pid") == self.proc.pid or self.proc.poll() is not None)
        assert self.proc.poll() is None, "the holder exited at start:\n%s" % self.output()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def read(self):
        return read_status(self.status)

    def held(self, pin_root, name):
        return Held(pin_root, name, held_dir=self.held_dir, status_path=self.status)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self):
        """SIGTERM: the holder closes what it holds and exits 0."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
            return self.proc.returncode
        return None

    def output(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")


@pytest.fixture(scope="module", autouse=True)
def kernel_before():
    mounts()
    BEFORE.append(kernel_ids())
    yield


@pytest.fixture
def holder():
    h = HolderProc().start()
    yield h
    rc = h.stop()
    assert rc in (None, 0), "the holder did not exit cleanly on SIGTERM (rc %s):\n%s" % (rc, h.output())
    shutil.rmtree(h.work)
    assert ours_attached() == []


@pytest.fixture
def pins():
    path = tempfile.mkdtemp(prefix="hm-holdtests-", dir="/sys/fs/bpf")
    yield path
    shutil.rmtree(path)


# ---------------------------------------------------------------- (a) (b) held, counting, visible in the kernel

@pytest.mark.parametrize("which, spec, tracepoint", [
    (TP, TRACEPOINT, "sys_enter_openat"),
    (RAWTP, RAW_TRACEPOINT, "sys_enter"),
], ids=["tracepoint", "raw_tracepoint"])
def test_held_program_runs_through_the_holders_descriptor(holder, pins, which, spec, tracepoint):
    prog = Prog(which, pins, "a")
    held = holder.held(pins, "hm-hold-a")
    assert_still(prog)  # pinned, not attached: nothing runs it yet
    start = time.time()
    held.hold(prog.id, spec)
    assert time.time() - start < 2.0
    assert held.held_prog_id(spec) == prog.id
    assert held.held_prog_id({"type": "kprobe", "target": "do_unlinkat"}) is None  # another kind of attach point
    assert_counts(prog)

    entry = holder.read()["held"][held.key]
    assert entry["prog_id"] == prog.id and entry["attach"] == spec and entry["name"] == "hm-hold-a"
    assert [(e["fd"], e["prog_id"], e["fd_type"], e["tracepoint"]) for e in perf_fds(holder.pid)] == [
        (entry["fd"], prog.id, spec["type"], tracepoint)]
    query = bs.task_fd_query(holder.pid, entry["fd"])
    assert (query["prog_id"], query["fd_type"], query["name"]) == (prog.id, spec["type"], tracepoint)

    request = os.lstat(held.path)
    assert request.st_uid == 0 and request.st_mode & 0o777 == 0o600
    assert held.request() == {"name": "hm-hold-a", "pin_root": pins, "prog_id": prog.id, "attach": spec}
    held.release()
    prog.unpin()


def test_two_pin_roots_of_one_name_are_two_attachments(holder, pins):
    """The key is the name and a digest of the pin root: the same name under two pin roots never shares a request."""
    one, two = Prog(TP, pins, "one"), Prog(TP, pins, "two")
    first, second = holder.held(pins + "/x", "hm-hold-same"), holder.held(pins + "/y", "hm-hold-same")
    assert first.key != second.key
    first.hold(one.id, TRACEPOINT)
    second.hold(two.id, TRACEPOINT)
    assert (first.held_prog_id(TRACEPOINT), second.held_prog_id(TRACEPOINT)) == (one.id, two.id)
    assert_counts(one)
    assert_counts(two)
    assert sorted(e["prog_id"] for e in perf_fds(holder.pid)) == sorted([one.id, two.id])
    first.release()
    second.release()


# ---------------------------------------------------------------- (c) killed, and back

def test_killed_holder_loses_everything_and_the_next_one_holds_it_again(holder, pins):
    prog = Prog(TP, pins, "c")
    held = holder.held(pins, "hm-hold-c")
    held.hold(prog.id, TRACEPOINT)
    assert_counts(prog)
    old_pid = holder.pid
    holder.kill()
    assert held.held_prog_id(TRACEPOINT) is None  # the status still names it, the kernel does not
    assert holder.read()["held"][held.key]["prog_id"] == prog.id
    assert_still(prog)
    assert perf_fds(old_pid) == []

    started = time.time()
    holder.start()  # systemd's Restart=always, by hand: the request file is still there
    back = wait_for("the restarted holder holds program id %d again" % prog.id,
                    lambda: held.held_prog_id(TRACEPOINT) == prog.id, timeout=5.0)
    assert back - started < 5.0 and holder.pid != old_pid
    assert_counts(prog)
    held.release()


def test_sigterm_closes_everything_and_exits_0(holder, pins):
    prog = Prog(RAWTP, pins, "term")
    held = holder.held(pins, "hm-hold-term")
    held.hold(prog.id, RAW_TRACEPOINT)
    assert_counts(prog)
    assert holder.stop() == 0, holder.output()
    assert_still(prog)
    assert held.held_prog_id(RAW_TRACEPOINT) is None and ours_attached() == []
    holder.start()
    wait_for("held again after a restart", lambda: held.held_prog_id(RAW_TRACEPOINT) == prog.id)
    held.release()


def test_the_holder_runs_on_the_oldest_guest_python(pins):
    """Debian 11 guests run the holder's unit with their Python 3.9: the same holding from a 3.9 interpreter."""
    found = sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9"))
    if not found:
        pytest.skip("probe: no Python 3.9 on this machine")
    old = HolderProc(found[-1]).start()
    try:
        prog = Prog(TP, pins, "py39")
        held = old.held(pins, "hm-hold-py39")
        held.hold(prog.id, TRACEPOINT)
        assert_counts(prog)
        held.release()
        assert_still(prog)
    finally:
        assert old.stop() in (None, 0), old.output()
        shutil.rmtree(old.work)


# ---------------------------------------------------------------- (d) replaced under the same key

def test_a_new_program_under_the_same_key_replaces_the_old_one(holder, pins):
    old = Prog(TP, pins, "old")
    held = holder.held(pins, "hm-hold-d")
    held.hold(old.id, TRACEPOINT)
    old_fd = holder.read()["held"][held.key]["fd"]
    new = Prog(TP, pins, "new")
    assert new.id != old.id
    held.hold(new.id, TRACEPOINT)
    assert held.held_prog_id(TRACEPOINT) == new.id
    assert_counts(new)
    assert_still(old)
    assert [e["prog_id"] for e in perf_fds(holder.pid)] == [new.id]
    assert holder.read()["held"][held.key]["fd"] != old_fd  # the new descriptor opened before the old one closed
    old.unpin()  # the holder's descriptor was the last reference: the old program leaves the kernel
    wait_for("old program id %d leaves the kernel" % old.id, lambda: not prog_exists(old.id), timeout=5.0)
    assert prog_exists(new.id)
    held.release()


# ---------------------------------------------------------------- (e) released

def test_release_lets_go(holder, pins):
    prog = Prog(RAWTP, pins, "e")
    held = holder.held(pins, "hm-hold-e")
    held.hold(prog.id, RAW_TRACEPOINT)
    assert_counts(prog)
    held.release()
    assert held.request() is None and not os.path.exists(held.path)
    assert held.key not in holder.read()["held"] and holder.read()["errors"] == {}
    assert held.held_prog_id(RAW_TRACEPOINT) is None
    assert perf_fds(holder.pid) == []
    assert_still(prog)
    held.release()  # nothing to let go of: a no-op
    prog.unpin()
    wait_for("program id %d leaves the kernel" % prog.id, lambda: not prog_exists(prog.id))


def test_release_without_a_running_holder_returns_at_once(holder, pins):
    prog = Prog(TP, pins, "e2")
    held = holder.held(pins, "hm-hold-e2")
    held.hold(prog.id, TRACEPOINT)
    holder.kill()
    start = time.time()
    held.release()
    assert time.time() - start < 1.0 and not os.path.exists(held.path)
    holder.start()
    wait_for("the new holder wrote its status", lambda: holder.read()["pid"] == holder.pid)
    time.sleep(3 * holder_mod.POLL)
    assert held.held_prog_id(TRACEPOINT) is None and perf_fds(holder.pid) == []  # nothing asked for it again
    assert_still(prog)


# ---------------------------------------------------------------- (f) what the holder refuses to act on

def place_request(holder, held, prog, spec, uid=0, mode=0o600):
    """A request file for `held` as another writer would leave it (owner, mode) - given them before it appears under
    its name, so the holder never sees it otherwise."""
    tmp = os.path.join(holder.held_dir, ".planted-" + held.key)
    req = {"name": held.name, "pin_root": held.pin_root, "prog_id": prog.id, "attach": spec}
    atomic_file.write(tmp, json.dumps(req).encode("utf-8"), 0o600)
    os.chown(tmp, uid, 0)
    os.chmod(tmp, mode)
    os.rename(tmp, held.path)


@pytest.mark.parametrize("uid, mode, problem", [
    (65534, 0o600, "is owned by uid 65534"),
    (0, 0o666, "is writable by group or others (mode 0666)"),
    (0, 0o644, "is readable by group or others"),
])
def test_an_unsafe_request_file_is_not_acted_on(holder, pins, uid, mode, problem):
    prog = Prog(TP, pins, "f")
    held = holder.held(pins, "hm-hold-f")
    place_request(holder, held, prog, TRACEPOINT, uid, mode)
    wait_for("the holder reports the unsafe request",
             lambda: held.key in ((holder.read() or {}).get("errors") or {}), timeout=3.0)
    error = holder.read()["errors"][held.key]
    assert problem in error["message"] and held.key + ".json" in error["message"], error
    assert held.key not in holder.read()["held"] and perf_fds(holder.pid) == []
    assert held.held_prog_id(TRACEPOINT) is None
    assert_still(prog)
    held.hold(prog.id, TRACEPOINT)  # the same request, root's and 0600: held (the refusal was the file's, only)
    assert_counts(prog)
    assert holder.read()["errors"] == {}
    held.release()


def test_an_open_held_directory_is_not_acted_on(holder, pins):
    kept, asked = Prog(TP, pins, "kept"), Prog(TP, pins, "asked")
    kept_held, asked_held = holder.held(pins, "hm-hold-kept"), holder.held(pins, "hm-hold-asked")
    kept_held.hold(kept.id, TRACEPOINT)
    os.chmod(holder.held_dir, 0o777)
    try:
        with pytest.raises(OSError, match="open to group or others"):
            asked_held.hold(asked.id, TRACEPOINT)  # held.py refuses to write into it
        place_request(holder, asked_held, asked, TRACEPOINT)
        wait_for("the holder reports the unsafe held directory",
                 lambda: any("open to group or others" in e["message"]
                             for e in ((holder.read() or {}).get("errors") or {}).values()), timeout=3.0)
        time.sleep(3 * holder_mod.POLL)
        assert asked_held.key not in holder.read()["held"] and asked_held.held_prog_id(TRACEPOINT) is None
        assert_still(asked)
        assert kept_held.held_prog_id(TRACEPOINT) == kept.id  # what was held stays held
        assert_counts(kept)
        assert holder.proc.poll() is None
    finally:
        os.chmod(holder.held_dir, 0o700)
    wait_for("the request is held once the directory is private again",
             lambda: asked_held.held_prog_id(TRACEPOINT) == asked.id, timeout=holder_mod.RETRY + 2)
    assert_counts(asked)
    assert holder.read()["errors"] == {}
    kept_held.release()
    asked_held.release()


# ---------------------------------------------------------------- (g) an attach point that does not exist

def test_a_missing_tracepoint_fails_fast_with_the_holders_message(holder, pins):
    prog = Prog(TP, pins, "g")
    held = holder.held(pins, "hm-hold-g")
    spec = {"type": "tracepoint", "target": "syscalls/sys_enter_hm_no_such_call"}
    start = time.time()
    with pytest.raises(HoldError, match="does not exist on this kernel") as info:
        held.hold(prog.id, spec)
    assert time.time() - start < 2.0
    assert "syscalls/sys_enter_hm_no_such_call" in str(info.value)
    error = holder.read()["errors"][held.key]
    assert error["prog_id"] == prog.id and "does not exist" in error["message"]
    assert held.key not in holder.read()["held"] and perf_fds(holder.pid) == []
    held.release()
    wait_for("the error goes with the request", lambda: holder.read()["errors"] == {}, timeout=2.0)


def test_a_malformed_request_is_an_error_not_a_crash(holder, pins):
    """A request without the fields its kind needs is reported under its key; the holder keeps running and
    keeps what it holds for the others."""
    kept, bad = Prog(TP, pins, "kept"), Prog(TP, pins, "bad")
    kept_held, bad_held = holder.held(pins, "hm-hold-kept"), holder.held(pins, "hm-hold-bad")
    kept_held.hold(kept.id, TRACEPOINT)
    place_request(holder, bad_held, bad, {"type": "tracepoint"})  # held.py never writes this: no target
    wait_for("the holder reports the malformed request",
             lambda: bad_held.key in ((holder.read() or {}).get("errors") or {}) or holder.proc.poll() is not None)
    assert holder.proc.poll() is None, holder.output()
    assert holder.read()["errors"][bad_held.key]["prog_id"] == bad.id
    assert kept_held.held_prog_id(TRACEPOINT) == kept.id
    assert_counts(kept)
    bad_held.release()
    kept_held.release()


# ---------------------------------------------------------------- (h) nothing left behind

def test_zz_nothing_of_ours_is_left_in_the_kernel():
    """Runs last (file order): every program this file loaded, and every descriptor a holder had, is gone."""
    assert LOADED, "no test loaded anything"
    wait_for("every program this file loaded leaves the kernel",
             lambda: not [i for i in LOADED if prog_exists(i)], timeout=5.0)
    left = leaked(BEFORE[0], [kname(TP[1]), kname(RAWTP[1])], [kname(TP[2]), kname(RAWTP[2])])
    assert left == {"prog": set(), "map": set(), "link": set()}, left
