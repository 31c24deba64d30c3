# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a function of an ELF executable or shared library starts in its file: the offset the uprobe PMU takes.

One job: read the ELF header, the program headers and the symbol tables (.symtab, and .dynsym, which a stripped
binary keeps) of a binary on the host, and turn a function symbol's address (st_value) into a file offset through
the executable PT_LOAD segment that holds it (offset = st_value - p_vaddr + p_offset). Only STT_FUNC symbols
defined in the file count; a symbol the file only imports, an unknown one or one defined twice at different
places is an ElfError that names the binary. 32/64-bit and either byte order; every size and offset is checked
against the file before it is used, so a malformed file is an ElfError, never a wrong answer.

The file is opened through host_paths.open_trusted_file: root reads it (and the kernel later resolves the same
path) only when no other user can have planted it or can change it. Importable without ansible.

    function_offset(path, symbol) -> int     the file offset of function `symbol`
    check_offset(path, offset)    -> int     `offset` itself, when it lies in an executable segment's bytes
    locate(path, symbol=None, offset=None) -> (offset, "st_dev:st_ino")   either, and which file was read (a
                                             binary replaced by a new one at the same path has another inode)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths

ET_EXEC, ET_DYN = 2, 3
PT_LOAD = 1
PF_X = 1
SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_FUNC = 2
SHN_UNDEF = 0
PN_XNUM = 0xffff
_MAX_TABLE = 1 << 30  # a symbol or string table larger than this is not a binary we read
# per class: ELF header after e_ident, program header, section header, symbol (fields as struct formats)
_LAYOUT = {
    1: {"ehdr": "HHIIIIIHHHHHH", "phdr": "IIIIIIII", "shdr": "IIIIIIIIII", "sym": "IIIBBH"},
    2: {"ehdr": "HHIQQQIHHHHHH", "phdr": "IIQQQQQQ", "shdr": "IIQQQQIIQQ", "sym": "IBBHQQ"},
}
_TYPES = {0: "STT_NOTYPE", 1: "STT_OBJECT", 2: "STT_FUNC", 3: "STT_SECTION", 4: "STT_FILE", 5: "STT_COMMON",
          6: "STT_TLS", 10: "STT_GNU_IFUNC"}


class ElfError(ValueError):
    """The binary is not an ELF file we can read, or lacks what was asked for; str() names the binary."""


class _Elf(object):
    """The headers and symbol tables of one open ELF file (fd), read with pread."""

    def __init__(self, fd, path):
        self.fd = fd
        self.path = path
        st = os.fstat(fd)
        self.size = st.st_size
        self.identity = "%d:%d" % (st.st_dev, st.st_ino)
        ident = os.pread(fd, 16, 0)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise ElfError("%s is not an ELF file" % path)
        if ident[4] not in _LAYOUT or ident[5] not in (1, 2):
            raise ElfError("%s: unknown ELF class %d or byte order %d" % (path, ident[4], ident[5]))
        self.order = "<" if ident[5] == 1 else ">"
        self.formats = dict((k, self.order + v) for k, v in _LAYOUT[ident[4]].items())
        fmt = self.formats["ehdr"]
        header = struct.unpack(fmt, self._read(16, struct.calcsize(fmt), "the ELF header"))
        (e_type, _machine, _version, _entry, self.phoff, self.shoff, _flags, _ehsize, self.phentsize, self.phnum,
         self.shentsize, self.shnum, _shstrndx) = header
        if e_type not in (ET_EXEC, ET_DYN):
            raise ElfError("%s is not an executable or shared library (ELF type %d)" % (path, e_type))
        if self.shoff and (self.shnum == 0 or self.phnum == PN_XNUM):  # extended numbering: kept in section 0
            first = self._unpack("shdr", self.shoff, self.shentsize, "section header 0")
            self.shnum = self.shnum or first[5]
            self.phnum = first[7] if self.phnum == PN_XNUM else self.phnum

    def _read(self, offset, length, what):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError("%s is truncated or malformed: %s lies beyond the end of the file" % (self.path, what))
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise ElfError("%s: short read of %s" % (self.path, what))
        return data

    def _unpack(self, kind, offset, entsize, what):
        fmt = self.formats[kind]
        if entsize < struct.calcsize(fmt):
            raise ElfError("%s is malformed: %s entries of %d bytes" % (self.path, what, entsize))
        return struct.unpack(fmt, self._read(offset, struct.calcsize(fmt), what))

    def segments(self):
        """[(p_offset, p_vaddr, p_filesz)] of the executable PT_LOAD segments."""
        out = []
        wide = self.formats["phdr"].endswith("QQQQQQ")
        for i in range(self.phnum):
            ph = self._unpack("phdr", self.phoff + i * self.phentsize, self.phentsize, "program header %d" % i)
            if wide:
                p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz = ph[:6]
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz, _memsz, p_flags = ph[:7]
            if p_type == PT_LOAD and p_flags & PF_X:
                out.append((p_offset, p_vaddr, p_filesz))
        return out

    def _sections(self):
        out = []
        for i in range(self.shnum):  # the same field order in both classes
            sh = self._unpack("shdr", self.shoff + i * self.shentsize, self.shentsize, "section header %d" % i)
            _name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link, _info, _align, sh_entsize = sh
            out.append({"type": sh_type, "offset": sh_offset, "size": sh_size, "link": sh_link,
                        "entsize": sh_entsize})
        return out

    def _table(self, section, what):
        if section["size"] > _MAX_TABLE:
            raise ElfError("%s: %s of %d bytes is too large" % (self.path, what, section["size"]))
        return self._read(section["offset"], section["size"], what)

    def symbols(self, name):
        """[(st_info, st_shndx, st_value)] of every symbol called `name` in .symtab and .dynsym; None when the
        file has neither table."""
        sections = self._sections() if self.shoff else []
        tables = [s for s in sections if s["type"] in (SHT_SYMTAB, SHT_DYNSYM)]
        if not tables:
            return None
        fmt = self.formats["sym"]
        entsize = struct.calcsize(fmt)
        wanted = name.encode("utf-8", "surrogateescape") + b"\0"
        found = []
        for table in tables:
            what = "the symbol table" if table["type"] == SHT_SYMTAB else "the dynamic symbol table"
            if table["link"] >= len(sections):
                raise ElfError("%s is malformed: %s names no string table" % (self.path, what))
            strings = self._table(sections[table["link"]], "the string table of " + what)
            names = set()  # where `name` starts in the strings (a linker may share a longer name's tail)
            at = strings.find(wanted)
            while at >= 0:
                names.add(at)
                at = strings.find(wanted, at + 1)
            if not names:
                continue
            step = table["entsize"] or entsize
            if step < entsize:
                raise ElfError("%s is malformed: %s entries of %d bytes" % (self.path, what, step))
            data = self._table(table, what)
            for off in range(0, len(data) - entsize + 1, step):
                sym = struct.unpack_from(fmt, data, off)
                if entsize == 24:
                    st_name, st_info, _other, st_shndx, st_value, _size = sym
                else:
                    st_name, st_value, _size, st_info, _other, st_shndx = sym
                if st_name in names:
                    found.append((st_info, st_shndx, st_value))
        return found

    def file_offset(self, address):
        """The file offset of virtual address `address` in an executable PT_LOAD segment, or None."""
        for p_offset, p_vaddr, p_filesz in self.segments():
            if p_vaddr <= address < p_vaddr + p_filesz:
                return address - p_vaddr + p_offset
        return None


