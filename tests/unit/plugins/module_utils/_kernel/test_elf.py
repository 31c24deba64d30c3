"""elf.py, the one ELF reader: files written here byte by byte in both classes and both byte orders, a binary and
a BPF object built with clang (checked against readelf), read from bytes and from a descriptor alike; extended
numbering; and every truncated or malformed file an ElfError naming the file, never a wrong answer."""
import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf
from tests.unit.fixtures import globals_object

needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="probe: no clang to build test binaries")

VADDR, TEXT_OFF = 0x10000000, 0x200
# per class: ELF header after e_ident, program header, section header, symbol
FORMATS = {1: ("HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII", "IIIBBH"),
           2: ("HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", "IBBHQQ")}


def write_elf(ei_class, order, symbols=None, extended=False, bss_size=24):
    """An ELF executable: one executable PT_LOAD (.text, file offset TEXT_OFF at VADDR), sections null, .text,
    .symtab, .strtab, .bss (SHT_NOBITS), .shstrtab; symbols {name: (st_info, st_shndx, st_value, st_size)};
    the section headers last, so that any cut of the file cuts them. `extended`: e_shnum 0, e_phnum PN_XNUM and
    e_shstrndx SHN_XINDEX, the real values in section 0 (sh_size, sh_info, sh_link)."""
    ehdr_fmt, phdr_fmt, shdr_fmt, sym_fmt = (order + f for f in FORMATS[ei_class])
    symbols = symbols if symbols is not None else {"hm_tick": (0x12, 1, VADDR + 0x40, 8),
                                                   "hm_data": (0x11, 4, 0, 4)}
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in symbols)
    syms, pos = [b"\0" * struct.calcsize(sym_fmt)], 1
    for name, (info, shndx, value, size) in symbols.items():
        fields = (pos, info, 0, shndx, value, size) if ei_class == 2 else (pos, value, size, info, 0, shndx)
        syms.append(struct.pack(sym_fmt, *fields))
        pos += len(name) + 1
    symtab = b"".join(syms)
    names = [".text", ".symtab", ".strtab", ".bss", ".shstrtab"]
    shstrtab = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    name_at = dict((n, shstrtab.index(n.encode() + b"\0")) for n in names)
    code = bytes(range(256))
    sym_off = TEXT_OFF + len(code)
    str_off = sym_off + len(symtab)
    shstr_off = str_off + len(strtab)
    sh_off = (shstr_off + len(shstrtab) + 7) & ~7
    ehsize, phentsize, shentsize = (16 + struct.calcsize(ehdr_fmt), struct.calcsize(phdr_fmt),
                                    struct.calcsize(shdr_fmt))
    shnum, phnum, shstrndx = 6, 1, 5
    if extended:
        shnum_field, phnum_field, shstrndx_field = 0, elf.PN_XNUM, elf.SHN_XINDEX
    else:
        shnum_field, phnum_field, shstrndx_field = shnum, phnum, shstrndx
    ident = b"\x7fELF" + bytes([ei_class, 1 if order == "<" else 2, 1]) + b"\0" * 9
    ehdr = ident + struct.pack(ehdr_fmt, elf.ET_EXEC, 62, 1, VADDR, ehsize, sh_off, 0, ehsize, phentsize,
                               phnum_field, shentsize, shnum_field, shstrndx_field)
    if ei_class == 2:
        phdr = struct.pack(phdr_fmt, elf.PT_LOAD, 5, TEXT_OFF, VADDR, VADDR, len(code), len(code), 0x1000)
    else:
        phdr = struct.pack(phdr_fmt, elf.PT_LOAD, TEXT_OFF, VADDR, VADDR, len(code), len(code), 5, 0x1000)
    sym_size = struct.calcsize(sym_fmt)
    first = (0, 0, 0, 0, 0, shnum, shstrndx, phnum, 0, 0) if extended else (0,) * 10
    shdrs = [struct.pack(shdr_fmt, *first),
             struct.pack(shdr_fmt, name_at[".text"], 1, 6, VADDR, TEXT_OFF, len(code), 0, 0, 16, 0),
             struct.pack(shdr_fmt, name_at[".symtab"], elf.SHT_SYMTAB, 0, 0, sym_off, len(symtab), 3, 1, 8,
                         sym_size),
             struct.pack(shdr_fmt, name_at[".strtab"], 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
             struct.pack(shdr_fmt, name_at[".bss"], elf.SHT_NOBITS, 3, VADDR + 0x1000, sh_off, bss_size, 0, 0, 8,
                         0),
             struct.pack(shdr_fmt, name_at[".shstrtab"], 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)]
    data = bytearray(ehdr + phdr)
    data += b"\0" * (TEXT_OFF - len(data)) + code + symtab + strtab + shstrtab
    data += b"\0" * (sh_off - len(data)) + b"".join(shdrs)
    return bytes(data)


@pytest.fixture
def both(tmp_path):
    """both(data) -> the same file read from bytes and through a descriptor (closed at the test's end)."""
    fds = []

    def read(data, name="f"):
        path = tmp_path / name
        path.write_bytes(data)
        fds.append(os.open(str(path), os.O_RDONLY))
        return [elf.ElfFile.from_bytes(data, str(path)), elf.ElfFile.from_fd(fds[-1], str(path))]
    yield read
    for fd in fds:
        os.close(fd)


def read_all(f):
    """Everything the reader offers, read once."""
    sections = f.sections()
    out = {"sections": [(s["name"], s["type"], s["size"]) for s in sections],
           "symbols": [f.symbols(s) for s in sections if s["type"] in (elf.SHT_SYMTAB, elf.SHT_DYNSYM)],
           "segments": f.executable_segments(),
           "bytes": dict((s["name"], f.section_bytes(s)) for s in sections if s["index"])}
    return out


@pytest.mark.parametrize("extended", [False, True], ids=["plain", "extended-numbering"])
@pytest.mark.parametrize("ei_class, order", [(1, "<"), (1, ">"), (2, "<"), (2, ">")],
                         ids=["32-le", "32-be", "64-le", "64-be"])
def test_both_classes_and_byte_orders_from_bytes_and_fd(both, ei_class, order, extended):
    data = write_elf(ei_class, order, extended=extended)
    results = []
    for f in both(data):
        assert (f.ei_class, f.order, f.e_type, f.e_machine) == (ei_class, order, elf.ET_EXEC, 62)
        assert (f.shnum, f.phnum, f.shstrndx) == (6, 1, 5)
        sections = f.sections()
        assert [s["name"] for s in sections] == ["", ".text", ".symtab", ".strtab", ".bss", ".shstrtab"]
        assert [s["index"] for s in sections] == list(range(6))
        assert f.section_bytes(sections[1]) == bytes(range(256))
        assert f.section_bytes(sections[4]) == b"\0" * 24  # SHT_NOBITS: zeros, not the file's bytes
        symtab = sections[2]
        assert [(s["name"], s["info"], s["shndx"], s["value"], s["size"]) for s in f.symbols(symtab)] == [
            ("", 0, 0, 0, 0), ("hm_tick", 0x12, 1, VADDR + 0x40, 8), ("hm_data", 0x11, 4, 0, 4)]
        assert [s["value"] for s in f.symbols(symtab, "hm_tick")] == [VADDR + 0x40]
        assert f.symbols(symtab, "hm_none") == [] and f.symbols(symtab, "tick") == []
        assert f.executable_segments() == [(TEXT_OFF, VADDR, 256)]
        assert f.file_offset(VADDR + 0x40) == TEXT_OFF + 0x40
        assert f.file_offset(VADDR + 256) is None and f.file_offset(VADDR - 1) is None
        results.append(read_all(f))
    assert results[0] == results[1]


def test_a_name_that_is_the_tail_of_a_longer_one():
    """A linker may let `tick` share the string of `hm_tick`: both are found by name."""
    data = write_elf(2, "<")
    f = elf.ElfFile.from_bytes(data, "f")
    symtab = f.sections()[2]
    strings = f.section_bytes(f.sections()[3])
    tail = strings.index(b"tick\0")
    patched = bytearray(data)
    at = symtab["offset"] + 2 * 24  # the third symbol (hm_data) now names "tick" inside "hm_tick"
    patched[at:at + 4] = struct.pack("<I", tail)
    f = elf.ElfFile.from_bytes(bytes(patched), "f")
    assert [s["value"] for s in f.symbols(f.sections()[2], "tick")] == [0]
    assert [s["name"] for s in f.symbols(f.sections()[2])] == ["", "hm_tick", "tick"]


@needs_clang
def test_a_binary_built_here_is_what_readelf_says(tmp_path, both):
    src = tmp_path / "main.c"
    src.write_text("int hm_tick(int x) { return x + 1; }\nint main(int c, char **v) { return hm_tick(c); }\n")
    path = str(tmp_path / "prog")
    subprocess.check_call(["clang", "-O0", "-fPIE", "-pie", "-o", path, str(src)])
    with open(path, "rb") as fh:
        data = fh.read()
    results = []
    for f in both(data, "copy"):
        assert (f.ei_class, f.order, f.e_type) == (2, "<", elf.ET_DYN)
        names = [line.split("]", 1)[1].split()[0] for line in
                 subprocess.check_output(["readelf", "-SW", path], text=True).splitlines()
                 if line.strip().startswith("[") and "]" in line and not line.strip().startswith("[Nr]")]
        assert [s["name"] for s in f.sections()][1:] == names[1:]
        dynsym = [s for s in f.sections() if s["type"] == elf.SHT_DYNSYM]
        assert len(dynsym) == 1 and any(s["name"].startswith("__libc_start_main") for s in f.symbols(dynsym[0]))
        loads = []
        for line in subprocess.check_output(["readelf", "-lW", path], text=True).splitlines():
            field = line.split()
            if field and field[0] == "LOAD" and "E" in field[6:-1]:
                loads.append((int(field[1], 16), int(field[2], 16), int(field[4], 16)))
        assert f.executable_segments() == loads
        results.append(read_all(f))
    assert results[0] == results[1]


def test_a_bpf_object_built_here(tmp_path_factory):
    path = globals_object.build(tmp_path_factory)
    with open(path, "rb") as fh:
        data = fh.read()
    f = elf.ElfFile.from_bytes(data, path)
    assert (f.ei_class, f.e_type) == (2, elf.ET_REL)
    by_name = dict((s["name"], s) for s in f.sections())
    assert {".rodata", ".data", ".bss", ".BTF", ".symtab", "xdp", "license"} <= set(by_name)
    assert f.section_bytes(by_name["license"]) == b"GPL\0"
    assert f.section_bytes(by_name[".bss"]) == b"\0" * by_name[".bss"]["size"]
    assert f.executable_segments() == []  # an object has no program headers
    drop_port = f.symbols(by_name[".symtab"], "drop_port")
    assert [(s["shndx"], s["value"], s["size"]) for s in drop_port] == [(by_name[".rodata"]["index"], 0, 2)]


# ---- what is not an ELF file, or a truncated or malformed one -------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "f is not an ELF file"),
    (b"\x7fELF\x02\x01", "f is not an ELF file"),
    (b"#!/bin/sh\n" + b"\0" * 60, "f is not an ELF file"),
    (b"\x7fELF\x03\x01" + b"\0" * 58, "f: unknown ELF class 3 or byte order 1"),
    (b"\x7fELF\x02\x00" + b"\0" * 58, "f: unknown ELF class 2 or byte order 0"),
    (b"\x7fELF\x02\x01" + b"\0" * 30, "f is truncated or malformed: the ELF header .*truncated ELF object"),
    (b"\x7fELF\x01\x02" + b"\0" * 30, "f is truncated or malformed: the ELF header"),
], ids=["empty", "6-bytes", "text", "class-3", "byte-order-0", "64-bit-header-cut", "32-bit-header-cut"])
def test_headers_that_are_not_elf(both, content, message):
    for make in (lambda: elf.ElfFile.from_bytes(content, "f"), lambda: both(content)):
        with pytest.raises(elf.ElfError, match=message):
            make()


