# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bpf(2) system call, through ctypes, without libbpf.

One job: turn Python values into `union bpf_attr` buffers, call bpf(), and turn the kernel's answers (fds,
info structs, map entries) back into Python values. Every offset below is the one in include/uapi/linux/bpf.h.
Attribute buffers are passed with the size of the fields we fill, so older kernels accept them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno as _errno
import os
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc

# ---- commands ---------------------------------------------------------------------------------------------
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_LOAD = 18
BPF_BTF_GET_FD_BY_ID = 19
BPF_TASK_FD_QUERY = 20
BPF_MAP_FREEZE = 22
BPF_BTF_GET_NEXT_ID = 23
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_ENABLE_STATS = 32
BPF_LINK_DETACH = 34

CMD_NAMES = dict((v, k) for k, v in list(globals().items()) if k.startswith("BPF_") and isinstance(v, int))

# ---- program types ----------------------------------------------------------------------------------------
PROG_TYPE_NAMES = {
    0: "unspec", 1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act", 5: "tracepoint", 6: "xdp",
    7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock", 10: "lwt_in", 11: "lwt_out", 12: "lwt_xmit",
    13: "sock_ops", 14: "sk_skb", 15: "cgroup_device", 16: "sk_msg", 17: "raw_tracepoint",
    18: "cgroup_sock_addr", 19: "lwt_seg6local", 20: "lirc_mode2", 21: "sk_reuseport", 22: "flow_dissector",
    23: "cgroup_sysctl", 24: "raw_tracepoint_writable", 25: "cgroup_sockopt", 26: "tracing", 27: "struct_ops",
    28: "ext", 29: "lsm", 30: "sk_lookup", 31: "syscall", 32: "netfilter",
}
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_XDP = 6
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_EXT = 28  # freplace: a program extension (5.6+), what libxdp's dispatcher runs
BPF_PROG_TYPE_LSM = 29

# ---- map types --------------------------------------------------------------------------------------------
MAP_TYPE_NAMES = {
    0: "unspec", 1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
    6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash", 10: "lru_percpu_hash",
    11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps", 14: "devmap", 15: "sockmap", 16: "cpumap",
    17: "xskmap", 18: "sockhash", 19: "cgroup_storage", 20: "reuseport_sockarray", 21: "percpu_cgroup_storage",
    22: "queue", 23: "stack", 24: "sk_storage", 25: "devmap_hash", 26: "struct_ops", 27: "ringbuf",
    28: "inode_storage", 29: "task_storage", 30: "bloom_filter", 31: "user_ringbuf", 32: "cgrp_storage",
    33: "arena",
}
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_RINGBUF = 27

# ---- attach types -----------------------------------------------------------------------------------------
ATTACH_TYPE_NAMES = {
    0: "cgroup_inet_ingress", 1: "cgroup_inet_egress", 2: "cgroup_inet_sock_create", 3: "cgroup_sock_ops",
    4: "sk_skb_stream_parser", 5: "sk_skb_stream_verdict", 6: "cgroup_device", 7: "sk_msg_verdict",
    8: "cgroup_inet4_bind", 9: "cgroup_inet6_bind", 10: "cgroup_inet4_connect", 11: "cgroup_inet6_connect",
    12: "cgroup_inet4_post_bind", 13: "cgroup_inet6_post_bind", 14: "cgroup_udp4_sendmsg",
    15: "cgroup_udp6_sendmsg", 16: "lirc_mode2", 17: "flow_dissector", 18: "cgroup_sysctl",
    19: "cgroup_udp4_recvmsg", 20: "cgroup_udp6_recvmsg", 21: "cgroup_getsockopt", 22: "cgroup_setsockopt",
    23: "trace_raw_tp", 24: "trace_fentry", 25: "trace_fexit", 26: "modify_return", 27: "lsm_mac",
    28: "trace_iter", 29: "cgroup_inet4_getpeername", 30: "cgroup_inet6_getpeername",
    31: "cgroup_inet4_getsockname", 32: "cgroup_inet6_getsockname", 33: "xdp_devmap",
    34: "cgroup_inet_sock_release", 35: "xdp_cpumap", 36: "sk_lookup", 37: "xdp", 38: "sk_skb_verdict",
    39: "sk_reuseport_select", 40: "sk_reuseport_select_or_migrate", 41: "perf_event", 42: "trace_kprobe_multi",
    43: "lsm_cgroup", 44: "struct_ops", 45: "netfilter", 46: "tcx_ingress", 47: "tcx_egress",
    48: "trace_uprobe_multi", 49: "cgroup_unix_connect",
}
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_SOCK_OPS = 3
BPF_CGROUP_DEVICE = 6
BPF_CGROUP_INET4_BIND = 8
BPF_CGROUP_INET6_BIND = 9
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_SYSCTL = 18
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25
BPF_LSM_MAC = 27
BPF_XDP = 37
BPF_PERF_EVENT = 41
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

