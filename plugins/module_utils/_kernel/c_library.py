# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What our bindings of C libraries (libbpf.py, libxdp.py) share: the library's log and its error.

`CLog(size)` is a callback for `int print(enum level, const char *fmt, va_list)` (`callback`, to hand to
the library; keep the CLog alive as long as the library may call it) and what it collected: `text(min_level)`,
`tail(lines)` (the last warnings: on a verifier rejection, the verifier log's end), `clear()`. Levels are the
libraries' own: 0 warn, 1 info, 2 debug. Each message is formatted by the C library's vsnprintf on the va_list.
`open_first(names)`: the first of a library's sonames the dynamic loader finds.
`LibraryError(message, errno, op, log_tail)`: a call that failed, with `.errno` (positive), `.op` (what failed)
and `.log_tail` (the library's last warnings); each binding raises its own subclass.
Importable without ansible.
"""
import ctypes

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc

PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def open_first(names):
    """The first of the sonames `names` the dynamic loader finds (ctypes.CDLL, errno kept), or None."""
    for name in names:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    return None


class LibraryError(Exception):
    def __init__(self, message, errno=0, op="", log_tail=""):
        Exception.__init__(self, message)
        self.errno = errno
        self.op = op
        self.log_tail = log_tail


class CLog(object):
    def __init__(self, size):
        self.size = size
        self.entries = []  # (level, text)
        self._buf = ctypes.create_string_buffer(size)
        self.callback = PRINT_FN(self._on_print)

    def _on_print(self, level, fmt, va_list):
        """Format the message and keep it; never raises into C."""
        try:
            n = libc.vsnprintf(self._buf, self.size, fmt, va_list)
            if n > 0:
                self.entries.append((level, self._buf.value.decode("utf-8", "replace")))
        except Exception:  # pragma: no cover - a callback must not raise into C
            pass
        return 0

    def text(self, min_level=None):
        """Everything printed since the last clear(), down to level `min_level` (all when None)."""
        return "".join(text for level, text in self.entries if min_level is None or level <= min_level)

    def clear(self):
        del self.entries[:]

    def tail(self, lines):
        """The last `lines` non-empty lines of the warnings."""
        parts = [ln for ln in self.text(min_level=0).splitlines() if ln.strip()]
        return "\n".join(parts[-lines:])
