"""bpf_syscall.py on the real kernel, checked against what bpftool reads from the same objects."""
import json
import os
import struct
import subprocess

import pytest

from tests.conftest import needs_root
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as b

pytestmark = needs_root


def bpftool(*args):
    return json.loads(subprocess.check_output(["bpftool", "-j"] + list(args)))


@pytest.fixture
def fds():
    opened = []
    yield opened
    for fd in opened:
        os.close(fd)


def test_prog_load_and_info_match_bpftool(fds):
    fd = b.prog_load(b.BPF_PROG_TYPE_XDP, b.MOV64_IMM(0, 2) + b.EXIT(), prog_name="hm_t_xdp")
    fds.append(fd)
    info = b.prog_info(fd)
    seen = bpftool("prog", "show", "id", str(info["id"]))
    assert (seen["name"], seen["tag"], seen["type"]) == ("hm_t_xdp", info["tag"], "xdp")
    assert info["id"] in list(b.iter_ids("prog"))


def test_verifier_rejection_carries_log():
    with pytest.raises(b.BpfError) as err:
        b.prog_load(b.BPF_PROG_TYPE_XDP, b.EXIT(), prog_name="hm_t_bad")
    assert err.value.cmd == "BPF_PROG_LOAD"
    assert "R0 !read_ok" in err.value.log


def test_map_ops_and_batch(fds):
    fd = b.map_create(b.BPF_MAP_TYPE_HASH, 4, 8, 4096, name="hm_t_hash")
    fds.append(fd)
    for i in range(1000):
        b.map_update(fd, struct.pack("=I", i), struct.pack("=Q", i * 3))
    assert b.map_lookup(fd, struct.pack("=I", 7), 8) == struct.pack("=Q", 21)
    assert b.map_lookup(fd, struct.pack("=I", 5000), 8) is None
    keys, token, done = [], None, False
    while not done:
        kblob, vblob, got, token, done = b.map_lookup_batch(fd, 4, 8, 128, in_batch=token)
        assert len(kblob) == 4 * got and len(vblob) == 8 * got and got <= 128
        ks = [kblob[i * 4:(i + 1) * 4] for i in range(got)]
        vs = [vblob[i * 8:(i + 1) * 8] for i in range(got)]
        keys.extend(ks)
        assert all(struct.unpack("=Q", v)[0] == 3 * struct.unpack("=I", k)[0] for k, v in zip(ks, vs))
    assert sorted(struct.unpack("=I", k)[0] for k in keys) == list(range(1000))
    assert b.map_update_batch(fd, [struct.pack("=I", 2000 + i) for i in range(10)], [b"\1" * 8] * 10) == 10
    assert b.map_delete(fd, struct.pack("=I", 2000)) is True
    assert b.map_delete(fd, struct.pack("=I", 2000)) is False
    walked, key = 0, None
    while True:
        key = b.map_next_key(fd, key, 4)
        if key is None:
            break
        walked += 1
    assert walked == 1009
    info = b.map_info(fd)
    assert (info["type_name"], info["key_size"], info["value_size"], info["max_entries"]) == ("hash", 4, 8, 4096)
    assert bpftool("map", "show", "id", str(info["id"]))["name"] == "hm_t_hash"


def test_pin_get_and_unpin(fds, tmp_path):
    if not os.path.ismount("/sys/fs/bpf"):
        subprocess.check_call(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"])
    fd = b.prog_load(b.BPF_PROG_TYPE_SCHED_CLS, b.MOV64_IMM(0, 0) + b.EXIT(), prog_name="hm_t_pin")
    fds.append(fd)
    path = "/sys/fs/bpf/hm_t_pin_%d" % os.getpid()
    b.obj_pin(fd, path)
    try:
        again = b.obj_get(path)
        fds.append(again)
        assert b.prog_info(again)["id"] == b.prog_info(fd)["id"]
        with pytest.raises(b.BpfError):
            b.obj_pin(fd, str(tmp_path / "not_bpffs"))
    finally:
        os.unlink(path)


def test_raw_tracepoint_link_info(fds):
    prog = b.prog_load(b.BPF_PROG_TYPE_RAW_TRACEPOINT, b.MOV64_IMM(0, 0) + b.EXIT(), prog_name="hm_t_raw")
    fds.append(prog)
    link = b.raw_tracepoint_open("sys_enter", prog)
    fds.append(link)
    info = b.link_info(link)
    assert info["type_name"] == "raw_tracepoint" and info["tp_name"] == "sys_enter"
    assert info["prog_id"] == b.prog_info(prog)["id"]
    assert info["id"] in list(b.iter_ids("link"))


def test_kernel_btf_readable(fds):
    for btf_id in b.iter_ids("btf"):
        fd = b.get_fd_by_id("btf", btf_id)
        fds.append(fd)
        if b.btf_info(fd)["name"] == "vmlinux":
            break
    else:
        pytest.fail("no vmlinux BTF object in the kernel")
    with open("/sys/kernel/btf/vmlinux", "rb") as f:
        assert b.btf_data(fd) == f.read()
