"""Kernels users bring ($HYPERMESH_CACHE/kernels/<name>/): discovery, the refusals (name, owner, mode, files,
config), the guests they become, their column in the report, and matrix.sh's check before anything runs."""
import json
import os
import subprocess
import sys

import pytest

from harness import guests, kernels, report

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534


def full_config(**override):
    """A .config giving every option the harness needs (=y), with `override` (value None: "is not set")."""
    values = {o: "y" for o, _need, _why in kernels.REQUIRED}
    values.update(override)
    lines = ["#", "# Automatically generated file; DO NOT EDIT.", "#"]
    for option, value in values.items():
        lines.append("# %s is not set" % option if value is None else "%s=%s" % (option, value))
    return "\n".join(lines) + "\n"


def make_kernel(cache, name="k419", image="bzImage", config="config", text=None, initrd=None, extra=None):
    d = cache / "kernels" / name
    d.mkdir(parents=True)
    (d / image).write_bytes(b"MZ fake bzImage")
    (d / config).write_text(full_config() if text is None else text)
    if initrd:
        (d / initrd).write_bytes(b"070701")
    for fname, content in (extra or {}).items():
        (d / fname).write_text(content)
    for p in [d] + list(d.iterdir()):
        os.chmod(str(p), 0o755 if p.is_dir() else 0o644)
    os.chmod(str(cache / "kernels"), 0o755)
    os.chmod(str(cache), 0o755)
    return d


@pytest.fixture
def cache(tmp_path):
    c = tmp_path / "cache"
    c.mkdir(mode=0o755)
    os.chmod(str(tmp_path), 0o755)
    return c


def env(cache):
    return {"HYPERMESH_CACHE": str(cache)}


def test_no_kernels_dir_is_nothing(cache):
    assert kernels.discover(env(cache)) == ([], [])
    (cache / "kernels").mkdir(mode=0o755)
    assert kernels.discover(env(cache)) == ([], [])


def test_a_kernel_dir_becomes_a_guest_on_bullseye(cache):
    d = make_kernel(cache)
    [k], refused = kernels.discover(env(cache))
    assert refused == []
    assert k["guest"] == "kernel-k419" and k["suite"] == "bullseye" and k["cmdline"] == ""
    assert k["kernel"] == str(d / "bzImage") and k["config"] == str(d / "config") and k["initrd"] is None
    g = guests.lookup("kernel-k419", env(cache))
    assert g["suite"] == "bullseye" and g["kernel"] == str(d / "bzImage") and g["kernel_name"] == "k419"


def test_debian_file_names_initrd_cmdline_and_rootfs(cache):
    d = make_kernel(cache, "deb61", image="vmlinuz-6.1.0-47-cloud-amd64", config="config-6.1.0-47-cloud-amd64",
                    text=full_config(CONFIG_VIRTIO_NET="m", CONFIG_VETH="m"),
                    initrd="initrd.img-6.1.0-47-cloud-amd64",
                    extra={"cmdline": "lsm=lockdown,capability,bpf\n  mitigations=off\n", "rootfs": "bookworm\n",
                           "System.map-6.1.0-47-cloud-amd64": "ignored"})
    [k], _refused = kernels.discover(env(cache))
    assert k["kernel"] == str(d / "vmlinuz-6.1.0-47-cloud-amd64")
    assert k["initrd"] == str(d / "initrd.img-6.1.0-47-cloud-amd64")
    assert k["cmdline"] == "lsm=lockdown,capability,bpf mitigations=off" and k["suite"] == "bookworm"


@pytest.mark.parametrize("name", ["Big", "a_b", "-x", ".hidden-not-listed", "x" * 33, "a b"])
def test_bad_names_are_refused(cache, name):
    make_kernel(cache, name)
    found, refused = kernels.discover(env(cache))
    assert found == []
    if name.startswith("."):
        assert refused == []  # dot entries are not kernels
    else:
        assert len(refused) == 1 and "kernel name %r" % name in refused[0]
    with pytest.raises(ValueError, match="kernel name"):
        guests.lookup("kernel-" + name, env(cache))


