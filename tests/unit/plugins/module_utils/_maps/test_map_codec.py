"""map_codec: every format both ways, sizes enforced, BTF structs (bitfields, char arrays, enums, nested, unions)
against a BTF blob built here the way clang lays it out."""
import struct
import sys

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_codec as mc

LE = sys.byteorder == "little"
pytestmark = pytest.mark.skipif(not LE, reason="expected bytes below are little-endian")


# ------------------------------------------------------------------ plain formats

GOOD = [
    ("int", 4, 1, b"\x01\0\0\0", 1),
    ("int", 4, "0x10", b"\x10\0\0\0", 16),
    ("int", 2, "513", b"\x01\x02", 513),
    ("int", 8, -1, b"\xff" * 8, (1 << 64) - 1),
    ("int", 1, 255, b"\xff", 255),
    ("hex", 4, "0a000001", b"\x0a\0\0\x01", "0a000001"),
    ("hex", 4, "0x0a 00 00 01", b"\x0a\0\0\x01", "0a000001"),
    ("hex", 2, "ab:cd", b"\xab\xcd", "abcd"),
    ("hex", 3, [1, 2, 255], b"\x01\x02\xff", "0102ff"),
    ("ipv4", 4, "10.199.1.1", b"\x0a\xc7\x01\x01", "10.199.1.1"),
    ("ipv6", 16, "2001:db8::1", b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01", "2001:db8::1"),
    ("mac", 6, "AA-bb-cc-00-11-2", b"\xaa\xbb\xcc\x00\x11\x02", "aa:bb:cc:00:11:02"),
    ("string", 8, "eth0", b"eth0\0\0\0\0", "eth0"),
    ("string", 4, "abcd", b"abcd", "abcd"),
]


@pytest.mark.parametrize("fmt,size,given,raw,shown", GOOD)
def test_formats_both_ways(fmt, size, given, raw, shown):
    codec = mc.Codec(fmt, size)
    assert codec.encode(given) == raw
    assert codec.decode(raw) == shown


BAD = [
    ("int", 1, 256, "does not fit in 1 byte"),
    ("int", 4, "ten", "is not an integer"),
    ("int", 4, True, "got a boolean"),
    ("int", 4, 1.5, "is not an integer"),
    ("hex", 4, "0a0000", "3 byte(s) given, the map wants exactly 4"),
    ("hex", 4, "zz000000", "is not a hex string"),
    ("hex", 2, [1, 256], "integers 0..255"),
    ("ipv4", 4, "10.0.0.256", "is not an IPv4 address"),
    ("ipv4", 4, "10.1", "is not an IPv4 address"),
    ("ipv4", 4, 167772161, "is not an IPv4 address"),
    ("ipv4", 8, "10.0.0.1", "format ipv4 needs 4 bytes, the map has 8"),
    ("ipv6", 16, "2001:db8::g", "is not an IPv6 address"),
    ("ipv6", 4, "::1", "needs 16 bytes"),
    ("mac", 6, "aa:bb:cc:dd:ee", "is not a MAC address"),
    ("mac", 6, "aa:bb:cc:dd:ee:zz", "is not a MAC address"),
    ("mac", 8, "aa:bb:cc:dd:ee:ff", "needs 6 bytes"),
    ("string", 4, "eth10", "is 5 byte(s), the map holds 4"),
    ("string", 4, 12, "wants a string"),
]


@pytest.mark.parametrize("fmt,size,given,message", BAD)
def test_bad_values_are_clear_errors(fmt, size, given, message):
    with pytest.raises(mc.CodecError) as err:
        mc.Codec(fmt, size, what="key").encode(given)
    assert message in str(err.value)
    assert str(err.value).startswith("key")


def test_unknown_format():
    with pytest.raises(mc.CodecError, match="unknown format 'bin'"):
        mc.Codec("bin", 4)


def test_auto_without_btf_is_hex():
    codec = mc.Codec("auto", 2)
    assert codec.fmt == "hex" and codec.encode("beef") == b"\xbe\xef" and codec.decode(b"\x00\x01") == "0001"
    with pytest.raises(mc.CodecError, match="format hex wants a hex string, got 3 .the map has no BTF type for its "
                                            "value, so auto means hex; set value_format, e.g. int."):
        codec.encode(3)


def test_label_names_keys():
    assert mc.Codec("ipv4", 4).label(b"\x0a\0\0\x01") == "10.0.0.1"
    assert mc.Codec("int", 4).label(b"\x07\0\0\0") == "7"


# ------------------------------------------------------------------ BTF


class Builder(object):
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
        self.types += struct.pack("<3I", self.s(name), (kflag << 31) | (kind << 24) | vlen, size_or_type) + extra

    def int(self, name, size, bits, encoding=0):
        self.t(name, 1, 0, size, struct.pack("<I", (encoding << 24) | bits))

    def members(self, items, kflag=0):
        out = b""
        for name, tid, off, bits in items:
            out += struct.pack("<3I", self.s(name), tid, (bits << 24) | off if kflag else off)
        return out

    def blob(self):
        hdr = struct.pack("<HBBI4I", 0xeB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + self.types + self.strings


def sample_btf():
    b = Builder()
    b.int("unsigned int", 4, 32)                                     # 1
    b.int("int", 4, 32, 1)                                           # 2 signed
    b.int("char", 1, 8, 2)                                           # 3 char
    b.int("long long unsigned int", 8, 64)                           # 4
    b.t("", 3, 0, 0, struct.pack("<3I", 3, 1, 8))                    # 5 char[8]
    b.t("color", 6, 3, 4, struct.pack("<Ii", b.s("RED"), 0) + struct.pack("<Ii", b.s("GREEN"), 1)
        + struct.pack("<Ii", b.s("BLUE"), 2))                         # 6 enum
    b.t("inner", 4, 2, 8, b.members([("a", 1, 0, 0), ("b", 2, 32, 0)]))  # 7 struct inner
    b.t("", 3, 0, 0, struct.pack("<3I", 1, 1, 2))                    # 8 unsigned int[2]
    b.t("rec", 4, 8, 48, b.members([
        ("id", 1, 0, 0), ("flags", 1, 32, 3), ("mode", 1, 35, 5), ("name", 5, 64, 0), ("color", 6, 128, 0),
        ("pair", 7, 160, 0), ("counts", 8, 224, 0), ("total", 4, 320, 0)], kflag=1), kflag=1)  # 9 struct rec
    b.t("rec_t", 8, 0, 9)                                            # 10 typedef
    b.t("u", 5, 2, 4, b.members([("x", 1, 0, 0), ("y", 2, 0, 0)]))   # 11 union
    b.int("_Bool", 1, 8, 4)                                          # 12 bool
    b.t("", 10, 0, 4)                                                # 13 const u64
    b.t("anon_outer", 4, 1, 8, b.members([("", 7, 0, 0)]))           # 14 struct with an anonymous member
    return btf.Btf(b.blob())


def test_struct_encode_layout_and_decode():
    codec = mc.Codec("auto", 48, sample_btf(), 10)
    assert codec.fmt == "btf"
    value = {"id": 7, "flags": 5, "mode": 17, "name": "abc", "color": "BLUE", "pair": {"a": 1, "b": -2},
             "counts": [3, 4], "total": 1 << 40}
    raw = codec.encode(value)
    assert len(raw) == 48
    assert raw[0:4] == b"\x07\0\0\0"
    assert raw[4] == (17 << 3) | 5                                   # two bitfields share a byte
    assert raw[8:16] == b"abc\0\0\0\0\0"
    assert raw[16:20] == b"\x02\0\0\0"                               # BLUE
    assert raw[20:28] == b"\x01\0\0\0" + b"\xfe\xff\xff\xff"
    assert raw[28:36] == b"\x03\0\0\0\x04\0\0\0"
    assert raw[40:48] == b"\0\0\0\0\0\x01\0\0"
    decoded = codec.decode(raw)
    assert decoded == dict(value, color=2)


def test_struct_missing_fields_are_zero():
    codec = mc.Codec("auto", 48, sample_btf(), 9)
    raw = codec.encode({"id": 1})
    assert raw == b"\x01" + b"\0" * 47
    assert codec.decode(raw)["name"] == "" and codec.decode(raw)["counts"] == [0, 0]


@pytest.mark.parametrize("value,message", [
    ({"idx": 1}, "unknown field(s) idx; the struct has id, flags, mode, name, color, pair, counts, total"),
    ({"flags": 8}, "value.flags: 8 does not fit in 3 bit(s)"),
    ({"name": "ninechars"}, "value.name: 'ninechars' is 9 byte(s), the map holds 8"),
    ({"color": "PINK"}, "'PINK' is not one of RED, GREEN, BLUE"),
    ({"counts": [1, 2, 3]}, "value.counts: 3 item(s) given, the array holds 2"),
    ({"pair": {"b": 1 << 31}}, "value.pair.b: 2147483648 does not fit in 4 byte(s)"),
    ({"pair": 5}, "value.pair: expected a dict with fields a, b"),
    ([1, 2], "value: expected a dict"),
])
def test_struct_errors(value, message):
    with pytest.raises(mc.CodecError) as err:
        mc.Codec("auto", 48, sample_btf(), 9).encode(value)
    assert message in str(err.value)


def test_union_takes_one_field():
    codec = mc.Codec("auto", 4, sample_btf(), 11)
    assert codec.encode({"y": -1}) == b"\xff" * 4
    with pytest.raises(mc.CodecError, match="a union takes one field"):
        codec.encode({"x": 1, "y": 2})


def test_btf_ints_enums_bools_and_qualifiers():
    t = sample_btf()
    assert mc.Codec("auto", 4, t, 2).decode(b"\xff\xff\xff\xff") == -1      # signed int, fast path
    assert mc.Codec("auto", 4, t, 6).encode("GREEN") == b"\x01\0\0\0"
    assert mc.Codec("auto", 8, t, 13).encode(5) == b"\x05" + b"\0" * 7     # const u64
    boolean = mc.Codec("auto", 1, t, 12)
    assert boolean.encode(True) == b"\x01" and boolean.decode(b"\x01") is True


def test_anonymous_member_fields_are_flattened():
    codec = mc.Codec("auto", 8, sample_btf(), 14)
    assert codec.encode({"a": 2, "b": 3}) == b"\x02\0\0\0\x03\0\0\0"
    assert codec.decode(b"\x02\0\0\0\x03\0\0\0") == {"a": 2, "b": 3}


def test_btf_size_must_match_the_map():
    with pytest.raises(mc.CodecError, match="BTF type is 48 byte"):
        mc.Codec("auto", 16, sample_btf(), 9, what="value")


def test_explicit_format_wins_over_btf():
    codec = mc.Codec("hex", 4, sample_btf(), 1)
    assert codec.fmt == "hex" and codec.decode(b"\x01\0\0\0") == "01000000"


# ------------------------------------------------------------------ per-CPU helpers

def test_percpu_layout():
    assert mc.percpu_stride(4) == 8 and mc.percpu_stride(8) == 8 and mc.percpu_stride(12) == 16
    buf = mc.join_percpu(b"\x01\x02\x03\x04", 4, 3)
    assert buf == (b"\x01\x02\x03\x04" + b"\0" * 4) * 3
    assert mc.split_percpu(buf, 4, 3) == [b"\x01\x02\x03\x04"] * 3


@pytest.mark.parametrize("values,want", [
    ([1, 2, 3], 6),
    ([{"packets": 1, "bytes": 10}, {"packets": 2, "bytes": 20}], {"packets": 3, "bytes": 30}),
    ([[1, 2], [3, 4]], [4, 6]),
    ([{"a": [1], "b": 2}, {"a": [3], "b": 4}], {"a": [4], "b": 6}),
    (["00ff", "0100"], None),
    ([{"name": "x"}, {"name": "y"}], None),
    ([True, False], None),
    ([], None),
])
def test_sum_values(values, want):
    assert mc.sum_values(values) == want


def test_decode_many_matches_decode():
    t = sample_btf()
    cases = [(mc.Codec("int", 8), 8), (mc.Codec("auto", 4, t, 2), 4), (mc.Codec("ipv4", 4), 4),
             (mc.Codec("auto", 8, t, 7), 8), (mc.Codec("hex", 3), 3)]
    for codec, size in cases:
        blob = bytes(range(7, 7 + size * 5))
        want = [codec.decode(blob[i * size:(i + 1) * size]) for i in range(5)]
        assert codec.decode_many(blob, 5) == want
    # per-CPU layout: items 8 bytes apart, 4 bytes each
    codec = mc.Codec("auto", 4, t, 2)
    assert codec.decode_many(b"\xff\xff\xff\xff\0\0\0\0\x02\0\0\0\0\0\0\0", 2, 8) == [-1, 2]


def test_labels_many_matches_label():
    t = sample_btf()
    for codec, size in [(mc.Codec("int", 8), 8), (mc.Codec("ipv4", 4), 4), (mc.Codec("auto", 8, t, 7), 8),
                        (mc.Codec("hex", 3), 3), (mc.Codec("auto", 1, t, 12), 1)]:
        blob = bytes(range(7, 7 + size * 5))
        assert codec.labels_many(blob, 5) == [codec.label(blob[i * size:(i + 1) * size]) for i in range(5)]


ENCODE_MANY = [
    ("ipv4 fast", mc.Codec("ipv4", 4), ["10.0.0.1", "192.0.2.255"]),
    ("ipv4 with spaces", mc.Codec("ipv4", 4), [" 10.0.0.1", "10.0.0.2 "]),
    ("int fast", mc.Codec("int", 4), [0, 1, 2 ** 32 - 1]),
    ("int strings and negatives", mc.Codec("int", 4), ["42", "0x2a", -1, 7]),
    ("btf signed", mc.Codec("auto", 4, sample_btf(), 2), [-5, 5]),
    ("btf struct", mc.Codec("auto", 8, sample_btf(), 7), [{"a": 1, "b": -2}, {"a": 3}]),
    ("hex", mc.Codec("hex", 2), ["0a0b", "ff ff"]),
    ("empty", mc.Codec("int", 4), []),
]


@pytest.mark.parametrize("label,codec,items", ENCODE_MANY, ids=[e[0] for e in ENCODE_MANY])
def test_encode_many_matches_encode(label, codec, items):
    assert codec.encode_many(items) == [codec.encode(i) for i in items]


@pytest.mark.parametrize("codec,items,message", [
    (mc.Codec("ipv4", 4), ["10.0.0.1", "10.0.0.256"], "entry 1: '10.0.0.256' is not an IPv4 address"),
    (mc.Codec("int", 4), [1, 2 ** 32], "entry 1: 4294967296 does not fit"),
    (mc.Codec("int", 4), [1, True], "entry 1: expected an integer, got a boolean"),
])
def test_encode_many_names_the_bad_item(codec, items, message):
    with pytest.raises(mc.CodecError) as e:
        codec.encode_many(items, lambda i: "entry %d" % i)
    assert message in str(e.value)