# ---- link types -------------------------------------------------------------------------------------------
LINK_TYPE_NAMES = {
    0: "unspec", 1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp",
    7: "perf_event", 8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx", 12: "uprobe_multi",
    13: "netkit", 14: "sockmap",
}
BPF_LINK_TYPE_RAW_TRACEPOINT = 1
BPF_LINK_TYPE_TRACING = 2
BPF_LINK_TYPE_CGROUP = 3
BPF_LINK_TYPE_NETNS = 5
BPF_LINK_TYPE_XDP = 6
BPF_LINK_TYPE_PERF_EVENT = 7
BPF_LINK_TYPE_TCX = 11
# enum bpf_perf_event_type: what a perf_event link's info names (6.6+; 0 before)
BPF_PERF_EVENT_UPROBE = 1
BPF_PERF_EVENT_URETPROBE = 2

# ---- flags ------------------------------------------------------------------------------------------------
BPF_ANY = 0
BPF_F_RDONLY = 1 << 3
BPF_F_RDONLY_PROG = 1 << 7  # map_create: programs may only read it (.rodata, 5.2+)
BPF_PSEUDO_MAP_VALUE = 2  # ld_imm64 src_reg: the address of a map value (global data, 5.2+)
BPF_F_ALLOW_MULTI = 1 << 1  # prog_attach: one of several programs on the cgroup hook (4.15+)
BPF_F_REPLACE = 1 << 2
# multi-attach (tcx, 6.6+) positions for BPF_LINK_CREATE: before/after the relative (relative_fd or relative_id),
# or first/last with no relative; BPF_F_ID: the relative is an id, BPF_F_LINK: the relative is a link
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_ID = 1 << 5
BPF_F_LINK = 1 << 13
BPF_STATS_RUN_TIME = 0
ENOTSUPP = 524  # the kernel-internal "operation not supported" that bpf() lets through (no errno name)

_KINDS = {
    "prog": (BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID),
    "map": (BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_FD_BY_ID),
    "link": (BPF_LINK_GET_NEXT_ID, BPF_LINK_GET_FD_BY_ID),
    "btf": (BPF_BTF_GET_NEXT_ID, BPF_BTF_GET_FD_BY_ID),
}

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}


class BpfError(OSError):
    """A bpf() command failed. `.cmd` names it, `.log` carries the verifier's log when there is one."""

    def __init__(self, err, cmd, detail="", log=""):
        self.cmd = CMD_NAMES.get(cmd, str(cmd)) if isinstance(cmd, int) else cmd
        self.log = log or ""
        msg = "%s failed: %s" % (self.cmd, os.strerror(err))
        if detail:
            msg += " (%s)" % detail
        super(BpfError, self).__init__(err, msg)

    def __str__(self):
        return str(self.strerror)


