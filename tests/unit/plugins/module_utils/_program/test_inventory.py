"""inventory: managed flags from the pin tree, stats on/off by either method, objects vanishing while listed."""
import errno
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import inventory as inv


class FakeLock(object):
    held = []

    def __enter__(self):
        FakeLock.held.append(True)

    def __exit__(self, *exc):
        FakeLock.held.pop()


@pytest.fixture
def sysctl(tmp_path, monkeypatch):
    path = tmp_path / "bpf_stats_enabled"
    path.write_text("0\n")
    monkeypatch.setattr(inv, "STATS_SYSCTL", str(path))
    monkeypatch.setattr(inv, "STATS_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr(inv, "_host_lock", FakeLock)
    return path


def _no_enable_stats(monkeypatch):
    def enable_stats():
        raise bs.BpfError(errno.EINVAL, "BPF_ENABLE_STATS")  # a kernel before 5.8
    monkeypatch.setattr(bs, "enable_stats", enable_stats)


def test_stats_through_bpf_enable_stats(sysctl, monkeypatch):
    opened = []

    def enable_stats():
        fd = os.open(os.devnull, os.O_RDONLY)
        opened.append(fd)
        return fd
    monkeypatch.setattr(bs, "enable_stats", enable_stats)
    with inv.run_stats() as how:
        assert how == {"method": "bpf_enable_stats", "seconds": 0}
        os.fstat(opened[0])                    # held open while reading
    with pytest.raises(OSError):
        os.fstat(opened[0])                    # closed after
    assert sysctl.read_text().strip() == "0"


def test_stats_fall_back_to_the_sysctl_and_put_it_back(sysctl, monkeypatch):
    def enable_stats():
        raise bs.BpfError(errno.EINVAL, "BPF_ENABLE_STATS")
    monkeypatch.setattr(bs, "enable_stats", enable_stats)
    with inv.run_stats() as how:
        assert how["method"] == "sysctl"
        assert sysctl.read_text().strip() == "1"
        assert FakeLock.held == [True]                  # the fallback runs under the host lock
        assert os.path.exists(inv.STATS_MARKER)         # and says so, for the run after a kill
    assert sysctl.read_text().strip() == "0" and not os.path.exists(inv.STATS_MARKER)
    assert FakeLock.held == []


def test_check_mode_never_writes_the_sysctl(sysctl, monkeypatch):
    _no_enable_stats(monkeypatch)
    monkeypatch.setattr(inv, "_host_lock", lambda: pytest.fail("check mode takes no lock"))
    monkeypatch.setattr(inv, "_write_sysctl", lambda v: pytest.fail("check mode wrote the sysctl"))
    with inv.run_stats(check_mode=True) as how:
        assert how["method"] == "not_enabled_check_mode"
    assert sysctl.read_text().strip() == "0" and not os.path.exists(inv.STATS_MARKER)


def test_a_run_killed_with_the_sysctl_on_is_put_back_by_the_next(sysctl, monkeypatch):
    """A killed run left the sysctl at 1 and its marker: the next run does not take that for someone else's
    setting (already_enabled) but puts it back, and leaves 0 and no marker when done."""
    _no_enable_stats(monkeypatch)
    sysctl.write_text("1\n")
    with open(inv.STATS_MARKER, "w") as f:
        f.write("left by a killed run\n")
    with inv.run_stats() as how:
        assert how["method"] == "sysctl" and sysctl.read_text().strip() == "1"
    assert sysctl.read_text().strip() == "0" and not os.path.exists(inv.STATS_MARKER)


def test_stats_put_back_even_on_error(sysctl, monkeypatch):
    monkeypatch.setattr(bs, "enable_stats", lambda: (_unused for _unused in ()).throw(OSError(errno.EINVAL, "no")))
    with pytest.raises(RuntimeError):
        with inv.run_stats():
            raise RuntimeError("boom")
    assert sysctl.read_text().strip() == "0"


def test_stats_already_on_are_left_alone(sysctl, monkeypatch):
    sysctl.write_text("1\n")
    _no_enable_stats(monkeypatch)
    monkeypatch.setattr(inv, "_write_sysctl", lambda v: pytest.fail("someone else's setting was written"))
    for check in (False, True):
        with inv.run_stats(check_mode=check) as how:
            assert how["method"] == "already_enabled"
    assert sysctl.read_text().strip() == "1"


def test_managed_index_names_and_kinds(tmp_path, monkeypatch):
    """Kinds come from the pinned fd (fdinfo), names from the first directory under the pin root."""
    layout = {"blk/prog": ("prog", 10), "blk/maps/blocklist": ("map", 20), "blk/maps/verdicts": ("map", 21),
              "tcxc/link": ("link", 30), "tcxc/prog": ("prog", 11), "_shared/events": ("map", 22),
              "junk/notbpf": (None, 0)}
    for rel in layout:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    fds = {}

    def obj_get(path, flags=0):
        fd = os.open(path, os.O_RDONLY)
        fds[fd] = os.path.relpath(path, str(tmp_path))
        return fd
    monkeypatch.setattr(bs, "obj_get", obj_get)
    monkeypatch.setattr(inv, "_pinned_kind", lambda fd: layout[fds[fd]][0])

    def info(fd):
        return {"id": layout[fds[fd]][1]}

    monkeypatch.setattr(inv, "_INFO", {"prog": info, "map": info, "link": info})
    index = inv.managed_index(str(tmp_path))
    assert dict((key, val["name"]) for key, val in index.items()) == {
        ("prog", 10): "blk", ("map", 20): "blk", ("map", 21): "blk", ("link", 30): "tcxc", ("prog", 11): "tcxc",
        ("map", 22): "_shared"}
    assert index[("link", 30)]["pin"] == str(tmp_path / "tcxc" / "link")
    only = inv.managed_index(str(tmp_path), names=["blk"])  # another tool's tcxc/ and junk/ are not ours
    assert sorted(set(v["name"] for v in only.values())) == ["_shared", "blk"]


def test_managed_index_without_pin_root():
    assert inv.managed_index("/nonexistent/pin/root") == {}


def test_flag_managed():
    objs = inv.flag_managed([{"id": 1}, {"id": 2}], "prog", {("prog", 2): {"name": "x", "pin": "/p"}})
    assert objs == [{"id": 1, "managed": False, "managed_name": None, "pin": None},
                    {"id": 2, "managed": True, "managed_name": "x", "pin": "/p"}]


def test_objects_that_vanish_are_skipped(monkeypatch):
    monkeypatch.setattr(bs, "iter_ids", lambda kind: iter([1, 2, 3]))

    def get_fd(kind, obj_id):
        if obj_id == 2:
            raise bs.BpfError(errno.ENOENT, "BPF_PROG_GET_FD_BY_ID")
        return os.open(os.devnull, os.O_RDONLY)
    monkeypatch.setattr(bs, "get_fd_by_id", get_fd)
    monkeypatch.setattr(inv, "_INFO", {"prog": lambda fd: {"id": fd}})
    assert len(inv.programs()) == 2


def test_wait_for_runs_stops_when_every_program_ran(monkeypatch):
    """'a' runs on the third poll, 'b' on the first; a name with no pin is missing and stalled; fds are closed."""
    counts = {"a": [5, 5, 5, 6], "b": [0, 1]}
    closed = []
    monkeypatch.setattr(bs, "obj_get", lambda path: {"/r/a/prog": "a", "/r/b/prog": "b"}[path]
                        if path in ("/r/a/prog", "/r/b/prog")
                        else (_unused for _unused in ()).throw(OSError(errno.ENOENT, path)))
    monkeypatch.setattr(bs, "prog_info", lambda fd: {"run_cnt": counts[fd].pop(0) if len(counts[fd]) > 1
                                                     else counts[fd][0]})
    monkeypatch.setattr(bs, "close", closed.append)
    r = inv.wait_for_runs(["a", "b"], "/r", timeout=5, interval=0.01)
    assert r["ran"] == {"a": 1, "b": 1} and r["stalled"] == [] and r["waited"] < 5
    assert sorted(closed) == ["a", "b"]
    r = inv.wait_for_runs(["a", "gone"], "/r", timeout=0.05, interval=0.01)
    assert r["ran"] == {"a": 0} and r["stalled"] == ["a", "gone"] and r["missing"] == ["gone"]
    assert r["waited"] >= 0.05


def test_a_libxdp_dispatcher_lists_its_programs_in_run_order_with_their_managed_names(monkeypatch):
    """eth1 runs libxdp's dispatcher (ours at 10, xdp-loader's at 50), eth0 a plain XDP program (libxdp says
    legacy), lo nothing (libxdp is not asked)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libxdp, netlink
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import xdp_dispatcher
    monkeypatch.setattr(inv, "_interface_names", lambda netns: [(1, "lo"), (2, "eth0"), (3, "eth1")])
    monkeypatch.setattr(netlink, "xdp_query", lambda ifname, netns=None: {
        "lo": {"prog_id": 0}, "eth0": {"prog_id": 7, "mode": "native"}, "eth1": {"prog_id": 9, "mode": "generic"}}[ifname])
    for name in ("tc_query", "tcx_query"):
        monkeypatch.setattr(netlink, name, lambda ifname, direction, netns=None: [])
    monkeypatch.setattr(libxdp, "available", lambda: True)
    asked = []

    def read(spec):
        asked.append(spec["interface"])
        if spec["interface"] == "eth0":
            return {"legacy": True, "main": {"id": 7}, "programs": []}
        return {"legacy": False, "main": {"id": 9},
                "programs": [{"id": 11, "name": "xdp_port_drop", "priority": 10, "proceed_on": ["pass"]},
                             {"id": 12, "name": "xdp_count", "priority": 50, "proceed_on": ["pass"]}]}
    monkeypatch.setattr(xdp_dispatcher, "read", read)
    ifaces = inv.interfaces()
    inv._name_dispatched(ifaces, [{"id": 11, "managed_name": "drop"}, {"id": 12, "managed_name": None}])
    by_name = dict((i["ifname"], i["xdp"]) for i in ifaces)
    assert asked == ["eth0", "eth1"]
    assert "dispatcher" not in by_name["lo"] and "dispatcher" not in by_name["eth0"]
    assert [(e["id"], e["priority"], e["managed_name"]) for e in by_name["eth1"]["dispatcher"]] == \
        [(11, 10, "drop"), (12, 50, None)]
