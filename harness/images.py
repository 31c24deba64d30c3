"""Debian guest images, built on demand with mmdebstrap and cached by a key of their inputs.

An image is a directory in the cache:  <cache>/images/<suite>-<key>/
    rootfs.img    ext4 of the whole root file system (made with `mke2fs -d`), never written after the build
    vmlinuz       the kernel, and initrd.img its initramfs, copied out of the rootfs' /boot
    manifest.json suite, key, kernel release, build time
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

RECIPE_VERSION = 1
DEFAULT_CACHE = "/var/cache/hypermesh-ebpf"
IMAGE_SIZE = "3G"

# Everything a guest has before `prepare`: a bootable Debian with python3 and sshd. libbpf, bpftool and
# pyroute2 are NOT here: they come from the prepare step, as on a real fleet.
PACKAGES = ["systemd-sysv", "udev", "linux-image-cloud-amd64", "python3", "openssh-server", "iproute2"]

# Runs at every boot, before sshd: static address for qemu's user-mode network (no DHCP client to wait
# for) and root's authorized key from the kernel command line (hypermesh.key=<type>:<base64>), so the
# cached image never holds a per-run key.
GUEST_INIT = r"""#!/bin/sh
set -u
key=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^hypermesh\.key=//p' | tail -n 1)
if [ -n "$key" ]; then
  mkdir -p -m 700 /root/.ssh
  echo "${key%%:*} ${key#*:} hypermesh-harness" > /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
i=0
while [ $i -lt 100 ]; do
  dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
  [ -n "$dev" ] && break
  i=$((i + 1)); sleep 0.1
done
ip link set lo up
[ -n "$dev" ] || exit 0
ip link set "$dev" up
ip addr add 10.0.2.15/24 dev "$dev" 2>/dev/null
ip route replace default via 10.0.2.2
echo "nameserver 10.0.2.3" > /etc/resolv.conf
"""

GUEST_INIT_UNIT = """[Unit]
Description=hypermesh harness: network and ssh key from the kernel command line
DefaultDependencies=no
After=local-fs.target systemd-udev-trigger.service
Before=ssh.service network.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/hypermesh-guest-init
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

# Units that only cost boot time in a throwaway guest.
MASKED_UNITS = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "getty@tty1.service", "systemd-networkd-wait-online.service",
    "networking.service", "man-db.timer", "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "systemd-journal-flush.service",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount", "getty-static.service",
    "serial-getty@ttyS0.service", "systemd-logind.service",
]

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
        'mkdir -p "$1/usr/local/sbin" "$1/etc/systemd/system/multi-user.target.wants"',
        'cat > "$1/usr/local/sbin/hypermesh-guest-init" <<"EOS"\n%sEOS' % GUEST_INIT,
        'chmod 755 "$1/usr/local/sbin/hypermesh-guest-init"',
        'cat > "$1/etc/systemd/system/hypermesh-guest-init.service" <<"EOS"\n%sEOS' % GUEST_INIT_UNIT,
        'ln -sf /etc/systemd/system/hypermesh-guest-init.service '
        '"$1/etc/systemd/system/multi-user.target.wants/hypermesh-guest-init.service"',
        # sshd started per connection by its socket: the port listens seconds earlier than ssh.service
        # would (whose start alone takes 10-30 s under emulation), and Ansible keeps one connection open
        'rm -f "$1/etc/systemd/system/multi-user.target.wants/ssh.service" "$1/etc/systemd/system/sshd.service"',
        'mkdir -p "$1/etc/systemd/system/sockets.target.wants"',
        'ln -sf /lib/systemd/system/ssh.socket "$1/etc/systemd/system/sockets.target.wants/ssh.socket"',
        'echo %s > "$1/etc/hostname"' % hostname,
        'printf "127.0.0.1 localhost\\n127.0.1.1 %s\\n" > "$1/etc/hosts"' % hostname,
        'echo "/dev/vda / ext4 rw,relatime 0 1" > "$1/etc/fstab"',
        # a machine id of its own, so that no boot of the image runs systemd's first-boot work
        'systemd-machine-id-setup --root "$1"',
        'mkdir -p "$1/etc/systemd/journald.conf.d" "$1/etc/modprobe.d"',
        'printf "[Journal]\\nStorage=volatile\\n" > "$1/etc/systemd/journald.conf.d/hypermesh.conf"',
        'printf "blacklist kvm\\nblacklist kvm_amd\\nblacklist kvm_intel\\n" > "$1/etc/modprobe.d/hypermesh.conf"',
        'printf "UseDNS no\\nPermitRootLogin prohibit-password\\n" > "$1/etc/ssh/sshd_config.d/hypermesh.conf"'
        ' 2>/dev/null || printf "UseDNS no\\n" >> "$1/etc/ssh/sshd_config"',
    ]
    for unit in MASKED_UNITS:
        hooks.append('ln -sf /dev/null "$1/etc/systemd/system/%s"' % unit)
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


def prune(suite, keep, log=print):
    """Remove images of suite built from other inputs (older recipes) and leftovers of killed builds."""
    for old in glob.glob(os.path.join(os.path.dirname(keep), suite + "-*")):
        if old != keep and os.path.basename(old).split("-", 1)[0] == suite:
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
        res = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            raise RuntimeError("mmdebstrap %s failed:\n%s" % (suite, res.stdout[-4000:]))
        release, vmlinuz, initrd = kernel_files(rootdir)
        shutil.copyfile(vmlinuz, os.path.join(work, "vmlinuz"))
        shutil.copyfile(initrd, os.path.join(work, "initrd.img"))
        log("image %s: mke2fs -d (kernel %s)" % (suite, release))
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", rootdir,
                        os.path.join(work, "rootfs.img"), IMAGE_SIZE], check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(rootdir)
        manifest = {"suite": suite, "key": cache_key(suite), "release": release,
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
