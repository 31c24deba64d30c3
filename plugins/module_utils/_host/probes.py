# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Feature probes on the running kernel: a feature is supported when it works here, not when a version says so.

Each probe first checks what needs no privilege (config, attach points under /sys, the active LSM list), then
asks the kernel: it loads a minimal program (r0 = 0; exit) of the right type, creates a map, or issues the
command with arguments chosen so the answer tells the feature apart from its absence. Every fd a probe opens
is closed before it returns; attaching probes (raw_tracepoint, fentry) detach by closing their link at once,
so a probe leaves nothing behind.

    probe(feature)          -> {"supported": bool, "probed": bool, "reason": str, "min_kernel": "X.Y"}
                               (+ "message": the refusal text, when not supported)
    probe_all(features=None) -> {feature: probe(feature)}
    require(feature, release=None)  raises Unsupported(refusal message) unless the feature is supported

`probed` is False when the kernel could not be asked (no CAP_BPF/CAP_SYS_ADMIN, an unreadable attach point);
`supported` is then False and `reason` says what could not be probed and why.

Discriminators used where a feature is not a program type (documented here because they are the contract):
- tcx: BPF_PROG_QUERY with BPF_TCX_INGRESS on ifindex 1 (lo) succeeds from 6.6; older kernels answer EINVAL
  for the unknown attach type.
- bpf_link: BPF_LINK_CREATE with prog_fd -1. Kernels with the command (5.7+) look the program up first and
  answer EBADF; older kernels answer EINVAL for the unknown command.
- holder: the host runs systemd, and a perf event on a tracepoint takes a minimal program (PERF_EVENT_IOC_SET_BPF),
  closed at once: what the holder does for attachments the kernel cannot pin (no perf links, or no bpf_link).
