"""The accelerator decision of `python -m harness up`: each way KVM fails (a fake qemu first on PATH), forced
modes, the verdict kept until the host reboots; then the real qemu of this machine."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from harness import accel, images, qemu

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakeqemu.py")
MSR = "KVM cannot run guests here (qemu: failed to set MSR 0x10a to 0x69; ../../target/i386/kvm/kvm.c:3183: "
TAIL = "): using TCG until this host reboots"


class Harness(object):
    """`python -m harness up/down` with the fake qemu and an ssh that always connects, in a tmp cache."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.cache = tmp_path / "cache"
        self.state = tmp_path / "state"
        self.calls = tmp_path / "calls"
        self.verdict = self.cache / accel.VERDICT_FILE
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "qemu-system-x86_64").write_text('#!/bin/sh\nexec %s %s "$@"\n' % (sys.executable, FAKE))
        (bin_dir / "ssh").write_text("#!/bin/sh\nexit 0\n")
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        self.path = "%s:%s" % (bin_dir, os.environ["PATH"])
        for suite in ("bookworm", "trixie"):
            image = images.image_dir(suite, str(self.cache))
            os.makedirs(image)
            with open(os.path.join(image, "manifest.json"), "w") as f:
                json.dump({"suite": suite, "root_disk": "nvme"}, f)
            open(os.path.join(image, "vmlinuz"), "w").close()
            with open(os.path.join(image, "rootfs.img"), "wb") as f:
                f.truncate(1 << 20)

    def run(self, *argv, **env):
        full = dict(os.environ, PATH=self.path, HYPERMESH_CACHE=str(self.cache), FAKE_CALLS=str(self.calls),
                    FAKE_KVM="boot", FAKE_TCG="boot")
        full.pop("HYPERMESH_ACCEL", None)
        full.pop("HYPERMESH_PROGRESS", None)
        full.update(env)
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "harness"] + list(argv), cwd=TOP, env=full,
                              capture_output=True, text=True, timeout=120, check=False)
        proc.seconds = time.time() - started
        return proc

    def up(self, *guests, **env):
        proc = self.run("up", "--state", str(self.state), *guests, **env)
        proc.instances = json.loads(proc.stdout) if proc.returncode == 0 else None
        return proc

    def starts(self):
        """[(accel, daemon pid or None)] of every fake qemu start so far."""
        if not self.calls.exists():
            return []
        rows = [line.split() for line in self.calls.read_text().splitlines()]
        return [(a, None if p == "-" else int(p)) for a, p in rows]

    def accels(self):
        return [a for a, _unused in self.starts()]

    def down(self):
        assert self.run("down", "--state", str(self.state)).returncode == 0
        for _unused, pid in self.starts():
            assert pid is None or not alive(pid)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.run("down", "--state", str(h.state))
    for _unused, pid in h.starts():
        if pid and alive(pid):
            os.kill(pid, 9)


def verdict_lines(stderr):
    return [line for line in stderr.splitlines() if "KVM cannot run guests here" in line]


def test_qemu_exiting_at_start_demotes_the_run_once_and_is_remembered_until_reboot(harness):
    first = harness.up("bookworm", "trixie", FAKE_KVM="exit")
    assert first.returncode == 0, first.stderr
    assert [i["accel"] for i in first.instances] == ["tcg", "tcg"]
    assert harness.accels().count("kvm") == 1 and harness.accels().count("tcg") == 2  # one trial for the run
    lines = verdict_lines(first.stderr)
    assert len(lines) == 1 and MSR in lines[0] and lines[0].endswith(TAIL), first.stderr
    verdict = json.loads(harness.verdict.read_text())
    assert verdict["boot_id"] == accel.boot_id() and verdict["reason"].startswith("qemu: failed to set MSR 0x10a")
    harness.down()

    again = harness.up("bookworm", FAKE_KVM="exit")
    assert again.returncode == 0 and again.instances[0]["accel"] == "tcg"
    assert harness.accels().count("kvm") == 1  # no second trial in this host boot
    lines = verdict_lines(again.stderr)
    assert len(lines) == 1 and MSR in lines[0] and "in this host boot" in lines[0] and lines[0].endswith(TAIL)
    harness.down()


