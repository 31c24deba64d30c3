"""The guests of the matrix: which image, which kernel command line, what the kernel should be.

A custom guest boots a kernel the user brings (HYPERMESH_GUEST_KERNEL, optional HYPERMESH_GUEST_INITRD)
on the rootfs of one of the Debian images (HYPERMESH_GUEST_ROOTFS, default bookworm).
A kernel of $HYPERMESH_CACHE/kernels/<name>/ (harness/kernels.py) is the guest `kernel-<name>`, and the custom
guest when HYPERMESH_KERNEL=<name> (scripts/matrix.sh runs each so, through the custom scenario).
"""
import os

from harness import kernels

LSM_WITH_BPF = "lsm=lockdown,capability,yama,apparmor,tomoyo,bpf"

# name: (suite of the image, extra kernel command line, kernel major.minor prefix we expect)
GUESTS = {
    "bullseye": {"suite": "bullseye", "cmdline": "", "expect": "5.10"},
    "bullseye-lsm": {"suite": "bullseye", "cmdline": LSM_WITH_BPF, "expect": "5.10"},
    "bookworm": {"suite": "bookworm", "cmdline": "", "expect": "6.1"},
    "trixie": {"suite": "trixie", "cmdline": "", "expect": "6.12"},
    "sid": {"suite": "sid", "cmdline": "", "expect": "7."},
}
MATRIX = ["bullseye", "bullseye-lsm", "bookworm", "trixie", "sid"]
SUITES = ["bullseye", "bookworm", "trixie", "sid"]


def custom_guest(environ=None):
    """The user's guest from the environment (HYPERMESH_KERNEL, else HYPERMESH_GUEST_KERNEL), or None."""
    environ = os.environ if environ is None else environ
    if environ.get("HYPERMESH_KERNEL"):
        if environ.get("HYPERMESH_GUEST_KERNEL"):
            raise ValueError("HYPERMESH_KERNEL and HYPERMESH_GUEST_KERNEL: set one of them")
        guest = kernel_guest(environ["HYPERMESH_KERNEL"], environ)
        # the custom scenario prepares the guest for ${HYPERMESH_GUEST_ROOTFS:-bookworm}: it must be the same
        rootfs = environ.get("HYPERMESH_GUEST_ROOTFS") or "bookworm"
        if rootfs != guest["suite"]:
            raise ValueError("HYPERMESH_KERNEL=%s boots on the %s rootfs (%s), not HYPERMESH_GUEST_ROOTFS=%s"
                             % (environ["HYPERMESH_KERNEL"], guest["suite"], guest["dir"], rootfs))
        return guest
    kernel = environ.get("HYPERMESH_GUEST_KERNEL")
    if not kernel:
        return None
    if not os.path.isfile(kernel):
        raise ValueError("HYPERMESH_GUEST_KERNEL=%s: no such file" % kernel)
    initrd = environ.get("HYPERMESH_GUEST_INITRD") or None
    if initrd and not os.path.isfile(initrd):
        raise ValueError("HYPERMESH_GUEST_INITRD=%s: no such file" % initrd)
    suite = environ.get("HYPERMESH_GUEST_ROOTFS", "bookworm")
    if suite not in SUITES:
        raise ValueError("HYPERMESH_GUEST_ROOTFS=%s: one of %s" % (suite, ", ".join(SUITES)))
    return {"suite": suite, "cmdline": environ.get("HYPERMESH_GUEST_CMDLINE", ""), "expect": "",
            "kernel": os.path.abspath(kernel), "initrd": os.path.abspath(initrd) if initrd else None}


def kernel_guest(name, environ=None):
    """The guest of $HYPERMESH_CACHE/kernels/<name>/, checked (kernels.KernelError, a ValueError, if refused)."""
    k = kernels.load(name, environ)
    return {"suite": k["suite"], "cmdline": k["cmdline"], "expect": "", "kernel": k["kernel"],
            "initrd": k["initrd"], "kernel_name": name, "dir": k["dir"], "config": k["config"]}


def lookup(name, environ=None):
    if name.startswith(kernels.PREFIX):
        return kernel_guest(name[len(kernels.PREFIX):], environ)
    if name == "custom":
        guest = custom_guest(environ)
        if guest is None:
            raise ValueError("guest 'custom' needs HYPERMESH_GUEST_KERNEL=/path/to/vmlinuz")
        return guest
    if name not in GUESTS:
        raise ValueError("unknown guest %r: one of %s, custom, kernel-<name> ($HYPERMESH_CACHE/kernels/<name>/)"
                         % (name, ", ".join(GUESTS)))
    return dict(GUESTS[name])
