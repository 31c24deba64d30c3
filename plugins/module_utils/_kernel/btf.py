# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small BTF reader: the kernel's /sys/kernel/btf/vmlinux, module BTF (split), and the BTF of a loaded map.

One job: turn the BTF blob (include/uapi/linux/btf.h) into a list of types indexed by id, with names resolved,
and answer the questions the collection asks: which id has this name, what is its size, what are its members.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

BTF_MAGIC = 0xeB9F

KINDS = {
    0: "unknown", 1: "int", 2: "ptr", 3: "array", 4: "struct", 5: "union", 6: "enum", 7: "fwd", 8: "typedef",
    9: "volatile", 10: "const", 11: "restrict", 12: "func", 13: "func_proto", 14: "var", 15: "datasec",
    16: "float", 17: "decl_tag", 18: "type_tag", 19: "enum64",
}
_QUALIFIERS = ("typedef", "volatile", "const", "restrict", "type_tag")


class BtfError(ValueError):
    pass


class Btf(object):
    """Parsed BTF. `types[0]` is void; ids of split BTF continue after its base's."""

    def __init__(self, data, base=None):
        if len(data) < 24:
            raise BtfError("BTF blob too short (%d bytes)" % len(data))
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError("not BTF (magic 0x%x)" % magic)
        type_off, type_len, str_off, str_len = struct.unpack_from("<4I", data, 8)
        self.base = base
        self._strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self._str_base = len(base._all_strings()) if base is not None else 0
        self.types = list(base.types) if base is not None else [{"id": 0, "kind": "void", "name": "", "size": 0}]
        self._first_id = len(self.types)
        self._parse(data[hdr_len + type_off:hdr_len + type_off + type_len])
        self._by_name = None

    @classmethod
    def from_file(cls, path, base=None):
        with open(path, "rb") as f:
            return cls(f.read(), base)

    def _all_strings(self):
        return (self.base._all_strings() if self.base is not None else b"") + self._strings

    def string(self, off):
        if off < self._str_base:
            return self.base.string(off)
        raw = self._strings
        off -= self._str_base
        end = raw.find(b"\0", off)
        return raw[off:end if end >= 0 else len(raw)].decode("utf-8", "replace")

    def _parse(self, raw):
        pos = 0
        while pos < len(raw):
            name_off, info, size_or_type = struct.unpack_from("<3I", raw, pos)
            pos += 12
            vlen = info & 0xffff
            kind = KINDS.get((info >> 24) & 0x1f, "unknown")
            kflag = bool(info >> 31)
            t = {"id": len(self.types), "kind": kind, "name": self.string(name_off)}
            if kind in ("int", "struct", "union", "enum", "enum64", "datasec", "float"):
                t["size"] = size_or_type
            else:
                t["type"] = size_or_type
            if kind == "int":
                enc = struct.unpack_from("<I", raw, pos)[0]
                pos += 4
                t["bits"] = enc & 0xff
                t["offset"] = (enc >> 16) & 0xff
                t["signed"] = bool((enc >> 24) & 1)
                t["char"] = bool((enc >> 24) & 2)
                t["bool"] = bool((enc >> 24) & 4)
            elif kind == "array":
                t["type"], t["index_type"], t["nelems"] = struct.unpack_from("<3I", raw, pos)
                pos += 12
            elif kind in ("struct", "union"):
                members = []
                for _member in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<3I", raw, pos)
                    pos += 12
                    if kflag:
                        members.append({"name": self.string(m_name), "type": m_type,
                                        "bits_offset": m_off & 0xffffff, "bitfield_size": m_off >> 24})
                    else:
                        members.append({"name": self.string(m_name), "type": m_type,
                                        "bits_offset": m_off, "bitfield_size": 0})
                t["members"] = members
            elif kind == "enum":
                vals = []
                for _member in range(vlen):
                    v_name, v_val = struct.unpack_from("<Ii", raw, pos)
                    pos += 8
                    vals.append((self.string(v_name), v_val))
                t["values"] = vals
            elif kind == "enum64":
                vals = []
                for _member in range(vlen):
                    v_name, lo, hi = struct.unpack_from("<3I", raw, pos)
                    pos += 12
                    vals.append((self.string(v_name), (hi << 32) | lo))
                t["values"] = vals
            elif kind == "func_proto":
                params = []
                for _member in range(vlen):
                    p_name, p_type = struct.unpack_from("<2I", raw, pos)
                    pos += 8
                    params.append({"name": self.string(p_name), "type": p_type})
                t["params"] = params
            elif kind == "var":
                t["linkage"] = struct.unpack_from("<I", raw, pos)[0]
                pos += 4
            elif kind == "datasec":
                secinfo = []
                for _member in range(vlen):
                    s_type, s_off, s_size = struct.unpack_from("<3I", raw, pos)
                    pos += 12
                    secinfo.append({"type": s_type, "offset": s_off, "size": s_size})
                t["vars"] = secinfo
            elif kind == "decl_tag":
                t["component_idx"] = struct.unpack_from("<i", raw, pos)[0]
                pos += 4
            elif kind == "func":
                t["linkage"] = vlen
            elif kind == "unknown":
                raise BtfError("unknown BTF kind %d at type id %d" % ((info >> 24) & 0x1f, t["id"]))
            self.types.append(t)

    def find(self, name, kind=None):
        """The id of the first type called `name` (of `kind` when given), or None."""
        if self._by_name is None:
            index = {}
            for t in self.types:
                if t["name"]:
                    index.setdefault(t["name"], []).append(t["id"])
            self._by_name = index
        for tid in self._by_name.get(name, ()):
            if kind is None or self.types[tid]["kind"] == kind:
                return tid
        return None

    def resolve(self, type_id):
        """Follow typedef/const/volatile/restrict/type_tag to the type underneath."""
        seen = 0
        while self.types[type_id]["kind"] in _QUALIFIERS:
            type_id = self.types[type_id]["type"]
            seen += 1
            if seen > 64:
                raise BtfError("type chain too deep at id %d" % type_id)
        return type_id

    def size_of(self, type_id):
        t = self.types[self.resolve(type_id)]
        kind = t["kind"]
        if kind in ("int", "struct", "union", "enum", "enum64", "float", "datasec"):
            return t["size"]
        if kind == "ptr":
            return 8
        if kind == "array":
            return t["nelems"] * self.size_of(t["type"])
        if kind == "var":
            return self.size_of(t["type"])
        raise BtfError("type id %d (%s) has no size" % (type_id, kind))
