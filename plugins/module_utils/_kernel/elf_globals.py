# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The global variables of a BPF ELF object: name, section (.rodata, .data, .bss), offset, size and BTF type,
and each section's bytes as compiled (what libbpf puts into the section's internal map before load).

One job: read the ELF file (section headers, symbol table, the .BTF section through btf.py) without libbpf and
without a kernel call. The object's BTF has a DATASEC per data section listing its variables; clang leaves the
DATASEC's size and its variables' offsets at 0 (libbpf fixes them up at open from the symbol table, as done here),
the BPF static linker fills them in.

    objs = ObjectGlobals.read(path)
    objs.variables  -> {name: {"name", "section", "offset", "size", "type_id", "type"}}
    objs.sections   -> {".rodata": bytes, ".bss": zeros, ...}   (only sections the object has)
    objs.btf        -> btf.Btf (None when the object has no .BTF section)
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf as btf_mod

SECTIONS = (".rodata", ".data", ".bss")
_SHT_SYMTAB = 2
_SHT_NOBITS = 8
_STT_OBJECT = 1
_ELFCLASS64 = 2
_ELFDATA = {1: "<", 2: ">"}


class ElfError(ValueError):
    """An object whose ELF layout or BTF cannot be read (truncated, not ELF64, bad offsets)."""


def type_name(btf, type_id):
    """A C-like name of a BTF type for messages and results: "__u16", "const volatile __u16", "__u8[4]",
    "struct cfg", "enum mode"."""
    quals = []
    seen = 0
    while True:
        t = btf.types[type_id]
        kind = t["kind"]
        if kind in ("const", "volatile", "restrict"):
            quals.append(kind)
            type_id = t["type"]
        elif kind == "type_tag":
            type_id = t["type"]
        elif kind == "array":
            return " ".join(quals + [type_name(btf, t["type"])]) + "[%d]" % t["nelems"]
        else:
            if kind in ("struct", "union", "enum", "enum64"):
                name = "%s %s" % ("enum" if kind == "enum64" else kind, t["name"] or "(anonymous)")
            elif kind == "ptr":
                name = type_name(btf, t["type"]) + " *"
            else:
                name = t["name"] or kind
            return " ".join(quals + [name])
        seen += 1
        if seen > 64:
            raise ElfError("BTF type chain too deep at id %d" % type_id)


class ObjectGlobals(object):
    """The globals of one ELF object (see the module doc)."""

    def __init__(self, data, path="object"):
        self.path = path
        self._data = data
        self._end = "<"
        self.btf = None
        self.sections = {}
        self.variables = {}
        shdrs = self._section_headers()
        names = dict((self._section_name(shdrs, s), s) for s in shdrs)
        for sec in SECTIONS:
            if sec in names:
                self.sections[sec] = self._section_bytes(names[sec])
        if ".BTF" in names:
            try:
                self.btf = btf_mod.Btf(self._section_bytes(names[".BTF"]))
            except btf_mod.BtfError as e:
                raise ElfError("%s: its .BTF section cannot be read: %s" % (path, e))
        if self.btf is not None and self.sections:
            symbols = self._symbols(shdrs, names)
            for sec in SECTIONS:
                if sec in self.sections:
                    self._datasec(sec, shdrs.index(names[sec]), symbols)

    @classmethod
    def read(cls, path):
        with open(path, "rb") as f:
            return cls(f.read(), path)

    # ---- ELF ------------------------------------------------------------------------------------------------
    def _unpack(self, fmt, off):
        fmt = self._end + fmt
        if off < 0 or off + struct.calcsize(fmt) > len(self._data):
            raise ElfError("%s: truncated ELF object (reading %d bytes at offset %d of %d)"
                           % (self.path, struct.calcsize(fmt), off, len(self._data)))
        return struct.unpack_from(fmt, self._data, off)

    def _section_headers(self):
        if self._data[:4] != b"\x7fELF" or len(self._data) < 64:
            raise ElfError("%s is not an ELF file" % self.path)
        if self._data[4] != _ELFCLASS64 or self._data[5] not in _ELFDATA:
            raise ElfError("%s is not a 64-bit ELF object (class %d, data %d): build it with clang -target bpf"
                           % (self.path, self._data[4], self._data[5]))
        self._end = _ELFDATA[self._data[5]]
        shoff, = self._unpack("Q", 0x28)
        shentsize, shnum, shstrndx = self._unpack("3H", 0x3a)
        if shnum and shentsize < 64:
            raise ElfError("%s: section header entries of %d bytes" % (self.path, shentsize))
        out = []
        for i in range(shnum):
            name, stype, _flags, _addr, offset, size, link, _info, _align, entsize = self._unpack(
                "2I4Q2I2Q", shoff + i * shentsize)
            out.append({"name": name, "type": stype, "offset": offset, "size": size, "link": link,
                        "entsize": entsize})
        if shnum and shstrndx >= shnum:
            raise ElfError("%s: section name table index %d out of range" % (self.path, shstrndx))
        self._shstr = out[shstrndx] if shnum else None
        return out

    def _string(self, table, off):
        start = table["offset"] + off
        if off >= table["size"] or start >= len(self._data):
            raise ElfError("%s: string offset %d out of range" % (self.path, off))
        end = self._data.find(b"\0", start, table["offset"] + table["size"])
        return self._data[start:end if end >= 0 else table["offset"] + table["size"]].decode("utf-8", "replace")

    def _section_name(self, shdrs, s):
        return self._string(self._shstr, s["name"]) if s["name"] else ""

    def _section_bytes(self, s):
        if s["type"] == _SHT_NOBITS:
            return b"\0" * s["size"]
        if s["offset"] + s["size"] > len(self._data):
            raise ElfError("%s: a section runs past the end of the file" % self.path)
        return self._data[s["offset"]:s["offset"] + s["size"]]

    def _symbols(self, shdrs, names):
        """{(name, section index): value} of the object symbols (variables) in the symbol table."""
        out = {}
        for s in shdrs:
            if s["type"] != _SHT_SYMTAB or s["link"] >= len(shdrs):
                continue
            strtab = shdrs[s["link"]]
            step = s["entsize"] or 24
            for off in range(s["offset"], s["offset"] + s["size"] - 23, step):
                st_name, st_info, _other, shndx, value, _size = self._unpack("IBBHQQ", off)
                if st_name and (st_info & 0xf) in (_STT_OBJECT, 0):
                    out.setdefault((self._string(strtab, st_name), shndx), value)
        return out

    # ---- BTF ------------------------------------------------------------------------------------------------
    def _datasec(self, sec, shndx, symbols):
        tid = self.btf.find(sec, "datasec")
        if tid is None:
            return
        size = len(self.sections[sec])
        datasec = self.btf.types[tid]
        fixup = not datasec["size"]  # clang's: offsets from the symbol table (libbpf's btf_fixup_datasec)
        for vsi in datasec["vars"]:
            var = self.btf.types[vsi["type"]]
            if var["kind"] != "var":
                continue
            name = var["name"]
            offset = vsi["offset"]
            if fixup:
                if (name, shndx) not in symbols:
                    continue  # no symbol: libbpf cannot place it either
                offset = symbols[(name, shndx)]
            vsize = vsi["size"] or self.btf.size_of(var["type"])
            if offset + vsize > size:
                raise ElfError("%s: variable %s (%d bytes at %d) lies outside %s (%d bytes)"
                               % (self.path, name, vsize, offset, sec, size))
            self.variables[name] = {"name": name, "section": sec, "offset": offset, "size": vsize,
                                    "type_id": var["type"], "type": type_name(self.btf, var["type"])}
