# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bytes of an ELF object whose "version" section holds a given LINUX_VERSION_CODE.

Before 5.0 the kernel loads a kprobe (or uprobe) program only when it carries the kernel's LINUX_VERSION_CODE.
Every libbpf, 0.3 included, takes that code from the object's "version" section when it has one (the 4-byte
section old kernel samples declared with SEC("version")), and otherwise derives it from the release, which lies
on stable trees (4.19.222 is 0x413ff) and on distribution kernels. One job: given the bytes of a relocatable ELF
object, return bytes that libbpf reads the same way, but with that section saying `code`:
- a "version" section of 4 bytes already there: those 4 bytes are rewritten;
- none: the object is copied unchanged and three things are appended after it, a copy of the section name
  table with "version" added, the section's 4 bytes, and a copy of the section header table with one more
  header (the name table's header moved to the copy). Every existing section keeps its index and its bytes, so
  relocations, symbols and BTF are untouched.
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf

SECTION = "version"
SHT_PROGBITS = 1
_EHDR = {1: "HHIIIIIHHHHHH", 2: "HHIQQQIHHHHHH"}  # the ELF header after e_ident, as elf.py reads it
_SHDR = {1: "IIIIIIIIII", 2: "IIQQQQIIQQ"}
_MAX_SECTIONS = 0xff00  # from here e_shnum moves into section 0 (extended numbering): not an object we rewrite


def with_kern_version(data, code, name):
    """`data` (the bytes of an ELF object) with its "version" section saying `code`; ElfError names `name`."""
    image = elf.ElfFile.from_bytes(data, name)
    if image.e_type != elf.ET_REL:
        raise elf.ElfError("%s is not a relocatable ELF object (e_type %d)" % (name, image.e_type))
    value = struct.pack(image.order + "I", code)
    sections = image.sections()
    for section in sections:
        if section["name"] == SECTION:
            if section["type"] != SHT_PROGBITS or section["size"] != 4:
                raise elf.ElfError("%s has a %r section that is not 4 bytes of data" % (name, SECTION))
            out = bytearray(data)
            out[section["offset"]:section["offset"] + 4] = value
            return bytes(out)
    if len(sections) >= _MAX_SECTIONS:
        raise elf.ElfError("%s has too many sections (%d) to add one" % (name, len(sections)))
    return _appended(data, image, sections, value)


def _appended(data, image, sections, value):
    order = image.order
    shdr = order + _SHDR[image.ei_class]
    names_section = sections[image.shstrndx]
    names = image.section_bytes(names_section) + SECTION.encode() + b"\0"
    out = bytearray(data)
    out += b"\0" * (-len(out) % 4)
    value_at = len(out)
    out += value
    names_at = len(out)
    out += names
    out += b"\0" * (-len(out) % 8)
    table_at = len(out)
    for section in sections:
        raw = image.read(image.shoff + section["index"] * image.shentsize, image.shentsize, "a section header")
        if section["index"] == image.shstrndx:
            fields = list(struct.unpack_from(shdr, raw))
            fields[4], fields[5] = names_at, len(names)  # sh_offset, sh_size: the copy with "version" in it
            raw = struct.pack(shdr, *fields) + raw[struct.calcsize(shdr):]
        out += raw
    header = struct.pack(shdr, len(names) - len(SECTION) - 1, SHT_PROGBITS, 0, 0, value_at, 4, 0, 0, 4, 0)
    out += header + b"\0" * (image.shentsize - len(header))
    ehdr = order + _EHDR[image.ei_class]
    fields = list(struct.unpack_from(ehdr, data, 16))
    fields[5], fields[11] = table_at, len(sections) + 1  # e_shoff, e_shnum
    struct.pack_into(ehdr, out, 16, *fields)
    return bytes(out)
