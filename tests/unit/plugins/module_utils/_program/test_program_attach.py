"""program_attach: the words for an attach point, which link serves which point, and how a missing target or
a kernel refusal becomes AttachError (or PerfError) with nothing changed. The netlink and perf calls are real and
read-only or refused before any change (an interface that does not exist, loopback's XDP slot)."""
import os
import shutil

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
from tests.unit.fixtures import c_binary

MISSING = "hmnoif%d" % (os.getpid() % 100000)  # an interface name no one has
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="probe: euid is not 0 (netlink and bpf queries)")


def xdp(ifname, mode="auto", netns=None):
    return {"type": "xdp", "interface": ifname, "mode": mode, "netns": netns}


@pytest.mark.parametrize("spec,words", [
    (None, "not attached"),
    (xdp("eth0", "native"), "xdp on eth0 (native)"),
    (xdp("eth0", "generic", "blue"), "xdp on eth0 in netns blue (generic)"),
    ({"type": "tc", "interface": "eth1", "direction": "egress", "priority": 1}, "tc on eth1 (egress)"),
    ({"type": "cgroup", "cgroup_type": "ingress", "path": "/sys/fs/cgroup/x"}, "cgroup ingress on /sys/fs/cgroup/x"),
    ({"type": "tracepoint", "target": "syscalls/sys_enter_openat"}, "tracepoint syscalls/sys_enter_openat"),
    ({"type": "kprobe", "target": "do_sys_openat2"}, "kprobe do_sys_openat2"),
])
def test_describe(spec, words):
    assert pa.describe(spec) == words


def test_every_link_kind_has_a_link_type_and_no_kind_is_both():
    assert set(pa._LINK_TYPE) == set(pa.LINK_KINDS)
    assert not set(pa.NETLINK_KINDS) & set(pa.LINK_KINDS)


def test_tcx_direction_is_the_attach_type():
    assert pa._tcx_attach_type({"direction": "ingress"}) == bs.BPF_TCX_INGRESS
    assert pa._tcx_attach_type({"direction": "egress"}) == bs.BPF_TCX_EGRESS


@pytest.mark.parametrize("kind,link,spec,want", [
    ("raw_tracepoint", {"type": bs.BPF_LINK_TYPE_RAW_TRACEPOINT, "tp_name": "sched_switch"}, {"target": "sched_switch"}, True),
    ("raw_tracepoint", {"type": bs.BPF_LINK_TYPE_RAW_TRACEPOINT, "tp_name": "sched_wakeup"}, {"target": "sched_switch"}, False),
    ("fentry", {"type": bs.BPF_LINK_TYPE_TRACING, "attach_type": bs.BPF_TRACE_FENTRY}, {"target": "f"}, True),
    ("fexit", {"type": bs.BPF_LINK_TYPE_TRACING, "attach_type": bs.BPF_TRACE_FENTRY}, {"target": "f"}, False),
    ("tracepoint", {"type": bs.BPF_LINK_TYPE_PERF_EVENT}, {"target": "a/b"}, True),
    ("tracepoint", {"type": bs.BPF_LINK_TYPE_RAW_TRACEPOINT}, {"target": "a/b"}, False),
    ("kprobe", None, {"target": "f"}, False),
])
def test_link_matches(kind, link, spec, want):
    assert pa.link_matches(dict(spec, type=kind), link) is want


def test_a_cgroup_link_matches_by_inode_and_attach_type(tmp_path):
    spec = {"type": "cgroup", "cgroup_type": "ingress", "path": str(tmp_path)}
    ino = os.stat(str(tmp_path)).st_ino
    at = pa._cgroup_attach_type(spec)
    assert pa.link_matches(spec, {"type": bs.BPF_LINK_TYPE_CGROUP, "cgroup_id": ino, "attach_type": at})
    assert not pa.link_matches(spec, {"type": bs.BPF_LINK_TYPE_CGROUP, "cgroup_id": ino + 1, "attach_type": at})
    assert not pa.link_matches(dict(spec, path=str(tmp_path / "gone")),
                               {"type": bs.BPF_LINK_TYPE_CGROUP, "cgroup_id": ino, "attach_type": at})


