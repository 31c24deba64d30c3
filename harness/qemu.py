"""Boot a guest under qemu and tear it down without leaving anything behind.

KVM or plain emulation (TCG), as harness/accel.py decides. User-mode networking with SSH forwarded from a
free port on 127.0.0.1 only. The kernel (and its initrd where it needs one) is given to qemu directly
(-kernel/-initrd), the root file system is a qcow2 overlay over the cached image on an NVMe disk (Debian's
cloud kernels have that driver built in: no initramfs) or a virtio disk. The serial console goes to a file,
shown when the guest fails.

A guest that reboots is reset by qemu and boots the same kernel and command line again in the same process
(the SSH port forward stays). A kernel panic reboots it at once (panic=-1, so a panicked guest never hangs an
SSH session); the boot wait reads the console and gives up on the first panic it shows.
"""
import errno
import json
import os
import signal
import socket
import subprocess
import time

BASE_CMDLINE = "console=ttyS0 rw net.ifnames=0 panic=-1"

# The root disk: NVMe for Debian's cloud kernels (driver built in: no initramfs to unpack and run), virtio-blk
# for a kernel whose initramfs loads the driver (and the custom guest, as docs/harness.md describes).
ROOT = {"nvme": "root=/dev/nvme0n1 rootfstype=ext4 rootwait", "virtio": "root=/dev/vda"}


# What the guest's boot unit (images.GUEST_INIT) prints on the console once its address and SSH key are set.
# SSH is probed only from then on (or after READY_WAIT seconds, for a root file system without that unit):
# a connection qemu forwards before the guest has its address is answered by no one, and qemu's user-mode
# stack then retries it only after seconds of back-off.
GUEST_READY = b"hypermesh-guest-init: "
READY_WAIT = 60

# What a panicking kernel prints first, and how each boot's kernel log starts (where a panic's report ends).
PANIC = b"Kernel panic - not syncing"
BOOT_START = b"Linux version "


class GuestError(Exception):
    def __init__(self, message, console=""):
        Exception.__init__(self, message)
        self.console = console


class QemuStartError(GuestError):
    """qemu exited at start (before it daemonized); `output` is what it printed."""

    def __init__(self, message, output):
        GuestError.__init__(self, message)
        self.output = output


# TCG's translation cache, in MiB (qemu's default: 1 GiB). A guest reset does not empty it: the code translated
# in the previous boot stays, and every page the new boot writes (firmware, kernel, page cache) that still holds
# some of it costs an invalidation of each of its blocks. With 1 GiB (about 600,000 blocks left by a first boot)
# that stalled a lone trixie guest's reboot by 11-39 s; 128 MiB fills within seconds of the new boot and is then
# emptied at once. Measured in docs/harness.md ("Reboots and panics"): first boots and work in the guest are no
# slower with it.
TCG_TB_SIZE = 128


def accel_args(kvm):
    if kvm:
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi,tb-size=%d" % TCG_TB_SIZE, "-cpu", "max"]


def free_port(host="127.0.0.1"):
    """A TCP port free on host right now (the kernel picks it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_in_use(port, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return False
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        s.close()


def kernel_cmdline(pubkey, extra="", disk="virtio"):
    """The guest's kernel command line: console, root, the run's SSH key, then the guest's own extras."""
    parts = pubkey.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key")
    line = "%s %s hypermesh.key=%s:%s" % (BASE_CMDLINE, ROOT[disk], parts[0], parts[1])
    if extra.strip():
        line += " " + " ".join(extra.split())
    return line


def disk_args(path, disk):
    if disk == "nvme":
        return ["-drive", "file=%s,if=none,id=root,format=qcow2,cache=unsafe" % path,
                "-device", "nvme,drive=root,serial=hypermesh"]
    return ["-drive", "file=%s,if=virtio,format=qcow2,cache=unsafe" % path]


def qemu_argv(name, kernel, initrd, disk, port, cmdline, console, pidfile, kvm, memory=1024, cpus=1,
              disk_type="virtio"):
    argv = ["qemu-system-x86_64", "-name", "hypermesh-" + name, "-machine", "q35"]
    argv += accel_args(kvm)
    argv += ["-smp", str(cpus), "-m", str(memory), "-nodefaults", "-display", "none",
             "-serial", "file:" + console, "-kernel", kernel]
    if initrd:
        argv += ["-initrd", initrd]
    argv += ["-append", cmdline] + disk_args(disk, disk_type)
    argv += ["-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22" % port,
             "-device", "virtio-net-pci,netdev=n0",
             "-device", "virtio-rng-pci",
             "-daemonize", "-pidfile", pidfile]
    return argv


def ssh_argv(port, key, command=None, user="root", timeout=30):
    # ConnectTimeout also bounds ssh's handshake, which takes seconds in a guest under emulation on a busy
    # host: a short one only makes the first connections give up half-way and start over.
    argv = ["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % timeout,
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "%s@127.0.0.1" % user]
    if command:
        argv.append(command)
    return argv


def tail(path, lines=60):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no console log at %s)" % path


def find_panic(console, lines=60):
    """(the panic line, the console's last `lines` lines up to the end of that panic's report), or None."""
    at = console.find(PANIC)
    if at < 0:
        return None
    line = console[at:].split(b"\n", 1)[0].decode(errors="replace").strip()
    end = console.find(BOOT_START, at)  # the boot that panic=-1 started: cut at the start of its line
    end = console.rfind(b"\n", at, end) + 1 if end >= 0 else len(console)
    text = console[:end].decode(errors="replace")
    return line, "".join(text.splitlines(True)[-lines:])


