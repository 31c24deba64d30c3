"""ebpf_program replace paths on the real kernel: a changed object or attach point replaces the program.

- XDP blocklist, object changed while a blocked host floods: the slot is swapped atomically (XDP replace) and the
  blocklist map is reused, so not one packet of the flood gets through.
- tcx and cgroup links, object changed: BPF_LINK_UPDATE (same link id, new program id).
- raw_tracepoint moved to another tracepoint, XDP moved to another interface: the old attachment is gone.
"""
import os
import shutil
import socket
import struct
import subprocess

import pytest

from tests.conftest import needs_root
from test_ebpf_program_common import pin_root_fixture, counter, kernel_ids, leaked, obj, ping, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink

pytestmark = needs_root


pin_root = pin_root_fixture("hm-prog-repl")


@pytest.fixture
def variant(tmp_path):
    """variant(name): a copy of an example object with one byte appended (same program, another digest)."""
    def make(name, tag=b"\0"):
        dst = str(tmp_path / (name + "-v2.bpf.o"))
        shutil.copyfile(obj(name), dst)
        with open(dst, "ab") as f:
            f.write(tag)
        return dst
    return make


def test_xdp_blocklist_replace_never_lets_traffic_through(pin_root, pair, variant):
    name = "r-block-%d" % os.getpid()
    attach = {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}
    r1 = run({"name": name, "object": obj("xdp_blocklist"), "pin_root": pin_root, "attach": attach})
    assert r1["changed"], r1
    blocklist = os.path.join(pin_root, name, "maps", "blocklist")
    fd = bs.obj_get(blocklist)
    try:
        bs.map_update(fd, socket.inet_aton(pair.addr_a), struct.pack("=Q", 0))
    finally:
        bs.close(fd)
    assert not ping(pair.ns_a, pair.addr_b, count=2)

    flood = subprocess.Popen(["ip", "netns", "exec", pair.ns_a, "ping", "-n", "-q", "-c", "400", "-i", "0.005",
                              "-W", "1", pair.addr_b], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r2 = run({"name": name, "object": variant("xdp_blocklist"), "pin_root": pin_root, "attach": attach})
    out = flood.communicate()[0]
    assert r2["changed"] and r2["prog_id"] != r1["prog_id"], r2
    assert r2["maps"]["blocklist"] == r1["maps"]["blocklist"], "blocklist map not reused"
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r2["prog_id"]
    assert " 0 received" in out, out
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert ping(pair.ns_a, pair.addr_b, count=1)


@pytest.mark.parametrize("kind", ["tcx", "cgroup"])
def test_link_update_keeps_link(kind, pin_root, pair, variant, tmp_path):
    name = "r-%s-%d" % (kind, os.getpid())
    if kind == "tcx":
        o1, o2 = obj("tc_counter"), variant("tc_counter")
        attach = {"tcx": {"interface": pair.if_b, "netns": pair.ns_b, "direction": "ingress"}}
    else:
        cg = "/sys/fs/cgroup/unified/hm-prog-repl-%d" % os.getpid()
        os.makedirs(cg, exist_ok=True)
        o1, o2 = obj("cgroup_egress"), variant("cgroup_egress")
        attach = {"cgroup": {"path": cg, "type": "egress"}}
    try:
        r1 = run({"name": name, "object": o1, "pin_root": pin_root, "attach": attach})
        r2 = run({"name": name, "object": o2, "pin_root": pin_root, "attach": attach}, diff=True)
        assert r1["changed"] and r2["changed"], (r1, r2)
        assert r2["link_id"] == r1["link_id"] and r2["prog_id"] != r1["prog_id"], (r1, r2)
        fd = bs.get_fd_by_id("link", r2["link_id"])
        try:
            assert bs.link_info(fd)["prog_id"] == r2["prog_id"]
        finally:
            bs.close(fd)
        assert not run({"name": name, "object": o2, "pin_root": pin_root, "attach": attach})["changed"]
        assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    finally:
        if kind == "cgroup":
            os.rmdir(cg)


def test_raw_tracepoint_moves(pin_root):
    name = "r-rawtp-%d" % os.getpid()
    before = kernel_ids()
    base = {"name": name, "object": obj("rawtp_sys_enter"), "pin_root": pin_root}
    r1 = run(dict(base, attach={"raw_tracepoint": "sys_enter"}))
    r2 = run(dict(base, attach={"raw_tracepoint": "sys_exit"}))
    assert r1["changed"] and r2["changed"] and r2["link_id"] != r1["link_id"]
    assert r1["link_id"] not in set(bs.iter_ids("link"))
    fd = bs.get_fd_by_id("link", r2["link_id"])
    try:
        assert bs.link_info(fd)["tp_name"] == "sys_exit"
    finally:
        bs.close(fd)
    c0 = counter(os.path.join(pin_root, name, "maps", "sys_enter_count"))
    assert counter(os.path.join(pin_root, name, "maps", "sys_enter_count")) > c0
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert not any(leaked(before, ["count_sys_enter"], ["sys_enter_count"]).values())


def test_xdp_moves_interface(pin_root, pair):
    name = "r-xdpmove-%d" % os.getpid()
    base = {"name": name, "object": obj("xdp_counter"), "pin_root": pin_root}
    r1 = run(dict(base, attach={"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}))
    r2 = run(dict(base, attach={"xdp": {"interface": pair.if_a, "netns": pair.ns_a, "mode": "generic"}}))
    assert r1["changed"] and r2["changed"]
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0
    assert netlink.xdp_query(pair.if_a, pair.ns_a)["prog_id"] == r2["prog_id"]
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert netlink.xdp_query(pair.if_a, pair.ns_a)["prog_id"] == 0


def test_tc_filter_replaced_in_place(pin_root, pair, variant):
    """tc: a changed object replaces the filter at the same priority/handle (one netlink request)."""
    name = "r-tc-%d" % os.getpid()
    attach = {"tc": {"interface": pair.if_b, "netns": pair.ns_b, "direction": "ingress", "priority": 3}}
    r1 = run({"name": name, "object": obj("tc_counter"), "pin_root": pin_root, "attach": attach})
    r2 = run({"name": name, "object": variant("tc_counter"), "pin_root": pin_root, "attach": attach})
    assert r1["changed"] and r2["changed"] and r2["prog_id"] != r1["prog_id"]
    filters = netlink.tc_query(pair.if_b, "ingress", pair.ns_b)
    assert [(f["priority"], f["prog_id"]) for f in filters] == [(3, r2["prog_id"])], filters
    assert r2["maps"]["tc_stats"] == r1["maps"]["tc_stats"]  # counters survive the upgrade
    c0 = counter(os.path.join(pin_root, name, "maps", "tc_stats"))
    assert ping(pair.ns_a, pair.addr_b, count=2)
    assert counter(os.path.join(pin_root, name, "maps", "tc_stats")) > c0
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert netlink.tc_query(pair.if_b, "ingress", pair.ns_b) == []
