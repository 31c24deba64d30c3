"""Debian guest images, built on demand with mmdebstrap and cached by a key of their inputs.

An image is a directory in the cache:  <cache>/images/<suite>-<key>/
    rootfs.img    ext4 of the whole root file system (made with `mke2fs -d`), never written after the build
    vmlinuz       the kernel, and initrd.img its initramfs, copied out of the rootfs' /boot
    manifest.json suite, key, kernel release, root_disk (nvme: boots without the initramfs), build time
Runs boot from a qcow2 overlay on top of rootfs.img, so the cached image stays clean.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time

from harness import aptconf

RECIPE_VERSION = 2
DEFAULT_CACHE = "/var/cache/hypermesh-ebpf"
IMAGE_SIZE = "3G"

# Everything a guest has before `prepare`: a bootable Debian with python3 and sshd. libbpf, bpftool and
# pyroute2 are NOT here: they come from the prepare step, as on a real fleet.
PACKAGES = ["systemd-sysv", "udev", "linux-image-cloud-amd64", "python3", "openssh-server", "iproute2"]

# Runs at every boot, before the SSH socket listens: static address for qemu's user-mode network (no DHCP
# client to wait for) and root's authorized key from the kernel command line (hypermesh.key=<type>:<base64>),
# so the cached image never holds a per-run key. Shell builtins wherever possible (under emulation every
# process costs), and it loads the network driver itself instead of waiting for udev's coldplug.
GUEST_INIT = r"""#!/bin/sh
set -u -f
read -r cmdline < /proc/cmdline
key=
for word in $cmdline; do
  case $word in hypermesh.key=*) key=${word#hypermesh.key=} ;; esac
done
if [ -n "$key" ]; then
  umask 077
  [ -d /root/.ssh ] || mkdir /root/.ssh
  echo "${key%%:*} ${key#*:} hypermesh-harness" > /root/.ssh/authorized_keys
  umask 022
fi
modprobe -q -a virtio_pci virtio_net
set +f
dev=
i=0
while [ $i -lt 200 ]; do
  for path in /sys/class/net/*; do
    name=${path##*/}
    if [ "$name" != lo ] && [ -e "$path" ]; then dev=$name; break; fi
  done
  [ -n "$dev" ] && break
  i=$((i + 1)); sleep 0.05
done
if [ -z "$dev" ]; then
  echo "hypermesh-guest-init: no network device"
  exit 0