def read_pid(pidfile):
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def pid_is_guest(pid, name):
    """True when pid is alive and is the qemu of this guest (never signal a recycled pid)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"hypermesh-" + name.encode() in argv


def image_root_disk(image):
    """"nvme" or "virtio", from the image's manifest (images.py; images of before it was recorded: virtio)."""
    try:
        with open(os.path.join(image, "manifest.json")) as f:
            return json.load(f).get("root_disk", "virtio")
    except (OSError, ValueError):
        return "virtio"


class Guest(object):
    """One running guest: its state lives in statedir/<name>/."""

    def __init__(self, name, statedir):
        self.name = name
        self.dir = os.path.join(statedir, name)
        self.overlay = os.path.join(self.dir, "overlay.qcow2")
        self.console = os.path.join(self.dir, "console.log")
        self.pidfile = os.path.join(self.dir, "qemu.pid")

    def start(self, image, key, extra_cmdline="", kernel=None, initrd=None, kvm=False, memory=1024):
        """Start qemu in the background; returns the forwarded SSH port."""
        os.makedirs(self.dir, exist_ok=True)
        if os.path.exists(self.overlay):
            raise GuestError("guest %s: %s exists (still running? run destroy first)" % (self.name, self.overlay))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        os.path.join(image, "rootfs.img"), self.overlay], check=True)
        disk = "virtio"
        if kernel is None:  # the image's own kernel: its manifest says how it finds its root
            kernel = os.path.join(image, "vmlinuz")
            disk = image_root_disk(image)
            if disk == "virtio" and initrd is None:
                initrd = os.path.join(image, "initrd.img")
        with open(key + ".pub") as f:
            cmdline = kernel_cmdline(f.read(), extra_cmdline, disk)
        if os.path.exists(self.console):  # the console of an earlier boot: first_output() reads this one's
            os.unlink(self.console)
        last = ""
        for _unused in range(5):  # the port may be taken between free_port() and qemu's bind
            port = free_port()
            argv = qemu_argv(self.name, kernel, initrd, self.overlay, port, cmdline, self.console,
                             self.pidfile, kvm, memory, disk_type=disk)
            res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
            if res.returncode == 0:
                self.port = port
                self.kvm = kvm
                return port
            last = res.stdout
            if "hostfwd" not in last and "Could not set up host forwarding" not in last:
                break
        for path in (self.overlay, self.pidfile):
            if os.path.exists(path):
                os.unlink(path)
        raise QemuStartError("guest %s: qemu failed to start: %s" % (self.name, last.strip()), last)

    def first_output(self, seconds):
        """Wait up to `seconds` for the first byte on the serial console: None when it came, else why not."""
        deadline = time.time() + seconds
        while True:
            if os.path.exists(self.console) and os.path.getsize(self.console) > 0:
                return None
            pid = read_pid(self.pidfile)
            if pid is None or not pid_is_guest(pid, self.name):
                return "qemu exited before its first console byte"
            if time.time() >= deadline:
                return "silent console for %d s" % seconds
            time.sleep(0.1)

    def read_console(self):
        try:
            with open(self.console, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def check_booting(self):
        """The console so far; GuestError with the console when qemu is gone or the kernel panicked (the guest
        is stopped then: panic=-1 would boot it into the same panic again and again)."""
        pid = read_pid(self.pidfile)
        if pid is None or not pid_is_guest(pid, self.name):
            raise GuestError("guest %s: qemu exited during boot" % self.name, tail(self.console))
        console = self.read_console()
        panic = find_panic(console)
        if panic:
            self.stop()
            raise GuestError("guest %s: kernel panic during boot: %s" % (self.name, panic[0]), panic[1])
        return console

    def wait_ssh(self, port, key, timeout=240):
        """Seconds until `ssh true` works; GuestError with the console when qemu dies, the kernel panics or
        time runs out."""
        started = time.time()
        ready = False
        while time.time() - started < timeout:
            console = self.check_booting()
            if not ready:
                ready = GUEST_READY in console or time.time() - started > READY_WAIT
                if not ready:
                    time.sleep(0.2)
                    continue
            try:
                res = subprocess.run(ssh_argv(port, key, "true"), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=60, check=False)
                if res.returncode == 0:
                    return time.time() - started
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
        raise GuestError("guest %s: no SSH after %d s" % (self.name, timeout), tail(self.console))

    def stop(self, timeout=15):
        """Stop qemu (if it is ours), remove the overlay and pidfile. Returns what it did."""
        done = []
        pid = read_pid(self.pidfile)
        if pid and pid_is_guest(pid, self.name):
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + timeout
            while pid_is_guest(pid, self.name) and time.time() < deadline:
                time.sleep(0.1)
            if pid_is_guest(pid, self.name):
                os.kill(pid, signal.SIGKILL)
                while pid_is_guest(pid, self.name):
                    time.sleep(0.1)
            done.append("stopped qemu %d" % pid)
        for path in (self.overlay, self.pidfile):
            if os.path.exists(path):
                os.unlink(path)
                done.append("removed " + os.path.basename(path))
        return done
