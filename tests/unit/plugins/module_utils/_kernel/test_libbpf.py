"""libbpf.py over the host's libbpf: ABI layout, opening objects (no kernel load needed), errors."""
import ctypes
import ctypes.util
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libbpf

from tests.conftest import TOP  # noqa: E402
OBJ = os.path.join(TOP, "examples", "objects")


def _libbpf_installed():
    """A fact of the machine, not libbpf.available() (the code under test): a libbpf.so.* the loader can find."""
    return ctypes.util.find_library("bpf") is not None


pytestmark = pytest.mark.skipif(not _libbpf_installed(), reason="no libbpf shared library on this machine "
                                "(ctypes.util.find_library('bpf'))")


def test_open_opts_layout_is_the_same_in_every_version():
    # pin_root_path sits at offset 24 in 0.3 .. 1.x; sz 32 is accepted by all of them
    assert libbpf._OpenOpts.pin_root_path.offset == 24
    assert ctypes.sizeof(libbpf._OpenOpts) == 32


def test_programs_and_sections():
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_multi.bpf.o")) as o:
        assert o.programs() == [{"name": "xdp_pass_a", "section": "xdp"}, {"name": "xdp_pass_b", "section": "xdp"}]
    with libbpf.BpfObject(os.path.join(OBJ, "tp_openat.bpf.o")) as o:
        assert o.programs() == [{"name": "count_openat", "section": "tracepoint/syscalls/sys_enter_openat"}]


def test_map_defs_before_load():
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_counter.bpf.o")) as o:
        d = dict((m["name"], m) for m in o.map_defs())
        assert d["xdp_stats"]["key_size"] == 4 and d["xdp_stats"]["value_size"] == 16
        assert d["xdp_stats"]["max_entries"] == 1 and d["xdp_stats"]["pin_path"] is None
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_pinned_shared.bpf.o"), pin_root_path="/sys/fs/bpf/x/_shared") as o:
        d = dict((m["name"], m) for m in o.map_defs())
        assert d["shared_counter"]["pin_path"] == "/sys/fs/bpf/x/_shared/shared_counter"


def test_select_unknown_program():
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_multi.bpf.o")) as o:
        with pytest.raises(libbpf.LibbpfError, match="program 'nope' not found"):
            o.select("nope")
        o.select("xdp_pass_b")


@pytest.mark.parametrize("content,needle", [(b"not an elf at all", "BPF object format invalid"),
                                            (None, "format invalid")])
def test_open_bad_files(tmp_path, content, needle):
    path = tmp_path / "bad.o"
    if content is None:
        content = open(os.path.join(OBJ, "xdp_counter.bpf.o"), "rb").read()[:700]
    path.write_bytes(content)
    with pytest.raises(libbpf.LibbpfError, match=needle) as err:
        libbpf.BpfObject(str(path))
    assert err.value.errno > 0 and "libbpf" in str(err.value)


def test_open_missing_file(tmp_path):
    with pytest.raises(libbpf.LibbpfError, match="No such file"):
        libbpf.BpfObject(str(tmp_path / "missing.o"))


def test_log_capture_through_vsnprintf(tmp_path):
    path = tmp_path / "bad.o"
    path.write_bytes(b"\x7fELF garbage")
    with pytest.raises(libbpf.LibbpfError):
        libbpf.BpfObject(str(path))
    assert "bad.o" in libbpf.log_text()  # the message was formatted from libbpf's format string and va_list


def test_data_sections_initial_values_before_load(tmp_path_factory):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf_globals
    from tests.unit.fixtures import globals_object
    path = globals_object.build(tmp_path_factory)
    elf = elf_globals.ObjectGlobals.read(path).sections
    with libbpf.BpfObject(path) as o:
        for section in (".rodata", ".data", ".bss"):
            now = o.initial_value(section)
            assert now is None or now == elf[section]  # None: a libbpf without bpf_map__initial_value
        o.set_initial_value(".data", b"\x07" * 8)
        assert o.initial_value(".data") in (None, b"\x07" * 8)
        with pytest.raises(libbpf.LibbpfError, match="cannot set the initial value of .data"):
            o.set_initial_value(".data", b"\x07" * 4)  # not the section's size
    with libbpf.BpfObject(os.path.join(OBJ, "xdp_counter.bpf.o")) as o:
        with pytest.raises(libbpf.LibbpfError, match="has no .rodata map"):
            o.set_initial_value(".rodata", b"")


@pytest.mark.parametrize("name", ["kprobe_unlinkat.bpf.o", "xdp_port_drop.bpf.o", "xdp_pinned_shared.bpf.o"])
def test_a_kern_version_reaches_libbpf_and_the_object_reads_the_same(name):
    """Given a code, the object is opened from memory with a "version" section (what libbpf 0.3 reads): libbpf
    gives its programs that code, and names its programs and maps as it does the file's."""
    path = os.path.join(OBJ, name)
    with libbpf.BpfObject(path, pin_root_path="/sys/fs/bpf/x/_shared") as plain:
        programs, maps = plain.programs(), plain.map_defs()
    with libbpf.BpfObject(path, pin_root_path="/sys/fs/bpf/x/_shared", kern_version=0x413ff) as o:
        assert o.kern_version() == 0x413ff
        assert o.programs() == programs and o.map_defs() == maps


def test_an_unreadable_object_given_a_kern_version_names_it(tmp_path):
    with pytest.raises(libbpf.LibbpfError, match="missing.o failed: No such file"):
        libbpf.BpfObject(str(tmp_path / "missing.o"), kern_version=0x413ff)
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"\x7fELF garbage")
    with pytest.raises(libbpf.LibbpfError, match="bad.o failed: .*not an ELF file|bad.o failed: .*unknown ELF"):
        libbpf.BpfObject(str(bad), kern_version=0x413ff)


def test_from_5_0_no_code_is_given(monkeypatch):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import version_code
    monkeypatch.setattr(version_code, "linux_version_code", lambda: (5 << 16) + (10 << 8))
    assert libbpf.needed_kern_version() is None
    monkeypatch.setattr(version_code, "linux_version_code", lambda: 0x413ff)
    assert libbpf.needed_kern_version() == 0x413ff
    monkeypatch.setattr(version_code, "linux_version_code", lambda: None)
    assert libbpf.needed_kern_version() is None