- xdp_multiprog (several XDP programs on one interface through libxdp's dispatcher): libxdp 1.3+ loads
  (_kernel/libxdp.py), bpffs is mounted at /sys/fs/bpf (libxdp pins its dispatchers there; without it libxdp falls
  back to one program per interface), and what libxdp does with each program works here: a minimal xdp program
  with BTF (one global function) loads, a minimal program extension (BPF_PROG_TYPE_EXT, freplace) of that function
  loads and attaches (BPF_RAW_TRACEPOINT_OPEN), and the same extension attaches to a second such program too
  (BPF_LINK_CREATE with a target BTF id, 5.10+: libxdp moves the programs already there to each new dispatcher).
  Nothing is attached to an interface; every fd is closed at once. libxdp can still fall back at attach time (a
  bpffs that fails it), so the attach checks what it got as well (_program/xdp_dispatcher.py).
- perf_link: BPF_LINK_CREATE of a loaded tracepoint program with attach type BPF_PERF_EVENT and a target fd
  that is not a perf event (the program's own fd). 5.15+ looks the perf event up and answers EBADF; before
  5.15 the attach type is unknown for link_create and the answer is EINVAL. Nothing can get attached.

Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bpf, version_code
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import kernel_info
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host.requirements import FEATURES, REQUIREMENTS, refusal

# The attach points the collection's programs use (examples/*.bpf.c).
TRACEPOINT = "syscalls/sys_enter_openat"
RAW_TRACEPOINT = "sys_enter"
LSM_HOOK = "bpf_lsm_file_open"
# fentry target: bpf_fentry_test1 exists for exactly this (only BPF_PROG_TEST_RUN calls it), so attaching to it
# briefly changes nothing; the others are only loaded against, never attached.
FENTRY_TARGETS = ("bpf_fentry_test1", "do_unlinkat", "vfs_read")
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


class Unsupported(Exception):
    """A feature the caller needs is not supported on this host; str() is the refusal message."""

    def __init__(self, feature, reason, message):
        super(Unsupported, self).__init__(message)
        self.feature = feature
        self.reason = reason
        self.message = message


def _result(feature, supported, reason, probed=True):
    return {"supported": bool(supported), "probed": bool(probed), "reason": reason,
            "min_kernel": REQUIREMENTS[feature]["min_kernel"]}


class _NotProbed(Exception):
    """Raised inside a probe when the kernel could not be asked; the message is the reason."""


class _No(Exception):
    """Raised inside a probe when the feature is definitely missing; the message is the reason."""


# ---------------------------------------------------------------- host state shared by the probes

class _Host(object):
    """What several probes need, read once: config, mounts, capabilities, LSMs, vmlinux BTF."""

    def __init__(self, root="/", allow_private_mount=True):
        self.root = root
        self.allow_private_mount = allow_private_mount
        self._cache = {}

    def _get(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def release(self):
        return self._get("release", lambda: kernel_info.release(self.root))

    @property
    def version(self):
        return self._get("version", lambda: kernel_info.parse_release(self.release))

    @property
    def version_code(self):
        """The running kernel's LINUX_VERSION_CODE (its vDSO), on the real root only (None elsewhere)."""
        return self._get("version_code", lambda: version_code.linux_version_code() if self.root == "/" else None)

    @property
    def config(self):
        return self._get("config", lambda: kernel_info.kernel_config(self.release, self.root))

    def config_off(self, option):
        """True when the config is readable and `option` is not set; False when set or config unreadable."""
        return self.config["source"] is not None and self.config["options"].get(option, "n") == "n"

    @property
    def mounts(self):
        return self._get("mounts", lambda: kernel_info.mount_points(self.root))

    @property
    def caps(self):
        return self._get("caps", lambda: kernel_info.capabilities(self.root))

    @property
    def lockdown(self):
        return self._get("lockdown", lambda: kernel_info.lockdown(self.root, self.caps, self.allow_private_mount))

    @property
    def lsms(self):
        return self._get("lsms", lambda: kernel_info.active_lsms(self.root, self.caps, self.allow_private_mount))

    @property
    def btf(self):
        """The parsed vmlinux BTF, or raises _No."""
        def load():
            from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf
            path = os.path.join(self.root, VMLINUX_BTF.lstrip("/"))
            try:
                return btf.Btf.from_file(path)
            except (IOError, OSError) as exc:
                return _No("no kernel BTF at %s (%s): the kernel was built without CONFIG_DEBUG_INFO_BTF"
                           % (VMLINUX_BTF, exc.strerror))
            except ValueError as exc:
                return _No("cannot parse %s: %s" % (VMLINUX_BTF, exc))
        value = self._get("btf", load)
        if isinstance(value, Exception):
            raise value
        return value

    def tracefs_file(self, rel):
        """True/False: does tracefs have `rel` (e.g. "events/syscalls/sys_enter_openat/id")? Raises _NotProbed.

        Looks under a mounted tracefs (or debugfs' tracing/); when none is mounted, mounts tracefs in a private
        mount namespace for the look (needs CAP_SYS_ADMIN), leaving the host's mounts as they were.
        """
        bases = list(self.mounts.get("tracefs", []))
        bases += [os.path.join(m, "tracing") for m in self.mounts.get("debugfs", [])]
        for base in bases:
            if os.path.isdir(os.path.join(self.root, base.lstrip("/"))):
                try:
                    os.stat(os.path.join(self.root, base.lstrip("/"), rel))
                    return True
                except OSError as exc:
                    if exc.errno in (errno.EACCES, errno.EPERM):
                        raise _NotProbed("cannot look into tracefs at %s (%s)" % (base, exc.strerror))
                    return False
        if self.root != "/" or not self.allow_private_mount:
            raise _NotProbed("tracefs is not mounted (and mounting it to look was not allowed)")
        if not self.caps.get("cap_sys_admin"):
            raise _NotProbed("tracefs is not mounted and mounting it to look needs CAP_SYS_ADMIN")
        key = "tracefs:" + rel
        if key not in self._cache:
            try:
                kernel_info.read_in_private_mount("tracefs", "/sys/kernel/tracing", rel)
                self._cache[key] = True
            except OSError as exc:
                if "No such file" in (exc.strerror or ""):
                    self._cache[key] = False
                else:
                    self._cache[key] = _NotProbed("cannot mount tracefs to look: %s" % exc.strerror)
        if isinstance(self._cache[key], Exception):
            raise self._cache[key]
        return self._cache[key]


# ---------------------------------------------------------------- kernel calls that never leak an fd

_TINY = bpf.MOV64_IMM(0, 0) + bpf.EXIT()


def _missing_caps(host, extra):
    """Capabilities this process lacks for a bpf() call needing CAP_BPF plus `extra` (CAP_SYS_ADMIN covers all)."""
    caps = host.caps
    if caps.get("cap_sys_admin"):
        return []
    if "cap_sys_admin" in extra:
        return ["CAP_SYS_ADMIN"]
    missing = [] if caps.get("cap_bpf") else ["CAP_BPF"]
    return missing + [name.upper() for name in extra if not caps.get(name)]


def _explain(exc, what, host, extra=()):
    """A reason for a failed bpf() call; raises _NotProbed when this process lacks a capability the call needs."""
    if exc.errno == errno.EPERM or (exc.errno == errno.EACCES and not exc.log):
        missing = _missing_caps(host, extra)
        code = errno.errorcode.get(exc.errno, exc.errno)
        if missing == ["CAP_SYS_ADMIN"]:
            raise _NotProbed("needs CAP_SYS_ADMIN (%s)" % code)
        if missing:
            raise _NotProbed("needs %s, or CAP_SYS_ADMIN (%s)" % (" and ".join(missing), code))
        held = ", ".join(["CAP_BPF"] + [name.upper() for name in extra if name != "cap_sys_admin"] +
                         ["CAP_SYS_ADMIN"])
        lockdown = host.lockdown
        return "%s: EPERM although this process has %s, so a kernel policy forbids it%s" % (
            what, held, " (kernel lockdown mode: %s)" % lockdown if lockdown not in (None, "none") else "")
    if exc.errno == errno.ENOSYS:
        return "the kernel has no bpf() system call (CONFIG_BPF_SYSCALL is off)"
    name = "ENOTSUPP" if exc.errno == bpf.ENOTSUPP else errno.errorcode.get(exc.errno, str(exc.errno))
    text = "%s: %s" % (what, name)
    if exc.errno == errno.EINVAL:
        text += " (unknown to this kernel or rejected)"
    elif exc.errno == errno.E2BIG:
        text += " (the kernel does not know the newer bpf_attr fields)"
    log = (getattr(exc, "log", "") or "").strip().splitlines()
    if log:
        text += "; verifier: %s" % log[-1]
    return text


class _Fds(object):
    """Collects fds and closes them all on exit."""

    def __init__(self):
        self.fds = []

    def add(self, fd):
        self.fds.append(fd)
        return fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        while self.fds:
            try:
                bpf.close(self.fds.pop())
            except OSError:
                pass
        return False


_NET = ("cap_net_admin",)
_TRACE = ("cap_perfmon",)


def _load(host, fds, prog_type, what, extra, **kwargs):
    """Load the tiny program; returns its fd (kept in `fds`) or raises _No/_NotProbed."""
    try:
        return fds.add(bpf.prog_load(prog_type, _TINY, prog_name="hm_probe", **kwargs))
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "a minimal %s program does not load" % what, host, extra))


def _kern_version(host):
    """LINUX_VERSION_CODE, which kprobe programs had to carry before 5.0: the kernel's own (its vDSO's note, on
    the host this process runs on), else computed from the release."""
    return host.version_code or _release_code(host.version)


def _release_code(version):
    return (version[0] << 16) + (version[1] << 8) + min(version[2], 255)


def _kprobe_loadable(host, fds, what):
    """Load the tiny kprobe-type program with the kernel's LINUX_VERSION_CODE, as the loader gives the real
    programs theirs (libbpf.BpfObject: before 5.0 the kernel checks it)."""
    _load(host, fds, bpf.BPF_PROG_TYPE_KPROBE, what, _TRACE, kern_version=_kern_version(host))


# ---------------------------------------------------------------- the probes

def _probe_xdp(host, fds):
    _load(host, fds, bpf.BPF_PROG_TYPE_XDP, "xdp", _NET)
    return "a minimal xdp program loads; generic mode works on every interface, native mode depends on the " \
           "driver (hardware.interfaces.*.xdp_modes)"


def _probe_tc(host, fds):
    for option, what in (("CONFIG_NET_CLS_BPF", "cls_bpf"), ("CONFIG_NET_SCH_INGRESS", "the clsact qdisc")):
        if host.config_off(option):
            raise _No("the kernel was built without %s (%s is not set)" % (what, option))
    _load(host, fds, bpf.BPF_PROG_TYPE_SCHED_CLS, "sched_cls", _NET)
    if host.config["source"] is None:
        return "a minimal sched_cls program loads (cls_bpf/clsact not verified: kernel config %s)" \
               % host.config["reason"]
    return "a minimal sched_cls program loads; cls_bpf and clsact are built (%s)" % host.config["source"]


def _probe_tcx(host, fds):
    try:
        bpf.prog_query(1, bpf.BPF_TCX_INGRESS)
    except bpf.BpfError as exc:
        if exc.errno == errno.EINVAL:
            raise _No("the kernel does not know the tcx attach types (BPF_PROG_QUERY with BPF_TCX_INGRESS on lo "
                      "answers EINVAL)")
        raise _No(_explain(exc, "BPF_PROG_QUERY with BPF_TCX_INGRESS on lo", host, _NET))
    return "BPF_PROG_QUERY with BPF_TCX_INGRESS on lo succeeds"


def _probe_tracepoint(host, fds):
    if not os.path.isdir(os.path.join(host.root, "sys/bus/event_source/devices/tracepoint")):
        raise _No("no tracepoint perf PMU (/sys/bus/event_source/devices/tracepoint): CONFIG_TRACEPOINTS is off")
    if not host.tracefs_file("events/%s/id" % TRACEPOINT):
        hint = " (CONFIG_FTRACE_SYSCALLS is off)" if TRACEPOINT.startswith("syscalls/") and \
            host.config_off("CONFIG_FTRACE_SYSCALLS") else ""
        raise _No("the tracepoint %s the collection uses is not in tracefs events/%s" % (TRACEPOINT, hint))
    _load(host, fds, bpf.BPF_PROG_TYPE_TRACEPOINT, "tracepoint", _TRACE)
    return "a minimal tracepoint program loads and tracefs has events/%s" % TRACEPOINT


def _probe_raw_tracepoint(host, fds):
    prog = _load(host, fds, bpf.BPF_PROG_TYPE_RAW_TRACEPOINT, "raw_tracepoint", _TRACE)
    try:
        fds.add(bpf.raw_tracepoint_open(RAW_TRACEPOINT, prog))
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "attaching to the raw tracepoint %s" % RAW_TRACEPOINT, host, _TRACE))
    return "a minimal raw_tracepoint program loads and attaches to %s (detached at once)" % RAW_TRACEPOINT


