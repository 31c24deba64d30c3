"""program_lifecycle with a cgroup hook through BPF_PROG_ATTACH, on this kernel.

Before 5.7 a kernel has no bpf_link, so a cgroup program cannot be attached through a pinned link; ebpf_program's
gate then hands the lifecycle want["prog_attach"] = True (the 4.19 guest takes that route). This kernel has links,
so the gate never does it here; the lifecycle is handed it directly, and the kernel is asked, through
BPF_PROG_QUERY on the cgroup, what runs there: ours after apply, the new program alone after a replace (attached
beside the old one, BPF_F_ALLOW_MULTI, before the old one is detached), nothing after remove.
"""
import os
import shutil
import struct
import subprocess
import sys

import pytest

from tests.conftest import TOP
from tests.integration.test_ebpf_program_common import converge_routed

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.libbpf import BpfObject
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_lifecycle as pl
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="probe: needs root (bpf, cgroups)")
OBJ = os.path.join(TOP, "examples", "objects", "cgroup_egress.bpf.o")
CGROUP_ROOT = "/sys/fs/cgroup/unified"


@pytest.fixture
def where(tmp_path):
    if not os.path.isfile(os.path.join(CGROUP_ROOT, "cgroup.procs")):
        pytest.skip("probe: no cgroup v2 hierarchy at %s" % CGROUP_ROOT)
    cgroup = os.path.join(CGROUP_ROOT, "hm-prog-attach-%d" % os.getpid())
    os.mkdir(cgroup)
    pin_root = "/sys/fs/bpf/hm-prog-attach-%d" % os.getpid()
    yield pin_root, str(tmp_path / "state"), cgroup
    shutil.rmtree(pin_root, ignore_errors=True)
    os.rmdir(cgroup)


def spec_of(cgroup):
    return program_spec.normalize({"cgroup": {"path": cgroup, "type": "egress"}}, "cgroup_skb/egress")


def converge(prog, spec, sha_suffix=""):
    return converge_routed(prog, OBJ, spec, "prog_attach", sha_suffix)


def attached(cgroup):
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bs.prog_query(fd, bs.BPF_CGROUP_INET_EGRESS)
    finally:
        os.close(fd)


def packets(pin_root, name="cg"):
    """Packets counted on egress, summed over CPUs (struct counters {packets, bytes} per CPU)."""
    fd = bs.obj_get(os.path.join(pin_root, name, layout.PIN_MAPS, "egress_bytes"))
    try:
        raw = bs.map_lookup(fd, struct.pack("=I", 0), 16 * os.cpu_count())
    finally:
        bs.close(fd)
    return sum(struct.unpack_from("=Q", raw, off)[0] for off in range(0, len(raw), 16))


def send_from(cgroup, n=10):
    """n UDP datagrams to 127.0.0.1:9, from a process inside the cgroup."""
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "[s.sendto(b'x', ('127.0.0.1', 9)) for _i in range(%d)]" % n)
    subprocess.run(["sh", "-c", 'echo $$ > %s/cgroup.procs && exec "$0" -c "$1"' % cgroup, sys.executable, code],
                   check=True)


def test_attach_replace_remove_through_prog_attach(where):
    pin_root, state_dir, cgroup = where
    spec = spec_of(cgroup)
    prog = pl.Program("cg", pin_root, state_dir)
    first = converge(prog, spec)["prog_id"]
    assert attached(cgroup) == [first]
    assert not os.path.exists(os.path.join(pin_root, "cg", layout.PIN_LINK))
    prog = pl.Program("cg", pin_root, state_dir)
    assert prog.current_state() == "attached" and prog.before()["prog_attach"] is True
    before = packets(pin_root)
    send_from(cgroup)
    assert packets(pin_root) - before >= 10

    second = converge(prog, spec, sha_suffix="0")["prog_id"]
    assert second != first and attached(cgroup) == [second]  # the old one detached after the new one ran
    before = packets(pin_root)
    send_from(cgroup)
    assert packets(pin_root) - before >= 10  # the counter map was kept across the replace

    pl.Program("cg", pin_root, state_dir).remove()
    assert attached(cgroup) == []
    with pytest.raises(OSError):
        bs.close(bs.get_fd_by_id("prog", second))


def test_beside_a_program_of_another_tool(where):
    """BPF_F_ALLOW_MULTI: a program another tool attached to the hook with the same flag stays attached and
    running beside ours, before and after ours is removed."""
    pin_root, state_dir, cgroup = where
    other = BpfObject(OBJ)
    try:
        name = other.programs()[0]["name"]
        other.select(name)
        other.load()
        ofd = other.program_fd(name)
        oid = bs.prog_info(ofd)["id"]
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            bs.prog_attach(cg, ofd, bs.BPF_CGROUP_INET_EGRESS, bs.BPF_F_ALLOW_MULTI)
            ours = converge(pl.Program("cg", pin_root, state_dir), spec_of(cgroup))["prog_id"]
            assert sorted(attached(cgroup)) == sorted([oid, ours])
            pl.Program("cg", pin_root, state_dir).remove()
            assert attached(cgroup) == [oid]
            bs.prog_detach(cg, bs.BPF_CGROUP_INET_EGRESS, ofd)
        finally:
            os.close(cg)
    finally:
        other.close()
