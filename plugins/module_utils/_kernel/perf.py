# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""perf_event_open(2) through ctypes: the perf events that tracepoint, kprobe and uprobe programs attach to.

One job: open a perf event fd for a tracepoint ("category/name", id from tracefs), a kprobe/kretprobe (the
kprobe PMU, /sys/bus/event_source/devices/kprobe) or a uprobe/uretprobe (the uprobe PMU, layout.UPROBE_PMU: a
binary's path and a file offset, optionally one process). The caller turns it into a bpf link with
link_create(prog_fd, perf_fd, BPF_PERF_EVENT) and pins that link, so the attachment outlives the process; on a
kernel without perf links, the holder (holder.py) runs the program through the event with set_bpf() and keeps
the event open.
Importable without ansible.
"""
import ctypes
import errno as errno_mod
import fcntl
import os
import platform
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc

_NR = {"x86_64": 298, "aarch64": 241, "armv7l": 364, "ppc64le": 319, "s390x": 331, "riscv64": 241}
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
_ATTR_SIZE = 72  # PERF_ATTR_SIZE_VER1: has config1/config2 (kprobe function name or uprobe path, and offset)
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"


class PerfError(OSError):
    pass


def tracefs_dir():
    """The mounted tracefs (events/ present), or None."""
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


def tracepoint_id(category_name):
    """The id of tracepoint "category/name" from tracefs; PerfError with a clear message when it is missing."""
    if category_name.count("/") != 1 or ".." in category_name:
        raise PerfError(errno_mod.EINVAL, "tracepoint must be 'category/name', got %r" % category_name)
    base = tracefs_dir()
    if base is None:
        raise PerfError(errno_mod.ENOENT, "tracefs is not mounted (looked for %s); mount it with "
                        "'mount -t tracefs tracefs /sys/kernel/tracing'" % " and ".join(TRACEFS_DIRS))
    path = os.path.join(base, "events", category_name, "id")
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (IOError, OSError):
        raise PerfError(errno_mod.ENOENT, "tracepoint %s does not exist on this kernel (no %s)"
                        % (category_name, path))


def _perf_event_open(attr, pid=-1):
    """pid -1: every process (the event on cpu 0; a bpf program attached through it runs on every CPU); a pid:
    that process only, on any CPU."""
    nr = _NR.get(platform.machine())
    if nr is None:
        raise PerfError(errno_mod.ENOSYS, "no perf_event_open syscall number known for %s" % platform.machine())
    buf = ctypes.create_string_buffer(attr, len(attr))
    err = None
    try:
        return libc.syscall(nr, buf, ctypes.c_int(pid), ctypes.c_int(0 if pid < 0 else -1), ctypes.c_int(-1),
                            ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    except OSError as exc:
        err = exc.errno
    raise PerfError(err, "perf_event_open failed: %s" % os.strerror(err))


def _attr(ptype, config, config1=0, config2=0):
    # type, size, config, sample_period, sample_type, read_format, flags, wakeup_events, bp_type, config1, config2
    return struct.pack("=IIQQQQQIIQQ", ptype, _ATTR_SIZE, config, 1, 0, 0, 0, 1, 0, config1, config2)


def open_tracepoint(category_name):
    """A perf event fd on tracepoint "category/name" (all CPUs through the bpf link, pid -1 cpu 0)."""
    return _perf_event_open(_attr(PERF_TYPE_TRACEPOINT, tracepoint_id(category_name)))


def open_kprobe(function, retprobe=False, offset=0):
    """A perf event fd on a kprobe (or kretprobe) at `function`, through the kprobe PMU."""
    try:
        with open(os.path.join(KPROBE_PMU, "type")) as f:
            ptype = int(f.read())
    except (IOError, OSError):
        raise PerfError(errno_mod.ENOENT, "the kprobe perf PMU is missing (%s): kernel without kprobes"
                        % KPROBE_PMU)
    config = 0
    if retprobe:
        with open(os.path.join(KPROBE_PMU, "format", "retprobe")) as f:
            bit = int(f.read().strip().split(":")[1])  # "config:0"
        config |= 1 << bit
    name = ctypes.create_string_buffer(function.encode())
    return _perf_event_open(_attr(ptype, config, ctypes.addressof(name), offset))


def _pmu_type(pmu):
    with open(os.path.join(pmu, "type")) as f:
        return int(f.read())


def _retprobe_bit(pmu):
    with open(os.path.join(pmu, "format", "retprobe")) as f:
        return int(f.read().strip().split(":")[1])  # "config:0"


def open_uprobe(path, offset, retprobe=False, pid=-1):
    """A perf event fd on a uprobe (or uretprobe) at file offset `offset` of binary `path` (absolute; the kernel
    resolves it and holds the inode), through the uprobe PMU; pid -1 for every process, else only that one."""
    try:
        ptype = _pmu_type(layout.UPROBE_PMU)
        config = (1 << _retprobe_bit(layout.UPROBE_PMU)) if retprobe else 0
    except (IOError, OSError, ValueError, IndexError):
        raise PerfError(errno_mod.ENOENT, "the uprobe perf PMU is missing or unreadable (%s): kernel without "
                        "CONFIG_UPROBE_EVENTS" % layout.UPROBE_PMU)
    name = ctypes.create_string_buffer(path.encode("utf-8", "surrogateescape"))  # alive until the call returned
    try:
        return _perf_event_open(_attr(ptype, config, ctypes.addressof(name), offset), pid)
    except PerfError as e:
        kind = "uretprobe" if retprobe else "uprobe"
        where = "%s at offset 0x%x of %s%s" % (kind, offset, path, " for pid %d" % pid if pid >= 0 else "")
        hint = {errno_mod.ESRCH: ": no such process", errno_mod.ENOENT: ": no such file",
                errno_mod.EINVAL: ": the kernel refused the offset or the file"}.get(e.errno, "")
        raise PerfError(e.errno, "cannot create the %s%s (%s)" % (where, hint, e))


def set_bpf(perf_fd, prog_fd):
    """Run program prog_fd on every hit of perf event perf_fd and enable the event (PERF_EVENT_IOC_SET_BPF, 4.7+;
    what a perf link does since 5.15). The attachment lasts as long as the event's descriptor is open."""
    for request, arg in ((PERF_EVENT_IOC_SET_BPF, prog_fd), (PERF_EVENT_IOC_ENABLE, 0)):
        try:
            fcntl.ioctl(perf_fd, request, arg)
        except (IOError, OSError) as e:
            what = "PERF_EVENT_IOC_SET_BPF" if request == PERF_EVENT_IOC_SET_BPF else "PERF_EVENT_IOC_ENABLE"
            raise PerfError(e.errno, "%s failed: %s" % (what, os.strerror(e.errno)))
