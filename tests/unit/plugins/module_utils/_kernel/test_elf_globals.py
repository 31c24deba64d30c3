"""elf_globals.py against an object compiled here: every variable's section, offset, size and type, the
sections' bytes as compiled, and clear errors for files that are not what they claim."""
import struct

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf_globals
from tests.unit.fixtures import globals_object


@pytest.fixture(scope="module")
def objs(tmp_path_factory):
    return elf_globals.ObjectGlobals.read(globals_object.build(tmp_path_factory))


def test_every_variable_with_section_offset_size_and_type(objs):
    got = dict((n, (v["section"], v["offset"], v["size"], v["type"])) for n, v in objs.variables.items())
    assert got == globals_object.LAYOUT


def test_sections_hold_the_compiled_values(objs):
    assert sorted(objs.sections) == [".bss", ".data", ".rodata"]
    rodata = objs.sections[".rodata"]
    assert struct.unpack_from("<H", rodata, 0)[0] == 9                    # drop_port = 9
    assert rodata[30] == 1                                                 # verbose = 1
    assert struct.unpack_from("<i", rodata, 32)[0] == 1                   # mode = MODE_ON
    assert rodata[36:44] == b"hi" + b"\0" * 6                              # label
    assert struct.unpack_from("<i", rodata, 44)[0] == -3                  # delta
    assert struct.unpack_from("<IH", rodata, 48) == (1, 2)                # cfg
    assert struct.unpack_from("<Q", objs.sections[".data"], 0)[0] == 5    # hits = 5
    assert objs.sections[".bss"] == b"\0" * 24                             # .bss: zeros, not in the file


def test_type_ids_resolve_in_the_object_btf(objs):
    var = objs.variables["mode"]
    t = objs.btf.types[objs.btf.resolve(var["type_id"])]
    assert t["kind"] == "enum" and ("MODE_LOG", 7) in t["values"]
    assert objs.btf.size_of(objs.variables["cfg"]["type_id"]) == 8


def test_an_object_without_globals(tmp_path):
    path = globals_object.compile_object(tmp_path, '#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
                                         'SEC("xdp") int p(struct xdp_md *c) { return XDP_PASS; }\n'
                                         'char LICENSE[] SEC("license") = "GPL";\n', "plain.bpf.o")
    objs = elf_globals.ObjectGlobals.read(path)
    assert objs.variables == {} and objs.sections == {} and objs.btf is not None


@pytest.mark.parametrize("content, needle", [
    (b"not an elf at all, just text" * 4, "is not an ELF file"),
    (b"\x7fELF\x01\x01" + b"\0" * 58, "is not a 64-bit ELF object"),
    (b"\x7fELF\x02\x01" + b"\0" * 34 + struct.pack("<Q", 1 << 40) + b"\0" * 10 + struct.pack("<3H", 64, 1, 0),
     "truncated ELF object"),
])
def test_bad_files_are_clear_errors(tmp_path, content, needle):
    path = tmp_path / "bad.o"
    path.write_bytes(content)
    with pytest.raises(elf_globals.ElfError, match=needle):
        elf_globals.ObjectGlobals.read(str(path))


def test_a_truncated_object(tmp_path, objs):
    with open(objs.path, "rb") as f:
        data = f.read()
    with pytest.raises(elf_globals.ElfError):
        elf_globals.ObjectGlobals(data[:len(data) // 2], "half.o")