def everything(data):
    f = elf.ElfFile.from_bytes(data, "f")
    return read_all(f), [f.symbols(s, "hm_tick") for s in f.sections() if s["type"] == elf.SHT_SYMTAB]


@pytest.mark.parametrize("ei_class, order", [(1, ">"), (2, "<")])
@pytest.mark.parametrize("extended", [False, True])
def test_every_cut_of_a_file_is_an_elf_error(ei_class, order, extended):
    data = write_elf(ei_class, order, extended=extended)
    everything(data)
    for length in range(len(data)):
        with pytest.raises(elf.ElfError, match="^f "):
            everything(data[:length])


def patch(data, offset, fmt, *values):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def shdr_at(data, index):
    f = elf.ElfFile.from_bytes(data, "f")
    return f.shoff + index * f.shentsize


@pytest.mark.parametrize("change, message", [
    (lambda d: patch(d, 0x28, "<Q", 1 << 40), "f is truncated or malformed: section header table"),
    (lambda d: patch(d, 0x3a, "<H", 40), "f is malformed: section header entries of 40 bytes"),
    (lambda d: patch(d, 0x36, "<H", 40), "f is malformed: program header entries of 40 bytes"),
    (lambda d: patch(d, 0x20, "<Q", 1 << 40), "f is truncated or malformed: program header table"),
    (lambda d: patch(d, 0x3e, "<H", 9), "f: section name table index 9 out of range"),
    (lambda d: patch(d, shdr_at(d, 2) + 0x28, "<I", 6), "f is malformed: the symbol table names no string table"),
    (lambda d: patch(d, shdr_at(d, 2) + 0x38, "<Q", 8), "f is malformed: the symbol table entries of 8 bytes"),
    (lambda d: patch(d, shdr_at(d, 2) + 0x20, "<Q", 1 << 31), "f: the symbol table of 2147483648 bytes is too"),
    (lambda d: patch(d, shdr_at(d, 3) + 0x18, "<Q", 1 << 20), "f is truncated or malformed: the string table"),
    (lambda d: patch(d, shdr_at(d, 1), "<I", 999), "f: string offset 999 out of range of the section name table"),
    (lambda d: patch(d, shdr_at(d, 4) + 0x20, "<Q", 1 << 40), "f: section .bss of 1099511627776 bytes is too"),
    (lambda d: patch(d, 64 + 0x20, "<Q", 1 << 20), "f is truncated or malformed: executable segment 0"),
    (lambda d: patch(patch(d, shdr_at(d, 0) + 0x20, "<Q", 1 << 50), 0x3c, "<H", 0),  # extended: 2**50 sections
     "f is truncated or malformed: section header table \\(1125899906842624 entries\\)"),
], ids=["shoff", "shentsize", "phentsize", "phoff", "shstrndx", "symtab-link", "symtab-entsize", "symtab-size",
        "strtab-offset", "section-name", "bss-size", "segment-size", "extended-shnum"])
def test_malformed_files_are_elf_errors(change, message):
    with pytest.raises(elf.ElfError, match=message):
        everything(change(write_elf(2, "<")))


def test_a_symbol_name_out_of_range():
    data = write_elf(2, "<")
    f = elf.ElfFile.from_bytes(data, "f")
    symtab = f.sections()[2]
    bad = patch(data, symtab["offset"] + 24, "<I", 5000)
    f = elf.ElfFile.from_bytes(bad, "f")
    with pytest.raises(elf.ElfError, match="f: string offset 5000 out of range of the string table of the symbol "
                                           "table"):
        f.symbols(f.sections()[2])
    assert [s["name"] for s in f.symbols(f.sections()[2], "hm_data")] == ["hm_data"]  # by name: not decoded


def test_a_short_read_is_an_elf_error():
    data = write_elf(2, "<")

    def short_after(start):
        return lambda offset, length: data[offset:offset + length - (offset >= start)]
    with pytest.raises(elf.ElfError, match="f: short read of the ELF header"):
        elf.ElfFile(short_after(16), len(data), "f")
    f = elf.ElfFile(short_after(64), len(data), "f")
    with pytest.raises(elf.ElfError, match="f: short read of section header table"):
        f.sections()
