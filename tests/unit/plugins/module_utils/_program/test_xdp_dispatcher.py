"""xdp_dispatcher: what an interface's XDP hook can take through libxdp's dispatcher (refused with nothing
changed, naming the problem), what counts as attached, and libxdp's silent fallback caught after the attach and
undone. libxdp and netlink are fakes here; the real ones run in tests/integration/test_ebpf_program_xdp_multiprog.py
(refusal on this machine) and in the qemu guests (the attach itself)."""
import contextlib

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libxdp
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import xdp_dispatcher as xd
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_attach import AttachError, describe


def spec(priority=20, proceed_on=("pass",), mode="auto", netns=None):
    return {"type": "xdp", "interface": "veth0", "netns": netns, "mode": mode, "priority": priority,
            "proceed_on": list(proceed_on)}


def prog(prog_id, priority=50, proceed_on=("pass",), name="p"):
    return {"id": prog_id, "name": name, "priority": priority, "proceed_on": list(proceed_on)}


def dispatcher(programs, mode="generic", legacy=False, main=None):
    return {"ifindex": 4, "legacy": legacy, "mode": mode, "programs": programs,
            "main": main or {"id": 99, "name": "xdp_dispatcher", "priority": 50, "proceed_on": ["pass"]}}


def test_describe_names_the_dispatcher_and_order():
    assert describe(spec(10, ["drop", "pass"])) == \
        "xdp on veth0 (auto, libxdp dispatcher, priority 10, proceed_on drop,pass)"
    assert describe(spec(10, [])).endswith("proceed_on none)")


@pytest.mark.parametrize("state", [
    None,  # nothing on the interface
    dispatcher([prog(26, name="theirs"), prog(45)]),  # xdp-loader's programs share it
    dispatcher([prog(i) for i in range(9)]),
    dispatcher([prog(i) for i in range(8)] + [prog(77)]),  # 77 is ours: its new copy takes the tenth slot
])
def test_check_slot_accepts(monkeypatch, state):
    monkeypatch.setattr(xd, "read", lambda s: state)
    xd.check_slot(spec(), set([77]))


@pytest.mark.parametrize("state, owned, words", [
    (dispatcher([], legacy=True, main=prog(12, name="xdp_count")), set(),
     "holds XDP program id 12 (xdp_count) attached without libxdp's dispatcher"),
    (dispatcher([], legacy=True, main=prog(12, name="xdp_count")), set([12]),
     "this program is attached there alone (without priority and proceed_on)"),
    (dispatcher([], legacy=True, main=prog(853, name="xdp_dispatcher")), set(),
     "runs a libxdp dispatcher (program id 853) whose pins under the bpffs are gone"),
    (dispatcher([prog(i) for i in range(10)]), set(), "already runs 10 programs, its most"),
    (dispatcher([prog(i) for i in range(9)] + [prog(77)]), set([77]), "replacing ours needs one free slot"),
])
def test_check_slot_refuses(monkeypatch, state, owned, words):
    monkeypatch.setattr(xd, "read", lambda s: state)
    with pytest.raises(AttachError, match=words.replace("(", r"\(").replace(")", r"\)")):
        xd.check_slot(spec(), owned)


def test_check_slot_refuses_another_mode(monkeypatch):
    monkeypatch.setattr(xd, "read", lambda s: dispatcher([prog(1)], mode="generic"))
    with pytest.raises(AttachError, match="runs in generic mode; every program on it must use that mode"):
        xd.check_slot(spec(mode="native"), set())
    xd.check_slot(spec(mode="generic"), set())
    xd.check_slot(spec(mode="auto"), set())


@pytest.mark.parametrize("state, attached", [
    (dispatcher([prog(5), prog(7, 20, ["pass"])]), True),
    (dispatcher([prog(7, 30, ["pass"])]), False),  # another priority: to be replaced
    (dispatcher([prog(7, 20, ["drop", "pass"])]), False),  # another proceed_on
    (dispatcher([prog(8, 20, ["pass"])]), False),  # not ours
    (dispatcher([], legacy=True, main=prog(7, 20)), False),  # a plain XDP program, not in a dispatcher
    (None, False),
])
def test_is_attached(monkeypatch, state, attached):
    monkeypatch.setattr(xd, "read", lambda s: state)
    assert xd.is_attached(spec(20, ["pass"]), 7) is attached


