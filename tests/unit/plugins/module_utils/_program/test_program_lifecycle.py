"""program_lifecycle.Program: what it reads a program's state as (absent, loaded, attached, inconsistent), when it
is in sync, whose slot it refuses, and what remove() leaves. Real files: a bpffs directory of this test as
pin_root (root) or a plain one (read side), records in tmp_path; nothing is loaded into the kernel here (the
integration tests load and attach)."""
import errno
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_lifecycle as pl
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps

root_only = pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/fs/bpf"),
                               reason="probe: not root, or no bpffs at /sys/fs/bpf")
TP = {"type": "tracepoint", "target": "syscalls/sys_enter_openat"}


def record(**kw):
    out = {"prog_id": 7, "sha256": "ab", "program": "p", "attach": None, "maps": {}, "object": "/o.bpf.o"}
    out.update(kw)
    return out


def test_nothing_and_no_record_is_absent(tmp_path):
    prog = pl.Program("x", str(tmp_path / "pins"), str(tmp_path / "state"))
    assert prog.current_state() == "absent" and prog.before() == {"state": "absent"}


@pytest.mark.parametrize("rec", [record(), record(pending={"attach": TP}), record(attach=TP)])
def test_a_record_without_its_pins_is_inconsistent(tmp_path, rec):
    """A killed run or an outside change: the record says a program, the pin root has none."""
    state = str(tmp_path / "state")
    ps.write_record("x", rec, state)
    prog = pl.Program("x", str(tmp_path / "pins"), state)
    assert prog.current_state() == "inconsistent"
    before = prog.before()
    assert before["state"] == "inconsistent" and before["sha256"] == "ab" and before["object"] == "/o.bpf.o"


def test_nothing_there_or_a_record_alone_is_never_in_sync(tmp_path):
    """in_sync compares the state first: absent and inconsistent are never what apply() wants (loaded or attached)."""
    state = str(tmp_path / "state")
    want = {"state": "loaded", "sha256": "ab", "program": "p", "attach": None}
    assert not pl.Program("x", str(tmp_path / "pins"), state).in_sync(want)
    ps.write_record("x", record(), state)
    assert not pl.Program("x", str(tmp_path / "pins"), state).in_sync(want)
    assert not pl.Program("x", str(tmp_path / "pins"), state).in_sync(dict(want, state="attached", attach=TP))


def test_the_state_is_read_once_per_snapshot(tmp_path):
    state = str(tmp_path / "state")
    prog = pl.Program("x", str(tmp_path / "pins"), state)
    assert prog.current_state() == "absent"
    ps.write_record("x", record(), state)
    assert prog.current_state() == "absent"  # the snapshot, until converge or remove takes a new one
    assert pl.Program("x", str(tmp_path / "pins"), state).current_state() == "inconsistent"


def test_a_pin_root_others_can_write_is_refused_before_anything_is_read(tmp_path):
    pins = tmp_path / "pins"
    (pins / "x").mkdir(parents=True)
    os.chmod(str(pins / "x"), 0o777)
    with pytest.raises(host_paths.UnsafePath):
        pl.Program("x", str(pins), str(tmp_path / "state"))


def test_link_kinds_have_no_slot_to_refuse(tmp_path):
    prog = pl.Program("x", str(tmp_path / "pins"), str(tmp_path / "state"))
    assert prog.check_slot(TP, force=False) is None


@root_only
def test_a_free_xdp_slot_is_not_refused(pin_root, tmp_path):
    prog = pl.Program("x", pin_root, str(tmp_path / "state"))
    spec = {"type": "xdp", "interface": "lo", "netns": None, "mode": "generic"}
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
    if pa.slot_holder(spec):
        pytest.skip("probe: loopback's XDP slot is held here")
    assert prog.check_slot(spec, force=False) is None


@root_only
def test_remove_of_a_record_without_pins_forgets_it(pin_root, tmp_path):
    state = str(tmp_path / "state")
    ps.write_record("x", record(shared_maps=[os.path.join(pin_root, "_shared", "m")]), state)
    os.mkdir(os.path.join(pin_root, "x"), 0o700)
    prog = pl.Program("x", pin_root, state)
    assert prog.current_state() == "inconsistent"
    prog.remove()
    assert prog.current_state() == "absent" and ps.read_record("x", state) is None
    assert os.listdir(pin_root) == []