def _open(path):
    """(fd, _Elf) of the trusted binary `path`; ElfError when it is missing or no ELF file."""
    try:
        fd = host_paths.open_trusted_file(path)
    except host_paths.UnsafePath:
        raise  # says itself which path and why
    except OSError as e:
        raise ElfError("binary %s cannot be opened: %s" % (path, e.strerror or e))
    try:
        return fd, _Elf(fd, path)
    except BaseException:
        os.close(fd)
        raise


def locate(path, symbol=None, offset=None):
    """(file offset, "st_dev:st_ino" of the binary read): of function `symbol` (function_offset), or `offset`
    checked (check_offset)."""
    fd, elf = _open(path)
    try:
        where = _function_offset(elf, path, symbol) if symbol is not None else _check_offset(elf, path, offset)
        return where, elf.identity
    finally:
        os.close(fd)


def function_offset(path, symbol):
    """The file offset of function `symbol` in binary `path` (what the uprobe PMU wants as its offset).
    host_paths.UnsafePath when the binary could have been planted or changed by another user; ElfError when it is
    no ELF executable or library, or has no such function."""
    return locate(path, symbol=symbol)[0]


def check_offset(path, offset):
    """`offset` when it lies within the file bytes of an executable segment of binary `path`; else ElfError
    (and host_paths.UnsafePath as for function_offset)."""
    return locate(path, offset=offset)[0]


def _function_offset(elf, path, symbol):
    found = elf.symbols(symbol)
    if found is None:
        raise ElfError("binary %s has no symbol table (.symtab or .dynsym): give attach.uprobe.offset instead of a "
                       "symbol" % path)
    funcs = [(shndx, value) for info, shndx, value in found if info & 0xf == STT_FUNC]
    defined = sorted(set(value for shndx, value in funcs if shndx != SHN_UNDEF))
    if not defined:
        if funcs:
            raise ElfError("binary %s only imports function %s (undefined in it): attach to the shared library "
                           "that defines it" % (path, symbol))
        kinds = sorted(set(_TYPES.get(info & 0xf, str(info & 0xf)) for info, _shndx, _value in found))
        if kinds:
            raise ElfError("symbol %s of binary %s is not a function (%s)" % (symbol, path, ", ".join(kinds)))
        raise ElfError("binary %s has no function symbol %s (looked in .symtab and .dynsym)" % (path, symbol))
    offsets = sorted(set(elf.file_offset(value) for value in defined) - set([None]))
    if not offsets:
        raise ElfError("function %s of binary %s (address 0x%x) lies in no executable segment of the file"
                       % (symbol, path, defined[0]))
    if len(offsets) > 1:
        raise ElfError("binary %s defines function %s %d times (file offsets %s): give attach.uprobe.offset "
                       "instead" % (path, symbol, len(offsets), ", ".join("0x%x" % o for o in offsets)))
    return offsets[0]


def _check_offset(elf, path, offset):
    for p_offset, _vaddr, p_filesz in elf.segments():
        if p_offset <= offset < p_offset + p_filesz:
            return offset
    raise ElfError("offset 0x%x is not in an executable segment of binary %s" % (offset, path))