def _probe_kprobe(host, fds):
    pmu = os.path.isdir(os.path.join(host.root, "sys/bus/event_source/devices/kprobe"))
    events = False
    if not pmu:
        if host.config_off("CONFIG_KPROBES"):
            raise _No("the kernel was built without kprobes (CONFIG_KPROBES is not set): no kprobe perf PMU and "
                      "no tracefs kprobe_events")
        try:
            events = host.tracefs_file("kprobe_events")
        except _NotProbed:
            events = None
        if events is False:
            raise _No("the kernel was built without kprobes (CONFIG_KPROBES off): no kprobe perf PMU at "
                      "/sys/bus/event_source/devices/kprobe and no kprobe_events in tracefs")
        if events is None:
            raise _NotProbed("no kprobe perf PMU at /sys/bus/event_source/devices/kprobe, and tracefs' "
                             "kprobe_events could not be checked (tracefs not mounted, no CAP_SYS_ADMIN)")
    _kprobe_loadable(host, fds, "kprobe")
    return "a minimal kprobe program loads and kprobes can be created (%s)" % (
        "kprobe perf PMU" if pmu else "tracefs kprobe_events")


def _probe_uprobe(host, fds):
    if host.config_off("CONFIG_UPROBE_EVENTS"):
        raise _No("the kernel was built without uprobe events (CONFIG_UPROBE_EVENTS is not set): no uprobe perf PMU")
    if not os.path.isfile(os.path.join(host.root, layout.UPROBE_PMU.lstrip("/"), "type")):
        raise _No("no uprobe perf PMU at %s (CONFIG_UPROBE_EVENTS off, or a kernel before 4.17)" % layout.UPROBE_PMU)
    _kprobe_loadable(host, fds, "kprobe")
    return "a minimal kprobe-type program loads and the uprobe perf PMU is present (%s)" % layout.UPROBE_PMU