def test_group_or_other_writable_is_refused(cache):
    d = make_kernel(cache)
    os.chmod(str(d), 0o775)
    [msg] = kernels.discover(env(cache))[1]
    assert "kernel directory %s is writable by group or others (mode 0775)" % d in msg
    os.chmod(str(d), 0o755)
    os.chmod(str(d / "bzImage"), 0o646)
    [msg] = kernels.discover(env(cache))[1]
    assert "kernel image %s is writable by group or others" % (d / "bzImage") in msg
    os.chmod(str(d / "bzImage"), 0o644)
    os.chmod(str(cache / "kernels"), 0o777)  # the kernels/ folder itself: nothing is loaded from it
    assert kernels.discover(env(cache)) == ([], ["kernels directory %s is writable by group or others (mode "
                                                 "0777): refused (chmod go-w)" % (cache / "kernels")])
    os.chmod(str(cache / "kernels"), 0o755)
    os.chmod(str(cache), 0o775)  # a directory above: refused too (not sticky)
    [msg] = kernels.discover(env(cache))[1]
    assert "the directory %s above it is writable by group or others" % cache in msg
    os.chmod(str(cache), 0o1777)  # sticky (as /tmp): others cannot rename what root owns in it
    assert kernels.discover(env(cache))[1] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_owned_by_another_user_is_refused(cache):
    d = make_kernel(cache)
    os.chown(str(d / "config"), NOBODY, NOBODY)
    [msg] = kernels.discover(env(cache))[1]
    assert "kernel config %s is owned by uid %d, not root" % (d / "config", NOBODY) in msg
    os.chown(str(d / "config"), 0, 0)
    os.chown(str(d), NOBODY, NOBODY)
    [msg] = kernels.discover(env(cache))[1]
    assert "kernel directory %s is owned by uid %d" % (d, NOBODY) in msg
    os.chown(str(d), 0, 0)
    os.chown(str(cache), NOBODY, NOBODY)
    [msg] = kernels.discover(env(cache))[1]
    assert "the directory %s above it is owned by uid %d" % (cache, NOBODY) in msg


def test_symlinks_are_refused(cache, tmp_path):
    d = make_kernel(cache)
    real = tmp_path / "elsewhere"
    real.write_bytes(b"MZ")
    os.unlink(str(d / "bzImage"))
    os.symlink(str(real), str(d / "bzImage"))
    [msg] = kernels.discover(env(cache))[1]
    assert "kernel image %s is a symbolic link" % (d / "bzImage") in msg
    other = make_kernel(tmp_path / "c2", "real")
    os.symlink(str(other), str(cache / "kernels" / "linked"))
    refused = kernels.discover(env(cache))[1]
    assert any("kernel directory %s is a symbolic link" % (cache / "kernels" / "linked") in m for m in refused)


def test_missing_and_ambiguous_files(cache):
    d = make_kernel(cache, "noimage", image="Image.gz")
    [msg] = kernels.discover(env(cache))[1]
    assert msg == "kernel %s: no kernel image (bzImage or vmlinuz*)" % d
    os.unlink(str(d / "Image.gz"))
    (d / "vmlinuz-a").write_bytes(b"")
    (d / "vmlinuz-b").write_bytes(b"")
    [msg] = kernels.discover(env(cache))[1]
    assert "more than one kernel image (vmlinuz-a, vmlinuz-b)" in msg
    os.unlink(str(d / "vmlinuz-b"))
    os.unlink(str(d / "config"))
    [msg] = kernels.discover(env(cache))[1]
    assert "no kernel config (config or config-*)" in msg
    (d / "config").write_text("not a config\n")
    [msg] = kernels.discover(env(cache))[1]
    assert "no CONFIG_ line in it" in msg


def test_config_lacking_options_is_refused_with_them_named(cache):
    make_kernel(cache, text=full_config(CONFIG_BPF_SYSCALL=None, CONFIG_DEVTMPFS=None, CONFIG_VIRTIO_NET="m"))
    [msg] = kernels.discover(env(cache))[1]
    assert "lacks what the harness needs" in msg
    assert "CONFIG_BPF_SYSCALL needs =y (is not set), for bpf()" in msg
    assert "CONFIG_DEVTMPFS needs =y (is not set)" in msg
    # a module with no initrd: the rootfs has no modules of this kernel
    assert "CONFIG_VIRTIO_NET needs =y, or =m with an initrd that loads it" in msg and "(is =m)" in msg
    assert "CONFIG_EXT4_FS" not in msg