@root_only
def test_remove_refuses_a_tree_that_is_not_ours_and_keeps_the_record(pin_root, tmp_path):
    state = str(tmp_path / "state")
    ps.write_record("x", record(), state)
    os.mkdir(os.path.join(pin_root, "x"), 0o700)
    os.symlink("/etc", os.path.join(pin_root, "x", "maps"))
    prog = pl.Program("x", pin_root, state)
    with pytest.raises(host_paths.UnsafePath):
        prog.remove()
    assert ps.read_record("x", state) == record() and os.path.islink(os.path.join(pin_root, "x", "maps"))


def test_owner_of_names_another_managed_program_only(tmp_path):
    assert pl._owner_of(str(tmp_path / "pins"), 7, "x", str(tmp_path / "state")) is None


def test_prog_name_of_an_id_that_is_gone_is_a_question_mark():
    assert pl._prog_name(0x7ffffff0) == "?"


def test_pin_names_have_no_dots():
    assert pl._pin_name("xdp_cou.bss") == "xdp_cou_bss" and pl._pin_name("stats") == "stats"


def test_unlink_ignores_only_a_missing_file(tmp_path):
    pl._unlink(str(tmp_path / "none"))
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError) as e:
        pl._unlink(str(tmp_path / "d"))
    assert e.value.errno in (errno.EISDIR, errno.EPERM)
    assert pl._mtime(str(tmp_path / "none")) == 0


class _Live(object):
    def __init__(self, owned):
        self.owned_prog_ids = set(owned)


def _held_by_dispatcher(monkeypatch, tmp_path, owned, chain):
    """Program x (owning `owned`) asks for eth1's XDP hook alone; libxdp's dispatcher id 9 holds it, running
    `chain`."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import xdp_dispatcher
    monkeypatch.setattr(pa, "slot_holder", lambda spec: 9)
    monkeypatch.setattr(xdp_dispatcher, "programs_of", lambda spec, prog_id: chain if prog_id == 9 else None)
    monkeypatch.setattr(pl, "_prog_name", lambda prog_id: "xdp_dispatcher")
    monkeypatch.setattr(pl, "_owner_of", lambda *a: None)
    prog = pl.Program("x", str(tmp_path / "pins"), str(tmp_path / "state"))
    prog.live = _Live(owned)
    return prog, {"type": "xdp", "interface": "eth1", "netns": None, "mode": "generic"}


def test_dropping_priority_from_a_program_in_the_dispatcher_is_refused_even_with_force(monkeypatch, tmp_path):
    """Ours (id 11) runs in the dispatcher beside xdp-loader's (12): force would replace the dispatcher and so
    take 12 off the interface; refused, saying how (remove first), naming what stays."""
    chain = [{"id": 11, "name": "xdp_port_drop"}, {"id": 12, "name": "xdp_count"}]
    prog, spec = _held_by_dispatcher(monkeypatch, tmp_path, [11], chain)
    for force in (False, True):
        with pytest.raises(pl.ApplyError, match=r"runs in the interface's libxdp dispatcher .* remove it first "
                           r"\(state: absent\).* also runs xdp_count id 12, which stay"):
            prog.check_slot(spec, force=force)


def test_a_dispatcher_of_others_is_taken_over_only_with_force_and_the_message_names_its_programs(
        monkeypatch, tmp_path):
    chain = [{"id": 12, "name": "xdp_count"}]
    prog, spec = _held_by_dispatcher(monkeypatch, tmp_path, [], chain)
    with pytest.raises(pl.ApplyError, match=r"held by libxdp's dispatcher \(program id 9\), which runs xdp_count id "
                       r"12: give this program attach.xdp.priority to join them, or set force: true to replace"):
        prog.check_slot(spec, force=False)
    assert prog.check_slot(spec, force=True) is None