def _btf_func(host, names):
    btf = host.btf
    for name in names:
        type_id = btf.find(name, "func")
        if type_id:
            return name, type_id
    raise _No("none of %s is a function in the kernel BTF" % ", ".join(names))


def _ftrace_refused(host):
    """True when a mounted tracefs refuses root the ftrace function list (EPERM): ftrace is locked here."""
    for base in host.mounts.get("tracefs", []):
        try:
            with open(os.path.join(host.root, base.lstrip("/"), "available_filter_functions")) as handle:
                handle.read(1)
        except (IOError, OSError) as exc:
            if exc.errno == errno.EPERM:
                return True
        return False
    return False


def _load_trampoline(host, fds, prog_type, what, attach_type, type_id):
    """Load a program that runs from a BPF trampoline (fentry, lsm); explain a refusal the kernel gives anyway."""
    try:
        return _load(host, fds, prog_type, what, _TRACE, expected_attach_type=attach_type, attach_btf_id=type_id)
    except _No as exc:
        text = str(exc)
        if "kernel policy" in text and _ftrace_refused(host):
            text += "; tracefs refuses even the ftrace function list (available_filter_functions: EPERM), so " \
                    "ftrace-based attachment is locked on this kernel"
        raise _No(text)


def _probe_fentry(host, fds):
    if host.config_off("CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS") and os.uname()[4] == "x86_64":
        raise _No("the kernel has no BPF trampoline for functions (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is "
                  "not set)")
    name, type_id = _btf_func(host, FENTRY_TARGETS)
    prog = _load_trampoline(host, fds, bpf.BPF_PROG_TYPE_TRACING, "fentry", bpf.BPF_TRACE_FENTRY, type_id)
    if name != "bpf_fentry_test1":
        return "a minimal fentry program loads against %s (vmlinux BTF id %d)" % (name, type_id)
    try:
        fds.add(bpf.raw_tracepoint_open(None, prog))
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "attaching the fentry program to %s" % name, host, _TRACE))
    return "a minimal fentry program loads and attaches to %s (vmlinux BTF id %d; detached at once)" \
        % (name, type_id)


