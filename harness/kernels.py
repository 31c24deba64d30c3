"""Kernels users bring: every directory $HYPERMESH_CACHE/kernels/<name>/ is a guest `kernel-<name>` of the matrix.

A kernel directory holds (docs/harness.md, "Kernels you bring, in the matrix"):
    bzImage or one vmlinuz*   the kernel image (required)
    config or one config-*    its build configuration (required: read before boot)
    one initrd*               an initramfs (optional; needed when a driver below is a module)
    cmdline                   extra kernel command line, one line (optional)
    rootfs                    the Debian image it boots on: bullseye (default), bookworm, trixie or sid (optional)

Before anything boots, each directory is checked: its name, its owner and mode (and those of every directory
above it: root never boots a kernel another user could have planted), and the config against what the harness
needs (REQUIRED). A refusal names the directory and what is wrong.

    python3 -m harness.kernels list     one line per kernel: "<name> <rootfs>", or the refusals (exit 1)
"""
import os
import re
import stat
import sys

from harness import images

KERNELS = "kernels"
DEFAULT_ROOTFS = "bullseye"  # the oldest rootfs: systemd 247, Python 3.9, libbpf 0.3
SUITES = ["bullseye", "bookworm", "trixie", "sid"]
NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,31}$")
PREFIX = "kernel-"
MAX_SMALL_FILE = 4096  # cmdline, rootfs
CMDLINE_WORD = re.compile(r"^[A-Za-z0-9_.,:=/+-]+$")

# What the harness needs from the kernel, from the qemu command line (harness/qemu.py), the image's boot
# (harness/images.py: systemd, udev, the boot unit, sshd) and the scenario's fixtures and modules. "y": built in;
# "ym": built in, or a module that the initrd loads (the rootfs has only /lib/modules of its own Debian kernel,
# so a module of this kernel cannot come from there).
REQUIRED = [
    # qemu: -machine q35, the serial console on ttyS0 (the harness reads it: boot unit ready, panics)
    ("CONFIG_PCI", "y", "qemu's q35 machine: every device is on PCI"),
    ("CONFIG_SERIAL_8250", "y", "console=ttyS0"),
    ("CONFIG_SERIAL_8250_CONSOLE", "y", "console=ttyS0"),
    # qemu: the root disk -drive if=virtio (root=/dev/vda), ext4
    ("CONFIG_VIRTIO_PCI", "ym", "the root disk and the network are virtio PCI devices"),
    ("CONFIG_VIRTIO_BLK", "ym", "root=/dev/vda (virtio-blk)"),
    ("CONFIG_EXT4_FS", "ym", "the root file system is ext4"),
    # qemu: -device virtio-net-pci, user-mode networking (SSH forwarded to the guest's port 22)
    ("CONFIG_VIRTIO_NET", "ym", "the guest's network (virtio-net-pci)"),
    ("CONFIG_NET", "y", "networking"),
    ("CONFIG_INET", "y", "IPv4: SSH, the fixtures' addresses"),
    ("CONFIG_UNIX", "y", "systemd, journald, sshd (AF_UNIX)"),
    # the rootfs: systemd and udev
    ("CONFIG_DEVTMPFS", "y", "systemd and udev need /dev as devtmpfs"),
    ("CONFIG_CGROUPS", "y", "systemd"),
    ("CONFIG_INOTIFY_USER", "y", "systemd, udev"),
    ("CONFIG_SIGNALFD", "y", "systemd"),
    ("CONFIG_TIMERFD", "y", "systemd"),
    ("CONFIG_EPOLL", "y", "systemd"),
    ("CONFIG_FHANDLE", "y", "systemd, udev"),
    ("CONFIG_TMPFS", "y", "systemd: /run, /tmp"),
    ("CONFIG_PROC_FS", "y", "/proc"),
    ("CONFIG_SYSFS", "y", "/sys"),
    ("CONFIG_FUTEX", "y", "glibc threads"),
    ("CONFIG_BINFMT_ELF", "y", "running any program"),
    ("CONFIG_MULTIUSER", "y", "sshd drops privileges"),
    # the collection and the scenario's fixtures
    ("CONFIG_BPF_SYSCALL", "y", "bpf(): every module of the collection, bpffs"),
    ("CONFIG_NET_NS", "y", "the fixtures' network namespaces hm0 and hm1"),
    ("CONFIG_VETH", "ym", "the fixtures' veth pairs hm-a/hm-b, hr-a/hr-b"),
]
# Not required (a feature the kernel lacks is refused by the collection and the report says so), but checked
# by the scenario when present; named by `list` so the user knows what will be refused.
FEATURES = [
    ("CONFIG_BPF_JIT", "y"), ("CONFIG_CGROUP_BPF", "y"), ("CONFIG_BPF_EVENTS", "y"), ("CONFIG_KPROBES", "y"),
    ("CONFIG_DEBUG_INFO_BTF", "y"), ("CONFIG_NET_SCH_INGRESS", "ym"), ("CONFIG_NET_CLS_BPF", "ym"),
    ("CONFIG_NET_ACT_BPF", "ym"), ("CONFIG_BPF_LSM", "y"), ("CONFIG_DEBUG_FS", "y"), ("CONFIG_SECURITYFS", "y"),
]