def test_link_kinds_are_attached_when_the_link_runs_the_program():
    spec = {"type": "tracepoint", "target": "a/b"}
    link = {"type": bs.BPF_LINK_TYPE_PERF_EVENT, "prog_id": 7}
    assert pa.is_attached(spec, 7, link) and not pa.is_attached(spec, 8, link)
    assert not pa.is_attached(spec, 0, link) and not pa.is_attached(spec, 7, None)
    assert pa.slot_holder(spec) is None  # link kinds share their hook: no slot to hold


def test_a_cgroup_target_that_is_not_cgroup2_is_refused(tmp_path):
    with pytest.raises(pa.AttachError, match="is not a cgroup v2 directory"):
        pa.check_target({"type": "cgroup", "cgroup_type": "ingress", "path": str(tmp_path)})
    with pytest.raises(pa.AttachError, match="is not a cgroup v2 directory"):
        pa.check_target({"type": "cgroup", "cgroup_type": "ingress", "path": str(tmp_path / "none")})


def test_a_missing_tracepoint_is_a_perf_error():
    with pytest.raises(perf.PerfError):
        pa.check_target({"type": "tracepoint", "target": "hm_none/hm_none"})


@root_only
@pytest.mark.parametrize("kind", ["xdp", "tc", "tcx"])
def test_a_missing_interface_is_an_attach_error(kind):
    spec = {"type": kind, "interface": MISSING, "netns": None, "direction": "ingress", "mode": "auto", "priority": 1}
    with pytest.raises(pa.AttachError, match=MISSING):
        pa.check_target(spec)
    if kind != "tcx":
        with pytest.raises(pa.AttachError, match=MISSING):
            pa.attach_netlink(spec, -1, 0, "x")  # refused at the name, before any request that changes a slot


@root_only
def test_detaching_from_an_interface_that_is_gone_is_nothing_to_do():
    assert pa.detach_netlink(xdp(MISSING), {5}) is False
    assert pa.detach_netlink({"type": "tc", "interface": MISSING, "netns": None, "direction": "ingress",
                              "priority": 1}, {5}) is False


@root_only
def test_loopback_is_a_target_and_its_xdp_slot_is_read():
    pa.check_target(xdp("lo"))
    holder = pa.slot_holder(xdp("lo"))
    assert isinstance(holder, int)
    assert not pa.is_attached(xdp("lo"), holder + 1000000, None)  # an id that is not the slot's


def test_an_unknown_kind_cannot_be_linked():
    with pytest.raises(pa.AttachError, match="cannot attach xdp"):
        pa.create_link(xdp("lo"), -1)


def test_only_an_existing_matching_tcx_or_cgroup_link_is_updated(tmp_path):
    cg = {"type": "cgroup", "cgroup_type": "ingress", "path": str(tmp_path)}
    link = {"type": bs.BPF_LINK_TYPE_CGROUP, "cgroup_id": os.stat(str(tmp_path)).st_ino,
            "attach_type": pa._cgroup_attach_type(cg), "prog_id": 3}
    assert pa.can_update_link(cg, cg, link)
    assert not pa.can_update_link(cg, cg, None)
    assert not pa.can_update_link(cg, dict(cg, cgroup_type="egress"), link)
    tp = {"type": "tracepoint", "target": "a/b"}
    assert not pa.can_update_link(tp, tp, {"type": bs.BPF_LINK_TYPE_PERF_EVENT, "prog_id": 3})


# ---- uprobe / uretprobe ----------------------------------------------------------------------------------------

def uprobe(kind="uprobe", path="/usr/bin/x", symbol="hm_tick", offset=None, pid=None, **extra):
    return dict({"type": kind, "path": path, "symbol": symbol, "offset": offset, "pid": pid}, **extra)