def _probe_cgroup(host, fds):
    if host.config_off("CONFIG_CGROUP_BPF"):
        raise _No("the kernel was built without CONFIG_CGROUP_BPF")
    mounts = host.mounts.get("cgroup2") or []
    if not mounts:
        raise _No("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
    _load(host, fds, bpf.BPF_PROG_TYPE_CGROUP_SKB, "cgroup_skb", _NET, expected_attach_type=bpf.BPF_CGROUP_INET_EGRESS)
    try:
        cgroup = fds.add(os.open(os.path.join(host.root, mounts[0].lstrip("/")), os.O_RDONLY | os.O_DIRECTORY))
        bpf.prog_query(cgroup, bpf.BPF_CGROUP_INET_EGRESS)
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "BPF_PROG_QUERY on the cgroup v2 root %s" % mounts[0], host, _NET))
    except OSError as exc:
        raise _NotProbed("cannot open the cgroup v2 root %s: %s" % (mounts[0], exc.strerror))
    return "a minimal cgroup_skb program loads and the cgroup v2 root %s answers BPF_PROG_QUERY" % mounts[0]


def _probe_lsm(host, fds):
    if host.config_off("CONFIG_BPF_LSM"):
        raise _No("the kernel was built without CONFIG_BPF_LSM")
    active = host.lsms["active"]
    if active is not None and "bpf" not in active:
        listed = ",".join(active)
        raise _No("bpf is not in the active LSM list (%s); boot with lsm=%s,bpf" % (listed, listed))
    name, type_id = _btf_func(host, (LSM_HOOK,))
    _load_trampoline(host, fds, bpf.BPF_PROG_TYPE_LSM, "lsm", bpf.BPF_LSM_MAC, type_id)
    if active is None:
        raise _NotProbed("a minimal lsm program loads, but the active LSM list is unknown (%s)"
                         % host.lsms["reason"])
    return "a minimal lsm program loads against %s and bpf is in the active LSM list (%s, from %s)" % (
        name, ",".join(active), host.lsms["source"])


