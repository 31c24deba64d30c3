"""Image cache keys: same inputs, same key; any input changed, another key; the mirror is not an input."""
import json
import os

from harness import images


def test_key_is_stable_and_per_suite():
    assert images.cache_key("bookworm") == images.cache_key("bookworm")
    assert images.cache_key("bookworm") != images.cache_key("trixie")
    assert len(images.cache_key("sid")) == 16


def test_key_changes_with_packages_and_recipe(monkeypatch):
    base = images.cache_key("bookworm")
    assert images.cache_key("bookworm", images.PACKAGES + ["strace"]) != base
    monkeypatch.setattr(images, "GUEST_INIT", images.GUEST_INIT + "# changed\n")
    assert images.cache_key("bookworm") != base


def test_mirror_is_not_in_the_key(monkeypatch):
    argv = images.mmdebstrap_argv("bookworm", "/r", "http://one/debian")
    assert argv[-3:] == ["bookworm", "/r", "http://one/debian"]
    # the key is computed with placeholders, so two hosts with different mirrors share images
    assert "http://" not in json.dumps(images.mmdebstrap_argv("bookworm", "ROOTFS", "MIRROR"))


def test_cache_dir_override():
    assert images.cache_dir({}) == "/var/cache/hypermesh-ebpf"
    assert images.cache_dir({"HYPERMESH_CACHE": "/srv/c"}) == "/srv/c"
    assert images.image_dir("sid", "/srv/c").startswith("/srv/c/images/sid-")


def test_image_has_what_the_issue_asks_and_nothing_of_prepare():
    for p in ("python3", "openssh-server", "linux-image-cloud-amd64"):
        assert p in images.PACKAGES
    for p in ("bpftool", "libbpf1", "libbpf0", "python3-pyroute2"):
        assert p not in images.PACKAGES


def test_cached_image_is_reused(tmp_path, monkeypatch):
    path = images.image_dir("bookworm", str(tmp_path))
    os.makedirs(path)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"suite": "bookworm", "release": "6.1.0-1-cloud-amd64"}, f)
    monkeypatch.setattr(images.subprocess, "run",
                        lambda *a, **k: (_unused for _unused in ()).throw(AssertionError("built")))
    m = images.build("bookworm", str(tmp_path), log=lambda m: None)
    assert m["cached"] and m["path"] == path


def test_prune_keeps_only_the_current_key(tmp_path):
    keep = images.image_dir("bookworm", str(tmp_path))
    for d in (keep, keep.replace("bookworm-", "bookworm-old"), str(tmp_path / "images" / "bullseye-x")):
        os.makedirs(d)
    images.prune("bookworm", keep, log=lambda m: None)
    assert sorted(os.listdir(str(tmp_path / "images"))) == sorted([os.path.basename(keep), "bullseye-x"])


def test_kernel_files(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-9-cloud-amd64").write_text("k")
    (boot / "initrd.img-6.1.0-9-cloud-amd64").write_text("i")
    release, vmlinuz, initrd = images.kernel_files(str(tmp_path))
    assert release == "6.1.0-9-cloud-amd64" and vmlinuz.endswith("vmlinuz-6.1.0-9-cloud-amd64")


def test_root_disk_from_the_kernel_config(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    assert images.root_disk(str(tmp_path), "6.1.0-9-cloud-amd64") == "virtio"  # no config: the initrd way
    (boot / "config-6.1.0-9-cloud-amd64").write_text("CONFIG_BLK_DEV_NVME=y\nCONFIG_EXT4_FS=y\n")
    assert images.root_disk(str(tmp_path), "6.1.0-9-cloud-amd64") == "nvme"
    (boot / "config-6.1.0-9-cloud-amd64").write_text("CONFIG_BLK_DEV_NVME=m\nCONFIG_EXT4_FS=y\n")
    assert images.root_disk(str(tmp_path), "6.1.0-9-cloud-amd64") == "virtio"


def test_guest_init_runs_before_ssh_and_boot_units_are_masked():
    hooks = "\n".join(images.customize_hooks("hm-trixie"))
    assert "sysinit.target.wants/hypermesh-guest-init.service" in hooks
    assert "Before=ssh.socket" in images.GUEST_INIT_UNIT
    for unit in ("ldconfig.service", "systemd-update-done.service", "systemd-binfmt.service"):
        assert 'ln -sf /dev/null "$1/etc/systemd/system/%s"' % unit in hooks
    assert 'ln -sf /dev/null "$1/etc/systemd/system-generators/systemd-ssh-generator"' in hooks
    assert "systemd-fstab-generator" not in images.MASKED_GENERATORS
    # the Ansible side needs these: never masked
    for unit in ("systemd-journald.service", "systemd-udevd.service", "sys-kernel-tracing.mount",
                 "ssh.socket", "ssh.service", "systemd-sysctl.service", "systemd-tmpfiles-setup.service"):
        assert unit not in images.MASKED_UNITS
    assert "--subsystem-match=net" in images.DROP_INS["systemd-udev-trigger.service"]


def test_build_records_the_root_disk(tmp_path, monkeypatch):
    def run(argv, **kw):
        if argv[0] == "mmdebstrap":  # a rootfs with a cloud kernel that has NVMe and ext4 built in
            boot = os.path.join(argv[-2], "boot")
            os.makedirs(boot)
            for name, text in (("vmlinuz-", "k"), ("initrd.img-", "i"),
                               ("config-", "CONFIG_BLK_DEV_NVME=y\nCONFIG_EXT4_FS=y\n")):
                with open(os.path.join(boot, name + "6.1.0-9-cloud-amd64"), "w") as f:
                    f.write(text)
        elif argv[0] == "mke2fs":
            open(argv[-2], "w").close()
        return images.subprocess.CompletedProcess(argv, 0, "")
    monkeypatch.setattr(images.subprocess, "run", run)
    monkeypatch.setattr(images.aptconf, "host_mirror", lambda: "http://mirror/debian")
    monkeypatch.setattr(images.aptconf, "host_proxy", lambda: None)
    m = images.build("bookworm", str(tmp_path), log=lambda m: None)
    assert m["root_disk"] == "nvme" and m["release"] == "6.1.0-9-cloud-amd64" and not m["cached"]
    assert images.load_manifest(m["path"])["root_disk"] == "nvme"


def test_prune_leaves_a_running_build_alone(tmp_path):
    keep = images.image_dir("sid", str(tmp_path))
    running = keep + ".building.%d" % os.getpid()  # this process: alive
    dead = keep + ".building.%d" % (2 ** 22 + 7)  # above pid_max: no such process
    for d in (keep, running, dead):
        os.makedirs(d)
    images.prune("sid", keep, log=lambda m: None)
    assert sorted(os.listdir(str(tmp_path / "images"))) == sorted(os.path.basename(d) for d in (keep, running))
