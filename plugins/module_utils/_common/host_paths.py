# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One job: the directories root's runs use on the managed host, checked so that no other local user can have
planted, redirected or be able to change them; and trees under the pin root removed without following a link.

- private_dir(path): a directory of ours with no group/other bits (the lock, the features memo), made 0700.
- check_dir_chain(path): every directory from / down to path is owned by root (or us) and not writable by others
  (a sticky ancestor such as a 1777 bpffs mount is fine: nobody can rename or remove what is ours in it), none is
  a symbolic link, and path itself (when it exists) is ours and writable by no one else.
- make_own_dir(path): mkdir 0700, or the existing one, which must be ours (a planted one is refused).
- open_trusted_file(path): a read-only fd on a regular file root may read and hand to the kernel by its path (a
  binary a uprobe goes into): its directory passes check_dir_chain, the file is root's (or ours) and writable by
  no one else, opened without following a link and checked again on the open fd.
- remove_bpf_tree(path, fs_type): the whole tree checked first (through directory descriptors, O_NOFOLLOW: no symbolic
  link, every entry ours, every directory on bpffs), then unlinked entry by entry relative to its directory.
Every refusal is UnsafePath (an OSError: the modules report it as a failure with the host unchanged), whose
message names the path and the problem. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat

BPF_FS_MAGIC = 0xcafe4a11
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class UnsafePath(OSError):
    """A path root will not use: planted, redirected or changeable by another user."""

    def __init__(self, path, problem):
        OSError.__init__(self, "%s %s: refusing to use it (nothing was changed there)" % (path, problem))
        self.path = path

    def __str__(self):
        return self.args[0]


def _owner_problem(st, owners):
    if st.st_uid not in owners:
        return "is owned by uid %d, not by %s" % (st.st_uid, " or ".join("uid %d" % o for o in sorted(owners)))
    return None


