"""libc: the one binding of the process's C library (statfs, renameat2, syscall), on real files of this machine."""
import errno
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc

PROC_SUPER_MAGIC = 0x9fa0


def test_statfs_of_a_path_and_of_an_open_fd_agree(tmp_path):
    assert libc.statfs("/proc") == PROC_SUPER_MAGIC
    fd = os.open(str(tmp_path), os.O_RDONLY)
    try:
        assert libc.statfs(fd) == libc.statfs(str(tmp_path)) != PROC_SUPER_MAGIC
    finally:
        os.close(fd)


def test_statfs_of_what_is_not_there_is_none(tmp_path):
    assert libc.statfs(str(tmp_path / "missing")) is None
    assert libc.statfs(-1) is None


def test_renameat2_exchange_swaps_two_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    try:
        libc.renameat2(str(a), str(b), libc.RENAME_EXCHANGE)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            pytest.skip("probe: renameat2(RENAME_EXCHANGE) is not supported here (%s)" % e.strerror)
        raise
    assert (a.read_text(), b.read_text()) == ("B", "A")


def test_renameat2_failure_is_an_oserror_naming_the_path(tmp_path):
    with pytest.raises(OSError) as err:
        libc.renameat2(str(tmp_path / "x"), str(tmp_path / "y"), libc.RENAME_EXCHANGE)
    assert err.value.errno == errno.ENOENT and err.value.filename == str(tmp_path / "y")


def test_syscall_failure_raises_its_errno():
    with pytest.raises(OSError) as err:
        libc.syscall(-1)
    assert err.value.errno == errno.ENOSYS


def test_syscall_returns_the_result():
    if os.uname().machine != "x86_64":
        pytest.skip("probe: the machine is %s, the number used here (getpid 39) is x86_64's" % os.uname().machine)
    assert libc.syscall(39) == os.getpid()
