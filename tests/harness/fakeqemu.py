"""A stand-in for qemu-system-x86_64 (put first on PATH by test_accel.py) that fails the way KVM fails here.

What it does under `-accel kvm...` is $FAKE_KVM, under TCG $FAKE_TCG:
  exit    print qemu's MSR abort of this machine and exit 1 (qemu -daemonize exits so when its child aborts)
  silent  daemonize and never write a byte on the console
  boot    daemonize and print a boot, up to the guest's boot unit line (then SSH is probed: the fake ssh says yes)
  panic   daemonize and print a kernel panic
  die     daemonize, then exit at once without a byte on the console
Each start appends "<accel> <pid of the daemon or -> " to $FAKE_CALLS.
"""
import os
import subprocess
import sys
import time

MSR_ABORT = ("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
             "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion "
             "`ret == cpu->kvm_msr_buf->nmsrs' failed.\n")
CONSOLE = {
    "silent": b"",
    "boot": b"[    0.000000] Linux version 6.1.0-fake\n[    1.0] hypermesh-guest-init: eth0 10.0.2.15/24\n",
    "panic": b"[    0.000000] Linux version 6.1.0-fake\n"
             b"[    0.9] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n",
}


def opt(argv, name):
    return argv[argv.index(name) + 1]


def guest(behaviour, console, name):
    """The daemon: its argv names the guest (hypermesh-NAME), as the harness' pid guard checks."""
    if behaviour == "die":
        return
    with open(console, "ab") as f:
        f.write(CONSOLE[behaviour])
    time.sleep(300)


def main(argv):
    accel = opt(argv, "-accel").split(",")[0]
    behaviour = os.environ["FAKE_KVM" if accel == "kvm" else "FAKE_TCG"]
    if behaviour == "exit":
        with open(os.environ["FAKE_CALLS"], "a") as f:
            f.write("%s -\n" % accel)
        sys.stderr.write(MSR_ABORT)
        return 1
    console = opt(argv, "-serial")[len("file:"):]
    open(console, "wb").close()  # qemu truncates its console file at start
    daemon = subprocess.Popen([sys.executable, __file__, "--guest", behaviour, console, "-name", opt(argv, "-name")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    with open(opt(argv, "-pidfile"), "w") as f:
        f.write("%d\n" % daemon.pid)
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write("%s %d\n" % (accel, daemon.pid))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--guest":
        guest(sys.argv[2], sys.argv[3], sys.argv[5])
    else:
        sys.exit(main(sys.argv[1:]))
