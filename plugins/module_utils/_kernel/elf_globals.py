# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The global variables of a BPF ELF object: name, section (.rodata, .data, .bss), offset, size and BTF type,
and each section's bytes as compiled (what libbpf puts into the section's internal map before load).

One job: find the globals in the object's sections, symbol table and .BTF section (the ELF file read by elf.py,
the BTF by btf.py) without libbpf and without a kernel call. The object's BTF has a DATASEC per data section
listing its variables; clang leaves the DATASEC's size and its variables' offsets at 0 (libbpf fixes them up at
open from the symbol table, as done here), the BPF static linker fills them in.

    objs = ObjectGlobals.read(path)
    objs.variables  -> {name: {"name", "section", "offset", "size", "type_id", "type"}}
    objs.sections   -> {".rodata": bytes, ".bss": zeros, ...}   (only sections the object has)
    objs.btf        -> btf.Btf (None when the object has no .BTF section)
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf as btf_mod
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.elf import ElfError

SECTIONS = (".rodata", ".data", ".bss")
_STT_NOTYPE, _STT_OBJECT = 0, 1


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
        self.btf = None
        self.sections = {}
        self.variables = {}
        obj = elf.ElfFile.from_bytes(data, path)
        if obj.ei_class != 2:
            raise ElfError("%s is not a 64-bit ELF object (class %d): build it with clang -target bpf"
                           % (path, obj.ei_class))
        shdrs = obj.sections()
        names = dict((s["name"], s) for s in shdrs)
        for sec in SECTIONS:
            if sec in names:
                self.sections[sec] = obj.section_bytes(names[sec])
        if ".BTF" in names:
            try:
                self.btf = btf_mod.Btf(obj.section_bytes(names[".BTF"]))
            except btf_mod.BtfError as e:
                raise ElfError("%s: its .BTF section cannot be read: %s" % (path, e))
        if self.btf is not None and self.sections:
            symbols = _symbols(obj, shdrs)
            for sec in SECTIONS:
                if sec in self.sections:
                    self._datasec(sec, names[sec]["index"], symbols)

    @classmethod
    def read(cls, path):
        with open(path, "rb") as f:
            return cls(f.read(), path)

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


def _symbols(obj, shdrs):
    """{(name, section index): value} of the object symbols (variables) in the symbol table."""
    out = {}
    for table in shdrs:
        if table["type"] == elf.SHT_SYMTAB:
            for sym in obj.symbols(table):
                if sym["name"] and (sym["info"] & 0xf) in (_STT_OBJECT, _STT_NOTYPE):
                    out.setdefault((sym["name"], sym["shndx"]), sym["value"])
    return out