fi
ip -force -batch - <<EOS2
link set lo up
link set $dev up
addr replace 10.0.2.15/24 dev $dev
route replace default via 10.0.2.2
EOS2
echo "nameserver 10.0.2.3" > /etc/resolv.conf
echo "hypermesh-guest-init: $dev 10.0.2.15/24, ssh key ${key%%:*}"
"""

# Needs nothing but the root file system (mounted rw by the kernel): it starts with the first units of the
# boot, and the SSH socket listens only once the key and the address are there. Its last line goes to the
# serial console too: the harness starts probing SSH when it sees it (qemu.GUEST_READY).
GUEST_INIT_UNIT = """[Unit]
Description=hypermesh harness: network and ssh key from the kernel command line
DefaultDependencies=no
Before=ssh.socket ssh.service network-pre.target network.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/hypermesh-guest-init
RemainAfterExit=yes
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
"""

# Units that only cost boot time in a throwaway guest booted from a finished image: timers, logins on
# consoles, first-boot and "/usr was updated" work (ldconfig, catalog, update-done: the image is never
# booted before, so ConditionNeedsUpdate would hold on every boot), binfmt, configfs, pstore, the random
# seed (virtio-rng and RDRAND feed the kernel), static device nodes, sysusers (users are made at build
# time), module lists (none are configured), the remount of / (the kernel mounts it rw) and the static
# device nodes in /dev (devtmpfs has the nodes of every driver present).
MASKED_UNITS = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "getty@tty1.service", "systemd-networkd-wait-online.service",
    "networking.service", "man-db.timer", "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "systemd-journal-flush.service",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount", "getty-static.service",
    "serial-getty@ttyS0.service", "systemd-logind.service",
    "ldconfig.service", "systemd-journal-catalog-update.service", "systemd-update-done.service",
    "systemd-hwdb-update.service", "systemd-firstboot.service", "systemd-machine-id-commit.service",
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "sys-kernel-config.mount", "modprobe@configfs.service", "modprobe@efi_pstore.service",
    "systemd-pstore.service", "systemd-random-seed.service", "kmod-static-nodes.service",
    "systemd-sysusers.service", "systemd-modules-load.service", "systemd-udev-load-credentials.service",
    "sshd-keygen.service", "systemd-remount-fs.service", "systemd-tmpfiles-setup-dev-early.service",
    "systemd-tmpfiles-setup-dev.service",
]

# Generators that find nothing to do in a guest (no GPT, TPM, hibernation, SysV scripts, vsock) but cost a
# process each on every boot; systemd-ssh-generator also loads the vsock modules. The fstab generator stays.
MASKED_GENERATORS = [
    "systemd-ssh-generator", "systemd-gpt-auto-generator", "systemd-getty-generator", "systemd-tpm2-generator",
    "systemd-hibernate-resume-generator", "systemd-rc-local-generator", "systemd-system-update-generator",
    "systemd-run-generator", "systemd-sysv-generator", "systemd-bless-boot-generator",
    "systemd-cryptsetup-generator", "systemd-veritysetup-generator", "systemd-integritysetup-generator",
    "systemd-import-generator", "systemd-factory-reset-generator",
]

# Changes to units of the distribution (drop-ins).
DROP_INS = {
    # udev's coldplug only for the devices systemd and the guest use (disk, network): the full one runs every
    # rule on every device and loads a driver module per CPU feature, input and platform device, the
    # boot's largest cost under emulation. udevd itself runs as usual and handles every hotplug event
    # (veth pairs and the like).
    "systemd-udev-trigger.service": """[Service]
ExecStart=
ExecStart=-/bin/udevadm trigger --type=devices --action=add --subsystem-match=block --subsystem-match=net
""",
    # sshd checks its configuration by starting once more before it starts (trixie on: ssh.service behind
    # ssh.socket); sshd -D refuses a bad configuration itself.
    "ssh.service": """[Service]
