# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the running kernel is and how it is set up for eBPF, read from /proc and /sys.

Every reader takes `root="/"`, a prefix under which it finds proc/ sys/ boot/, so unit tests point them at a
fixture tree. Nothing here changes the host: where a pseudo file system (securityfs, tracefs) is not mounted,
`read_in_private_mount()` mounts it in a private, throw-away mount namespace (`unshare --mount`), so the host's
mount table never changes.

Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import gzip
import os
import re
import resource

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import host_command
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc


class KernelInfoError(ValueError):
    """Something about the kernel could not be understood (for example an unparseable release)."""


# The options that matter for eBPF, reported from the kernel config when it is readable.
BPF_CONFIG_OPTIONS = (
    "CONFIG_BPF", "CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT", "CONFIG_BPF_JIT_ALWAYS_ON", "CONFIG_BPF_UNPRIV_DEFAULT_OFF",
    "CONFIG_DEBUG_INFO_BTF", "CONFIG_DEBUG_INFO_BTF_MODULES", "CONFIG_BPF_LSM", "CONFIG_LSM",
    "CONFIG_SECURITY", "CONFIG_SECURITYFS",
    "CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS", "CONFIG_UPROBE_EVENTS", "CONFIG_BPF_EVENTS", "CONFIG_TRACEPOINTS",
    "CONFIG_PERF_EVENTS", "CONFIG_FTRACE", "CONFIG_FTRACE_SYSCALLS", "CONFIG_FUNCTION_TRACER",
    "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
    "CONFIG_NET_CLS_BPF", "CONFIG_NET_ACT_BPF", "CONFIG_NET_SCH_INGRESS", "CONFIG_NET_XGRESS",
    "CONFIG_CGROUPS", "CONFIG_CGROUP_BPF", "CONFIG_MEMCG", "CONFIG_XDP_SOCKETS", "CONFIG_BPF_STREAM_PARSER",
    "CONFIG_LWTUNNEL_BPF", "CONFIG_NETFILTER_BPF_LINK",
)

# Capability numbers (include/uapi/linux/capability.h) the collection cares about.
CAPABILITIES = {
    "cap_net_admin": 12,
    "cap_sys_admin": 21,
    "cap_sys_resource": 24,
    "cap_perfmon": 38,
    "cap_bpf": 39,
}

# LSM ids of include/uapi/linux/lsm.h, for lsm_list_modules(2) (kernel 6.8+).
LSM_IDS = {
    100: "capability", 101: "selinux", 102: "smack", 103: "tomoyo", 104: "apparmor", 105: "yama",
    106: "loadpin", 107: "safesetid", 108: "lockdown", 109: "bpf", 110: "landlock", 111: "ima", 112: "evm",
    113: "ipe",
}
# lsm_list_modules has the same number on every architecture (syscalls from 5.1 on are unified).
NR_LSM_LIST_MODULES = 461

# Mount types reported by mount_points().
MOUNT_TYPES = {"bpf": "bpffs", "tracefs": "tracefs", "debugfs": "debugfs", "cgroup2": "cgroup2",
               "securityfs": "securityfs"}

_RELEASE_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?=$|[^\d.])")


# ---------------------------------------------------------------- release

def parse_release(release):
    """[major, minor, patch] from a kernel release string such as `5.15.0-105-generic`.

    Raises KernelInfoError when the string does not start with MAJOR.MINOR: never a silent 0.0.0.
    """
    match = _RELEASE_RE.match((release or "").strip())
    if not match:
        raise KernelInfoError("cannot parse kernel release %r: expected MAJOR.MINOR[.PATCH][-suffix]" % (release,))
    return [int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)]


def version_at_least(version, min_kernel):
    """True when version ([major, minor, patch]) >= min_kernel ("X.Y" or "X.Y.Z")."""
    want = [int(part) for part in str(min_kernel).split(".")]
    return list(version[:len(want)]) >= want


def release(root="/"):
    """The running kernel's release, as `uname -r` prints it."""
    text = read_text(root, "proc/sys/kernel/osrelease")
    if text is None:
        if root == "/":
            return os.uname()[2]
        raise KernelInfoError("no proc/sys/kernel/osrelease under %s" % root)
    return text.strip()


# ---------------------------------------------------------------- config