def test_a_silent_console_demotes_within_the_trial_and_the_silent_qemu_is_stopped(harness):
    proc = harness.up("bookworm", FAKE_KVM="silent")
    assert proc.returncode == 0, proc.stderr
    assert proc.instances[0]["accel"] == "tcg"
    assert len(verdict_lines(proc.stderr)) == 1
    assert "KVM cannot run guests here (silent console for %d s)" % accel.TRIAL_SECONDS in proc.stderr
    (kvm, silent_pid), (tcg, _unused) = harness.starts()
    assert (kvm, tcg) == ("kvm", "tcg") and not alive(silent_pid)
    assert proc.seconds < accel.TRIAL_SECONDS + 10
    assert json.loads(harness.verdict.read_text())["reason"] == "silent console for %d s" % accel.TRIAL_SECONDS
    harness.down()


def test_qemu_exiting_before_its_first_console_byte_demotes_at_once(harness):
    proc = harness.up("bookworm", FAKE_KVM="die")
    assert proc.returncode == 0, proc.stderr
    assert proc.instances[0]["accel"] == "tcg" and harness.accels() == ["kvm", "tcg"]
    lines = verdict_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].endswith("KVM cannot run guests here (qemu exited before its first "
                                                 "console byte" + TAIL), proc.stderr
    assert proc.seconds < accel.TRIAL_SECONDS  # no wait for the trial's end
    harness.down()


def test_a_guest_that_panics_only_under_kvm_is_booted_again_under_tcg_and_demotes(harness):
    proc = harness.up("bookworm", FAKE_KVM="panic")
    assert proc.returncode == 0, proc.stderr
    assert proc.instances[0]["accel"] == "tcg" and harness.accels() == ["kvm", "tcg"]
    lines = verdict_lines(proc.stderr)
    assert len(lines) == 1 and "kernel panic during boot: Kernel panic - not syncing" in lines[0], proc.stderr
    assert "under KVM; it booted under TCG" in lines[0] and lines[0].endswith(TAIL)
    assert harness.verdict.exists()
    harness.down()


def test_a_guest_that_panics_under_both_fails_and_leaves_no_verdict(harness):
    proc = harness.up("bookworm", FAKE_KVM="panic", FAKE_TCG="panic")
    assert proc.returncode == 1
    assert "guest bookworm: FAILED at step create: guest bookworm: kernel panic during boot" in proc.stderr
    assert verdict_lines(proc.stderr) == [] and not harness.verdict.exists()  # the guest's fault, not KVM's
    harness.down()


@pytest.mark.parametrize("behaviour, reason", [("exit", "qemu: failed to set MSR 0x10a to 0x69"),
                                               ("silent", "silent console for %d s" % accel.TRIAL_SECONDS)])
def test_forced_kvm_never_demotes_and_fails_every_guest_with_the_reason(harness, behaviour, reason):
    accel.write_verdict(str(harness.verdict), "an earlier verdict")  # forced kvm tries anyway
    proc = harness.up("bookworm", "trixie", FAKE_KVM=behaviour, HYPERMESH_ACCEL="kvm")
    assert proc.returncode == 1
    assert harness.accels() == ["kvm"]  # one trial, never TCG
    for name in ("bookworm", "trixie"):
        assert re.search(r"guest %s: FAILED at step create: guest %s: KVM cannot run guests here \(%s.*\); "
                         r"HYPERMESH_ACCEL=kvm: not using TCG" % (name, name, re.escape(reason)), proc.stderr)
    assert json.loads(harness.verdict.read_text())["reason"] == "an earlier verdict"
    harness.down()


def test_forced_kvm_panics_are_the_guests_failure(harness):
    proc = harness.up("bookworm", FAKE_KVM="panic", HYPERMESH_ACCEL="kvm")
    assert proc.returncode == 1 and harness.accels() == ["kvm"]
    assert "FAILED at step create: guest bookworm: kernel panic during boot" in proc.stderr
    harness.down()


def test_working_kvm_is_used_without_a_second_start(harness):
    proc = harness.up("bookworm", "trixie")
    assert proc.returncode == 0, proc.stderr
    assert [i["accel"] for i in proc.instances] == ["kvm", "kvm"] and harness.accels() == ["kvm", "kvm"]
    assert verdict_lines(proc.stderr) == [] and not harness.verdict.exists()
    harness.down()


def test_a_verdict_of_an_earlier_host_boot_is_not_used(harness):
    harness.cache.mkdir(exist_ok=True)
    harness.verdict.write_text(json.dumps({"boot_id": "another-boot", "reason": "old", "found": "then"}))
    proc = harness.up("bookworm")
    assert proc.returncode == 0 and proc.instances[0]["accel"] == "kvm" and harness.accels() == ["kvm"]
    harness.down()


