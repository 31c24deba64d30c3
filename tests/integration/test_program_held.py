"""program_lifecycle with a held attachment, on this kernel, with a real holder.

This host has perf links, so ebpf_program's gate never routes here to the holder (on kernels without them the
matrix's Debian 11 guests do, through the module and the systemd service). The lifecycle itself does not care
why it holds: here it is handed want["held"] = True, as the gate hands it on 5.10, and a holder process runs
with its default paths (/run/hypermesh-ebpf/held, holder.json), as the service would. Asserted in the kernel:
the holder's descriptor runs the program (BPF_TASK_FD_QUERY), the counter moves, a replace runs the new program
before the old one goes, remove lets go and leaves nothing loaded.
"""
import os
import shutil
import struct
import subprocess
import sys
import time

import pytest

from tests.conftest import COLLECTIONS, TOP
from tests.integration.test_ebpf_program_common import converge_routed

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.libbpf import BpfObject
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import held as held_mod
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_lifecycle as pl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="probe: needs root (bpf, perf events)")
OBJ = os.path.join(TOP, "examples", "objects", "tp_openat.bpf.o")
TP = {"type": "tracepoint", "target": "syscalls/sys_enter_openat"}
HOLDER = "ansible_collections.hypermesh.ebpf.plugins.module_utils._program.holder"


@pytest.fixture
def holder():
    """A holder with the service's default paths, for this test only (no other one may run: the host has no
    systemd, so none does unless a test left one)."""
    proc = subprocess.Popen([sys.executable, "-m", HOLDER], env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    yield proc
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def where(tmp_path):
    pin_root = "/sys/fs/bpf/hm-held-%d" % os.getpid()
    yield pin_root, str(tmp_path / "state")
    shutil.rmtree(pin_root, ignore_errors=True)


def converge(prog, sha_suffix=""):
    return converge_routed(prog, OBJ, TP, "held", sha_suffix)


def counter(pin_root, name="tp"):
    fd = bs.obj_get(os.path.join(pin_root, name, layout.PIN_MAPS, "openat_count"))
    try:
        return struct.unpack("=Q", bs.map_lookup(fd, struct.pack("=I", 0), 8))[0]
    finally:
        bs.close(fd)


def opens(n=20):
    for _i in range(n):
        with open("/etc/hostname") as f:
            f.read()


def holders_of(prog_id, pid):
    """The fds of process pid that run prog_id, by BPF_TASK_FD_QUERY over its descriptors."""
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            info = bs.task_fd_query(pid, int(fd))
        except OSError:
            continue
        if info["prog_id"] == prog_id:
            out.append((int(fd), info["fd_type"], info["name"]))
    return out


def test_held_attach_counts_replace_and_remove(holder, where):
    pin_root, state_dir = where
    prog = pl.Program("tp", pin_root, state_dir)
    rec = converge(prog)
    first = rec["prog_id"]
    assert rec["held"] is True and not os.path.exists(os.path.join(pin_root, "tp", layout.PIN_LINK))
    assert [(t, n) for _fd, t, n in holders_of(first, holder.pid)] == [("tracepoint", "sys_enter_openat")]
    prog = pl.Program("tp", pin_root, state_dir)
    assert prog.current_state() == "attached" and prog.before()["held"] is True
    before = counter(pin_root)
    opens()
    assert counter(pin_root) - before >= 20

    # a new program (another digest asks for a replace): the holder runs it, and lets the first one go
    rec = converge(prog, sha_suffix="0")
    second = rec["prog_id"]
    assert second != first
    assert holders_of(second, holder.pid) and not holders_of(first, holder.pid)
    with pytest.raises(OSError):
        bs.close(bs.get_fd_by_id("prog", first))  # gone from the kernel: nothing pinned or open kept it
    before = counter(pin_root)
    opens()
    assert counter(pin_root) - before >= 20

    pl.Program("tp", pin_root, state_dir).remove()
    assert not holders_of(second, holder.pid)
    assert not os.listdir(layout.HELD_DIR) or "tp." not in " ".join(os.listdir(layout.HELD_DIR))
    with pytest.raises(OSError):
        bs.close(bs.get_fd_by_id("prog", second))


def test_a_holder_that_cannot_attach_fails_the_converge_and_rolls_back(holder, where):
    """The holder's error reaches the run at once (not after the 10 s wait), and nothing of it stays: no pins,
    no request, the program unloaded."""
    pin_root, state_dir = where
    prog = pl.Program("tp", pin_root, state_dir)
    obj = BpfObject(OBJ, pin_root_path=os.path.join(pin_root, layout.SHARED))
    try:
        name = obj.programs()[0]["name"]
        obj.select(name)
        bad = {"type": "tracepoint", "target": "syscalls/sys_enter_no_such_call"}
        want = {"state": "attached", "sha256": "ab" * 32, "program": name, "attach": bad, "held": True}
        t0 = time.time()
        with pytest.raises(held_mod.HoldError, match="sys_enter_no_such_call"):
            prog.converge(want, OBJ, obj)
        assert time.time() - t0 < 5
    finally:
        obj.close()
    assert not os.path.exists(os.path.join(pin_root, "tp", layout.PIN_PROG))
    assert held_mod.Held(pin_root, "tp").request() is None
    assert pl.Program("tp", pin_root, state_dir).current_state() == "absent"