def kernel_config(kernel_release, root="/"):
    """The BPF-relevant options of the kernel config.

    Returns {"source": path or None, "reason": why not readable or "", "options": {CONFIG_X: "y"/"m"/"n"/value}}.
    An option that is "is not set" or absent is "n".
    """
    candidates = ["proc/config.gz", "boot/config-%s" % kernel_release]
    failures = []
    for rel in candidates:
        path = host_path(root, rel)
        try:
            if rel.endswith(".gz"):
                with gzip.open(path, "rt") as handle:
                    text = handle.read()
            else:
                with open(path) as handle:
                    text = handle.read()
        except (IOError, OSError) as exc:
            failures.append("/%s: %s" % (rel, exc.strerror or exc))
            continue
        except (EOFError, ValueError) as exc:
            failures.append("/%s: %s" % (rel, exc))
            continue
        return {"source": "/" + rel, "reason": "", "options": parse_config(text)}
    return {"source": None, "reason": "not readable (%s)" % "; ".join(failures),
            "options": {}}


def parse_config(text):
    """{CONFIG_X: value} for BPF_CONFIG_OPTIONS from a kernel .config text."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            found[line[2:-len(" is not set")]] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found[name] = value
    return dict((name, found.get(name, "n")) for name in BPF_CONFIG_OPTIONS)


# ---------------------------------------------------------------- BTF, sysctls

def btf(root="/"):
    """Kernel BTF: {"vmlinux": bool, "path": ..., "size": bytes or None}."""
    path = "/sys/kernel/btf/vmlinux"
    try:
        size = os.stat(host_path(root, path)).st_size
    except OSError:
        return {"vmlinux": False, "path": path, "size": None}
    return {"vmlinux": True, "path": path, "size": size}


def read_sysctl(name, root="/"):
    """An integer sysctl (dotted name), or None when absent or unreadable."""
    text = read_text(root, "proc/sys/" + name.replace(".", "/"))
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def jit(root="/"):
    """net.core.bpf_jit_enable / bpf_jit_harden / bpf_jit_kallsyms (None where not readable)."""
    return {
        "enable": read_sysctl("net.core.bpf_jit_enable", root),
        "harden": read_sysctl("net.core.bpf_jit_harden", root),
        "kallsyms": read_sysctl("net.core.bpf_jit_kallsyms", root),
    }


# ---------------------------------------------------------------- mounts

def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(root="/"):
    """Entries of /proc/self/mountinfo: [{"mount_point", "fstype", "source", "options"}]."""
    text = read_text(root, "proc/self/mountinfo") or ""
    entries = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        left, right = left.split(), right.split()
        if len(left) < 5 or len(right) < 2:
            continue
        entries.append({"mount_point": _unescape(left[4]), "fstype": right[0], "source": _unescape(right[1]),
                        "options": left[5] if len(left) > 5 else ""})
    return entries


def mount_points(root="/"):
    """Where bpffs, tracefs, debugfs, cgroup v2 and securityfs are mounted: {"bpffs": [paths], ...}."""
    found = dict((name, []) for name in MOUNT_TYPES.values())
    for entry in mounts(root):
        name = MOUNT_TYPES.get(entry["fstype"])
        if name and entry["mount_point"] not in found[name]:
            found[name].append(entry["mount_point"])
    return found


def read_in_private_mount(fstype, mount_point, rel_file):
    """Mount `fstype` on `mount_point` in a private mount namespace, read `mount_point/rel_file`, and return it.

    The mount lives only as long as the `unshare` child: the host's mount table never changes. Needs
    CAP_SYS_ADMIN; raises OSError (with the tool's message) when the mount or the read fails.
    """
    script = 'test -e "$2/$3" || mount -t "$1" "$1" "$2" || exit; cat "$2/$3"'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", fstype, mount_point,
           rel_file]
    rc, out, err = host_command.run(cmd)
    if rc != 0:
        raise OSError(errno.EIO, err.strip() or "exit %d" % rc)
    return out


# ---------------------------------------------------------------- capabilities, LSMs, memory accounting

def capabilities(root="/"):
    """The effective capabilities (CapEff of /proc/self/status): {"effective": hex, "cap_bpf": bool, ...};
    "effective" is None (and every capability False) when the line cannot be read."""
    text = read_text(root, "proc/self/status") or ""
    value = None
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            try:
                value = int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                value = None
    result = {"effective": None if value is None else "%016x" % value}
    for name, bit in CAPABILITIES.items():
        result[name] = bool(value is not None and value & (1 << bit))
    return result


def lsm_list_modules():
    """Active LSM names from the lsm_list_modules(2) syscall (kernel 6.8+, no privilege needed).

    Raises OSError (ENOSYS before 6.8).
    """
    ids = (ctypes.c_uint64 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(ids))
    try:
        count = libc.syscall(NR_LSM_LIST_MODULES, ids, ctypes.byref(size), ctypes.c_uint32(0))
    except OSError as exc:
        raise OSError(exc.errno, "lsm_list_modules: %s" % exc.strerror)
    return [LSM_IDS.get(ids[i], "lsm%d" % ids[i]) for i in range(count)]


def active_lsms(root="/", caps=None, allow_private_mount=True):
    """The active LSM list: {"active": [names] or None, "source": where it came from, "reason": ...}.

    Tries, in order: /sys/kernel/security/lsm (securityfs mounted), lsm_list_modules(2) (6.8+), and securityfs
    mounted in a private mount namespace (needs CAP_SYS_ADMIN). Otherwise `active` is None with the reason.
    """
    text = read_text(root, "sys/kernel/security/lsm")
    if text is not None:
        return {"active": _split_lsms(text), "source": "/sys/kernel/security/lsm", "reason": ""}
    tried = ["securityfs is not mounted at /sys/kernel/security"]
    if root != "/":
        return {"active": None, "source": "unknown", "reason": "; ".join(tried)}
    try:
        return {"active": lsm_list_modules(), "source": "lsm_list_modules(2)", "reason": ""}
    except OSError as exc:
        tried.append("lsm_list_modules(2): %s" % os.strerror(exc.errno))
    if caps is None:
        caps = capabilities(root)
    if not allow_private_mount:
        tried.append("mounting securityfs was not allowed")
    elif not caps.get("cap_sys_admin"):
        tried.append("mounting securityfs needs CAP_SYS_ADMIN")
    else:
        try:
            text = read_in_private_mount("securityfs", "/sys/kernel/security", "lsm")
            return {"active": _split_lsms(text), "reason": "",
                    "source": "securityfs mounted in a private mount namespace (the host's mounts are unchanged)"}
        except OSError as exc:
            tried.append("securityfs in a private mount namespace: %s" % exc.strerror)
    return {"active": None, "source": "unknown", "reason": "; ".join(tried)}


def lockdown(root="/", caps=None, allow_private_mount=True):
    """The kernel lockdown mode ("none", "integrity", "confidentiality"), or None when it cannot be read.

    Read from securityfs' lockdown file (mounted in a private mount namespace when needed and allowed).
    """
    text = read_text(root, "sys/kernel/security/lockdown")
    if text is None and root == "/" and allow_private_mount:
        if caps is None:
            caps = capabilities(root)
        if caps.get("cap_sys_admin"):
            try:
                text = read_in_private_mount("securityfs", "/sys/kernel/security", "lockdown")
            except OSError:
                text = None
    if text is None:
        return None
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else None


def _split_lsms(text):
    return [name for name in text.strip().split(",") if name]


def memory_accounting(version, limits=None):
    """How BPF memory is charged: memcg from 5.11, RLIMIT_MEMLOCK before. Reports the memlock limits either way.

    `limits` = (soft, hard) for tests; default getrlimit(RLIMIT_MEMLOCK). -1 (infinity) is "unlimited".
    """
    if limits is None:
        limits = resource.getrlimit(resource.RLIMIT_MEMLOCK)

    def show(value):
        return "unlimited" if value == resource.RLIM_INFINITY or value < 0 else value

    memcg = version_at_least(version, "5.11")
    return {
        "mode": "memcg" if memcg else "memlock",
        "reason": ("kernel >= 5.11 charges BPF memory to the memory cgroup" if memcg else
                   "kernel < 5.11 charges BPF memory against RLIMIT_MEMLOCK"),
        "memlock_soft": show(limits[0]),
        "memlock_hard": show(limits[1]),
    }


# ---------------------------------------------------------------- all of it

def facts(root="/", allow_private_mount=True):
    """Everything above as one dict (ansible_facts.ebpf.kernel). Raises KernelInfoError on a bad release."""
    rel = release(root)
    version = parse_release(rel)
    config = kernel_config(rel, root)
    caps = capabilities(root)
    return {
        "release": rel,
        "version": version,
        "config_source": config["source"] or config["reason"],
        "config": config["options"],
        "btf": btf(root),
        "jit": jit(root),
        "unprivileged_bpf_disabled": read_sysctl("kernel.unprivileged_bpf_disabled", root),
        "lsm": active_lsms(root, caps, allow_private_mount),
        "lockdown": lockdown(root, caps, allow_private_mount),
        "memory_accounting": memory_accounting(version),
        "mounts": mount_points(root),
        "capabilities": caps,
    }


# ---------------------------------------------------------------- helpers

def host_path(root, rel):
    """root/rel: a host file, or the same file under a test root (root "/" on the host)."""
    return os.path.join(root, rel.lstrip("/"))


def read_text(root, rel):
    """Text of root/rel, or None when it does not exist or cannot be read."""
    try:
        with open(host_path(root, rel)) as handle:
            return handle.read()
    except (IOError, OSError):
        return None
