"""elf_kversion.py: an object's "version" section says the code, and nothing else of the object changes."""
import os
import struct

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf, elf_kversion

from tests.conftest import TOP  # noqa: E402
OBJ = os.path.join(TOP, "examples", "objects")


def _read(name):
    with open(os.path.join(OBJ, name), "rb") as f:
        return f.read()


def _version(data):
    image = elf.ElfFile.from_bytes(data, "t")
    found = [s for s in image.sections() if s["name"] == "version"]
    assert len(found) == 1
    return struct.unpack(image.order + "I", image.section_bytes(found[0]))[0], found[0]


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(OBJ) if n.endswith(".bpf.o")))
def test_a_section_is_added_and_every_other_section_is_as_it_was(name):
    data = _read(name)
    out = elf_kversion.with_kern_version(data, 0x413ff, name)
    code, section = _version(out)
    assert code == 0x413ff
    assert section["type"] == elf_kversion.SHT_PROGBITS and section["size"] == 4
    assert out[:16] == data[:16] and out[64:len(data)] == data[64:]  # the old bytes stay, past the header
    before, after = elf.ElfFile.from_bytes(data, name), elf.ElfFile.from_bytes(out, name)
    old, new = before.sections(), after.sections()
    assert len(new) == len(old) + 1 and new[-1]["name"] == "version"
    for a, b in zip(old, new):
        assert (a["name"], a["type"], a["flags"], a["link"], a["info"]) == (b["name"], b["type"], b["flags"],
                                                                            b["link"], b["info"])
        assert before.section_bytes(a) == after.section_bytes(b) or a["index"] == before.shstrndx
    names = after.section_bytes(new[after.shstrndx])
    assert names.startswith(before.section_bytes(old[before.shstrndx])) and names.endswith(b"version\0")


def test_an_existing_section_is_rewritten_in_place():
    once = elf_kversion.with_kern_version(_read("kprobe_unlinkat.bpf.o"), 0x41300, "k")
    twice = elf_kversion.with_kern_version(once, 0x413ff, "k")
    assert len(twice) == len(once) and _version(twice)[0] == 0x413ff
    assert twice == once.replace(struct.pack("<I", 0x41300), struct.pack("<I", 0x413ff))


def test_a_version_section_of_another_size_is_refused():
    data = bytearray(elf_kversion.with_kern_version(_read("kprobe_unlinkat.bpf.o"), 1, "k"))
    image = elf.ElfFile.from_bytes(bytes(data), "k")
    section = image.sections()[-1]
    at = image.shoff + section["index"] * image.shentsize + 32  # sh_size of an ELF64 section header
    struct.pack_into("<Q", data, at, 8)
    with pytest.raises(elf.ElfError, match="'version' section that is not 4 bytes"):
        elf_kversion.with_kern_version(bytes(data), 2, "k")


@pytest.mark.parametrize("data,needle", [(b"not an elf", "is not an ELF file"),
                                         (b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HH", 2, 247) +
                                          b"\0" * 44, "is not a relocatable ELF object")])
def test_what_is_not_an_object_is_refused(data, needle):
    with pytest.raises(elf.ElfError, match=needle):
        elf_kversion.with_kern_version(data, 1, "x")
