"""btf.py against BTF blobs built here, type by type, as the kernel lays them out."""
import struct

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf


class Builder(object):
    """Writes a BTF blob: strings and types appended in order, ids from 1."""

    def __init__(self):
        self.strings = b"\0"
        self.types = b""

    def s(self, text):
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def t(self, name, kind, vlen, size_or_type, extra=b"", kflag=0):
        info = (kflag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<3I", self.s(name), info, size_or_type) + extra

    def blob(self):
        hdr = struct.pack("<HBBI4I", 0xeB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + self.types + self.strings


def sample():
    b = Builder()
    b.t("unsigned int", 1, 0, 4, struct.pack("<I", 32))                      # 1 int
    b.t("__u32", 8, 0, 1)                                                     # 2 typedef -> 1
    b.t("long long unsigned int", 1, 0, 8, struct.pack("<I", 64))            # 3 int
    b.t("", 3, 0, 0, struct.pack("<3I", 3, 1, 4))                            # 4 array of 4 x u64
    b.t("counters", 4, 2, 16, struct.pack("<3I", b.s("packets"), 3, 0) + struct.pack("<3I", b.s("bytes"), 3, 64))
    b.t("", 10, 0, 5)                                                         # 6 const counters
    b.t("", 13, 1, 1, struct.pack("<2I", b.s("dfd"), 1))                     # 7 func_proto
    b.t("do_unlinkat", 12, 1, 7)                                              # 8 func
    b.t("proto", 6, 2, 4, struct.pack("<Ii", b.s("TCP"), 6) + struct.pack("<Ii", b.s("UDP"), 17))
    return b.blob()


def test_parse_kinds_and_names():
    t = btf.Btf(sample())
    assert [x["kind"] for x in t.types] == ["void", "int", "typedef", "int", "array", "struct", "const",
                                            "func_proto", "func", "enum"]
    assert t.types[5]["members"] == [
        {"name": "packets", "type": 3, "bits_offset": 0, "bitfield_size": 0},
        {"name": "bytes", "type": 3, "bits_offset": 64, "bitfield_size": 0}]
    assert t.types[9]["values"] == [("TCP", 6), ("UDP", 17)]


@pytest.mark.parametrize("name,kind,want", [
    ("counters", "struct", 5), ("counters", None, 5), ("counters", "union", None),
    ("do_unlinkat", "func", 8), ("__u32", "typedef", 2), ("missing", None, None)])
def test_find(name, kind, want):
    assert btf.Btf(sample()).find(name, kind) == want


@pytest.mark.parametrize("tid,size", [(1, 4), (2, 4), (3, 8), (4, 32), (5, 16), (6, 16), (9, 4)])
def test_size_of_follows_qualifiers(tid, size):
    assert btf.Btf(sample()).size_of(tid) == size


def test_resolve_skips_typedef_and_const():
    t = btf.Btf(sample())
    assert t.resolve(2) == 1 and t.resolve(6) == 5


def test_split_btf_continues_ids_and_strings():
    base = btf.Btf(sample())
    b = Builder()
    b.strings = b""  # split BTF strings start where the base's end
    off = len(base._all_strings())
    name = b"mod_func\0"
    b.types = struct.pack("<3I", off, (12 << 24) | 1, 7)
    b.strings = name
    hdr = struct.pack("<HBBI4I", 0xeB9F, 1, 0, 24, 0, len(b.types), len(b.types), len(b.strings))
    split = btf.Btf(hdr + b.types + b.strings, base=base)
    assert split.find("mod_func", "func") == 10
    assert split.find("counters", "struct") == 5


@pytest.mark.parametrize("data,msg", [(b"\0" * 8, "too short"), (b"\x00\x00" + b"\0" * 30, "not BTF")])
def test_bad_blobs(data, msg):
    with pytest.raises(btf.BtfError, match=msg):
        btf.Btf(data)