def test_a_module_passes_with_an_initrd_but_never_where_built_in_is_needed(cache):
    make_kernel(cache, text=full_config(CONFIG_VIRTIO_NET="m", CONFIG_VIRTIO_BLK="m"), initrd="initrd.img")
    assert kernels.discover(env(cache))[1] == []
    make_kernel(cache, "k2", text=full_config(CONFIG_BPF_SYSCALL="m"), initrd="initrd.img")
    [msg] = kernels.discover(env(cache))[1]
    assert "CONFIG_BPF_SYSCALL needs =y (is =m)" in msg


def test_features_the_collection_will_refuse_are_named(cache):
    make_kernel(cache, text=full_config(CONFIG_DEBUG_INFO_BTF="y", CONFIG_NET_CLS_BPF="m"))
    [k], _refused = kernels.discover(env(cache))
    assert "CONFIG_DEBUG_INFO_BTF" not in k["absent"] and "CONFIG_NET_CLS_BPF" not in k["absent"]
    assert "CONFIG_BPF_LSM" in k["absent"]


@pytest.mark.parametrize("content, error", [
    ("root=/dev/sda1", "are the harness' own"), ("console=tty0", "are the harness' own"),
    ("init=/bin/sh", "are the harness' own"), ("a;b", "words the harness does not pass on: a;b"),
    ("x" * 5000, "larger than 4096 bytes")])
def test_bad_cmdline_file(cache, content, error):
    make_kernel(cache, extra={"cmdline": content})
    [msg] = kernels.discover(env(cache))[1]
    assert error in msg


def test_bad_rootfs_file(cache):
    make_kernel(cache, extra={"rootfs": "potato"})
    [msg] = kernels.discover(env(cache))[1]
    assert "'potato' is not one of bullseye, bookworm, trixie, sid" in msg


def test_custom_guest_from_hypermesh_kernel(cache):
    d = make_kernel(cache)
    e = dict(env(cache), HYPERMESH_KERNEL="k419", HYPERMESH_GUEST_ROOTFS="bullseye")
    g = guests.lookup("custom", e)
    assert g["kernel"] == str(d / "bzImage") and g["suite"] == "bullseye" and g["kernel_name"] == "k419"
    # the custom scenario prepares ${HYPERMESH_GUEST_ROOTFS:-bookworm}: unset or another suite is an error
    for rootfs in ("bookworm", ""):
        with pytest.raises(ValueError, match="boots on the bullseye rootfs .* not HYPERMESH_GUEST_ROOTFS=bookworm"):
            guests.lookup("custom", dict(e, HYPERMESH_GUEST_ROOTFS=rootfs))
    with pytest.raises(ValueError, match="set one of them"):
        guests.lookup("custom", dict(e, HYPERMESH_GUEST_KERNEL=str(d / "bzImage")))
    with pytest.raises(ValueError, match="kernel directory .*nope"):
        guests.lookup("custom", dict(env(cache), HYPERMESH_KERNEL="nope"))


