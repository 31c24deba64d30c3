"""lock: the host lock lives in a private directory of its own; a planted directory, link or file is refused with
a message that names it, and nothing another user made is used or changed."""
import fcntl
import os
import stat
import subprocess
import sys

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="probe: euid is not 0 (chown to another uid needs root)")


def test_the_lock_is_not_in_a_world_writable_directory():
    assert lock.HostLock().path == layout.LOCK_PATH == "/run/hypermesh-ebpf/lock"
    assert os.path.dirname(layout.LOCK_PATH) == layout.RUN_DIR and "/run/lock" not in layout.LOCK_PATH


def test_lock_makes_a_private_directory_and_a_0600_file(tmp_path):
    path = str(tmp_path / "hm" / "lock")
    with lock.HostLock(path):
        d = os.lstat(os.path.dirname(path))
        f = os.lstat(path)
        assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == os.geteuid()
        assert stat.S_IMODE(f.st_mode) == 0o600 and stat.S_ISREG(f.st_mode)
        # held: another process cannot take it
        probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys\n"
                                "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                                "try:\n    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)\nexcept OSError:\n"
                                "    sys.exit(3)\n", path], check=False)
        assert probe.returncode == 3
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    os.close(fd)


def test_a_held_lock_times_out_with_its_path(tmp_path):
    path = str(tmp_path / "hm" / "lock")
    with lock.HostLock(path):
        pass  # makes the directory and the file
    fd = os.open(path, os.O_RDONLY)  # held by another holder (a HostLock of this process would re-enter)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(lock.LockTimeout, match="holds " + path):
            with lock.HostLock(path, timeout=0.2):
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o770])
def test_a_directory_open_to_others_is_refused(tmp_path, mode):
    d = tmp_path / "hm"
    d.mkdir()
    os.chmod(str(d), mode)
    with pytest.raises(host_paths.UnsafePath, match="%s is open to group or others" % d):
        with lock.HostLock(str(d / "lock")):
            pass
    assert os.listdir(str(d)) == []


def test_a_symlinked_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(str(real), str(tmp_path / "hm"))
    with pytest.raises(host_paths.UnsafePath, match="hm is a symbolic link"):
        with lock.HostLock(str(tmp_path / "hm" / "lock")):
            pass
    assert os.listdir(str(real)) == []


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    d = tmp_path / "hm"
    d.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(str(victim), str(d / "lock"))
    with pytest.raises(host_paths.UnsafePath, match="lock is a symbolic link"):
        with lock.HostLock(str(d / "lock")):
            pass
    assert victim.read_text() == "keep"


@root_only
def test_a_directory_of_another_user_is_refused(tmp_path):
    d = tmp_path / "hm"
    d.mkdir(mode=0o700)
    os.chown(str(d), 65534, 65534)
    with pytest.raises(host_paths.UnsafePath, match="is owned by uid 65534"):
        with lock.HostLock(str(d / "lock")):
            pass
    assert os.listdir(str(d)) == []


@root_only
def test_a_lock_file_of_another_user_is_refused(tmp_path):
    d = tmp_path / "hm"
    d.mkdir(mode=0o700)
    (d / "lock").write_text("")
    os.chown(str(d / "lock"), 65534, 65534)
    with pytest.raises(host_paths.UnsafePath, match="lock is not a regular file of uid 0"):
        with lock.HostLock(str(d / "lock")):
            pass