def _probe_bpf_link(host, fds):
    try:
        fds.add(bpf.link_create(-1, 0, bpf.BPF_CGROUP_INET_EGRESS))
    except bpf.BpfError as exc:
        if exc.errno == errno.EBADF:
            return "the kernel has BPF_LINK_CREATE (prog_fd -1 answers EBADF)"
        if exc.errno == errno.EINVAL:
            raise _No("the kernel does not know BPF_LINK_CREATE (EINVAL)")
        raise _No(_explain(exc, "BPF_LINK_CREATE", host))
    raise _No("BPF_LINK_CREATE with prog_fd -1 unexpectedly succeeded")


BPF_FS_MAGIC = 0xcafe4a11
LIBXDP_BPFFS = "/sys/fs/bpf"  # where libxdp pins its dispatchers (its default)
_EXT = ("cap_net_admin", "cap_perfmon")


def _freplace_btf():
    """A BTF blob with one global function `int hm_probe(struct xdp_md *ctx)` (the shape of a dispatcher's slot);
    returns (blob, the function's type id)."""
    strings = b"\0int\0xdp_md\0ctx\0hm_probe\0"

    def name(text):
        return strings.index(b"\0" + text + b"\0") + 1
    types = b"".join([
        struct.pack("=4I", name(b"int"), 1 << 24, 4, (1 << 24) | 32),  # 1: int (signed, 32 bits)
        struct.pack("=3I", name(b"xdp_md"), 4 << 24, 24),  # 2: struct xdp_md (no members needed)
        struct.pack("=3I", 0, 2 << 24, 2),  # 3: struct xdp_md *
        struct.pack("=5I", 0, (13 << 24) | 1, 1, name(b"ctx"), 3),  # 4: int (struct xdp_md *ctx)
        struct.pack("=3I", name(b"hm_probe"), (12 << 24) | 1, 4),  # 5: the function, linkage global (5.6+)
    ])
    header = struct.pack("=HBBI4I", 0xeB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings, 5


def _probe_xdp_multiprog(host, fds):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc, libxdp
    try:
        libxdp._load()
    except libxdp.LibxdpError as exc:
        raise _No(str(exc))
    if libc.statfs(os.path.join(host.root, LIBXDP_BPFFS.lstrip("/"))) != BPF_FS_MAGIC:
        raise _No("no bpffs is mounted at %s, where libxdp keeps its dispatchers" % LIBXDP_BPFFS)
    blob, func = _freplace_btf()
    try:
        btf_fd = fds.add(bpf.btf_load(blob))
    except bpf.BpfError as exc:
        if exc.errno == errno.EINVAL:
            raise _No("the kernel refuses BTF with a global function (BTF_FUNC_GLOBAL, 5.6+)")
        raise _No(_explain(exc, "loading a minimal BTF blob", host))
    insns = bpf.MOV64_IMM(0, 2) + bpf.EXIT()  # return XDP_PASS
    with_btf = dict(prog_name="hm_probe", prog_btf_fd=btf_fd, func_info=[(0, func)])
    try:
        targets = [fds.add(bpf.prog_load(bpf.BPF_PROG_TYPE_XDP, insns, **with_btf)) for _i in range(2)]
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "a minimal xdp program with BTF does not load", host, _NET))
    try:
        ext = fds.add(bpf.prog_load(bpf.BPF_PROG_TYPE_EXT, insns, attach_prog_fd=targets[0], attach_btf_id=func,
                                    **with_btf))
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "a minimal program extension (freplace) of an xdp program does not load", host, _EXT))
    try:
        fds.add(bpf.raw_tracepoint_open(None, ext))
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "attaching a program extension to an xdp program", host, _EXT))
    try:
        fds.add(bpf.link_create(ext, targets[1], 0, target_btf_id=func))
    except bpf.BpfError as exc:
        if exc.errno == errno.EINVAL:
            raise _No("a program extension cannot be attached to a second program (5.10+), which libxdp needs to "
                      "add programs one at a time")
        raise _No(_explain(exc, "attaching a program extension to a second xdp program", host, _EXT))
    return ("libxdp loads, bpffs is at %s, and a minimal program extension (freplace) of an xdp program loads and "
            "attaches to two of them (detached at once)" % LIBXDP_BPFFS)