def test_forced_tcg_never_tries_kvm(harness):
    proc = harness.up("bookworm", FAKE_KVM="exit", HYPERMESH_ACCEL="tcg")
    assert proc.returncode == 0 and harness.accels() == ["tcg"] and verdict_lines(proc.stderr) == []
    harness.down()


def test_an_unknown_mode_is_refused_before_anything_starts(harness):
    proc = harness.up("bookworm", HYPERMESH_ACCEL="fast")
    assert proc.returncode == 2 and "HYPERMESH_ACCEL=fast: one of auto, kvm, tcg" in proc.stderr
    assert harness.starts() == [] and not harness.state.exists()


def test_qemu_reason_is_one_line():
    assert accel.qemu_reason("qemu-system-x86_64: error: a\nqemu-system-x86_64: b\n") == "qemu: a; b"
    assert accel.qemu_reason("") == "qemu: exited at start without a message"


# The real qemu of this machine, on the real bookworm image, decides as a direct start of qemu under KVM says.

REAL_IMAGE = images.image_dir("bookworm")


def direct_kvm_start(tmp_path, seconds=10):
    """qemu -accel kvm -cpu host on the image's kernel, outside the harness: None when it prints on its
    console within `seconds`, else what went wrong (qemu's stderr, or "silent")."""
    console = tmp_path / "direct.log"
    proc = subprocess.Popen(["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256",
                             "-nodefaults", "-display", "none", "-serial", "file:%s" % console,
                             "-kernel", os.path.join(REAL_IMAGE, "vmlinuz"), "-append", "console=ttyS0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + seconds
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                return proc.stderr.read() or "exited %d" % proc.returncode
            if console.exists() and console.stat().st_size:
                return None
            time.sleep(0.1)
        return "silent"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="probe: no qemu-system-x86_64 on PATH")
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="probe: /dev/kvm not usable")
@pytest.mark.skipif(images.load_manifest(REAL_IMAGE) is None,
                    reason="probe: no bookworm image in %s (python -m harness build bookworm)" % REAL_IMAGE)
def test_the_real_qemu_decides_as_a_direct_kvm_start_says(tmp_path):
    direct = direct_kvm_start(tmp_path)
    cache = tmp_path / "cache"
    os.makedirs(str(cache / "images"))
    os.symlink(REAL_IMAGE, str(cache / "images" / os.path.basename(REAL_IMAGE)))
    env = dict(os.environ, HYPERMESH_CACHE=str(cache))
    env.pop("HYPERMESH_ACCEL", None)
    env.pop("HYPERMESH_PROGRESS", None)
    state = str(tmp_path / "state")
    try:
        started = time.time()
        up = subprocess.run([sys.executable, "-m", "harness", "up", "--state", state, "bookworm"], cwd=TOP, env=env,
                            capture_output=True, text=True, timeout=400, check=False)
        up.started = started
        assert up.returncode == 0, up.stderr
        instance = json.loads(up.stdout)[0]
        assert subprocess.run(qemu.ssh_argv(instance["port"], instance["identity_file"], "true"),
                              stdin=subprocess.DEVNULL, check=False).returncode == 0
    finally:
        assert subprocess.run([sys.executable, "-m", "harness", "down", "--state", state], cwd=TOP,
                              env=env, check=False).returncode == 0
    lines = verdict_lines(up.stderr)
    if direct is None:
        assert instance["accel"] == "kvm" and lines == []
        return
    assert instance["accel"] == "tcg" and len(lines) == 1 and lines[0].endswith(TAIL)
    if direct != "silent":  # qemu's own first message is the reason
        first = direct.splitlines()[0].replace("qemu-system-x86_64: ", "").replace("error: ", "")
        assert "(qemu: %s" % first in lines[0]
    # the decision costs seconds: the guest's TCG start comes within the trial's time of `up` starting
    tcg = re.search(r"^\[(\d\d):(\d\d):(\d\d)\] guest bookworm: qemu started \(tcg", up.stderr, re.M)
    at = int(tcg.group(1)) * 3600 + int(tcg.group(2)) * 60 + int(tcg.group(3))
    t = time.localtime(up.started)
    assert (at - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec)) % 86400 <= accel.TRIAL_SECONDS + 2, up.stderr
