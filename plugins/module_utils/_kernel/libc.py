# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The C library calls Python's os module does not offer: syscall(2) by number, statfs(2)'s f_type, setns(2),
renameat2(2), and vsnprintf(3) for libbpf's log callback.

One binding: the libc this process already has loaded (ctypes.CDLL(None); ctypes.util.find_library would fork
ldconfig), opened once, with errno kept (use_errno). Every function raises OSError with the errno, except where
its doc says otherwise. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import os

AT_FDCWD = -100
RENAME_EXCHANGE = 2
CLONE_NEWNET = 0x40000000

_libc = None


def _lib():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        lib.vsnprintf.restype = ctypes.c_int
        _libc = lib
    return _libc


def syscall(nr, *args):
    """syscall(nr, args...) with ctypes-typed `args`; returns the (non-negative) result, raises OSError."""
    ret = _lib().syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def statfs(target):
    """f_type of the filesystem holding `target` (a path, or an open file descriptor: fstatfs), or None when
    the call fails (missing path, bad fd)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit; f_type comes first
    if isinstance(target, int):
        ret = _lib().fstatfs(target, buf)
    else:
        ret = _lib().statfs(os.fsencode(target), buf)
    if ret != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xffffffff


def setns(fd, nstype=CLONE_NEWNET):
    """Move the calling thread into the namespace open at `fd` (a network namespace by default)."""
    if _lib().setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def renameat2(old, new, flags):
    """renameat2(AT_FDCWD, old, AT_FDCWD, new, flags); ENOSYS when this libc has no renameat2 (glibc < 2.28)."""
    try:
        func = _lib().renameat2
    except AttributeError:
        raise OSError(errno.ENOSYS, "this C library has no renameat2", new)
    if func(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), new)


def vsnprintf(buf, size, fmt, va_list):
    """vsnprintf(3) into ctypes buffer `buf` (libbpf's print callback hands us `fmt` and a va_list)."""
    return _lib().vsnprintf(buf, size, fmt, va_list)
