"""libxdp.py over the host's libxdp: ABI layout, every function it declares, handing a program to libxdp (no
kernel load: libxdp loads only when it attaches), errors."""
import ctypes
import ctypes.util
import errno
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libbpf, libxdp

from tests.conftest import TOP  # noqa: E402
OBJ = os.path.join(TOP, "examples", "objects")


def _installed(name):
    """A fact of the machine, not libxdp.available() (the code under test)."""
    return ctypes.util.find_library(name) is not None


needs_libxdp = pytest.mark.skipif(not (_installed("xdp") and _installed("bpf")),
                                  reason="no libxdp.so.1 (package libxdp1) or no libbpf on this machine "
                                         "(ctypes.util.find_library('xdp'), ('bpf'))")


def test_program_opts_layout():
    # struct xdp_program_opts of libxdp.h (1.3+): sz, obj, opts, prog_name, find_filename, open_filename,
    # pin_path, id (u32), fd (int)
    assert ctypes.sizeof(libxdp.ProgramOpts) == 64
    offsets = dict((name, getattr(libxdp.ProgramOpts, name).offset) for name, _t in libxdp.ProgramOpts._fields_)
    assert offsets == {"sz": 0, "obj": 8, "opts": 16, "prog_name": 24, "find_filename": 32, "open_filename": 40,
                       "pin_path": 48, "id": 56, "fd": 60}


def test_actions_are_enum_xdp_action():
    assert libxdp.ACTIONS.index("aborted") == 0 and libxdp.ACTIONS.index("redirect") == 4
    assert libxdp.DEFAULT_PROCEED_ON == ("pass",)


def test_missing_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(libxdp, "_lib", None)
    monkeypatch.setattr(libxdp, "LIBXDP_NAMES", ("libxdp-not-here.so.9",))
    with pytest.raises(libxdp.LibxdpError, match="libxdp is not installed on this host .*install libxdp1") as err:
        libxdp._load()
    assert err.value.errno == errno.ENOENT
    assert libxdp.available() is False


@needs_libxdp
def test_every_declared_function_resolves():
    lib = libxdp._load()
    for name in libxdp.SIGNATURES:
        assert getattr(lib, name).restype is libxdp.SIGNATURES[name][1]
    assert libxdp.available() is True


@needs_libxdp
def test_program_from_an_opened_object_and_configure():
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_counter.bpf.o")) as obj:
        obj.select("xdp_count")
        with libxdp.Program(obj, "xdp_count") as prog:
            assert prog.describe() == {"id": 0, "name": "xdp_count", "priority": 50, "proceed_on": ["pass"]}
            assert prog.fd() < 0  # not loaded: libxdp loads it when it attaches it
            prog.configure(7, ["pass", "drop"])
            assert prog.describe()["priority"] == 7
            assert prog.describe()["proceed_on"] == ["drop", "pass"]


@needs_libxdp
def test_unknown_program_is_a_libxdp_error_with_its_log():
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_counter.bpf.o")) as obj:
        with pytest.raises(libxdp.LibxdpError, match="handing program nope to libxdp failed") as err:
            libxdp.Program(obj, "nope")
    assert err.value.errno == errno.ENOENT
    assert "libxdp: libxdp:" not in str(err.value)


@needs_libxdp
@pytest.mark.parametrize("name", ["LIBXDP_SKIP_DISPATCHER", "LIBXDP_OBJECT_PATH", "LIBXDP_BPFFS",
                                  "LIBXDP_BPFFS_AUTOMOUNT"])
def test_a_libxdp_variable_in_the_environment_is_refused_before_anything_is_loaded(monkeypatch, name):
    """Each would change where libxdp loads its dispatcher from or pins it, or skip it: refused, ifindex 1 (lo)
    never touched (a real attach there would need a network namespace of its own)."""
    monkeypatch.setenv(name, "/tmp")
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_counter.bpf.o")) as obj:
        obj.select("xdp_count")
        with libxdp.Program(obj, "xdp_count") as prog:
            with pytest.raises(libxdp.LibxdpError, match="%s is set in this process's environment: libxdp would "
                               % name):
                prog.attach(1, libxdp.MODE_SKB)
            assert prog.describe()["id"] == 0  # not loaded
