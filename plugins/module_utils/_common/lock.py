# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host-wide lock: /run/hypermesh-ebpf/lock (flock), taken by every module that changes state, so two runs
on one host never interleave. The kernel drops it when the process dies (even on SIGKILL).

The lock file lives in a private directory of its own (made 0700 by root, checked with lstat: ours, no
group/other bits, no symbolic link; see host_paths.private_dir), never in a world-writable one such as /run/lock:
flock works on a read-only descriptor, so any user who can open the file can hold the lock and stall every run.

Re-entrant within a process: a HostLock entered while this process already holds the lock at that path only
counts the hold (ebpf_state holds it for a whole transaction and calls the single-object functions, which take
it themselves; a second flock on a new descriptor would wait for the first). The outermost exit releases it.
Importable without ansible.
"""
import errno
import fcntl
import os
import stat
import time

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout

REENTRANT = True
_HOLDS = {}  # path -> how many HostLocks of this process hold it now


class LockTimeout(Exception):
    pass


def _open(path):
    """The lock file, opened without following a link; it must be a regular file of ours."""
    host_paths.private_dir(os.path.dirname(path))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise host_paths.UnsafePath(path, "is a symbolic link")
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise host_paths.UnsafePath(path, "is not a regular file of uid %d" % os.geteuid())
    return fd


class HostLock(object):
    """with HostLock(): ...  Waits up to `timeout` seconds for another run to finish."""

    def __init__(self, path=layout.LOCK_PATH, timeout=300.0):
        self.path = path
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        if _HOLDS.get(self.path):
            _HOLDS[self.path] += 1  # this process holds it already: count, and leave the flock to the outermost
            return self
        self.fd = _open(self.path)
        deadline = time.time() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _HOLDS[self.path] = 1
                return self
            except (IOError, OSError) as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.time() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise LockTimeout("another hypermesh.ebpf run holds %s (waited %ds)"
                                      % (self.path, self.timeout))
                time.sleep(0.05)

    def __exit__(self, *exc):
        if self.fd is None:
            if _HOLDS.get(self.path):
                _HOLDS[self.path] -= 1  # an inner hold
            return
        _HOLDS.pop(self.path, None)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