def bpf(cmd, attr, size=None, detail=""):
    """Call bpf(cmd, attr, size). `attr` is a ctypes buffer. Returns the result (an fd for most commands)."""
    machine = os.uname().machine
    nr = _SYSCALL_NR.get(machine)
    if nr is None:
        raise BpfError(_errno.ENOSYS, cmd, "no bpf() syscall number known for %s" % machine)
    if size is None:
        size = ctypes.sizeof(attr)
    err = None
    try:
        return libc.syscall(nr, ctypes.c_int(cmd), attr, ctypes.c_uint(size))
    except OSError as e:
        err = e.errno
    raise BpfError(err, cmd, detail)


class _Attr(object):
    """A zeroed `union bpf_attr`-sized buffer plus the buffers its pointers refer to (kept alive here)."""

    def __init__(self, size=160):
        self.buf = ctypes.create_string_buffer(size)
        self.used = 0
        self._keep = []

    def u32(self, off, val):
        struct.pack_into("=I", self.buf, off, val & 0xffffffff)
        self.used = max(self.used, off + 4)

    def s32(self, off, val):
        struct.pack_into("=i", self.buf, off, val)
        self.used = max(self.used, off + 4)

    def u64(self, off, val):
        struct.pack_into("=Q", self.buf, off, val & 0xffffffffffffffff)
        self.used = max(self.used, off + 8)

    def ptr(self, off, data):
        """Store a pointer to `data` (bytes, a ctypes buffer, or None for NULL). Returns the buffer used."""
        if data is None:
            self.u64(off, 0)
            return None
        if isinstance(data, bytes):
            data = ctypes.create_string_buffer(data, len(data))
        self._keep.append(data)
        self.u64(off, ctypes.addressof(data))
        return data

    def name(self, off, text, length=16):
        raw = (text or "").encode()[:length - 1]
        struct.pack_into("=%ds" % length, self.buf, off, raw)
        self.used = max(self.used, off + length)

    def get_u32(self, off):
        return struct.unpack_from("=I", self.buf, off)[0]

    def call(self, cmd, detail=""):
        return bpf(cmd, self.buf, self.used, detail)


def close(fd):
    os.close(fd)


# ---- instructions (for tiny probe programs) ---------------------------------------------------------------
def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("=BBhi", code, (src << 4) | (dst & 0xf), off, imm)


def MOV64_IMM(dst, imm):
    return insn(0xb7, dst=dst, imm=imm)  # BPF_ALU64 | BPF_MOV | BPF_K


def EXIT():
    return insn(0x95)  # BPF_JMP | BPF_EXIT


def LD_MAP_VALUE(dst, map_fd, off):
    """dst = &value[0] of an array map + off (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_VALUE: two slots)."""
    return insn(0x18, dst=dst, src=BPF_PSEUDO_MAP_VALUE, imm=map_fd) + insn(0, imm=off)


def LDX_MEM_W(dst, src, off):
    return insn(0x61, dst=dst, src=src, off=off)  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)