ExecStartPre=
""",
}

# Before the kernel is installed: a small initramfs with only what the guest needs to find its root and
# network (virtio), instead of "most" modules; it boots seconds faster under emulation.
ESSENTIAL_HOOKS = [
    'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"',
    'echo MODULES=list > "$1/etc/initramfs-tools/conf.d/hypermesh"',
    'printf "virtio_pci\\nvirtio_blk\\nvirtio_net\\next4\\n" > "$1/usr/share/initramfs-tools/modules.d/hypermesh"',
]


def cache_dir(environ=None):
    environ = os.environ if environ is None else environ
    return environ.get("HYPERMESH_CACHE", DEFAULT_CACHE)


def cache_key(suite, packages=None):
    """A digest of every input of an image: the whole mmdebstrap command (suite, packages, options, the
    boot script and unit in its hooks) but not the mirror, the image size and the recipe version."""
    argv = mmdebstrap_argv(suite, "ROOTFS", "MIRROR", packages)
    blob = json.dumps({"recipe": RECIPE_VERSION, "argv": argv, "size": IMAGE_SIZE}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_dir(suite, cache=None):
    return os.path.join(cache or cache_dir(), "images", "%s-%s" % (suite, cache_key(suite)))


def load_manifest(path):
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def customize_hooks(hostname):
    """mmdebstrap --customize-hook commands ("$1" is the rootfs)."""
    hooks = [
        'mkdir -p "$1/usr/local/sbin" "$1/etc/systemd/system/sysinit.target.wants" "$1/etc/systemd/system-generators"',
        'cat > "$1/usr/local/sbin/hypermesh-guest-init" <<"EOS"\n%sEOS' % GUEST_INIT,
        'chmod 755 "$1/usr/local/sbin/hypermesh-guest-init"',
        'cat > "$1/etc/systemd/system/hypermesh-guest-init.service" <<"EOS"\n%sEOS' % GUEST_INIT_UNIT,
        'ln -sf /etc/systemd/system/hypermesh-guest-init.service '
        '"$1/etc/systemd/system/sysinit.target.wants/hypermesh-guest-init.service"',
        'mkdir -p -m 700 "$1/root/.ssh"',
        # sshd started per connection by its socket: the port listens seconds earlier than ssh.service
        # would (whose start alone takes 10-30 s under emulation), and Ansible keeps one connection open
        'rm -f "$1/etc/systemd/system/multi-user.target.wants/ssh.service" "$1/etc/systemd/system/sshd.service"',
        'mkdir -p "$1/etc/systemd/system/sockets.target.wants"',
        'ln -sf /lib/systemd/system/ssh.socket "$1/etc/systemd/system/sockets.target.wants/ssh.socket"',
        'echo %s > "$1/etc/hostname"' % hostname,
        'printf "127.0.0.1 localhost\\n127.0.1.1 %s\\n" > "$1/etc/hosts"' % hostname,
        # by label: the Debian guests boot from NVMe, a custom kernel from virtio-blk (qemu.py); no fsck pass,
        # which would wait for udev to announce the device
        'echo "LABEL=root / ext4 rw,relatime 0 0" > "$1/etc/fstab"',
        # a machine id of its own, so that no boot of the image runs systemd's first-boot work
        'systemd-machine-id-setup --root "$1"',
        'mkdir -p "$1/etc/systemd/journald.conf.d" "$1/etc/modprobe.d"',
        'printf "[Journal]\\nStorage=volatile\\n" > "$1/etc/systemd/journald.conf.d/hypermesh.conf"',
        # no automatic load of kvm (no nested guests) nor of vsock (systemd asks for AF_VSOCK at every start;
        # a guest of ours has no vsock device): each costs a module load under emulation
        'printf "blacklist %s\\n" kvm kvm_amd kvm_intel vsock vsock_loopback vmw_vsock_virtio_transport '
        '> "$1/etc/modprobe.d/hypermesh.conf"',
        'printf "UseDNS no\\nPermitRootLogin prohibit-password\\n" > "$1/etc/ssh/sshd_config.d/hypermesh.conf"'
        ' 2>/dev/null || printf "UseDNS no\\n" >> "$1/etc/ssh/sshd_config"',
    ]
    hooks += ['mkdir -p "$1/etc/systemd/system/%s.d"' % unit for unit in sorted(DROP_INS)]
    for unit, text in sorted(DROP_INS.items()):
        hooks.append('cat > "$1/etc/systemd/system/%s.d/hypermesh.conf" <<"EOS"\n%sEOS' % (unit, text))
    for unit in MASKED_UNITS:
        hooks.append('ln -sf /dev/null "$1/etc/systemd/system/%s"' % unit)
    for generator in MASKED_GENERATORS:
        hooks.append('ln -sf /dev/null "$1/etc/systemd/system-generators/%s"' % generator)
    return hooks


def mmdebstrap_argv(suite, rootdir, mirror, packages=None):
    argv = ["mmdebstrap", "--variant=minbase", "--mode=root",
            "--skip=cleanup/apt/lists,cleanup/reproducible",
            "--include=" + ",".join(packages or PACKAGES), "--components=main",
            # a snapshot mirror serves suites whose Release has expired: accept them (kept in the guest)
            "--aptopt=Acquire::Retries \"3\"", "--aptopt=Acquire::Check-Valid-Until \"false\""]
    for hook in ESSENTIAL_HOOKS:
        argv.append("--essential-hook=" + hook)
    for hook in customize_hooks("hm-" + suite):
        argv.append("--customize-hook=" + hook)
    argv += [suite, rootdir, mirror]
    return argv


def kernel_files(rootdir):
    """(release, vmlinuz path, initrd path) of the newest kernel in rootdir/boot."""
    kernels = sorted(glob.glob(os.path.join(rootdir, "boot", "vmlinuz-*")))
    if not kernels:
        raise RuntimeError("no kernel in %s/boot" % rootdir)
    vmlinuz = kernels[-1]
    release = os.path.basename(vmlinuz)[len("vmlinuz-"):]
    initrd = os.path.join(rootdir, "boot", "initrd.img-" + release)
    if not os.path.exists(initrd):
        raise RuntimeError("no initrd for %s in %s/boot" % (release, rootdir))
    return release, vmlinuz, initrd


def root_disk(rootdir, release):
    """How a guest of this image finds its root: "nvme" when the kernel has the NVMe driver and ext4 built in
    (Debian's cloud kernels do: the guest boots without an initramfs, seconds faster under emulation), else
    "virtio" (virtio-blk, whose driver the initramfs loads)."""
    try:
        with open(os.path.join(rootdir, "boot", "config-" + release)) as f:
            config = set(line.strip() for line in f)
    except OSError:
        return "virtio"
    if "CONFIG_BLK_DEV_NVME=y" in config and "CONFIG_EXT4_FS=y" in config:
        return "nvme"
    return "virtio"


def build_in_progress(path):
    """True for the work directory of a build whose process still runs (<image>.building.<pid>)."""
    head, sep, pid = os.path.basename(path).rpartition(".building.")
    return bool(sep) and pid.isdigit() and os.path.exists("/proc/" + pid)


def prune(suite, keep, log=print):
    """Remove images of suite built from other inputs (older recipes) and leftovers of killed builds; never
    the work directory of a build still running (two builds at once, e.g. a matrix run and `harness build`)."""
    for old in glob.glob(os.path.join(os.path.dirname(keep), suite + "-*")):
        if old != keep and os.path.basename(old).split("-", 1)[0] == suite and not build_in_progress(old):
            shutil.rmtree(old, ignore_errors=True)
            log("image %s: removed stale %s" % (suite, os.path.basename(old)))


def build(suite, cache=None, log=print):
    """Build the image for suite unless the cache holds it. Returns its manifest (with 'path')."""
    path = image_dir(suite, cache)
    manifest = load_manifest(path)
    if manifest:
        manifest["path"] = path
        manifest["cached"] = True
        return manifest
    started = time.time()
    work = path + ".building.%d" % os.getpid()
    rootdir = os.path.join(work, "rootfs")
    os.makedirs(work)
    env = dict(os.environ)
    proxy = aptconf.host_proxy()
    if proxy:
        env["http_proxy"] = proxy
    try:
        argv = mmdebstrap_argv(suite, rootdir, aptconf.host_mirror())
        log("image %s: mmdebstrap (%s)" % (suite, ", ".join(PACKAGES)))
        res = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError("mmdebstrap %s failed:\n%s" % (suite, res.stdout[-4000:]))
        release, vmlinuz, initrd = kernel_files(rootdir)
        shutil.copyfile(vmlinuz, os.path.join(work, "vmlinuz"))
        shutil.copyfile(initrd, os.path.join(work, "initrd.img"))
        disk = root_disk(rootdir, release)
        log("image %s: mke2fs -d (kernel %s, root on %s)" % (suite, release, disk))
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", rootdir,
                        os.path.join(work, "rootfs.img"), IMAGE_SIZE], check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(rootdir)
        manifest = {"suite": suite, "key": cache_key(suite), "release": release,
                    "root_disk": disk,
                    "packages": PACKAGES, "build_seconds": round(time.time() - started, 1),
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(path):  # another build won the race
            shutil.rmtree(work)
        else:
            os.rename(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    prune(suite, path, log)
    log("image %s: built in %.0f s" % (suite, manifest["build_seconds"]))
    manifest["path"] = path
    manifest["cached"] = False
    return manifest