def test_is_attached_checks_the_mode(monkeypatch):
    monkeypatch.setattr(xd, "read", lambda s: dispatcher([prog(7, 20)], mode="generic"))
    assert xd.is_attached(spec(20, mode="generic"), 7)
    assert not xd.is_attached(spec(20, mode="native"), 7)


class FakeProgram(object):
    """libxdp.Program as a fake: records configure/attach, 'loads' as id 31."""
    made = []

    def __init__(self, obj, name):
        self.calls = []
        FakeProgram.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.calls.append("close")

    def configure(self, priority, proceed_on):
        self.calls.append(("configure", priority, list(proceed_on)))

    def attach(self, ifindex, mode):
        self.calls.append(("attach", ifindex, mode))

    def describe(self):
        return {"id": 31, "name": "xdp_count", "priority": 20, "proceed_on": ["pass"]}

    def fd(self):
        return 0  # stdin: dup'ed and closed by the code under test


class FakeObject(object):
    @staticmethod
    def pointer():
        return 1234


@pytest.fixture
def fakes(monkeypatch):
    class Netlink(object):
        class NetlinkError(OSError):
            pass

        @staticmethod
        def ifindex(name, netns=None):
            return 4

        @staticmethod
        @contextlib.contextmanager
        def in_netns(netns):
            yield
    monkeypatch.setattr(xd, "_netlink", lambda: Netlink)
    monkeypatch.setattr(pa, "_netlink", lambda: Netlink)  # the interface's index (pa.interface_call)
    monkeypatch.setattr(libxdp, "Program", FakeProgram)
    del FakeProgram.made[:]
    detached = []
    monkeypatch.setattr(xd, "detach", lambda s, ids: detached.append(set(ids)) or True)
    return detached


def _reads(monkeypatch, *states):
    states = list(states)
    monkeypatch.setattr(xd, "read", lambda s: states.pop(0) if len(states) > 1 else states[0])


def test_attach_uses_the_dispatchers_mode_and_returns_our_fd(monkeypatch, fakes):
    _reads(monkeypatch, dispatcher([prog(26)], mode="native"), dispatcher([prog(26), prog(31, 20)], mode="native"))
    monkeypatch.setattr(bs, "prog_info", lambda fd: {"type": bs.BPF_PROG_TYPE_EXT, "type_name": "ext"})
    fd, prog_id = xd.attach(spec(20, mode="auto"), FakeObject(), "xdp_count")
    bs.close(fd)
    assert prog_id == 31 and fakes == []
    calls = FakeProgram.made[0].calls
    assert calls[:2] == [("configure", 20, ["pass"]), ("attach", 4, libxdp.MODE_NATIVE)]


@pytest.mark.parametrize("info, after, words", [
    ({"type": bs.BPF_PROG_TYPE_XDP, "type_name": "xdp"}, dispatcher([], legacy=True, main=prog(31, name="xdp_count")),
     "libxdp attached a plain xdp program, not an extension in its dispatcher"),
    ({"type": bs.BPF_PROG_TYPE_EXT, "type_name": "ext"}, dispatcher([prog(26)]),
     "libxdp attached a program missing from the interface's dispatcher"),
    ({"type": bs.BPF_PROG_TYPE_EXT, "type_name": "ext"}, dispatcher([prog(31, 50)]),
     "libxdp attached program id 31 with priority 50 and proceed_on ['pass'], not as asked"),
])
def test_attach_undoes_a_fallback(monkeypatch, fakes, info, after, words):
    _reads(monkeypatch, None, after)
    monkeypatch.setattr(bs, "prog_info", lambda fd: info)
    with pytest.raises(AttachError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        xd.attach(spec(20), FakeObject(), "xdp_count")
    assert fakes == [set([31])]  # detached again
    assert FakeProgram.made[0].calls[1] == ("attach", 4, libxdp.MODE_UNSPEC)


def test_attach_refuses_a_held_program(fakes):
    class Held(object):
        pass
    with pytest.raises(AttachError, match="already loaded cannot be put back into libxdp's dispatcher"):
        xd.attach(spec(20), Held(), "xdp_count")
    assert FakeProgram.made == []
