# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host-wide lock: /run/lock/hypermesh-ebpf.lock (flock), taken by every module that changes state,
so two runs on one host never interleave. The kernel drops it when the process dies (even on SIGKILL).
Importable without ansible.
"""
import errno
import fcntl
import os
import time

LOCK_PATH = "/run/lock/hypermesh-ebpf.lock"


class LockTimeout(Exception):
    pass


class HostLock(object):
    """with HostLock(): ...  Waits up to `timeout` seconds for another run to finish."""

    def __init__(self, path=LOCK_PATH, timeout=300.0):
        self.path = path
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        d = os.path.dirname(self.path)
        if not os.path.isdir(d):
            os.makedirs(d, 0o755)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.time() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
