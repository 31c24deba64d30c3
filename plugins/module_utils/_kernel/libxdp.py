# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ctypes binding over the distro's libxdp (libxdp.so.1, 1.3+: Debian 12 and newer): several XDP programs on one
interface, run in order by libxdp's dispatcher (each program an freplace extension of one of its slots).

One job: the libxdp calls. `Program` is one of our programs handed to libxdp (opened by libbpf, not yet loaded:
libxdp loads it as BPF_PROG_TYPE_EXT when it attaches it); `Dispatcher` is what an interface holds as libxdp reads
it (legacy or a dispatcher, its mode, its programs in run order). Netns, pins and records are the caller's.

Facts this binding relies on (libxdp 1.3.1 on Debian 12, kernel 6.1, checked in a guest):
- `struct xdp_program_opts` is {sz, obj, opts, prog_name, find_filename, open_filename, pin_path, id u32, fd int}
  (64 bytes on 64-bit); with `obj` and `prog_name` set libxdp takes the bpf_object as it is (ours, opened from the
  bytes we read, with our globals set) and never opens a file of its own.
- The run priority and the chain-call actions can be set only before the program is loaded (EINVAL after).
- xdp_program__attach loads the program, builds a new dispatcher with it and replaces the interface's dispatcher
  in one netlink call (XDP_FLAGS_REPLACE); the programs already there keep their ids.
- Without a usable bpffs, or when the kernel refuses freplace, libxdp falls back to a plain XDP attach and still
  answers 0 (SILENTLY): the caller must check the result (`Program.is_extension`, `Dispatcher.legacy`).
- The new APIs (xdp_program__create) return NULL and set errno, the old ones an ERR_PTR: `_check_ptr` takes both.
- xdp_multiprog__get_from_ifindex (1.3.1) leaves one descriptor of the interface's program open until the process
  exits (xdp_multiprog__from_id dups the fd it opened and never closes it): harmless in a module's process, but a
  program read that way stays in the kernel while the process lives.
- A dispatcher holds at most MAX_PROGRAMS programs (E2BIG for one more); attaching in another mode than the
  interface's dispatcher gives EBUSY after libxdp's retries.
libxdp's log goes through libxdp_set_print to a c_library.CLog, as libbpf's does; an error
is a LibxdpError with `.errno` and the tail of that log (for a failed attach: libbpf's, which has the verifier's
words). libbpf is loaded first (libxdp links against it).
Importable without ansible.
"""
import ctypes
import errno as errno_mod
import os
import threading

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import c_library, libbpf

LIBXDP_NAMES = ("libxdp.so.1",)
# enum xdp_action, in its order: the names proceed_on takes
ACTIONS = ("aborted", "drop", "pass", "tx", "redirect")
# enum xdp_attach_mode
MODE_UNSPEC, MODE_NATIVE, MODE_SKB, MODE_HW = 0, 1, 2, 3
MODE_NAMES = {MODE_UNSPEC: "unspec", MODE_NATIVE: "native", MODE_SKB: "generic", MODE_HW: "offload"}
DEFAULT_RUN_PRIO = 50  # libxdp's XDP_DEFAULT_RUN_PRIO
DEFAULT_PROCEED_ON = ("pass",)  # libxdp's default chain-call actions
MAX_PROGRAMS = 10  # the dispatcher's slots (libxdp's MAX_DISPATCHER_ACTIONS)
SKIP_ENV = "LIBXDP_SKIP_DISPATCHER"  # libxdp attaches without a dispatcher when it is set
# the variables libxdp reads from the environment, and what each would make it do: the module refuses to attach
# while one is set (it runs as root: its dispatcher is loaded from libxdp's own directory, pinned in /sys/fs/bpf)
REFUSED_ENV = (
    (SKIP_ENV, "libxdp would attach without its dispatcher (one program per interface)"),
    ("LIBXDP_OBJECT_PATH", "libxdp would load its dispatcher from that directory instead of its own"),
    ("LIBXDP_BPFFS", "libxdp would pin its dispatchers there instead of /sys/fs/bpf, where other tools look"),
    ("LIBXDP_BPFFS_AUTOMOUNT", "libxdp would mount a bpffs of its own"),
)
_LOG_BUF_SIZE = 1 << 16
_TAIL_LINES = 5


class LibxdpError(c_library.LibraryError):
    """A libxdp failure: `.errno` (positive), `.op` (what failed), `.log_tail` (libxdp's last warnings)."""


class ProgramOpts(ctypes.Structure):
    """struct xdp_program_opts (libxdp.h)."""
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("obj", ctypes.c_void_p),  # struct bpf_object *
        ("opts", ctypes.c_void_p),  # struct bpf_object_open_opts *
        ("prog_name", ctypes.c_char_p),
        ("find_filename", ctypes.c_char_p),
        ("open_filename", ctypes.c_char_p),
        ("pin_path", ctypes.c_char_p),
        ("id", ctypes.c_uint32),
        ("fd", ctypes.c_int),
    ]


