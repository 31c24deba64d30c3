"""qemu command lines, kernel command lines, ports, the guard that never signals a foreign pid, and the panic check."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from harness import guests, qemu

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey hypermesh-harness\n"


def test_cmdline_carries_key_and_extras():
    line = qemu.kernel_cmdline(KEY, "lsm=lockdown,capability,yama,apparmor,tomoyo,bpf")
    assert "hypermesh.key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey" in line
    assert line.endswith("lsm=lockdown,capability,yama,apparmor,tomoyo,bpf")
    assert "root=/dev/vda" in line and "console=ttyS0" in line


def test_cmdline_rejects_non_key():
    with pytest.raises(ValueError):
        qemu.kernel_cmdline("garbage")


@pytest.mark.parametrize("kvm, accel", [(True, "kvm"), (False, "tcg,thread=multi,tb-size=128")])
def test_qemu_argv(kvm, accel):
    argv = qemu.qemu_argv("sid", "/i/vmlinuz", "/i/initrd.img", "/s/overlay.qcow2", 2222, "console=ttyS0",
                          "/s/console.log", "/s/qemu.pid", kvm)
    assert argv[argv.index("-accel") + 1] == accel
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22" in argv  # loopback only
    assert argv[argv.index("-initrd") + 1] == "/i/initrd.img"
    assert "hypermesh-sid" in argv and "-daemonize" in argv
    assert "file:/s/console.log" in argv
    assert "-no-reboot" not in argv  # a guest's reboot resets the machine in the same qemu
    assert "panic=-1" in qemu.kernel_cmdline(KEY)  # a panic reboots at once: it never hangs an SSH session


def test_no_initrd_for_a_kernel_without_one():
    argv = qemu.qemu_argv("custom", "/k", None, "/o", 1, "c", "/c", "/p", False)
    assert "-initrd" not in argv


def test_free_port_is_free_and_port_in_use_sees_a_listener():
    port = qemu.free_port()
    assert not qemu.port_in_use(port)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        assert qemu.port_in_use(s.getsockname()[1])
    finally:
        s.close()


def test_pid_guard():
    assert not qemu.pid_is_guest(os.getpid(), "bookworm")  # pytest is not our qemu
    assert not qemu.pid_is_guest(2 ** 22 + 7, "bookworm")


def test_stop_without_qemu_removes_overlay(tmp_path):
    g = qemu.Guest("bookworm", str(tmp_path))
    os.makedirs(g.dir)
    open(g.overlay, "w").close()
    with open(g.pidfile, "w") as f:
        f.write(str(os.getpid()))  # a live pid that is not the guest: must not be signalled
    assert g.stop() == ["removed overlay.qcow2", "removed qemu.pid"]
    assert not os.path.exists(g.overlay)


def test_guest_table():
    assert guests.lookup("bullseye-lsm")["suite"] == "bullseye"
    assert "bpf" in guests.lookup("bullseye-lsm")["cmdline"]
    assert guests.lookup("bullseye")["cmdline"] == ""
    with pytest.raises(ValueError):
        guests.lookup("jessie")


def test_custom_guest(tmp_path):
    k = tmp_path / "vmlinuz-4.19"
    k.write_text("k")
    assert guests.custom_guest({}) is None
    g = guests.custom_guest({"HYPERMESH_GUEST_KERNEL": str(k), "HYPERMESH_GUEST_ROOTFS": "bullseye"})
    assert g["kernel"] == str(k) and g["initrd"] is None and g["suite"] == "bullseye"
    with pytest.raises(ValueError, match="no such file"):
        guests.custom_guest({"HYPERMESH_GUEST_KERNEL": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="HYPERMESH_GUEST_ROOTFS"):
        guests.custom_guest({"HYPERMESH_GUEST_KERNEL": str(k), "HYPERMESH_GUEST_ROOTFS": "potato"})


def test_nvme_root_without_initrd():
    line = qemu.kernel_cmdline(KEY, "", "nvme")
    assert "root=/dev/nvme0n1" in line and "rootwait" in line and "root=/dev/vda" not in line
    argv = qemu.qemu_argv("trixie", "/i/vmlinuz", None, "/s/overlay.qcow2", 2222, line, "/s/console.log",
                          "/s/qemu.pid", False, disk_type="nvme")
    assert "nvme,drive=root,serial=hypermesh" in argv and "-initrd" not in argv
    assert not any("if=virtio" in a for a in argv)


def _started_argv(tmp_path, monkeypatch, manifest, **kwargs):
    image = tmp_path / "image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps(manifest))
    key = tmp_path / "id"
    (tmp_path / "id.pub").write_text(KEY)
    seen = []

    def run(argv, **kw):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, "")
    monkeypatch.setattr(qemu.subprocess, "run", run)
    qemu.Guest("g", str(tmp_path / "state")).start(str(image), str(key), **kwargs)
    return seen[-1]


def test_start_boots_an_nvme_image_without_its_initrd(tmp_path, monkeypatch):
    argv = _started_argv(tmp_path, monkeypatch, {"root_disk": "nvme"})
    assert "-initrd" not in argv and "nvme,drive=root,serial=hypermesh" in argv
    assert "root=/dev/nvme0n1" in argv[argv.index("-append") + 1]


def test_start_boots_an_older_image_from_virtio_with_its_initrd(tmp_path, monkeypatch):
    argv = _started_argv(tmp_path, monkeypatch, {"release": "6.1.0-9-cloud-amd64"})
    assert argv[argv.index("-initrd") + 1] == str(tmp_path / "image" / "initrd.img")
    assert "root=/dev/vda" in argv[argv.index("-append") + 1]


def test_start_boots_a_custom_kernel_from_virtio(tmp_path, monkeypatch):
    argv = _started_argv(tmp_path, monkeypatch, {"root_disk": "nvme"}, kernel="/k/vmlinuz-4.19")
    assert argv[argv.index("-kernel") + 1] == "/k/vmlinuz-4.19" and "-initrd" not in argv
    assert "root=/dev/vda" in argv[argv.index("-append") + 1]


def test_ssh_is_probed_once_the_guest_init_line_is_on_the_console(tmp_path):
    g = qemu.Guest("sid", str(tmp_path))
    assert qemu.GUEST_READY not in g.read_console()  # no console yet
    os.makedirs(g.dir)
    with open(g.console, "wb") as f:
        f.write(b"[    7.7] hypermesh-guest-init[146]: hypermesh-guest-init: eth0 10.0.2.15/24, ssh key ssh-ed25519\n")
    assert qemu.GUEST_READY in g.read_console()
    # the boot unit prints exactly what the harness waits for
    from harness import images
    assert qemu.GUEST_READY.decode().strip() in images.GUEST_INIT
    assert "StandardOutput=journal+console" in images.GUEST_INIT_UNIT


PANIC_CONSOLE = (b"[    0.000000] Linux version 6.1.0-50-cloud-amd64\n"
                 b"[    1.2] hypermesh-guest-init: eth0 10.0.2.15/24\n"
                 b"[    1.9] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n"
                 b"[    1.9] Call Trace:\n"
                 b"[    1.9]  panic+0x118/0x2ea\n"
                 b"[    0.000000] Linux version 6.1.0-50-cloud-amd64\n"  # the boot panic=-1 started
                 b"[    0.000000] Command line: console=ttyS0\n")


def test_find_panic_cuts_the_console_at_the_next_boot():
    assert qemu.find_panic(b"[ 1.0] Linux version 6.1\n[ 2.0] Run /sbin/init as init process\n") is None
    line, report = qemu.find_panic(PANIC_CONSOLE)
    assert line == "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
    assert report.endswith("panic+0x118/0x2ea\n") and "Command line" not in report
    assert qemu.find_panic(PANIC_CONSOLE, lines=2)[1].startswith("[    1.9] Call Trace:")


def test_a_panic_on_the_console_fails_the_boot_wait_at_once_and_stops_the_guest(tmp_path, monkeypatch):
    g = qemu.Guest("panicky", str(tmp_path))
    os.makedirs(g.dir)
    with open(g.console, "wb") as f:
        f.write(PANIC_CONSOLE)
    # a stand-in for the guest's qemu: its command line names the guest, as pid_is_guest() checks
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "hypermesh-panicky"])
    try:
        deadline = time.time() + 10
        while not qemu.pid_is_guest(fake.pid, "panicky") and time.time() < deadline:
            time.sleep(0.01)  # Popen returns before the child's exec: until then its cmdline is pytest's
        with open(g.pidfile, "w") as f:
            f.write(str(fake.pid))
        monkeypatch.setattr(qemu.subprocess, "run", pytest.fail)  # no SSH probe once the console shows a panic
        started = time.time()
        with pytest.raises(qemu.GuestError, match="guest panicky: kernel panic during boot: Kernel panic - not "
                                                  "syncing: VFS: Unable to mount root fs") as err:
            g.wait_ssh(2222, "/nonexistent/key", timeout=120)
        assert time.time() - started < 5
        assert "Call Trace:" in err.value.console and "Command line" not in err.value.console
        assert fake.wait(timeout=5) == -15  # stopped with SIGTERM
        assert not os.path.exists(g.pidfile)
    finally:
        fake.kill()
        fake.wait()
