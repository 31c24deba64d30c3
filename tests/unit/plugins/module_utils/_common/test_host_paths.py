"""host_paths: directories root uses are checked (a link, another user's, writable by others: refused with the path
and the problem), made 0700, and a tree is removed only after all of it passed the checks (the removal on bpffs:
tests/integration/test_host_safety.py)."""
import os
import stat

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="probe: euid is not 0 (chown to another uid needs root)")


def test_unsafe_path_is_an_oserror_whose_text_names_path_and_problem():
    e = host_paths.UnsafePath("/x/y", "is a symbolic link")
    assert isinstance(e, OSError) and str(e).startswith("/x/y is a symbolic link: refusing to use it")


def test_check_dir_chain_accepts_own_dirs_under_a_sticky_tmp(tmp_path):
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    assert host_paths.check_dir_chain(str(d)) is True
    assert host_paths.check_dir_chain(str(d / "missing" / "deeper")) is False


@pytest.mark.parametrize("mode, problem", [(0o777, "is writable by group or others (mode 0777)"),
                                           (0o1777, "is writable by group or others (mode 1777)"),
                                           (0o775, "is writable by group or others (mode 0775)")])
def test_a_writable_dir_is_refused_itself(tmp_path, mode, problem):
    d = tmp_path / "root"
    d.mkdir()
    os.chmod(str(d), mode)
    with pytest.raises(host_paths.UnsafePath) as e:
        host_paths.check_dir_chain(str(d))
    assert str(e.value).startswith("%s %s" % (d, problem))


def test_a_writable_ancestor_is_refused_unless_sticky(tmp_path):
    top = tmp_path / "top"
    (top / "root").mkdir(parents=True)
    os.chmod(str(top), 0o777)
    with pytest.raises(host_paths.UnsafePath, match="top is writable by group or others"):
        host_paths.check_dir_chain(str(top / "root"))
    os.chmod(str(top), 0o1777)  # like /tmp or a 1777 bpffs: nobody can rename what is ours in it
    assert host_paths.check_dir_chain(str(top / "root"))


def test_a_link_anywhere_in_the_chain_is_refused(tmp_path):
    (tmp_path / "real" / "root").mkdir(parents=True)
    os.symlink(str(tmp_path / "real"), str(tmp_path / "via"))
    with pytest.raises(host_paths.UnsafePath, match="via is a symbolic link"):
        host_paths.check_dir_chain(str(tmp_path / "via" / "root"))
    os.symlink(str(tmp_path / "real" / "root"), str(tmp_path / "leaf"))
    with pytest.raises(host_paths.UnsafePath, match="leaf is a symbolic link"):
        host_paths.check_dir_chain(str(tmp_path / "leaf"))


@root_only
def test_another_users_dir_is_refused_and_not_reused(tmp_path):
    d = tmp_path / "planted"
    d.mkdir(mode=0o700)
    os.chown(str(d), 65534, 65534)
    with pytest.raises(host_paths.UnsafePath, match="planted is owned by uid 65534, not by uid 0"):
        host_paths.make_own_dir(str(d))
    with pytest.raises(host_paths.UnsafePath, match="planted is owned by uid 65534"):
        host_paths.check_dir_chain(str(d / "root"))


def test_make_own_dir_makes_0700_and_accepts_its_own(tmp_path):
    d = str(tmp_path / "new")
    assert host_paths.make_own_dir(d) is True
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    assert host_paths.make_own_dir(d) is False


def test_private_dir_wants_no_group_or_other_bits(tmp_path):
    d = tmp_path / "p"
    d.mkdir(mode=0o700)
    assert host_paths.private_dir(str(d)) == str(d)
    os.chmod(str(d), 0o750)
    with pytest.raises(host_paths.UnsafePath, match="must be 0700"):
        host_paths.private_dir(str(d))


def test_remove_tree_refuses_a_link_as_its_top_and_keeps_the_target(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("keep")
    os.symlink(str(victim), str(tmp_path / "name"))
    with pytest.raises(host_paths.UnsafePath, match="name is a symbolic link"):
        host_paths.remove_bpf_tree(str(tmp_path / "name"), libc.statfs)
    assert (victim / "file").read_text() == "keep" and os.path.islink(str(tmp_path / "name"))


def test_remove_tree_is_for_bpffs_only(tmp_path):
    (tmp_path / "name" / "maps").mkdir(parents=True)
    (tmp_path / "name" / "prog").write_text("")
    with pytest.raises(host_paths.UnsafePath, match="name is not on a bpf filesystem"):
        host_paths.remove_bpf_tree(str(tmp_path / "name"), libc.statfs)
    assert sorted(os.listdir(str(tmp_path / "name"))) == ["maps", "prog"]
    host_paths.remove_bpf_tree(str(tmp_path / "missing"), libc.statfs)  # nothing there: nothing to do
