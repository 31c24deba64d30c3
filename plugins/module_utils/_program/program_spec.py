# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the user asked for, validated and normalised: names, paths, the attach point (from the `attach` option
or, when omitted, from the ELF section as libbpf reads it), and the feature each attach point needs.

One job: pure validation, no kernel calls except statfs on pin_root. Errors are SpecError with a message that
names the option to fix. Importable without ansible.
"""
import errno
import hashlib
import os
import re

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths, layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs, libc

BPF_FS_MAGIC = 0xcafe4a11
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # bpffs refuses '.' in names
RESERVED = (layout.SHARED,)
# names under <pin_root>/<name>/ that the program owns: prog, link, maps/, stage_<pid>/
ATTACH_KINDS = ("xdp", "tc", "tcx", "tracepoint", "raw_tracepoint", "kprobe", "kretprobe", "fentry", "fexit",
                "lsm", "cgroup", "uprobe", "uretprobe")
UPROBE_KINDS = ("uprobe", "uretprobe")
# attach kind -> features to gate on (probes.require), in order
FEATURES = {
    "xdp": ("xdp",), "tc": ("tc",), "tcx": ("tcx",),
    "tracepoint": ("tracepoint", "perf_link"), "kprobe": ("kprobe", "perf_link"),
    "kretprobe": ("kprobe", "perf_link"),
    "uprobe": ("uprobe", "perf_link"), "uretprobe": ("uprobe", "perf_link"),
    "raw_tracepoint": ("raw_tracepoint", "bpf_link"), "fentry": ("fentry", "bpf_link"),
    "fexit": ("fentry", "bpf_link"), "lsm": ("lsm", "bpf_link"), "cgroup": ("cgroup", "bpf_link"),
}
# attach.xdp with priority or proceed_on: the program joins libxdp's dispatcher on the interface (several programs,
# in priority order), which needs this feature besides the kind's own
MULTIPROG_FEATURE = "xdp_multiprog"
XDP_ACTIONS = ("aborted", "drop", "pass", "tx", "redirect")  # enum xdp_action, in its order
XDP_PRIORITY_MIN, XDP_PRIORITY_MAX = 0, 1000
XDP_DEFAULT_PRIORITY = 50  # libxdp's default run priority
XDP_DEFAULT_PROCEED_ON = ["pass"]  # libxdp's default: the next program runs after XDP_PASS
# the kinds the holder (holder.py, which keeps its own copy: it runs without this file) can keep attached where
# the kernel cannot pin them (the last of their FEATURES missing: perf_link, or bpf_link for a raw tracepoint)
HELD_KINDS = ("tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe", "raw_tracepoint")
CGROUP_TYPES = {
    "ingress": bs.BPF_CGROUP_INET_INGRESS, "egress": bs.BPF_CGROUP_INET_EGRESS,
    "sock_create": bs.BPF_CGROUP_INET_SOCK_CREATE, "sock_ops": bs.BPF_CGROUP_SOCK_OPS,
    "device": bs.BPF_CGROUP_DEVICE, "bind4": bs.BPF_CGROUP_INET4_BIND, "bind6": bs.BPF_CGROUP_INET6_BIND,
    "connect4": bs.BPF_CGROUP_INET4_CONNECT, "connect6": bs.BPF_CGROUP_INET6_CONNECT,
    "sysctl": bs.BPF_CGROUP_SYSCTL,
}
# ELF section prefix (libbpf's conventions) -> (attach kind, cgroup type or tcx direction)
_SECTION_CGROUP = {"cgroup_skb/ingress": "ingress", "cgroup_skb/egress": "egress", "cgroup/skb": "ingress",
                   "cgroup/sock_create": "sock_create", "cgroup/sock": "sock_create", "sockops": "sock_ops",
                   "cgroup/dev": "device", "cgroup/bind4": "bind4", "cgroup/bind6": "bind6",
                   "cgroup/connect4": "connect4", "cgroup/connect6": "connect6", "cgroup/sysctl": "sysctl"}


class SpecError(ValueError):
    pass


def check_name(name):
    if not name or not NAME_RE.match(name) or ".." in name or name in RESERVED:
        raise SpecError("name %r is not valid: use 1-63 letters, digits, '_' or '-', starting with a letter "
                        "or digit, without '/' or '..' (and not %s)" % (name, ", ".join(RESERVED)))
    return name


ELF_NAME_MAX = 255


def _elf_name_problem(name):
    """Why a program or map name read from an ELF object cannot be used for pins and records, or None."""
    if not name or len(name) > ELF_NAME_MAX:
        return "is empty or longer than %d characters" % ELF_NAME_MAX
    if any(not 0x21 <= ord(c) <= 0x7e for c in name):
        return "is not printable ASCII (bytes that are not UTF-8, spaces or control characters)"
    if "/" in name or name in (".", ".."):
        return "would be a path, not a name ('/', '.' or '..')"
    return None


def _shown(name):
    """A name for a message: non-ASCII and undecodable bytes (surrogate escapes) as \\x.. escapes."""
    return name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")


def check_elf_names(path, programs, map_defs=()):
    """Refuse an object whose program or map names could not be pinned safely, before any pin is made (libbpf
    pins maps of LIBBPF_PIN_BY_NAME at <pin_root>/_shared/<name> during load). programs: [{"name"}] and
    map_defs: [{"name"}] as libbpf read them (undecodable bytes kept as surrogate escapes)."""
    for kind, items in (("program", programs), ("map", map_defs)):
        for item in items:
            problem = _elf_name_problem(item["name"])
            if problem:
                raise SpecError("object %s: %s name '%s' %s: refusing the object, nothing changed"
                                % (_shown(path), kind, _shown(item["name"]), problem))


def check_pin_root(pin_root):
    """pin_root must be absolute, without '..', and on a mounted bpffs (checked on its nearest existing parent)."""
    if not pin_root or not os.path.isabs(pin_root) or ".." in pin_root.split("/"):
        raise SpecError("pin_root %r must be an absolute path without '..'" % pin_root)
    probe = os.path.normpath(pin_root)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if libc.statfs(probe) != BPF_FS_MAGIC:
        raise SpecError("pin_root %s is not on a bpf filesystem (%s is not bpffs): pins need bpffs; mount it "
                        "(mount -t bpf bpf /sys/fs/bpf) or choose a pin_root under a bpffs mount"
                        % (pin_root, probe))
    return os.path.normpath(pin_root)


OBJECT_MAX_BYTES = 64 << 20  # an eBPF object is kilobytes; a larger file is not read whole


def read_object(path, sha256=None):
    """The object file's bytes and their sha256, read once: libbpf is given these bytes, not the path again.
    Opened through host_paths.open_trusted_file (root loads no object another user planted or can change: the
    file and every directory above it root's and writable by no one else, no symbolic link); it must be an ELF
    file of at most OBJECT_MAX_BYTES and match `sha256` when given."""
    try:
        fd = host_paths.open_trusted_file(path)
    except host_paths.UnsafePath as e:
        raise SpecError("object %s" % e)
    except (IOError, OSError) as e:
        if e.errno == errno.ENOENT:
            raise SpecError("object %s does not exist on this host" % path)
        raise SpecError("object %s cannot be read: %s" % (path, e.strerror or e))
    with os.fdopen(fd, "rb") as f:
        data = f.read(OBJECT_MAX_BYTES + 1)
    if len(data) > OBJECT_MAX_BYTES:
        raise SpecError("object %s is larger than %d MiB: not an eBPF object" % (path, OBJECT_MAX_BYTES >> 20))
    if data[:4] != b"\x7fELF":
        raise SpecError("object %s is not an ELF file (build it with clang -target bpf)" % path)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and sha256.lower() != digest:
        raise SpecError("object %s has sha256 %s, not the expected %s: refusing it" % (path, digest, sha256))
    return data, digest


def choose_program(programs, wanted, path):
    """programs: [{"name","section"}] from libbpf. Returns the chosen entry."""
    names = [p["name"] for p in programs]
    if wanted:
        for p in programs:
            if p["name"] == wanted:
                return p
        raise SpecError("program %s not found in %s (it has: %s)" % (wanted, path, ", ".join(names) or "none"))
    if len(programs) != 1:
        raise SpecError("%s has %d programs (%s): set `program` to choose one"
                        % (path, len(programs), ", ".join(names)))
    return programs[0]


def from_section(section):
    """The attach point an ELF section implies, or (kind, partial dict) for kinds that need user parameters."""
    head, _sep, rest = section.partition("/")
    if head in ("tracepoint", "tp") and rest:
        return {"type": "tracepoint", "target": rest}
    if head in ("raw_tracepoint", "raw_tp", "raw_tracepoint.w", "raw_tp.w") and rest:
        return {"type": "raw_tracepoint", "target": rest}
    if head in ("kprobe", "kretprobe") and rest:
        return {"type": head, "target": rest}
    if head in ("uprobe", "uretprobe", "uprobe.s", "uretprobe.s"):
        return {"type": head.split(".")[0]}  # the binary and function come from attach.<kind>
    if head in ("fentry", "fexit", "fentry.s", "fexit.s") and rest:
        return {"type": head.split(".")[0], "target": rest}
    if head in ("lsm", "lsm.s") and rest:
        return {"type": "lsm", "target": rest}
    if head in ("xdp", "xdp.frags"):
        return {"type": "xdp"}
    if head == "tcx" or (head == "tc" and rest in ("ingress", "egress")):
        return {"type": "tcx", "direction": rest or None}
    if head in ("tc", "classifier", "action"):
        return {"type": "tc"}
    for prefix, ctype in _SECTION_CGROUP.items():
        if section == prefix or section.startswith(prefix + "/"):
            return {"type": "cgroup", "cgroup_type": ctype}
    return {"type": None}


def normalize(attach, section):
    """One attach dict {"type": kind, ...fields} from the `attach` option (at most one key) or the section."""
    attach = dict((k, v) for k, v in (attach or {}).items() if v not in (None, {}, ""))
    implied = from_section(section)
    if len(attach) > 1:
        raise SpecError("attach takes at most one attach point, got: %s" % ", ".join(sorted(attach)))
    if not attach:
        kind = implied["type"]
        if kind is None:
            raise SpecError("the ELF section %r does not say where to attach: set `attach`" % section)
        if kind in ("xdp", "tc", "tcx"):
            raise SpecError("section %r is a %s program: set attach.%s.interface" % (section, kind, kind))
        if kind == "cgroup":
            raise SpecError("section %r is a cgroup program: set attach.cgroup.path" % section)
        if kind in UPROBE_KINDS:
            raise SpecError("section %r is a %s program: set attach.%s.path and attach.%s.symbol (or offset)"
                            % (section, kind, kind, kind))
        return {"type": kind, "target": implied["target"]}
    kind, value = list(attach.items())[0]
    if kind not in ATTACH_KINDS:
        raise SpecError("unknown attach point %r (one of: %s)" % (kind, ", ".join(ATTACH_KINDS)))
    if kind in ("xdp", "tc", "tcx"):
        if not isinstance(value, dict) or not value.get("interface"):
            raise SpecError("attach.%s.interface is required" % kind)
        out = {"type": kind, "interface": value["interface"], "netns": value.get("netns") or None}
        if kind == "xdp":
            out["mode"] = value.get("mode") or "auto"
            out.update(_xdp_multiprog(value, out["mode"]))
        elif kind == "tc":
            out["direction"] = value.get("direction") or "ingress"
            out["priority"] = int(value.get("priority") or 1)
        else:
            out["direction"] = value.get("direction") or implied.get("direction") or "ingress"
            from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import tcx_order
            order = tcx_order.normalize(value.get("order"))
            if order:
                out["order"] = order  # only when given: an unordered program's record stays as it was
        return out
    if kind == "cgroup":
        if not isinstance(value, dict) or not value.get("path"):
            raise SpecError("attach.cgroup.path is required (a cgroup v2 directory)")
        ctype = value.get("type") or implied.get("cgroup_type")
        if ctype not in CGROUP_TYPES:
            raise SpecError("attach.cgroup.type must be one of %s" % ", ".join(sorted(CGROUP_TYPES)))
        return {"type": "cgroup", "path": os.path.normpath(value["path"]), "cgroup_type": ctype}
    if kind in UPROBE_KINDS:
        return _uprobe(kind, value)
    if not isinstance(value, str) or not value:
        raise SpecError("attach.%s must be a name" % kind)
    return {"type": kind, "target": value}


def is_multiprog(spec):
    """True for an XDP attach point through libxdp's dispatcher (attach.xdp.priority or proceed_on given)."""
    return bool(spec) and spec.get("type") == "xdp" and "priority" in spec


def features(spec):
    """The features the attach point `spec` needs, in the order they are gated."""
    out = FEATURES[spec["type"]]
    if is_multiprog(spec):
        out = out + (MULTIPROG_FEATURE,)
    return out


def _xdp_multiprog(value, mode):
    """attach.xdp.priority / proceed_on: {"priority", "proceed_on"} when either is given (the other takes libxdp's
    default), {} when neither is (one program on the interface, through netlink, as before)."""
    priority, proceed_on = value.get("priority"), value.get("proceed_on")
    if priority is None and proceed_on is None:
        return {}
    if priority is None:
        priority = XDP_DEFAULT_PRIORITY
    if not isinstance(priority, int) or isinstance(priority, bool) or not \
            XDP_PRIORITY_MIN <= priority <= XDP_PRIORITY_MAX:
        raise SpecError("attach.xdp.priority must be an integer from %d to %d (lower runs first; libxdp's default "
                        "is %d), got %r" % (XDP_PRIORITY_MIN, XDP_PRIORITY_MAX, XDP_DEFAULT_PRIORITY, priority))
    if proceed_on is None:
        proceed_on = XDP_DEFAULT_PROCEED_ON
    if not isinstance(proceed_on, (list, tuple)) or not all(isinstance(a, str) for a in proceed_on):
        raise SpecError("attach.xdp.proceed_on must be a list of XDP actions (%s), got %r"
                        % (", ".join(XDP_ACTIONS), proceed_on))
    unknown = [a for a in proceed_on if a.lower() not in XDP_ACTIONS]
    if unknown:
        raise SpecError("attach.xdp.proceed_on: %s is not an XDP action (one of: %s)"
                        % (", ".join(repr(a) for a in unknown), ", ".join(XDP_ACTIONS)))
    if mode == "offload":
        raise SpecError("attach.xdp.mode offload cannot be used with attach.xdp.priority or proceed_on: libxdp's "
                        "dispatcher runs in native or generic mode; drop priority and proceed_on to offload one "
                        "program")
    wanted = set(a.lower() for a in proceed_on)
    return {"priority": priority, "proceed_on": [a for a in XDP_ACTIONS if a in wanted]}


def _uprobe(kind, value):
    """attach.uprobe / attach.uretprobe: {"type", "path", "symbol", "offset", "pid"}; with a symbol, "offset" stays
    None until program_attach.resolve() reads the binary."""
    if not isinstance(value, dict) or not value.get("path"):
        raise SpecError("attach.%s.path is required (the executable or shared library)" % kind)
    path = value["path"]
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise SpecError("attach.%s.path %r must be an absolute path without '..'" % (kind, path))
    symbol, offset, pid = value.get("symbol") or None, value.get("offset"), value.get("pid")
    if (symbol is None) == (offset is None):
        raise SpecError("attach.%s takes exactly one of symbol (a function of the binary) and offset (a file "
                        "offset)" % kind)
    if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
        raise SpecError("attach.%s.offset must be a file offset (an integer >= 0), got %r" % (kind, offset))
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise SpecError("attach.%s.pid must be a process id (an integer > 0), got %r" % (kind, pid))
    return {"type": kind, "path": os.path.normpath(path), "symbol": symbol, "offset": offset, "pid": pid}


def retarget(spec, section):
    """For fentry/fexit/lsm: the BTF target to set before load when it differs from the section's, else None."""
    if spec["type"] not in ("fentry", "fexit", "lsm"):
        return None
    implied = from_section(section)
    if implied.get("type") == spec["type"] and implied.get("target") == spec["target"]:
        return None
    return spec["target"]
