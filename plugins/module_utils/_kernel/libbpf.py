# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ctypes binding over the distro's libbpf (libbpf.so.0 from 0.3, libbpf.so.1): open and load ELF objects.

One job: turn an ELF object into loaded kernel objects (program and map fds) with libbpf, the loader the kernel
community maintains (relocations, CO-RE, BTF, map creation). Attaching and pinning are done by the caller with
bpf_syscall; this file never attaches anything.

Version differences handled here:
- 0.x returns ERR_PTR-encoded pointers from the open functions, 1.x returns NULL and sets errno
  (`_check_ptr` handles both, with libbpf_get_error for the 0.x case).
- bpf_object__next_program / bpf_object__next_map exist from 0.7; before, bpf_program__next / bpf_map__next.
- bpf_map__initial_value (the bytes of a data section's map before load) is newer than 0.3; without it the caller
  reads them from the ELF object (elf_globals.py). bpf_map__set_initial_value exists in every version we take.
- A kprobe program's kern_version (checked by kernels before 5.0): bpf_object__set_kversion is 0.4+, 0.3 only
  reads the object's "version" section; every version is given the section (elf_kversion.py).
- `struct bpf_object_open_opts` only grows: `sz`, `object_name`, `relaxed_maps` (+ `relaxed_core_relocs` in 0.x,
  a bool in the same padding), `pin_root_path` at offset 24 in every version. We pass `sz` = 32, which every
  version accepts.

libbpf's log goes through libbpf_set_print to a ctypes callback that formats it with vsnprintf on the va_list;
a load failure raises LibbpfError whose `.log_tail` carries the tail of the verifier log.
Importable without ansible.
"""
import ctypes
import errno as errno_mod
import os
import resource
import threading

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import c_library, elf, elf_kversion, version_code

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so.0", "libbpf.so")
KERNEL_5_0 = 5 << 16  # from 5.0 the kernel no longer checks a kprobe program's kern_version
_LOG_BUF_SIZE = 1 << 20
_TAIL_LINES = 40


class LibbpfError(c_library.LibraryError):
    """A libbpf failure: `.errno` (positive), `.op` (what failed), `.log_tail` (libbpf/verifier log tail)."""


class _OpenOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("relaxed_core_relocs", ctypes.c_bool),  # 0.x only; padding in 1.x
        ("pin_root_path", ctypes.c_char_p),
    ]


class _MapDef(ctypes.Structure):
    """struct bpf_map_def, what bpf_map__def() returns on libbpf 0.x (before bpf_map__type & co, 0.7)."""
    _fields_ = [("type", ctypes.c_uint), ("key_size", ctypes.c_uint), ("value_size", ctypes.c_uint),
                ("max_entries", ctypes.c_uint), ("map_flags", ctypes.c_uint)]


_lib = None
_lock = threading.Lock()
_log = c_library.CLog(_LOG_BUF_SIZE)  # what libbpf printed (its print callback, set at load)


def _load():
    """Load libbpf once and declare the functions we use; raise LibbpfError when no libbpf is installed."""
    global _lib
    if _lib is not None:
        return _lib
    names = LIBBPF_NAMES  # by soname, through the dynamic loader (LD_LIBRARY_PATH and ld.so.cache)
    lib = c_library.open_first(names)
    if lib is None:
        raise LibbpfError("libbpf is not installed on this host (looked for %s); install libbpf1 or libbpf0"
                          % ", ".join(names), errno_mod.ENOENT, "dlopen")

    vp = ctypes.c_void_p
    sigs = {
        "bpf_object__open_file": ([ctypes.c_char_p, ctypes.POINTER(_OpenOpts)], vp),
        "bpf_object__open_mem": ([vp, ctypes.c_size_t, ctypes.POINTER(_OpenOpts)], vp),
        "bpf_object__kversion": ([vp], ctypes.c_uint),
        "bpf_object__load": ([vp], ctypes.c_int),
        "bpf_object__close": ([vp], None),
        "bpf_program__name": ([vp], ctypes.c_char_p),
        "bpf_program__section_name": ([vp], ctypes.c_char_p),
        "bpf_program__set_autoload": ([vp, ctypes.c_bool], ctypes.c_int),
        "bpf_program__set_attach_target": ([vp, ctypes.c_int, ctypes.c_char_p], ctypes.c_int),
        "bpf_program__fd": ([vp], ctypes.c_int),
        "bpf_map__name": ([vp], ctypes.c_char_p),
        "bpf_map__fd": ([vp], ctypes.c_int),
        "bpf_map__is_pinned": ([vp], ctypes.c_bool),
        "bpf_map__pin_path": ([vp], ctypes.c_char_p),  # 0.4+
        "bpf_map__get_pin_path": ([vp], ctypes.c_char_p),  # 0.0.6 .. 0.8 (deprecated, gone in 1.0)
        "bpf_map__reuse_fd": ([vp, ctypes.c_int], ctypes.c_int),
        "bpf_map__type": ([vp], ctypes.c_int),
        "bpf_map__key_size": ([vp], ctypes.c_uint32),
        "bpf_map__value_size": ([vp], ctypes.c_uint32),
        "bpf_map__max_entries": ([vp], ctypes.c_uint32),
        "bpf_map__map_flags": ([vp], ctypes.c_uint32),
        "bpf_map__def": ([vp], ctypes.POINTER(_MapDef)),
        "bpf_map__set_initial_value": ([vp, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),  # 0.0.7+
        "bpf_map__initial_value": ([vp, ctypes.POINTER(ctypes.c_size_t)], vp),  # not in 0.3
        "libbpf_get_error": ([vp], ctypes.c_long),
        "libbpf_strerror": ([ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
        "libbpf_set_print": ([c_library.PRINT_FN], vp),
    }
    if hasattr(lib, "bpf_object__next_program"):
        sigs["bpf_object__next_program"] = ([vp, vp], vp)
        sigs["bpf_object__next_map"] = ([vp, vp], vp)
    else:
        sigs["bpf_program__next"] = ([vp, vp], vp)
        sigs["bpf_map__next"] = ([vp, vp], vp)
    for fname, (args, res) in sigs.items():
        fn = getattr(lib, fname, None)
        if fn is None:
            continue
        fn.argtypes = args
        fn.restype = res
    lib.libbpf_set_print(_log.callback)
    _lib = lib
    return lib


def log_text(min_level=None):
    """Everything libbpf printed since the last clear_log(); levels 0 warn, 1 info, 2 debug."""
    return _log.text(min_level)


def clear_log():
    _log.clear()


def log_tail(lines=_TAIL_LINES):
    """The last `lines` lines of libbpf's warnings: on a verifier rejection, the verifier log's tail."""
    return _log.tail(lines)


def strerror(err):
    """libbpf's text for its own error codes (4000+: "Invalid ELF format"...), else the libc one."""
    if err >= 4000 and _lib is not None:
        buf = ctypes.create_string_buffer(256)
        _lib.libbpf_strerror(err, buf, len(buf))
        return buf.value.decode("utf-8", "replace")
    return os.strerror(err)


def _check_ptr(lib, ptr, op):
    """Return ptr, or raise LibbpfError for NULL (1.x, errno) or an ERR_PTR (0.x)."""
    if not ptr:
        err = ctypes.get_errno() or errno_mod.EINVAL
        raise LibbpfError(_with_log("%s failed: %s" % (op, strerror(err))), err, op, log_tail())
    code = lib.libbpf_get_error(ptr)
    if code:
        err = -code if code < 0 else code
        raise LibbpfError(_with_log("%s failed: %s" % (op, strerror(err))), err, op, log_tail())
    return ptr


def _with_log(msg, lines=3):
    tail = log_tail(lines)
    return msg + ("\nlibbpf: " + tail.replace("libbpf: ", "") if tail else "")


def raise_memlock():
    """Kernels before 5.11 charge bpf memory to RLIMIT_MEMLOCK; libbpf 0.x does not raise it for us."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


def _text(raw):
    """A name or path from the ELF object: bytes that are not UTF-8 kept as surrogate escapes (no exception
    here; program_spec.check_elf_names refuses such names with a message)."""
    return raw.decode("utf-8", "surrogateescape")


def needed_kern_version():
    """The running kernel's LINUX_VERSION_CODE when it is before 5.0 (kprobe programs must carry it there), else
    None (libbpf's own derivation is then as good as any)."""
    code = version_code.linux_version_code()
    return code if code is not None and code < KERNEL_5_0 else None


class BpfObject(object):
    """An ELF object opened by libbpf. Use as a context manager; close() frees libbpf's fds.

    obj = BpfObject(path, pin_root_path=".../_shared")
    obj.programs() -> [{"name", "section"}]; obj.select(name) loads only that program on load();
    obj.load(); obj.program_fd(name); obj.maps() -> [{"name", "fd", "pinned", "pin_path"}]
    """

    def __init__(self, path, pin_root_path=None, kern_version=None, data=None):
        """`data`: the object's bytes, when the caller read them (libbpf then opens them, not the file at `path`,
        which only names the object). `kern_version`: the LINUX_VERSION_CODE the object's programs carry; by
        default the running kernel's own (version_code.py) before 5.0, where a kprobe or uprobe program loads only
        with it, and what libbpf derives from the release from 5.0 on (where the kernel no longer looks). A code is
        given to libbpf as the object's "version" section (elf_kversion.py), the one way every libbpf from 0.3
        reads."""
        self.lib = _load()
        self.path = path
        self._ptr = None
        self._buf = self._name = None
        self._opts = _OpenOpts()
        self._opts.sz = ctypes.sizeof(_OpenOpts)
        self._pin_root = pin_root_path.encode() if pin_root_path else None
        self._opts.pin_root_path = self._pin_root
        if kern_version is None:
            kern_version = needed_kern_version()
        if kern_version is not None:
            data = self._with_kern_version(self._read() if data is None else data, kern_version)
        if data is not None:
            self._buf = ctypes.create_string_buffer(data, len(data))
            self._name = os.path.basename(path).encode()  # libbpf names the object (and its .data maps) by it
            self._opts.object_name = self._name
        with _lock:
            clear_log()
            ctypes.set_errno(0)
            if self._buf is None:
                ptr = self.lib.bpf_object__open_file(path.encode(), ctypes.byref(self._opts))
            else:  # libbpf keeps reading the buffer until load: it lives as long as this object
                ptr = self.lib.bpf_object__open_mem(self._buf, len(self._buf), ctypes.byref(self._opts))
            self._ptr = _check_ptr(self.lib, ptr, "opening %s with libbpf" % path)

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except (OSError, IOError) as exc:
            raise LibbpfError("opening %s failed: %s" % (self.path, exc.strerror or exc),
                              exc.errno or errno_mod.EIO, "opening %s" % self.path)

    def _with_kern_version(self, data, code):
        try:
            return elf_kversion.with_kern_version(data, code, self.path)
        except elf.ElfError as exc:
            raise LibbpfError("opening %s failed: %s" % (self.path, exc), errno_mod.EINVAL, "opening %s" % self.path)

    def pointer(self):
        """The `struct bpf_object *` (libxdp takes the opened object as it is, libxdp.py); None once closed."""
        return self._ptr

    def kern_version(self):
        """The LINUX_VERSION_CODE libbpf gives the object's programs."""
        return self.lib.bpf_object__kversion(self._ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._ptr:
            self.lib.bpf_object__close(self._ptr)
            self._ptr = None

    def _iter(self, kind):
        lib, prev = self.lib, None
        while True:
            if kind == "program":
                if hasattr(lib, "bpf_object__next_program"):
                    cur = lib.bpf_object__next_program(self._ptr, prev)
                else:
                    cur = lib.bpf_program__next(prev, self._ptr)
            else:
                if hasattr(lib, "bpf_object__next_map"):
                    cur = lib.bpf_object__next_map(self._ptr, prev)
                else:
                    cur = lib.bpf_map__next(prev, self._ptr)
            if not cur:
                return
            yield cur
            prev = cur

    def _prog_ptrs(self):
        out = {}
        for p in self._iter("program"):
            out[_text(self.lib.bpf_program__name(p))] = p
        return out

    def programs(self):
        """[{"name": function name, "section": ELF section}] in object order."""
        return [{"name": _text(self.lib.bpf_program__name(p)),
                 "section": _text(self.lib.bpf_program__section_name(p) or b"")}
                for p in self._iter("program")]

    def select(self, name, attach_target=None):
        """Load only program `name` (autoload off for the others); optionally retarget fentry/fexit/lsm."""
        ptrs = self._prog_ptrs()
        if name not in ptrs:
            raise LibbpfError("program %r not found in %s (it has: %s)"
                              % (name, self.path, ", ".join(sorted(ptrs)) or "no programs"),
                              errno_mod.ENOENT, "select")
        for pname, ptr in ptrs.items():
            self.lib.bpf_program__set_autoload(ptr, pname == name)
        if attach_target:
            rc = self.lib.bpf_program__set_attach_target(ptrs[name], 0, attach_target.encode())
            if rc:
                err = abs(rc)
                raise LibbpfError("cannot target %s: %s" % (attach_target, os.strerror(err)), err,
                                  "set_attach_target", log_tail())

    def load(self):
        """Create maps and load the selected program(s); LibbpfError carries the verifier log's tail."""
        raise_memlock()
        with _lock:
            clear_log()
            ctypes.set_errno(0)
            rc = self.lib.bpf_object__load(self._ptr)
            if rc:
                err = abs(rc) if rc != -1 else (ctypes.get_errno() or errno_mod.EINVAL)
                tail = log_tail()
                msg = "loading %s failed: %s" % (self.path, strerror(err))
                if tail:
                    msg += "\nlibbpf/verifier log (tail):\n" + tail
                raise LibbpfError(msg, err, "load", tail)

    def program_fd(self, name):
        fd = self.lib.bpf_program__fd(self._prog_ptrs()[name])
        if fd < 0:
            raise LibbpfError("program %r was not loaded" % name, errno_mod.ENOENT, "program_fd")
        return fd

    def _pin_path(self, m):
        fn = getattr(self.lib, "bpf_map__pin_path", None) or self.lib.bpf_map__get_pin_path
        return fn(m)

    def map_defs(self):
        """Before load: [{"name", "type", "key_size", "value_size", "max_entries", "map_flags", "pin_path"}]."""
        lib, out = self.lib, []
        for m in self._iter("map"):
            if hasattr(lib, "bpf_map__max_entries") and hasattr(lib, "bpf_map__type"):
                d = {"type": lib.bpf_map__type(m), "key_size": lib.bpf_map__key_size(m),
                     "value_size": lib.bpf_map__value_size(m), "max_entries": lib.bpf_map__max_entries(m),
                     "map_flags": lib.bpf_map__map_flags(m)}
            else:
                md = lib.bpf_map__def(m).contents
                d = {"type": md.type, "key_size": md.key_size, "value_size": md.value_size,
                     "max_entries": md.max_entries, "map_flags": md.map_flags}
            pin = self._pin_path(m)
            d.update(name=_text(lib.bpf_map__name(m)), pin_path=_text(pin) if pin else None)
            out.append(d)
        return out

    def reuse_map(self, name, fd):
        """Before load: make map `name` use the existing map behind fd (its contents survive a replace)."""
        for m in self._iter("map"):
            if _text(self.lib.bpf_map__name(m)) == name:
                rc = self.lib.bpf_map__reuse_fd(m, fd)
                if rc:
                    err = abs(rc)
                    raise LibbpfError("cannot reuse map %s: %s" % (name, os.strerror(err)), err, "reuse_fd")
                return
        raise LibbpfError("map %r not in %s" % (name, self.path), errno_mod.ENOENT, "reuse_fd")

    def _data_map(self, section):
        """The internal map of data section `section` (".rodata", ".data", ".bss"): libbpf names it
        "<object name prefix><section>" (0.x cuts the object name to fit 15 characters)."""
        for m in self._iter("map"):
            if _text(self.lib.bpf_map__name(m)).endswith(section):
                return m
        raise LibbpfError("%s has no %s map" % (self.path, section), errno_mod.ENOENT, "initial_value")

    def initial_value(self, section):
        """Before load: the bytes libbpf will load into the map of data section `section`, or None when this
        libbpf cannot tell (no bpf_map__initial_value, as in 0.3: the caller reads the ELF section instead)."""
        m = self._data_map(section)
        fn = getattr(self.lib, "bpf_map__initial_value", None)
        if fn is None:
            return None
        size = ctypes.c_size_t(0)
        ptr = fn(m, ctypes.byref(size))
        return ctypes.string_at(ptr, size.value) if ptr else None

    def set_initial_value(self, section, data):
        """Before load: the whole contents of data section `section`'s map (exactly its size), so the program
        is loaded with these values in its global variables (.rodata is frozen read-only at load)."""
        m = self._data_map(section)
        rc = self.lib.bpf_map__set_initial_value(m, bytes(data), len(data))
        if rc:
            err = abs(rc)
            raise LibbpfError("cannot set the initial value of %s in %s (%d bytes): %s"
                              % (section, self.path, len(data), os.strerror(err)), err, "set_initial_value")

    def maps(self):
        """[{"name", "fd", "pinned" (pinned by libbpf: LIBBPF_PIN_BY_NAME), "pin_path"}]."""
        out = []
        for m in self._iter("map"):
            pin = self._pin_path(m)
            out.append({"name": _text(self.lib.bpf_map__name(m)),
                        "fd": self.lib.bpf_map__fd(m),
                        "pinned": bool(self.lib.bpf_map__is_pinned(m)),
                        "pin_path": _text(pin) if pin else None})
        return out


def available():
    """True when a libbpf shared library can be loaded on this host."""
    try:
        _load()
        return True
    except LibbpfError:
        return False
