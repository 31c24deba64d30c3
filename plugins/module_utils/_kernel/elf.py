# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small ELF reader: the header, program headers, section headers and symbol tables of one ELF file.

One job: turn the bytes of an ELF file (<elf.h>), 32- or 64-bit, either byte order, into the few things the
collection asks of it: the file's class, byte order and type, its sections with their names, a section's bytes
(SHT_NOBITS: zeros), the symbols of a symbol table, its executable PT_LOAD segments and which file offset holds a
virtual address. Extended numbering (more than 0xfeff sections or 0xffff program headers, kept in section 0) is
followed. The bytes come through a read_at(offset, length) callable: bytes in memory (from_bytes) or pread on an
open descriptor (from_fd), so a binary is never read whole. Every offset and size is checked against the file
before it is used: a truncated or malformed file is an ElfError that names the file, never a wrong answer.

    elf = ElfFile.from_bytes(data, name)  /  ElfFile.from_fd(fd, name)
    elf.ei_class (1, 2), elf.order ("<", ">"), elf.e_type, elf.e_machine
    elf.sections()        -> [{"index", "name", "type", "flags", "addr", "offset", "size", "link", "info",
                               "entsize"}]
    elf.section_bytes(s)  -> bytes
    elf.symbols(s, name=None) -> [{"name", "info", "shndx", "value", "size"}]   (only `name`'s when given)
    elf.executable_segments() -> [(p_offset, p_vaddr, p_filesz)];  elf.file_offset(address) -> int or None
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import struct

ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
PT_LOAD = 1
PF_X = 1
SHT_SYMTAB, SHT_NOBITS, SHT_DYNSYM = 2, 8, 11
PN_XNUM = 0xffff
SHN_XINDEX = 0xffff
MAX_TABLE = 1 << 30  # a symbol table, string table or SHT_NOBITS section larger than this is not a file we read
# per class: ELF header after e_ident, program header, section header, symbol (fields as struct formats)
_LAYOUT = {
    1: {"ehdr": "HHIIIIIHHHHHH", "phdr": "IIIIIIII", "shdr": "IIIIIIIIII", "sym": "IIIBBH"},
    2: {"ehdr": "HHIQQQIHHHHHH", "phdr": "IIQQQQQQ", "shdr": "IIQQQQIIQQ", "sym": "IBBHQQ"},
}
_TABLES = {SHT_SYMTAB: "the symbol table", SHT_DYNSYM: "the dynamic symbol table"}


class ElfError(ValueError):
    """A file that is not an ELF file we can read, or is truncated or malformed; str() names the file."""


class ElfFile(object):
    """One ELF file, read through read_at(offset, length) -> bytes; `size` is the file's length in bytes."""

    def __init__(self, read_at, size, name):
        self._read_at = read_at
        self.size = size
        self.name = name
        self._sections = None
        if size < 16:
            raise ElfError("%s is not an ELF file" % name)
        ident = self.read(0, 16, "the ELF identification")
        if ident[:4] != b"\x7fELF":
            raise ElfError("%s is not an ELF file" % name)
        if ident[4] not in _LAYOUT or ident[5] not in (1, 2):
            raise ElfError("%s: unknown ELF class %d or byte order %d" % (name, ident[4], ident[5]))
        self.ei_class = ident[4]
        self.order = "<" if ident[5] == 1 else ">"
        self._formats = dict((k, self.order + v) for k, v in _LAYOUT[self.ei_class].items())
        fmt = self._formats["ehdr"]
        (self.e_type, self.e_machine, _version, _entry, self.phoff, self.shoff, _flags, _ehsize, self.phentsize,
         self.phnum, self.shentsize, self.shnum, self.shstrndx) = struct.unpack(
            fmt, self.read(16, struct.calcsize(fmt), "the ELF header"))
        if not self.shoff:  # no section header table
            self.shnum = 0
        elif self.shnum == 0 or self.phnum == PN_XNUM or self.shstrndx == SHN_XINDEX:  # extended: in section 0
            first = self._entries("shdr", self.shoff, self.shentsize, 1, "section header")[0]
            self.shnum = self.shnum or first[5]
            self.phnum = first[7] if self.phnum == PN_XNUM else self.phnum
            self.shstrndx = first[6] if self.shstrndx == SHN_XINDEX else self.shstrndx

    @classmethod
    def from_bytes(cls, data, name):
        return cls(lambda offset, length: data[offset:offset + length], len(data), name)

    @classmethod
    def from_fd(cls, fd, name):
        """The ELF file open at `fd`, read with pread (the descriptor's position is left alone)."""
        return cls(lambda offset, length: os.pread(fd, length, offset), os.fstat(fd).st_size, name)

    # ---- reading --------------------------------------------------------------------------------------------
    def read(self, offset, length, what):
        """`length` bytes at `offset`, all inside the file; ElfError naming `what` otherwise."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError("%s is truncated or malformed: %s (%d bytes at offset %d) lies beyond the end of the "
                           "file (%d bytes; a truncated ELF object or a bad offset)"
                           % (self.name, what, length, offset, self.size))
        data = self._read_at(offset, length)
        if len(data) != length:
            raise ElfError("%s: short read of %s" % (self.name, what))
        return data

    def _entries(self, kind, offset, entsize, count, what):
        """`count` table entries of `kind` from `offset`, `entsize` bytes apart, as tuples."""
        if not count:
            return []
        fmt = self._formats[kind]
        if entsize < struct.calcsize(fmt):
            raise ElfError("%s is malformed: %s entries of %d bytes" % (self.name, what, entsize))
        data = self.read(offset, entsize * count, "%s table (%d entries)" % (what, count))
        return [struct.unpack_from(fmt, data, i * entsize) for i in range(count)]

    def _table(self, section, what):
        if section["size"] > MAX_TABLE:
            raise ElfError("%s: %s of %d bytes is too large" % (self.name, what, section["size"]))
        return self.read(section["offset"], section["size"], what)

    # ---- sections -------------------------------------------------------------------------------------------
    def sections(self):
        """Every section header (index 0 included), its name read from the section name table."""
        if self._sections is None:
            out = []
            for i, sh in enumerate(self._entries("shdr", self.shoff, self.shentsize, self.shnum, "section header")):
                sh_name, sh_type, flags, addr, offset, size, link, info, _align, entsize = sh  # both classes
                out.append({"index": i, "name": sh_name, "type": sh_type, "flags": flags, "addr": addr,
                            "offset": offset, "size": size, "link": link, "info": info, "entsize": entsize})
            if out and self.shstrndx >= len(out):
                raise ElfError("%s: section name table index %d out of range" % (self.name, self.shstrndx))
            names = self._table(out[self.shstrndx], "the section name table") if out else b""
            for s in out:
                s["name"] = self._string(names, s["name"], "the section name table") if s["name"] else ""
            self._sections = out
        return self._sections

    def section_bytes(self, section):
        """The bytes of `section` (one of sections()); an SHT_NOBITS section (.bss) is zeros."""
        what = "section %s" % (section["name"] or section["index"])
        if section["type"] == SHT_NOBITS:
            if section["size"] > MAX_TABLE:
                raise ElfError("%s: %s of %d bytes is too large" % (self.name, what, section["size"]))
            return b"\0" * section["size"]
        return self.read(section["offset"], section["size"], what)

    def _string(self, strings, offset, what):
        if offset >= len(strings):
            raise ElfError("%s: string offset %d out of range of %s" % (self.name, offset, what))
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else len(strings)].decode("utf-8", "replace")

    # ---- symbols --------------------------------------------------------------------------------------------
    def symbols(self, table, name=None):
        """The symbols of symbol table `table` (an SHT_SYMTAB or SHT_DYNSYM section), index 0 included; only
        those called `name` when given (the table is then scanned for that name, not decoded whole)."""
        what = _TABLES.get(table["type"], "section %s" % (table["name"] or table["index"]))
        sections = self.sections()
        if table["link"] >= len(sections):
            raise ElfError("%s is malformed: %s names no string table" % (self.name, what))
        strings = self._table(sections[table["link"]], "the string table of " + what)
        wanted = None
        if name is not None:
            wanted = set()  # where `name` starts in the strings (a linker may share a longer name's tail)
            raw = name.encode("utf-8", "surrogateescape") + b"\0"
            at = strings.find(raw)
            while at >= 0:
                wanted.add(at)
                at = strings.find(raw, at + 1)
            if not wanted:
                return []
        fmt = self._formats["sym"]
        entsize = struct.calcsize(fmt)
        step = table["entsize"] or entsize
        if step < entsize:
            raise ElfError("%s is malformed: %s entries of %d bytes" % (self.name, what, step))
        data = self._table(table, what)
        out = []
        for off in range(0, len(data) - entsize + 1, step):
            sym = struct.unpack_from(fmt, data, off)
            if self.ei_class == 2:
                st_name, st_info, _other, st_shndx, st_value, st_size = sym
            else:
                st_name, st_value, st_size, st_info, _other, st_shndx = sym
            if wanted is None:
                sym_name = self._string(strings, st_name, "the string table of " + what) if st_name else ""
            elif st_name in wanted:
                sym_name = name
            else:
                continue
            out.append({"name": sym_name, "info": st_info, "shndx": st_shndx, "value": st_value, "size": st_size})
        return out

    # ---- segments -------------------------------------------------------------------------------------------
    def executable_segments(self):
        """[(p_offset, p_vaddr, p_filesz)] of the executable PT_LOAD segments, each inside the file."""
        out = []
        for i, ph in enumerate(self._entries("phdr", self.phoff, self.phentsize, self.phnum, "program header")):
            if self.ei_class == 2:
                p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz = ph[:6]
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz, _memsz, p_flags = ph[:7]
            if p_type == PT_LOAD and p_flags & PF_X:
                if p_offset + p_filesz > self.size:
                    raise ElfError("%s is truncated or malformed: executable segment %d (%d bytes at offset %d) "
                                   "lies beyond the end of the file (%d bytes)"
                                   % (self.name, i, p_filesz, p_offset, self.size))
                out.append((p_offset, p_vaddr, p_filesz))
        return out

    def file_offset(self, address):
        """The file offset of virtual address `address` in an executable PT_LOAD segment, or None."""
        for p_offset, p_vaddr, p_filesz in self.executable_segments():
            if p_vaddr <= address < p_vaddr + p_filesz:
                return address - p_vaddr + p_offset
        return None
