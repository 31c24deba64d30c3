"""Which accelerator a run's guests use: KVM where it really runs guests, TCG otherwise, decided once per run.

HYPERMESH_ACCEL=auto (the default): the first guest the run starts is the trial. Its real qemu command line is
started under KVM and has TRIAL_SECONDS to print a first byte on the serial console. When qemu exits at start
(its own message is the reason), exits before that byte, or stays silent, KVM cannot run guests here: one line
says so and why, the run goes on under TCG (the trial guest is started again under TCG), and the verdict is
kept in the image cache under the host's boot id, so every run until the host reboots uses TCG at once (and
logs the same line). A guest that started under KVM but does not boot (a panic, qemu exiting, no SSH) is booted
again under TCG; when it boots there, that is the verdict too.
HYPERMESH_ACCEL=kvm: the same trial, but a failure fails the guests with its reason; never TCG.
HYPERMESH_ACCEL=tcg (or `up --tcg`): TCG, no trial.
"""
import json
import os
import threading
import time

from harness import qemu

MODES = ("auto", "kvm", "tcg")
TRIAL_SECONDS = 5  # a KVM guest's kernel prints within a second; TCG's within 2-3 s on a busy 2-core host
VERDICT_FILE = "kvm-verdict.json"


def mode_from_env(environ=None, force_tcg=False):
    """auto | kvm | tcg, from HYPERMESH_ACCEL (ValueError for anything else)."""
    environ = os.environ if environ is None else environ
    if force_tcg:
        return "tcg"
    mode = environ.get("HYPERMESH_ACCEL") or "auto"
    if mode not in MODES:
        raise ValueError("HYPERMESH_ACCEL=%s: one of %s" % (mode, ", ".join(MODES)))
    return mode


def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def qemu_reason(output):
    """qemu's message on one line: 'qemu: failed to set MSR 0x10a to 0x69; ...: Assertion ... failed.'"""
    lines = []
    for line in output.splitlines():
        line = line.strip()
        for prefix in ("qemu-system-x86_64: ", "error: "):
            if line.startswith(prefix):
                line = line[len(prefix):]
        if line:
            lines.append(line)
    return "qemu: " + ("; ".join(lines) or "exited at start without a message")


def read_verdict(path):
    """The verdict found earlier in this host boot ({"reason", "found"}), or None."""
    try:
        with open(path) as f:
            verdict = json.load(f)
        if verdict.get("boot_id") == boot_id() and verdict.get("reason"):
            return verdict
    except (OSError, ValueError, AttributeError):
        pass
    return None


def write_verdict(path, reason):
    """Keep the verdict until the host reboots (a cache that cannot be written only costs the next run a trial)."""
    verdict = {"boot_id": boot_id(), "reason": reason, "found": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(verdict, f)
        os.rename(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verdict_line(reason):
    return "KVM cannot run guests here (%s): using TCG until this host reboots" % reason


class Accel(object):
    """A run's accelerator: boot() starts and waits for one guest; the first start under auto|kvm is the trial."""

    def __init__(self, mode, verdict_path, log):
        self.mode = mode
        self.verdict_path = verdict_path
        self.log = log
        self.lock = threading.Lock()
        self.kvm = False if mode == "tcg" else None  # None: not decided yet
        self.failure = None  # HYPERMESH_ACCEL=kvm and KVM cannot run guests: why
        if mode == "auto":
            verdict = read_verdict(verdict_path)
            if verdict:
                self.kvm = False
                self.log(verdict_line("%s; found %s in this host boot" % (verdict["reason"], verdict["found"])))

    def boot(self, guest, start, wait):
        """start(kvm) starts guest's qemu and returns its SSH port, wait(port) waits for the guest (GuestError
        when it does not boot, the guest stopped). Returns whether the guest runs under KVM."""
        port, kvm = self._start(guest, start)
        try:
            wait(port)
        except qemu.GuestError as e:
            if not (kvm and self.mode == "auto"):
                raise
            self.log("%s, under KVM: booting it again under TCG" % e)
            wait(start(False))
            with self.lock:
                self._demote("%s, under KVM; it booted under TCG" % e)
            return False
        return kvm

    def _start(self, guest, start):
        with self.lock:
            if self.kvm is None and self.failure is None:
                reason, port = self._trial(guest, start)
                if reason is None:
                    self.kvm = True
                    return port, True
                self._demote(reason)
            if self.failure:
                raise qemu.GuestError("guest %s: %s" % (guest.name, self.failure))
            kvm = self.kvm
        return start(kvm), kvm

    def _trial(self, guest, start):
        """(None, port) when the guest started under KVM prints on its console in time, else (why not, None)."""
        try:
            port = start(True)
        except qemu.QemuStartError as e:
            return qemu_reason(e.output), None
        reason = guest.first_output(TRIAL_SECONDS)
        if reason is None:
            return None, port
        guest.stop()
        return reason, None

    def _demote(self, reason):
        """KVM cannot run guests here: TCG from now on (auto), or every guest fails with the reason (kvm)."""
        if self.mode == "kvm":
            self.failure = "KVM cannot run guests here (%s); HYPERMESH_ACCEL=kvm: not using TCG" % reason
            return
        if self.kvm is False:
            return
        self.kvm = False
        self.log(verdict_line(reason))
        write_verdict(self.verdict_path, reason)