def run_list(cache):
    return subprocess.run([sys.executable, "-m", "harness.kernels", "list"], cwd=TOP,
                          env=dict(os.environ, **env(cache)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, check=False)


def test_list_command(cache):
    res = run_list(cache)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    make_kernel(cache, "good", extra={"rootfs": "trixie"})
    make_kernel(cache, "bad", text=full_config(CONFIG_VETH=None))
    res = run_list(cache)
    assert res.returncode == 1 and res.stdout == "good trixie\n"
    assert "kernels: REFUSED: kernel bad: its config" in res.stderr and "CONFIG_VETH needs =y" in res.stderr
    assert "kernel-good:" in res.stderr


def matrix(cache, *args):
    return subprocess.run(["bash", os.path.join(TOP, "scripts", "matrix.sh")] + list(args), cwd=TOP,
                          env=dict(os.environ, **env(cache)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False, timeout=60)


def test_matrix_refuses_a_bad_kernel_before_anything_runs(cache):
    before = set(os.listdir("/tmp"))
    make_kernel(cache, "bad", text=full_config(CONFIG_BPF_SYSCALL=None))
    res = matrix(cache)
    assert res.returncode == 2, res.stdout
    assert "CONFIG_BPF_SYSCALL needs =y" in res.stdout and "was refused (above)" in res.stdout
    assert "=== matrix:" not in res.stdout  # no step ran, no run folder was made
    assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("hypermesh-matrix.")]


def test_matrix_kernels_without_any(cache):
    res = matrix(cache, "kernels")
    assert res.returncode == 2 and "matrix: no kernel in %s/kernels/" % cache in res.stdout


def write_custom_run(sub, release):
    (sub / "results").mkdir(parents=True)
    (sub / "results" / "custom.converge.json").write_text(json.dumps({
        "guest": "custom", "suite": "bullseye", "release": release, "features": {}, "programs": {
            "xdp_counter": {"feature": "xdp", "outcome": "attached", "message": ""}}}))
    (sub / "results" / "custom.verify.json").write_text(json.dumps({"xdp_counter": {"before": 0, "after": 4}}))
    (sub / "instances.json").write_text(json.dumps([{"instance": "custom", "boot_seconds": 20.5, "accel": "tcg",
                                                     "cmdline": "", "custom_kernel": "/c/kernels/x/bzImage"}]))
    (sub / "steps.json").write_text(json.dumps({"%s.create" % sub.name: 21.0, "total": 300}))


def test_report_column_per_kernel(tmp_path):
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    (run / "results" / "bullseye.converge.json").write_text(json.dumps(
        {"guest": "bullseye", "suite": "bullseye", "release": "5.10.0-32-cloud-amd64", "programs": {}}))
    (run / "steps.json").write_text(json.dumps({"create": 30.0, "total": 900}))
    write_custom_run(run / "kernel-419", "4.19.222")
    write_custom_run(run / "kernel-cloud61", "6.1.0-47-cloud-amd64")
    results = report.load_run(str(run))
    assert [r["guest"] for r in results] == ["bullseye", "kernel-419", "kernel-cloud61"]
    out = tmp_path / "docs"
    out.mkdir()
    rep = report.write(results, str(out), generated="2026-12-02T00:00:00Z")
    k = rep["guests"]["kernel-419"]
    assert k["release"] == "4.19.222" and k["counters"] == {"xdp_counter": 4} and k["boot_seconds"] == 20.5
    assert k["kernel"] == {"name": "419", "image": "/c/kernels/x/bzImage"}
    assert k["steps_seconds"] == {"create": 21.0, "total": 300}
    assert rep["steps_seconds"] == {"create": 30.0, "total": 900}  # the Debian guests' run
    md = (out / "kernel-matrix.md").read_text()
    assert "| feature | bullseye | kernel-419 | kernel-cloud61 |" in md
    assert "| kernel | 5.10.0-32-cloud-amd64 | 4.19.222 | 6.1.0-47-cloud-amd64 |" in md
    assert "| kernel-419 | 4.19.222 | /c/kernels/x/bzImage | bullseye | create 21.0, total 300 |" in md
    assert "custom" not in rep["guests"]


def test_a_symlink_above_in_a_writable_directory_is_refused(cache, tmp_path):
    make_kernel(cache)
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(str(loose), 0o777)  # anyone may replace the link in it
    os.symlink(str(cache), str(loose / "cache"))
    found, [msg] = kernels.discover({"HYPERMESH_CACHE": str(loose / "cache")})
    assert found == [] and "the directory %s above it is writable by group or others" % loose in msg


def test_kernels_path_that_is_a_file(cache):
    (cache / "kernels").write_text("")
    os.chmod(str(cache / "kernels"), 0o644)
    assert kernels.discover(env(cache)) == ([], ["kernels directory %s: not a directory" % (cache / "kernels")])