def dir_problem(st, private=False, sticky_ok=False):
    """What makes a directory (its lstat) unfit for root, or None: a link, not a directory, another owner,
    write bits for group/others (any group/other bit when `private`)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    owners = set([0, os.geteuid()]) if sticky_ok else set([os.geteuid()])
    problem = _owner_problem(st, owners)
    if problem:
        return problem
    mode = stat.S_IMODE(st.st_mode)
    if private and mode & 0o077:
        return "is open to group or others (mode %04o, must be 0700)" % mode
    if mode & 0o022 and not (sticky_ok and mode & stat.S_ISVTX):
        return "is writable by group or others (mode %04o)" % mode
    return None


def _lstat(path):
    try:
        return os.lstat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def check_own_dir(path, private=False):
    """True when `path` is a directory of ours nobody else can write; False when it does not exist."""
    st = _lstat(path)
    if st is None:
        return False
    problem = dir_problem(st, private=private)
    if problem:
        raise UnsafePath(path, problem)
    return True


def make_own_dir(path, mode=0o700, private=False):
    """Make directory `path` (mode `mode`) unless it exists; either way it must be ours. True when made here."""
    try:
        os.mkdir(path, mode)
        made = True
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
        made = False
    check_own_dir(path, private=private)
    return made


def private_dir(path):
    """`path` as a directory of ours with mode 0700 (made when missing; its parent must be root's)."""
    check_dir_chain(os.path.dirname(os.path.normpath(path)))
    make_own_dir(path, 0o700, private=True)
    return path


def check_dir_chain(path):
    """Refuse `path` unless every existing directory from / to it is safe (see the module doc). True when `path`
    itself exists."""
    path = os.path.normpath(path)
    parts = [p for p in path.split("/") if p]
    current = "/"
    for i, part in enumerate([""] + parts):
        current = os.path.join(current, part) if part else "/"
        st = _lstat(current)
        if st is None:
            return False
        last = i == len(parts)
        problem = dir_problem(st, sticky_ok=not last)
        if problem:
            raise UnsafePath(current, problem)
    return True


def file_problem(st):
    """What makes a file (its lstat or fstat) unfit for root to read or to hand to the kernel, or None: a link,
    not a regular file, owned by another user than root (or us), writable by group or others."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    problem = _owner_problem(st, set([0, os.geteuid()]))
    if problem:
        return problem
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return "is writable by group or others (mode %04o)" % mode
    return None


def open_trusted_file(path):
    """An O_RDONLY descriptor (the caller closes it) on the regular file `path`, which no other user can have
    planted or can change: `path` is absolute without '..', every directory from / to its own passes
    check_dir_chain, the file passes file_problem, and the open descriptor (O_NOFOLLOW) is that same file.
    UnsafePath otherwise; OSError ENOENT when it does not exist."""
    if not path or not os.path.isabs(path) or ".." in path.split("/"):
        raise UnsafePath(path, "is not an absolute path without '..'")
    path = os.path.normpath(path)
    if not check_dir_chain(os.path.dirname(path)):
        raise OSError(errno.ENOENT, "%s does not exist" % path)
    st = _lstat(path)
    if st is None:
        raise OSError(errno.ENOENT, "%s does not exist" % path)
    problem = file_problem(st)
    if problem:
        raise UnsafePath(path, problem)
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(path, "is a symbolic link")
        raise
    try:
        opened = os.fstat(fd)
        if not os.path.samestat(opened, st):
            raise UnsafePath(path, "changed while it was checked")
        problem = file_problem(opened)
        if problem:
            raise UnsafePath(path, problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(name, dir_fd, shown):
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(shown, "is a symbolic link or not a directory")
        raise


def _check_bpffs(fd, shown, fs_type):
    if fs_type(fd) != BPF_FS_MAGIC:
        raise UnsafePath(shown, "is not on a bpf filesystem")


def _collect(fd, shown, ops, fds, fs_type):
    """Check every entry below open directory `fd`; append (dir fd, name, is_dir) in removal order."""
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = os.path.join(shown, entry.name)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(path, "is a symbolic link")
        problem = _owner_problem(st, set([os.geteuid()]))
        if problem:
            raise UnsafePath(path, problem)
        if stat.S_ISDIR(st.st_mode):
            sub = _open_dir(entry.name, fd, path)
            fds.append(sub)
            if not os.path.samestat(os.fstat(sub), st):
                raise UnsafePath(path, "changed while it was checked")
            _check_bpffs(sub, path, fs_type)
            _collect(sub, path, ops, fds, fs_type)
        ops.append((fd, entry.name, stat.S_ISDIR(st.st_mode)))


def remove_bpf_tree(path, fs_type, dry_run=False):
    """Unpin everything below `path` on bpffs and remove its directories, `path` included; a missing `path` is
    nothing to do. Nothing is removed unless the whole tree passes the checks (see the module doc); `dry_run`:
    only the checks. `fs_type(fd)` answers the f_type of an open directory (the caller passes _kernel/libc's
    statfs: this layer makes no kernel call of its own)."""
    path = os.path.normpath(path)
    parent, name = os.path.split(path)
    fds = [_open_dir(parent, None, parent)]
    try:
        st = _lstat(path)
        if st is None:
            return
        problem = dir_problem(st)
        if problem:
            raise UnsafePath(path, problem)
        top = _open_dir(name, fds[0], path)
        fds.append(top)
        if not os.path.samestat(os.fstat(top), st):
            raise UnsafePath(path, "changed while it was checked")
        _check_bpffs(top, path, fs_type)
        ops = []
        _collect(top, path, ops, fds, fs_type)
        ops.append((fds[0], name, True))
        for dir_fd, entry, is_dir in [] if dry_run else ops:
            try:
                if is_dir:
                    os.rmdir(entry, dir_fd=dir_fd)
                else:
                    os.unlink(entry, dir_fd=dir_fd)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
    finally:
        for fd in fds:
            os.close(fd)