# ---- programs ---------------------------------------------------------------------------------------------
def prog_load(prog_type, insns, license="GPL", expected_attach_type=0, attach_btf_id=0, attach_btf_obj_fd=0,
              prog_name="", log_level=0, prog_flags=0, kern_version=0, attach_prog_fd=0, prog_btf_fd=0,
              func_info=()):
    """Load a program; returns its fd. On failure retries once with a verifier log and raises BpfError(.log).
    prog_btf_fd and func_info ([(insn_off, BTF func type id)]): the program's BTF (freplace needs it, 5.6+)."""
    def attempt(level):
        a = _Attr()
        a.u32(0, prog_type)
        a.u32(4, len(insns) // 8)
        a.ptr(8, insns)
        a.ptr(16, license.encode() + b"\0")
        logbuf = None
        if level:
            logbuf = ctypes.create_string_buffer(1 << 20)
            a.u32(24, level)
            a.u32(28, len(logbuf))
            a.ptr(32, logbuf)
        a.u32(40, kern_version)
        a.u32(44, prog_flags)
        if prog_name:
            a.name(48, prog_name)
        if expected_attach_type:
            a.u32(68, expected_attach_type)
        if prog_btf_fd:
            a.u32(72, prog_btf_fd)
        if func_info:
            a.u32(76, 8)  # struct bpf_func_info: insn_off, type_id
            a.ptr(80, b"".join(struct.pack("=II", off, tid) for off, tid in func_info))
            a.u32(88, len(func_info))
        if attach_btf_id:
            a.u32(108, attach_btf_id)
        if attach_btf_obj_fd or attach_prog_fd:
            a.u32(112, attach_btf_obj_fd or attach_prog_fd)
        try:
            return a.call(BPF_PROG_LOAD, prog_name)
        except BpfError as e:
            if logbuf is not None:
                e.log = logbuf.value.decode("utf-8", "replace")
            raise

    try:
        return attempt(log_level)
    except BpfError as e:
        if log_level or e.errno not in (_errno.EACCES, _errno.EINVAL):
            raise
        try:
            return attempt(1)
        except BpfError as again:
            if not again.log:
                raise e
            raise


def btf_load(blob):
    """BPF_BTF_LOAD: a BTF blob (header, types, strings) into the kernel; returns its fd. The kernel's log is in
    BpfError.log when it refuses the blob."""
    logbuf = ctypes.create_string_buffer(1 << 16)
    a = _Attr()
    a.ptr(0, blob)
    a.ptr(8, logbuf)
    a.u32(16, len(blob))
    a.u32(20, len(logbuf))
    a.u32(24, 1)
    try:
        return a.call(BPF_BTF_LOAD)
    except BpfError as e:
        e.log = logbuf.value.decode("utf-8", "replace")
        raise


# ---- maps -------------------------------------------------------------------------------------------------
def map_create(map_type, key_size, value_size, max_entries, map_flags=0, name="", btf_fd=0, btf_key_type_id=0,
               btf_value_type_id=0):
    a = _Attr()
    a.u32(0, map_type)
    a.u32(4, key_size)
    a.u32(8, value_size)
    a.u32(12, max_entries)
    a.u32(16, map_flags)
    if name:
        a.name(28, name)
    if btf_fd:
        a.u32(48, btf_fd)
        a.u32(52, btf_key_type_id)
        a.u32(56, btf_value_type_id)
    return a.call(BPF_MAP_CREATE, name)


def cpu_count(cpu_list):
    """Number of CPUs in a kernel CPU list such as "0-3,8,10-11" (0 for an empty list)."""
    count = 0
    for part in (cpu_list or "").strip().split(","):
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            count += int(high) - int(low) + 1
        else:
            count += 1
    return count


def possible_cpus(path="/sys/devices/system/cpu/possible"):
    """Number of possible CPUs (per-CPU map values carry one slot per possible CPU)."""
    with open(path) as f:
        return cpu_count(f.read())


def _elem(cmd, fd, key, value=None, flags=0):
    a = _Attr()
    a.u32(0, fd)
    a.ptr(8, key)
    buf = a.ptr(16, value)
    a.u64(24, flags)
    a.call(cmd)
    return buf


def _elem_found(cmd, fd, key, out=None):
    """Run an element command; False when the kernel says the key is not there (ENOENT)."""
    try:
        _elem(cmd, fd, key, out)
    except BpfError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_lookup(fd, key, value_size):
    """The value stored under `key` (bytes), or None when there is none."""
    out = ctypes.create_string_buffer(value_size)
    return out.raw if _elem_found(BPF_MAP_LOOKUP_ELEM, fd, key, out) else None


def map_update(fd, key, value, flags=BPF_ANY):
    _elem(BPF_MAP_UPDATE_ELEM, fd, key, value, flags)


def map_delete(fd, key):
    """Delete `key`; False when it was not there."""
    return _elem_found(BPF_MAP_DELETE_ELEM, fd, key)


def map_next_key(fd, key, key_size):
    """The key after `key` (None: the first key); None at the end."""
    out = ctypes.create_string_buffer(key_size)
    return out.raw if _elem_found(BPF_MAP_GET_NEXT_KEY, fd, key, out) else None


def map_lookup_batch(fd, key_size, value_size, count, in_batch=None):
    """One BPF_MAP_LOOKUP_BATCH call of up to `count` entries. Returns (keys, values, got, out_batch, done):
    the `got` keys back to back and their values back to back (bytes: one copy of each buffer, however many
    entries), the token for the next call, and whether the kernel reached the end (ENOENT).

    `in_batch` is the token returned by the previous call (None for the first); the kernel writes at most
    max(key_size, 8) bytes of it (a hash map's bucket index, an array's next index)."""
    token = max(key_size, 8)
    keys = ctypes.create_string_buffer(key_size * count)
    values = ctypes.create_string_buffer(value_size * count)
    out_batch = ctypes.create_string_buffer(token)
    a = _Attr()
    a.ptr(0, None if in_batch is None else ctypes.create_string_buffer(in_batch, token))
    a.ptr(8, out_batch)
    a.ptr(16, keys)
    a.ptr(24, values)
    a.u32(32, count)
    a.u32(36, fd)
    a.u64(40, 0)
    a.u64(48, 0)
    done = False
    try:
        a.call(BPF_MAP_LOOKUP_BATCH)
    except BpfError as e:
        if e.errno != _errno.ENOENT:
            raise
        done = True
    got = a.get_u32(32)
    return keys.raw[:got * key_size], values.raw[:got * value_size], got, out_batch.raw, done


def map_update_batch(fd, keys, values, flags=BPF_ANY):
    """Write many entries in one call. Returns how many the kernel wrote (on error, raises after a partial write:
    BpfError carries `.count`)."""
    if not keys:
        return 0
    a = _Attr()
    a.ptr(16, b"".join(keys))
    a.ptr(24, b"".join(values))
    a.u32(32, len(keys))
    a.u32(36, fd)
    a.u64(40, flags)
    a.u64(48, 0)
    try:
        a.call(BPF_MAP_UPDATE_BATCH)
    except BpfError as e:
        e.count = a.get_u32(32)
        raise
    return a.get_u32(32)


def map_freeze(fd):
    a = _Attr()
    a.u32(0, fd)
    a.call(BPF_MAP_FREEZE)


# ---- pinning ----------------------------------------------------------------------------------------------
def obj_pin(fd, path):
    a = _Attr()
    a.ptr(0, path.encode() + b"\0")
    a.u32(8, fd)
    a.call(BPF_OBJ_PIN, path)


def obj_get(path, flags=0):
    a = _Attr()
    a.ptr(0, path.encode() + b"\0")
    a.u32(8, 0)
    a.u32(12, flags)
    return a.call(BPF_OBJ_GET, path)


# ---- ids --------------------------------------------------------------------------------------------------
def iter_ids(kind):
    """Yield every id of `kind` ("prog", "map", "link", "btf") the kernel holds now."""
    cmd = _KINDS[kind][0]
    start = 0
    while True:
        a = _Attr()
        a.u32(0, start)
        a.u32(4, 0)
        try:
            a.call(cmd)
        except BpfError as e:
            if e.errno == _errno.ENOENT:
                return
            raise
        start = a.get_u32(4)
        yield start


def get_fd_by_id(kind, obj_id):
    a = _Attr()
    a.u32(0, obj_id)
    a.u32(4, 0)
    a.u32(8, 0)
    return a.call(_KINDS[kind][1], "%s id %d" % (kind, obj_id))


def _info(fd, size, fill=None):
    """OBJ_GET_INFO_BY_FD into a `size`-byte zeroed struct; `fill(buf)` may set pointer fields first."""
    info = ctypes.create_string_buffer(size)
    if fill:
        fill(info)
    a = _Attr()
    a.u32(0, fd)
    a.u32(4, size)
    a.ptr(8, info)
    a.call(BPF_OBJ_GET_INFO_BY_FD)
    return info.raw


def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


_PROG_INFO_SIZE = 232


def prog_info(fd):
    first = _info(fd, _PROG_INFO_SIZE)
    nr_maps = struct.unpack_from("=I", first, 52)[0]
    map_ids = []
    if nr_maps:
        ids = ctypes.create_string_buffer(4 * nr_maps)

        def fill(buf):
            struct.pack_into("=IQ", buf, 52, nr_maps, ctypes.addressof(ids))
        raw = _info(fd, _PROG_INFO_SIZE, fill)
        got = min(nr_maps, struct.unpack_from("=I", raw, 52)[0])
        map_ids = list(struct.unpack_from("=%dI" % got, ids.raw, 0))
    else:
        raw = first
    ptype, pid = struct.unpack_from("=II", raw, 0)
    jited, xlated = struct.unpack_from("=II", raw, 16)
    return {
        "id": pid,
        "type": ptype,
        "type_name": PROG_TYPE_NAMES.get(ptype, str(ptype)),
        "tag": raw[8:16].hex(),
        "jited_len": jited,
        "xlated_len": xlated,
        "load_time": struct.unpack_from("=Q", raw, 40)[0],
        "uid": struct.unpack_from("=I", raw, 48)[0],
        "map_ids": map_ids,
        "name": _cstr(raw[64:80]),
        "ifindex": struct.unpack_from("=I", raw, 80)[0],
        "btf_id": struct.unpack_from("=I", raw, 128)[0],
        "run_time_ns": struct.unpack_from("=Q", raw, 192)[0],
        "run_cnt": struct.unpack_from("=Q", raw, 200)[0],
        "recursion_misses": struct.unpack_from("=Q", raw, 208)[0],
        "verified_insns": struct.unpack_from("=I", raw, 216)[0],
        "attach_btf_obj_id": struct.unpack_from("=I", raw, 220)[0],
        "attach_btf_id": struct.unpack_from("=I", raw, 224)[0],
    }


def map_info(fd):
    raw = _info(fd, 88)
    mtype, mid, ksize, vsize, maxent, flags = struct.unpack_from("=6I", raw, 0)
    return {
        "id": mid,
        "type": mtype,
        "type_name": MAP_TYPE_NAMES.get(mtype, str(mtype)),
        "key_size": ksize,
        "value_size": vsize,
        "max_entries": maxent,
        "map_flags": flags,
        "name": _cstr(raw[24:40]),
        "ifindex": struct.unpack_from("=I", raw, 40)[0],
        "btf_id": struct.unpack_from("=I", raw, 64)[0],
        "btf_key_type_id": struct.unpack_from("=I", raw, 68)[0],
        "btf_value_type_id": struct.unpack_from("=I", raw, 72)[0],
    }


def _link_string(fd, name_ptr_off, len_off, size=256):
    name = ctypes.create_string_buffer(size)

    def fill(buf):
        struct.pack_into("=Q", buf, name_ptr_off, ctypes.addressof(name))
        struct.pack_into("=I", buf, len_off, size)
    return _info(fd, 64, fill), _cstr(name.raw)


def link_info(fd):
    raw = _info(fd, 64)
    ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
    out = {"id": lid, "type": ltype, "type_name": LINK_TYPE_NAMES.get(ltype, str(ltype)), "prog_id": prog_id}
    if ltype == BPF_LINK_TYPE_RAW_TRACEPOINT:
        raw, out["tp_name"] = _link_string(fd, 16, 24)
    elif ltype == BPF_LINK_TYPE_TRACING:
        at, obj, btf_id = struct.unpack_from("=III", raw, 16)
        out.update(attach_type=at, attach_type_name=ATTACH_TYPE_NAMES.get(at, str(at)),
                   target_obj_id=obj, target_btf_id=btf_id)
    elif ltype == BPF_LINK_TYPE_CGROUP:
        cg, at = struct.unpack_from("=QI", raw, 16)
        out.update(cgroup_id=cg, attach_type=at, attach_type_name=ATTACH_TYPE_NAMES.get(at, str(at)))
    elif ltype == BPF_LINK_TYPE_NETNS:
        ino, at = struct.unpack_from("=II", raw, 16)
        out.update(netns_ino=ino, attach_type=at, attach_type_name=ATTACH_TYPE_NAMES.get(at, str(at)))
    elif ltype == BPF_LINK_TYPE_XDP:
        out["ifindex"] = struct.unpack_from("=I", raw, 16)[0]
    elif ltype == BPF_LINK_TYPE_TCX:
        ifindex, at = struct.unpack_from("=II", raw, 16)
        out.update(ifindex=ifindex, attach_type=at, attach_type_name=ATTACH_TYPE_NAMES.get(at, str(at)))
    elif ltype == BPF_LINK_TYPE_PERF_EVENT:
        out["perf_event_type"] = struct.unpack_from("=I", raw, 16)[0]
        if out["perf_event_type"] in (BPF_PERF_EVENT_UPROBE, BPF_PERF_EVENT_URETPROBE):
            # perf_event.uprobe: file_name (pointer), name_len, offset; asked only of kernels that named the type
            raw, out["uprobe_path"] = _link_string(fd, 24, 32, size=4096)
            out["uprobe_offset"] = struct.unpack_from("=I", raw, 36)[0]
    return out


# struct bpf_btf_info: btf, btf_size, id (4.18); name, name_len, kernel_btf (5.11). A kernel refuses (E2BIG) a
# struct longer than its own whose extra bytes are not zero, so the 5.11 fields are asked for only where known.
_BTF_INFO_BASE = 16
_BTF_INFO_SIZE = 32


def btf_info(fd):
    """{"id", "size", "name", "kernel_btf"} of a BTF object; name "" and kernel_btf False before 5.11."""
    name = ctypes.create_string_buffer(64)

    def fill(buf):
        struct.pack_into("=Q", buf, 16, ctypes.addressof(name))
        struct.pack_into("=I", buf, 24, len(name))
    try:
        raw = _info(fd, _BTF_INFO_SIZE, fill)
    except OSError as e:
        if e.errno != _errno.E2BIG:
            raise
        raw = _info(fd, _BTF_INFO_BASE) + b"\0" * (_BTF_INFO_SIZE - _BTF_INFO_BASE)
    size, bid = struct.unpack_from("=II", raw, 8)
    return {"id": bid, "size": size, "name": _cstr(name.raw), "kernel_btf": bool(struct.unpack_from("=I", raw, 28)[0])}


def btf_data(fd):
    """The raw BTF blob (header, types, strings) of a loaded BTF object (the fields every kernel has)."""
    size = struct.unpack_from("=I", _info(fd, _BTF_INFO_BASE), 8)[0]
    data = ctypes.create_string_buffer(size)

    def fill(buf):
        struct.pack_into("=QI", buf, 0, ctypes.addressof(data), size)
    _info(fd, _BTF_INFO_BASE, fill)
    return data.raw


# ---- links and attachment ---------------------------------------------------------------------------------
def link_create(prog_fd, target, attach_type, flags=0, target_btf_id=0, relative_fd=0, relative_id=0,
                expected_revision=0):
    """BPF_LINK_CREATE: `target` is an fd (cgroup, perf event) or an ifindex (tcx, xdp). Returns the link fd."""
    a = _Attr()
    a.u32(0, prog_fd)
    a.u32(4, target)
    a.u32(8, attach_type)
    a.u32(12, flags)
    if target_btf_id:
        a.u32(16, target_btf_id)
    if relative_fd or relative_id:
        a.u32(16, relative_fd or relative_id)
    if expected_revision:
        a.u64(24, expected_revision)
    return a.call(BPF_LINK_CREATE, ATTACH_TYPE_NAMES.get(attach_type, str(attach_type)))


def link_update(link_fd, new_prog_fd, old_prog_fd=0):
    """Swap the program behind a link atomically (when old_prog_fd is given, only if it still runs that one)."""
    a = _Attr()
    a.u32(0, link_fd)
    a.u32(4, new_prog_fd)
    a.u32(8, BPF_F_REPLACE if old_prog_fd else 0)
    a.u32(12, old_prog_fd)
    a.call(BPF_LINK_UPDATE)


def link_detach(link_fd):
    a = _Attr()
    a.u32(0, link_fd)
    a.call(BPF_LINK_DETACH)


def raw_tracepoint_open(tp_name, prog_fd):
    """Attach a raw tracepoint program (tp_name) or a tracing/LSM program (tp_name None); returns the link fd."""
    a = _Attr()
    a.ptr(0, tp_name.encode() + b"\0" if tp_name else None)
    a.u32(8, prog_fd)
    a.used = max(a.used, 16)
    return a.call(BPF_RAW_TRACEPOINT_OPEN, tp_name or "")


FD_TYPE_NAMES = {0: "raw_tracepoint", 1: "tracepoint", 2: "kprobe", 3: "kretprobe", 4: "uprobe", 5: "uretprobe"}


def task_fd_query(pid, fd):
    """BPF_TASK_FD_QUERY (4.15+): what the program behind descriptor `fd` of process `pid` is attached to (a perf
    event or a raw tracepoint): {"prog_id", "fd_type" (FD_TYPE_NAMES' name), "name" (the tracepoint, kprobe
    function or uprobe binary), "probe_offset", "probe_addr"}. An fd without a bpf program: BpfError."""
    name = ctypes.create_string_buffer(256)
    a = _Attr()
    a.u32(0, pid)
    a.u32(4, fd)
    a.u32(12, len(name))
    a.ptr(16, name)
    a.u64(40, 0)
    a.call(BPF_TASK_FD_QUERY, "pid %d fd %d" % (pid, fd))
    fd_type = a.get_u32(28)
    return {"prog_id": a.get_u32(24), "fd_type": FD_TYPE_NAMES.get(fd_type, str(fd_type)),
            "name": name.value.decode("utf-8", "replace"), "probe_offset": struct.unpack_from("=Q", a.buf, 32)[0],
            "probe_addr": struct.unpack_from("=Q", a.buf, 40)[0]}


def prog_attach(target_fd, prog_fd, attach_type, flags=0, replace_prog_fd=0):
    a = _Attr()
    a.u32(0, target_fd)
    a.u32(4, prog_fd)
    a.u32(8, attach_type)
    a.u32(12, flags)
    if replace_prog_fd:
        a.u32(16, replace_prog_fd)
    a.call(BPF_PROG_ATTACH)


def prog_detach(target_fd, attach_type, prog_fd=0):
    a = _Attr()
    a.u32(0, target_fd)
    a.u32(4, prog_fd)
    a.u32(8, attach_type)
    a.call(BPF_PROG_DETACH)


def prog_query(target, attach_type, max_progs=64):
    """Program ids attached at `target` (cgroup fd, or ifindex for tcx) for `attach_type`."""
    ids = ctypes.create_string_buffer(4 * max_progs)
    a = _Attr()
    a.u32(0, target)
    a.u32(4, attach_type)
    a.u32(8, 0)
    a.ptr(16, ids)
    a.u32(24, max_progs)
    a.call(BPF_PROG_QUERY)
    cnt = min(a.get_u32(24), max_progs)
    return list(struct.unpack_from("=%dI" % cnt, ids.raw, 0))


def enable_stats(stats_type=BPF_STATS_RUN_TIME):
    """Turn on run-time stats for every program while the returned fd stays open (kernel 5.8+)."""
    a = _Attr()
    a.u32(0, stats_type)
    return a.call(BPF_ENABLE_STATS)
