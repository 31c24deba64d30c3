"""program_lifecycle with an XDP program in libxdp's dispatcher (attach.xdp.priority): converge has libxdp load and
attach it instead of libbpf loading it, pins what it got like any program, records the attach point with its
priority; a replace attaches the new copy before the old copy is taken out by id; a failure takes the new copy
out again; remove takes ours out by id. xdp_dispatcher is a fake here (this machine's kernel refuses freplace);
the program behind it is a real minimal XDP program, so the pins and the record are real."""
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_lifecycle as pl
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import xdp_dispatcher

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/fs/bpf"),
                                reason="probe: not root, or no bpffs at /sys/fs/bpf")
SPEC = {"type": "xdp", "interface": "veth0", "netns": None, "mode": "auto", "priority": 20, "proceed_on": ["pass"]}


class Obj(object):
    """An opened object libbpf must not load: libxdp does."""

    @staticmethod
    def pointer():
        return 1

    def map_defs(self):
        return []

    def maps(self):
        return []

    def load(self):
        raise AssertionError("libbpf must not load a program libxdp attaches")


class FakeDispatcher(object):
    """The interface's dispatcher: {prog id: spec} of what runs there."""

    def __init__(self, monkeypatch):
        self.running = {}
        self.events = []
        monkeypatch.setattr(xdp_dispatcher, "attach", self.attach)
        monkeypatch.setattr(xdp_dispatcher, "detach", self.detach)
        monkeypatch.setattr(xdp_dispatcher, "is_attached", lambda spec, pid: self.running.get(pid) == spec)
        monkeypatch.setattr(xdp_dispatcher, "position", lambda spec, pid: None)
        monkeypatch.setattr(xdp_dispatcher, "check_slot", lambda spec, owned: None)

    def attach(self, spec, obj, name):
        fd = bs.prog_load(bs.BPF_PROG_TYPE_XDP, bs.MOV64_IMM(0, 2) + bs.EXIT(), prog_name="hm_unit")
        prog_id = bs.prog_info(fd)["id"]
        self.running[prog_id] = spec
        self.events.append(("attach", prog_id))
        return fd, prog_id

    def detach(self, spec, ids):
        gone = [i for i in sorted(ids) if i in self.running]
        for i in gone:
            del self.running[i]
            self.events.append(("detach", i))
        return bool(gone)


def want(spec=None, sha="aa"):
    return {"state": "attached", "sha256": sha, "program": "xdp_count", "attach": dict(spec or SPEC),
            "programs": []}


def test_converge_replace_and_remove(pin_root, tmp_path, monkeypatch):
    state = str(tmp_path / "state")
    disp = FakeDispatcher(monkeypatch)
    prog = pl.Program("multi", pin_root, state)
    rec = prog.converge(want(), "/o.bpf.o", Obj())
    first = rec["prog_id"]
    assert rec["attach"] == SPEC and disp.running == {first: SPEC}
    assert ps.Live(pin_root, "multi").prog_id == first
    prog = pl.Program("multi", pin_root, state)
    assert prog.current_state() == "attached" and prog.in_sync(want())
    moved = dict(SPEC, priority=5)
    assert not prog.in_sync(want(moved))

    rec = prog.converge(want(moved), "/o.bpf.o", Obj())  # the new copy first, then the old one out by id
    second = rec["prog_id"]
    assert disp.events == [("attach", first), ("attach", second), ("detach", first)]
    assert disp.running == {second: moved}
    prog = pl.Program("multi", pin_root, state)
    assert prog.in_sync(want(moved))

    prog.remove()
    assert disp.running == {} and disp.events[-1] == ("detach", second)
    assert not os.path.exists(os.path.join(pin_root, "multi")) and ps.read_record("multi", state) is None


def test_a_failure_after_the_attach_takes_the_new_copy_out(pin_root, tmp_path, monkeypatch):
    state = str(tmp_path / "state")
    disp = FakeDispatcher(monkeypatch)

    class Failing(Obj):
        def maps(self):  # after the attach and the program's pin: the maps' pins fail
            raise OSError(5, "injected after the attach")
    prog = pl.Program("multi", pin_root, state)
    with pytest.raises(OSError, match="injected"):
        prog.converge(want(), "/o.bpf.o", Failing())
    (_attach, new_id), (detach, gone) = disp.events
    assert detach == "detach" and gone == new_id and disp.running == {}
    assert ps.read_record("multi", state) is None and not os.listdir(pin_root)
