# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a function of an ELF executable or shared library starts in its file: the offset the uprobe PMU takes.

One job: find a function symbol in the symbol tables (.symtab, and .dynsym, which a stripped binary keeps) of a
binary on the host and turn its address (st_value) into a file offset through the executable PT_LOAD segment that
holds it (offset = st_value - p_vaddr + p_offset); the ELF file itself is read by _kernel/elf.py (32/64-bit, either
byte order, every size and offset checked against the file: a malformed file is an ElfError, never a wrong
answer). Only executables and shared libraries, and only STT_FUNC symbols defined in the file count; a symbol the
file only imports, an unknown one or one defined twice at different places is an ElfError that names the binary.

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

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.elf import ElfError

STT_FUNC = 2
SHN_UNDEF = 0
_TYPES = {0: "STT_NOTYPE", 1: "STT_OBJECT", 2: "STT_FUNC", 3: "STT_SECTION", 4: "STT_FILE", 5: "STT_COMMON",
          6: "STT_TLS", 10: "STT_GNU_IFUNC"}


def _open(path):
    """(fd, ElfFile, "st_dev:st_ino") of the trusted binary `path`; ElfError when it is missing, no ELF file, or
    no executable or shared library."""
    try:
        fd = host_paths.open_trusted_file(path)
    except host_paths.UnsafePath:
        raise  # says itself which path and why
    except OSError as e:
        raise ElfError("binary %s cannot be opened: %s" % (path, e.strerror or e))
    try:
        st = os.fstat(fd)
        binary = elf.ElfFile.from_fd(fd, path)
        if binary.e_type not in (elf.ET_EXEC, elf.ET_DYN):
            raise ElfError("%s is not an executable or shared library (ELF type %d)" % (path, binary.e_type))
        return fd, binary, "%d:%d" % (st.st_dev, st.st_ino)
    except BaseException:
        os.close(fd)
        raise


def locate(path, symbol=None, offset=None):
    """(file offset, "st_dev:st_ino" of the binary read): of function `symbol` (function_offset), or `offset`
    checked (check_offset)."""
    fd, binary, identity = _open(path)
    try:
        where = _function_offset(binary, path, symbol) if symbol is not None else _check_offset(binary, path, offset)
        return where, identity
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


def _function_offset(binary, path, symbol):
    tables = [s for s in binary.sections() if s["type"] in (elf.SHT_SYMTAB, elf.SHT_DYNSYM)]
    if not tables:
        raise ElfError("binary %s has no symbol table (.symtab or .dynsym): give attach.uprobe.offset instead of a "
                       "symbol" % path)
    found = [sym for table in tables for sym in binary.symbols(table, symbol)]
    funcs = [sym for sym in found if sym["info"] & 0xf == STT_FUNC]
    defined = sorted(set(sym["value"] for sym in funcs if sym["shndx"] != SHN_UNDEF))
    if not defined:
        if funcs:
            raise ElfError("binary %s only imports function %s (undefined in it): attach to the shared library "
                           "that defines it" % (path, symbol))
        kinds = sorted(set(_TYPES.get(sym["info"] & 0xf, str(sym["info"] & 0xf)) for sym in found))
        if kinds:
            raise ElfError("symbol %s of binary %s is not a function (%s)" % (symbol, path, ", ".join(kinds)))
        raise ElfError("binary %s has no function symbol %s (looked in .symtab and .dynsym)" % (path, symbol))
    offsets = sorted(set(binary.file_offset(value) for value in defined) - set([None]))
    if not offsets:
        raise ElfError("function %s of binary %s (address 0x%x) lies in no executable segment of the file"
                       % (symbol, path, defined[0]))
    if len(offsets) > 1:
        raise ElfError("binary %s defines function %s %d times (file offsets %s): give attach.uprobe.offset "
                       "instead" % (path, symbol, len(offsets), ", ".join("0x%x" % o for o in offsets)))
    return offsets[0]


def _check_offset(binary, path, offset):
    for p_offset, _vaddr, p_filesz in binary.executable_segments():
        if p_offset <= offset < p_offset + p_filesz:
            return offset
    raise ElfError("offset 0x%x is not in an executable segment of binary %s" % (offset, path))