class KernelError(ValueError):
    """A kernel directory refused: the message names it and what is wrong."""


def kernels_dir(environ=None):
    return os.path.join(images.cache_dir(environ), KERNELS)


def _owners():
    return {0, os.geteuid()}


def check_path_safe(path, what):
    """Refuse `path` (not followed if a symlink) when a user other than root (or us) owns it or may write
    it, and likewise each directory above it (a sticky world-writable one such as /tmp is fine: others cannot
    rename what we own in it)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise KernelError("%s %s: %s" % (what, path, e.strerror))
    if stat.S_ISLNK(st.st_mode):
        raise KernelError("%s %s is a symbolic link: put the file itself there" % (what, path))
    if st.st_uid not in _owners():
        raise KernelError("%s %s is owned by uid %d, not root: refused (root boots no kernel another user "
                          "could have planted)" % (what, path, st.st_uid))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelError("%s %s is writable by group or others (mode %04o): refused (chmod go-w)"
                          % (what, path, stat.S_IMODE(st.st_mode)))
    for parent in _ancestors(path):
        st = os.stat(parent)
        if st.st_uid not in _owners():
            raise KernelError("%s %s: the directory %s above it is owned by uid %d, not root: refused"
                              % (what, path, parent, st.st_uid))
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise KernelError("%s %s: the directory %s above it is writable by group or others (mode %04o): "
                              "refused" % (what, path, parent, stat.S_IMODE(st.st_mode)))


def _ancestors(path):
    """The directories above path, as written and as resolved (a symbolic link on the way is replaceable by
    whoever may write the directory holding it, and its target's directories count too), nearest first."""
    out = []
    for start in (os.path.abspath(path), os.path.realpath(path)):
        parent = os.path.dirname(start)
        while parent not in out:
            out.append(parent)
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)
    return out


def read_config(path):
    """{option: value} of a kernel .config: "y", "m", a string or number; options "is not set" are left out."""
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("CONFIG_") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            out[key] = value.strip('"')
    return out


def missing_options(config, initrd):
    """[(option, what the harness needs, why)] that the config does not give. A module ("m") passes only
    where a module may do (the initrd must then load it)."""
    missing = []
    for option, need, why in REQUIRED:
        value = config.get(option)
        if value == "y" or (value == "m" and need == "ym" and initrd):
            continue
        if value == "m" and need == "ym":
            need_text = "=y, or =m with an initrd that loads it (the rootfs has no modules of this kernel)"
        elif need == "ym":
            need_text = "=y (or =m with an initrd that loads it)"
        else:
            need_text = "=y"
        missing.append((option, "%s (is %s)" % (need_text, "=" + value if value else "not set"), why))
    return missing


def absent_features(config):
    """Options of FEATURES the config does not give: the features the collection will refuse on this kernel."""
    return [o for o, need in FEATURES if not (config.get(o) == "y" or (need == "ym" and config.get(o) == "m"))]


def _one(entries, exact, prefix, what, directory, required):
    """The file named `exact`, else the only one starting with `prefix` (None when neither and not required)."""
    if exact and exact in entries:
        return os.path.join(directory, exact)
    found = sorted(e for e in entries if e.startswith(prefix) and not e.endswith((".sig", ".asc")))
    if len(found) > 1:
        raise KernelError("kernel %s: more than one %s (%s): keep one" % (directory, what, ", ".join(found)))
    if not found:
        if required:
            raise KernelError("kernel %s: no %s (%s)" % (
                directory, what, " or ".join(([exact] if exact else []) + [prefix + "*"])))
        return None
    return os.path.join(directory, found[0])