@pytest.mark.parametrize("spec, words", [
    (uprobe(), "uprobe /usr/bin/x:hm_tick"),
    (uprobe(offset=0x1150), "uprobe /usr/bin/x:hm_tick (offset 0x1150)"),
    (uprobe("uretprobe", symbol=None, offset=0x20, pid=7), "uretprobe /usr/bin/x offset 0x20 for pid 7"),
])
def test_describe_uprobe(spec, words):
    assert pa.describe(spec) == words


def _binary(tmp_path):
    return c_binary.build(tmp_path, "python")


def test_resolve_sets_the_offset_and_the_binary_and_keeps_other_specs(tmp_path):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import elf_symbols
    path = _binary(tmp_path)
    spec = uprobe(path=path, symbol="main")
    out = pa.resolve(spec)
    st = os.stat(path)
    inode = "%d:%d" % (st.st_dev, st.st_ino)
    assert out == dict(spec, offset=elf_symbols.function_offset(path, "main"), inode=inode)
    assert spec["offset"] is None  # the caller's spec is left as it was
    assert pa.resolve({"type": "kprobe", "target": "f"}) == {"type": "kprobe", "target": "f"}
    assert pa.resolve(None) is None
    os.rename(path, path + ".old")  # a binary replaced at the same path: another inode, attached again
    shutil.copy(path + ".old", path)
    assert pa.resolve(spec)["inode"] != out["inode"] and pa.resolve(spec)["offset"] == out["offset"]


def test_resolve_refuses_unknown_symbols_and_unsafe_binaries(tmp_path):
    path = _binary(tmp_path)
    with pytest.raises(pa.AttachError, match="attach.uretprobe: binary %s has no function symbol hm_none" % path):
        pa.resolve(uprobe("uretprobe", path=path, symbol="hm_none"))
    os.chmod(os.path.dirname(path), 0o777)
    with pytest.raises(pa.AttachError, match="attach.uprobe.path: .*bin is writable by group or others"):
        pa.resolve(uprobe(path=path, symbol="main"))
    os.chmod(os.path.dirname(path), 0o755)
    os.symlink(path, path + "-link")
    with pytest.raises(pa.AttachError, match=r"python-link is a symbolic link: .*; give the binary's own path \(%s\)"
                       % path):
        pa.check_target(uprobe(path=path + "-link", symbol="main"))


def test_check_target_wants_the_pid_to_exist(tmp_path):
    path = _binary(tmp_path)
    pa.check_target(uprobe(path=path, symbol="main", pid=os.getpid()))
    with pytest.raises(pa.AttachError, match="attach.uprobe.pid: no process with pid 4194305"):
        pa.check_target(uprobe(path=path, symbol="main", pid=4194305))


@pytest.mark.parametrize("link, matches", [
    ({"type": bs.BPF_LINK_TYPE_PERF_EVENT, "perf_event_type": 0}, True),  # before 6.6: the record names it
    ({"type": bs.BPF_LINK_TYPE_PERF_EVENT, "perf_event_type": bs.BPF_PERF_EVENT_UPROBE,
      "uprobe_path": "/usr/bin/x", "uprobe_offset": 0x1150}, True),
    ({"type": bs.BPF_LINK_TYPE_PERF_EVENT, "perf_event_type": bs.BPF_PERF_EVENT_URETPROBE,
      "uprobe_path": "/usr/bin/x", "uprobe_offset": 0x1150}, False),
    ({"type": bs.BPF_LINK_TYPE_PERF_EVENT, "perf_event_type": bs.BPF_PERF_EVENT_UPROBE,
      "uprobe_path": "/usr/bin/y", "uprobe_offset": 0x1150}, False),
    ({"type": bs.BPF_LINK_TYPE_PERF_EVENT, "perf_event_type": bs.BPF_PERF_EVENT_UPROBE,
      "uprobe_path": "/usr/bin/x", "uprobe_offset": 0x1160}, False),
    ({"type": bs.BPF_LINK_TYPE_TRACING}, False),
])
def test_a_uprobe_link_matches_by_kind_path_and_offset(link, matches):
    assert pa.link_matches(uprobe(offset=0x1150), link) is matches