def _probe_perf_link(host, fds):
    prog = _load(host, fds, bpf.BPF_PROG_TYPE_TRACEPOINT, "tracepoint", _TRACE)
    try:
        fds.add(bpf.link_create(prog, prog, bpf.BPF_PERF_EVENT))
    except bpf.BpfError as exc:
        if exc.errno == errno.EBADF:
            return "BPF_LINK_CREATE knows BPF_PERF_EVENT (a non-perf target fd answers EBADF)"
        if exc.errno == errno.EINVAL:
            raise _No("BPF_LINK_CREATE does not know the BPF_PERF_EVENT attach type (EINVAL)")
        raise _No(_explain(exc, "BPF_LINK_CREATE with BPF_PERF_EVENT", host, _TRACE))
    raise _No("BPF_LINK_CREATE with a non-perf target fd unexpectedly succeeded")


def _probe_holder(host, fds):
    if not os.path.isdir(os.path.join(host.root, "run/systemd/system")):
        raise _No("the host was not booted with systemd (no /run/systemd/system), which keeps the holder running")
    prog = _load(host, fds, bpf.BPF_PROG_TYPE_TRACEPOINT, "tracepoint", _TRACE)
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf
    try:
        event = fds.add(perf.open_tracepoint(TRACEPOINT))
        perf.set_bpf(event, prog)
    except perf.PerfError as exc:
        raise _No("a perf event on %s cannot run a bpf program: %s" % (TRACEPOINT, exc))
    return ("systemd runs this host, and a perf event on %s runs a minimal tracepoint program (PERF_EVENT_IOC_SET_BPF; "
            "closed at once)" % TRACEPOINT)


def _probe_ringbuf(host, fds):
    try:
        fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_RINGBUF, 0, 0, os.sysconf("SC_PAGE_SIZE"), name="hm_probe"))
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "creating a ringbuf map", host))
    return "a one-page ringbuf map can be created"


def _probe_global_data(host, fds):
    try:
        value = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1, bpf.BPF_F_RDONLY_PROG, name="hm_probe"))
    except bpf.BpfError as exc:
        if exc.errno == errno.EINVAL:
            raise _No("the kernel does not know read-only maps for programs (BPF_F_RDONLY_PROG answers EINVAL)")
        raise _No(_explain(exc, "creating an array map with BPF_F_RDONLY_PROG", host))
    insns = bpf.LD_MAP_VALUE(1, value, 0) + bpf.LDX_MEM_W(2, 1, 0) + _TINY
    try:
        fds.add(bpf.prog_load(bpf.BPF_PROG_TYPE_XDP, insns, prog_name="hm_probe"))
    except bpf.BpfError as exc:
        raise _No(_explain(exc, "a minimal xdp program reading a map value directly (BPF_PSEUDO_MAP_VALUE) does "
                                "not load", host, _NET))
    return "a minimal program reads a read-only map's value directly (BPF_PSEUDO_MAP_VALUE, BPF_F_RDONLY_PROG)"


