"""qemu command lines, kernel command lines, ports and the guard that never signals a foreign pid."""
import json
import os
import socket
import subprocess

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


@pytest.mark.parametrize("kvm, accel", [(True, "kvm"), (False, "tcg,thread=multi")])
def test_qemu_argv(kvm, accel):
    argv = qemu.qemu_argv("sid", "/i/vmlinuz", "/i/initrd.img", "/s/overlay.qcow2", 2222, "console=ttyS0",
                          "/s/console.log", "/s/qemu.pid", kvm)
    assert argv[argv.index("-accel") + 1] == accel
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22" in argv  # loopback only
    assert argv[argv.index("-initrd") + 1] == "/i/initrd.img"
    assert "hypermesh-sid" in argv and "-daemonize" in argv
    assert "file:/s/console.log" in argv


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
    assert not g.console_shows(qemu.GUEST_READY)  # no console yet
    os.makedirs(g.dir)
    with open(g.console, "wb") as f:
        f.write(b"[    7.7] hypermesh-guest-init[146]: hypermesh-guest-init: eth0 10.0.2.15/24, ssh key ssh-ed25519\n")
    assert g.console_shows(qemu.GUEST_READY)
    # the boot unit prints exactly what the harness waits for
    from harness import images
    assert qemu.GUEST_READY.decode().strip() in images.GUEST_INIT
    assert "StandardOutput=journal+console" in images.GUEST_INIT_UNIT