_lib = None
_lock = threading.Lock()
_log = c_library.CLog(_LOG_BUF_SIZE)  # what libxdp printed (its print callback, set at load)

_VP, _INT, _UINT = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
SIGNATURES = {
    "libxdp_set_print": ([c_library.PRINT_FN], _VP),
    "libxdp_get_error": ([_VP], ctypes.c_long),
    "libxdp_strerror": ([_INT, ctypes.c_char_p, ctypes.c_size_t], _INT),
    "xdp_program__create": ([ctypes.POINTER(ProgramOpts)], _VP),
    "xdp_program__close": ([_VP], None),
    "xdp_program__name": ([_VP], ctypes.c_char_p),
    "xdp_program__id": ([_VP], ctypes.c_uint32),
    "xdp_program__fd": ([_VP], _INT),
    "xdp_program__run_prio": ([_VP], _UINT),
    "xdp_program__set_run_prio": ([_VP, _UINT], _INT),
    "xdp_program__chain_call_enabled": ([_VP, _INT], ctypes.c_bool),
    "xdp_program__set_chain_call_enabled": ([_VP, _UINT, ctypes.c_bool], _INT),
    "xdp_program__attach": ([_VP, _INT, _INT, _UINT], _INT),
    "xdp_program__detach": ([_VP, _INT, _INT, _UINT], _INT),
    "xdp_multiprog__get_from_ifindex": ([_INT], _VP),
    "xdp_multiprog__next_prog": ([_VP, _VP], _VP),
    "xdp_multiprog__close": ([_VP], None),
    "xdp_multiprog__attach_mode": ([_VP], _INT),
    "xdp_multiprog__main_prog": ([_VP], _VP),
    "xdp_multiprog__is_legacy": ([_VP], ctypes.c_bool),
}


def _load():
    """Load libxdp once (after libbpf) and declare the functions we use; LibxdpError when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        libbpf._load()  # libxdp links against libbpf.so.1: the binding's libbpf comes first, as ebpf_program's
    except libbpf.LibbpfError as exc:
        raise LibxdpError("libxdp needs libbpf: %s" % exc, exc.errno, "dlopen")
    lib = c_library.open_first(LIBXDP_NAMES)
    if lib is None:
        raise LibxdpError("libxdp is not installed on this host (looked for %s); install libxdp1 (Debian 12 and "
                          "newer)" % ", ".join(LIBXDP_NAMES), errno_mod.ENOENT, "dlopen")
    missing = [fname for fname in SIGNATURES if not hasattr(lib, fname)]
    if missing:
        raise LibxdpError("this libxdp lacks %s (libxdp 1.3 or newer is needed)" % ", ".join(missing),
                          errno_mod.ENOSYS, "dlopen")
    for fname, (args, res) in SIGNATURES.items():
        fn = getattr(lib, fname)
        fn.argtypes = args
        fn.restype = res
    lib.libxdp_set_print(_log.callback)
    _lib = lib
    return lib


def available():
    """True when libxdp (1.3+) can be loaded on this host."""
    try:
        _load()
        return True
    except LibxdpError:
        return False


def log_text(min_level=None):
    """Everything libxdp printed since the last call into it; levels 0 warn, 1 info, 2 debug."""
    return _log.text(min_level)


def strerror(err):
    """libxdp's text for its own codes, else the C library's."""
    if _lib is not None:
        buf = ctypes.create_string_buffer(256)
        if _lib.libxdp_strerror(err, buf, len(buf)) == 0 and buf.value:
            return buf.value.decode("utf-8", "replace")
    return os.strerror(err)


def _error(op, err):
    tail = _log.tail(_TAIL_LINES)
    msg = "%s failed: %s" % (op, strerror(err))
    if tail:
        msg += " (libxdp: %s)" % tail.replace("libxdp: ", "").replace("\n", "; ")
    return LibxdpError(msg, err, op, tail)


def _check_ptr(ptr, op):
    """ptr, or LibxdpError for NULL (errno) or an ERR_PTR (libxdp_get_error)."""
    err = ctypes.get_errno()
    if not ptr:
        raise _error(op, err or errno_mod.EINVAL)
    code = _lib.libxdp_get_error(ptr)
    if code:
        raise _error(op, -code if code < 0 else code)
    return ptr


def _check_rc(rc, op):
    if rc < 0:
        raise _error(op, -rc)
    return rc


def _proceed_on(lib, ptr):
    return [name for value, name in enumerate(ACTIONS) if lib.xdp_program__chain_call_enabled(ptr, value)]


def _describe(lib, ptr):
    return {"id": int(lib.xdp_program__id(ptr)), "name": libbpf._text(lib.xdp_program__name(ptr) or b""),
            "priority": int(lib.xdp_program__run_prio(ptr)), "proceed_on": _proceed_on(lib, ptr)}


class _Handle(object):
    """A libxdp object of ours (`_ptr`), freed by close() (or at the end of a with block) with `_FREE`."""
    _FREE = None
    _ptr = None
    lib = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._ptr:
            getattr(self.lib, self._FREE)(self._ptr)
            self._ptr = None


class Program(_Handle):
    """One program of an opened libbpf.BpfObject (selected, not loaded), handed to libxdp. close() frees libxdp's
    hold; the object stays the caller's (closed by it, after)."""
    _FREE = "xdp_program__close"

    def __init__(self, bpf_object, prog_name):
        self.lib = _load()
        self._name = prog_name.encode()
        self._opts = ProgramOpts(sz=ctypes.sizeof(ProgramOpts), obj=bpf_object.pointer(), prog_name=self._name)
        with _lock:
            _log.clear()
            ctypes.set_errno(0)
            self._ptr = _check_ptr(self.lib.xdp_program__create(ctypes.byref(self._opts)),
                                   "handing program %s to libxdp" % prog_name)

    def configure(self, priority, proceed_on):
        """Before attach: the run priority (lower runs first) and the actions after which the next program runs."""
        with _lock:
            _log.clear()
            _check_rc(self.lib.xdp_program__set_run_prio(self._ptr, priority), "setting the run priority %d"
                      % priority)
            for value, name in enumerate(ACTIONS):
                _check_rc(self.lib.xdp_program__set_chain_call_enabled(self._ptr, value, name in proceed_on),
                          "setting proceed_on %s" % name)

    def describe(self):
        """{"id", "name", "priority", "proceed_on"} (id 0 before attach)."""
        return _describe(self.lib, self._ptr)

    def fd(self):
        """The loaded program's fd (libxdp's own: dup it to keep it), or -1 before attach."""
        return self.lib.xdp_program__fd(self._ptr)

    def attach(self, ifindex, mode):
        """Load the program and put it into the interface's dispatcher (a new dispatcher swapped in atomically).
        The calling thread must be in the interface's network namespace. The caller checks what it got."""
        for name, effect in REFUSED_ENV:
            if os.environ.get(name):
                raise LibxdpError("%s is set in this process's environment: %s; unset it" % (name, effect),
                                  errno_mod.EINVAL, "attach")
        libbpf.raise_memlock()  # libxdp loads with libbpf: kernels before 5.11 charge bpf memory to RLIMIT_MEMLOCK
        with _lock:
            _log.clear()
            libbpf.clear_log()
            rc = self.lib.xdp_program__attach(self._ptr, ifindex, mode, 0)
            if rc < 0:
                err = _error("attaching through libxdp on ifindex %d (%s mode)" % (ifindex, MODE_NAMES.get(mode, mode)),
                             -rc)
                verifier = libbpf.log_tail()  # libxdp loads through libbpf, whose log has the verifier's words
                if verifier:
                    err.log_tail = verifier
                raise err