def _probe_btf(host, fds):
    path = os.path.join(host.root, VMLINUX_BTF.lstrip("/"))
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
        size = os.path.getsize(path)
    except (IOError, OSError) as exc:
        if exc.errno == errno.EACCES:
            raise _NotProbed("cannot read %s (%s)" % (VMLINUX_BTF, exc.strerror))
        raise _No("no %s: the kernel was built without CONFIG_DEBUG_INFO_BTF" % VMLINUX_BTF)
    if len(head) < 2 or struct.unpack("<H", head[:2])[0] != 0xeB9F:
        raise _No("%s is not BTF (bad magic)" % VMLINUX_BTF)
    return "%s is present (%d bytes)" % (VMLINUX_BTF, size)


def _probe_bpf_stats(host, fds):
    try:
        fds.add(bpf.enable_stats())
    except bpf.BpfError as exc:
        if exc.errno == errno.EINVAL:
            raise _No("the kernel does not know BPF_ENABLE_STATS (EINVAL)")
        raise _No(_explain(exc, "BPF_ENABLE_STATS", host, ("cap_sys_admin",)))
    return "BPF_ENABLE_STATS works (stats were on only while the probe held the fd)"


PROBES = {
    "xdp": _probe_xdp, "tc": _probe_tc, "tcx": _probe_tcx, "tracepoint": _probe_tracepoint,
    "raw_tracepoint": _probe_raw_tracepoint, "kprobe": _probe_kprobe, "uprobe": _probe_uprobe, "fentry": _probe_fentry,
    "cgroup": _probe_cgroup, "lsm": _probe_lsm, "bpf_link": _probe_bpf_link, "perf_link": _probe_perf_link,
    "holder": _probe_holder,
    "ringbuf": _probe_ringbuf, "btf": _probe_btf, "bpf_stats": _probe_bpf_stats,
    "global_data": _probe_global_data, "xdp_multiprog": _probe_xdp_multiprog,
}

_RESULTS = {}
_HOST = []


def _host():
    if not _HOST:
        _HOST.append(_Host())
    return _HOST[0]


def run_probe(feature, host):
    """Run one probe against `host` (a _Host) without caching.

    An unsupported feature also carries `message`: the collection's refusal (requirements.refusal) for it.
    """
    if feature not in PROBES:
        raise KeyError("unknown eBPF feature %r (known: %s)" % (feature, ", ".join(FEATURES)))
    try:
        with _Fds() as fds:
            reason = PROBES[feature](host, fds)
        return _result(feature, True, reason)
    except _No as exc:
        result = _result(feature, False, str(exc))
    except _NotProbed as exc:
        result = _result(feature, False, "could not probe: %s" % exc, probed=False)
    except (OSError, ValueError) as exc:  # an unexpected answer: report it, never guess
        result = _result(feature, False, "could not probe: %s" % exc, probed=False)
    result["message"] = refusal(feature, _safe_release(host), result["reason"])
    return result


def _safe_release(host):
    try:
        return host.release
    except ValueError:
        return None


def probe(feature, refresh=False):
    """{"supported", "probed", "reason", "min_kernel"} for `feature` on the running kernel (cached per process)."""
    if refresh:
        _RESULTS.clear()
        del _HOST[:]
    if feature not in _RESULTS:
        _RESULTS[feature] = run_probe(feature, _host())
    return dict(_RESULTS[feature])


def probe_all(features=None, refresh=False, allow_private_mount=True):
    """{feature: probe(feature)} for `features` (default: every feature of the requirements table).

    With allow_private_mount=False, tracefs and securityfs are never mounted (not even privately) and the
    results are not cached.
    """
    if not allow_private_mount:
        host = _Host(allow_private_mount=False)
        return dict((name, run_probe(name, host)) for name in (features or FEATURES))
    if refresh:
        _RESULTS.clear()
        del _HOST[:]
    return dict((name, probe(name)) for name in (features or FEATURES))


def require(feature, release=None):
    """Return None when `feature` is supported here; else raise Unsupported with the collection's refusal."""
    result = probe(feature)
    if result["supported"]:
        return None
    if release is None:
        release = _safe_release(_host())
    raise Unsupported(feature, result["reason"], refusal(feature, release, result["reason"]))