def _small_file(path):
    """The text of a small file of the kernel directory (cmdline, rootfs), checked like the kernel itself."""
    check_path_safe(path, "file")
    if os.path.getsize(path) > MAX_SMALL_FILE:
        raise KernelError("file %s: larger than %d bytes" % (path, MAX_SMALL_FILE))
    with open(path, errors="replace") as f:
        return f.read().strip()


def load(name, environ=None):
    """The guest of kernels/<name>/: {name, guest, dir, kernel, initrd, config, suite, cmdline, absent};
    KernelError when the directory is refused (bad name, unsafe owner or mode, file missing, config lacking
    what the harness needs)."""
    if not NAME.match(name or ""):
        raise KernelError("kernel name %r: lower-case letters, digits, '.' and '-', starting with a letter or "
                          "digit, at most 32 characters" % name)
    top = kernels_dir(environ)
    directory = os.path.join(top, name)
    check_path_safe(directory, "kernel directory")
    if not os.path.isdir(directory):
        raise KernelError("kernel directory %s: not a directory" % directory)
    entries = os.listdir(directory)
    kernel = _one(entries, "bzImage", "vmlinuz", "kernel image", directory, True)
    config = _one(entries, "config", "config-", "kernel config", directory, True)
    initrd = _one(entries, None, "initrd", "initrd", directory, False)
    for path, what in ((kernel, "kernel image"), (config, "kernel config"), (initrd, "initrd")):
        if path:
            check_path_safe(path, what)
            if not os.path.isfile(path):
                raise KernelError("%s %s: not a regular file" % (what, path))
    suite = DEFAULT_ROOTFS
    if "rootfs" in entries:
        suite = _small_file(os.path.join(directory, "rootfs"))
        if suite not in SUITES:
            raise KernelError("file %s: %r is not one of %s" % (os.path.join(directory, "rootfs"), suite,
                                                                ", ".join(SUITES)))
    cmdline = ""
    if "cmdline" in entries:
        cmdline = " ".join(_small_file(os.path.join(directory, "cmdline")).split())
        bad = [w for w in cmdline.split() if not CMDLINE_WORD.match(w)]
        if bad:
            raise KernelError("file %s: words the harness does not pass on: %s"
                              % (os.path.join(directory, "cmdline"), " ".join(bad)))
        if any(w.split("=", 1)[0] in ("root", "console", "init", "hypermesh.key") for w in cmdline.split()):
            raise KernelError("file %s: root=, console=, init= and hypermesh.key= are the harness' own"
                              % os.path.join(directory, "cmdline"))
    cfg = read_config(config)
    if not cfg:
        raise KernelError("kernel config %s: no CONFIG_ line in it (is it a kernel .config?)" % config)
    missing = missing_options(cfg, initrd)
    if missing:
        raise KernelError("kernel %s: its config %s lacks what the harness needs: %s" % (
            name, config, "; ".join("%s needs %s, for %s" % (o, n, why) for o, n, why in missing)))
    return {"name": name, "guest": PREFIX + name, "dir": directory, "kernel": kernel, "initrd": initrd,
            "config": config, "suite": suite, "cmdline": cmdline, "absent": absent_features(cfg)}


def names(environ=None):
    """The kernel names found (directories and anything else in kernels/), sorted; [] when there is none."""
    top = kernels_dir(environ)
    try:
        entries = os.listdir(top)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if not e.startswith("."))


def discover(environ=None):
    """(guests, refusals): every kernel of kernels/ loaded, and a message per refused one. kernels/ itself
    is checked like the directories in it when it exists."""
    top = kernels_dir(environ)
    if not os.path.lexists(top):
        return [], []
    try:
        check_path_safe(top, "kernels directory")
        if not os.path.isdir(top):
            raise KernelError("kernels directory %s: not a directory" % top)
    except KernelError as e:
        return [], [str(e)]
    found, refused = [], []
    for name in names(environ):
        try:
            found.append(load(name, environ))
        except KernelError as e:
            refused.append(str(e))
    return found, refused


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["list"]:
        sys.stderr.write(__doc__)
        return 2
    found, refused = discover()
    for msg in refused:
        sys.stderr.write("kernels: REFUSED: %s\n" % msg)
    for k in found:
        sys.stderr.write("kernels: %s: %s on the %s rootfs%s%s%s\n" % (
            k["guest"], k["kernel"], k["suite"], ", initrd " + k["initrd"] if k["initrd"] else "",
            ", cmdline extra: " + k["cmdline"] if k["cmdline"] else "",
            "; the collection will refuse what needs " + ", ".join(k["absent"]) if k["absent"] else ""))
        sys.stdout.write("%s %s\n" % (k["name"], k["suite"]))
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