class Dispatcher(_Handle):
    """What libxdp reads on an interface (the calling thread in its netns): `legacy` (a plain XDP program, not a
    dispatcher, or a dispatcher whose programs libxdp cannot find), `mode` (a MODE_* value), `main` (the attached
    program: {"id", "name", ...}) and `programs` (the dispatcher's, in run order). None from `read` when the
    interface holds no XDP program."""
    _FREE = "xdp_multiprog__close"

    def __init__(self, lib, ptr, ifindex):
        self.lib = lib
        self._ptr = ptr
        self.ifindex = ifindex
        self.legacy = bool(lib.xdp_multiprog__is_legacy(ptr))
        self.mode = int(lib.xdp_multiprog__attach_mode(ptr))
        main = lib.xdp_multiprog__main_prog(ptr)
        self.main = _describe(lib, main) if main else None
        self.programs = [] if self.legacy else [_describe(lib, p) for p in self._ptrs()]

    @classmethod
    def read(cls, ifindex):
        lib = _load()
        with _lock:
            _log.clear()
            ctypes.set_errno(0)
            ptr = lib.xdp_multiprog__get_from_ifindex(ifindex)
            code = -lib.libxdp_get_error(ptr) if ptr else (ctypes.get_errno() or errno_mod.EINVAL)
            if code == errno_mod.ENOENT:
                return None
            if code:
                raise _error("reading the XDP programs of ifindex %d" % ifindex, code)
        return cls(lib, ptr, ifindex)

    def _ptrs(self):
        cur = None
        while True:
            cur = self.lib.xdp_multiprog__next_prog(cur, self._ptr)
            if not cur:
                return
            yield cur

    def find(self, prog_id):
        """The dispatcher's program with this id ({"id", "name", "priority", "proceed_on"}), or None."""
        for prog in self.programs:
            if prog["id"] == prog_id:
                return prog
        return None

    def detach(self, prog_id):
        """Take program prog_id out of the dispatcher (a new one without it swapped in; the last one out removes
        the dispatcher). False when it is not there."""
        for ptr in self._ptrs() if not self.legacy else ():
            if self.lib.xdp_program__id(ptr) == prog_id:
                with _lock:
                    _log.clear()
                    _check_rc(self.lib.xdp_program__detach(ptr, self.ifindex, self.mode, 0),
                              "detaching program id %d through libxdp from ifindex %d" % (prog_id, self.ifindex))
                return True
        return False
