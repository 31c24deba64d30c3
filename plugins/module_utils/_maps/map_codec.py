# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Map keys and values <-> bytes.

One job: turn what a user writes in a playbook (an int, "10.0.0.1", "aa:bb:..", a dict of struct fields)
into the exact bytes a map holds, and back, per format or per the map's BTF (the encoders are
_kernel/btf_values.py's). No kernel calls here.

Formats (`key_format` / `value_format`): int, hex, ipv4, ipv6, mac and string as btf_values' docstring gives
them, and auto: the map's BTF type when the map carries BTF (ints, enums, structs as dicts by field name, arrays
as lists, char arrays as strings), hex otherwise.
Every encoder checks the size: a value that does not fit, or a raw value of another length, is a CodecError.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import struct

# the encoders themselves live one layer down, shared with an object's global variables (_program)
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.btf_values import (
    BYTEORDER, BtfCodec, CodecError, decode_hex, decode_ipv4, decode_ipv6, decode_mac, decode_string, encode_hex,
    encode_int, encode_ipv4, encode_ipv6, encode_mac, encode_string)

FORMATS = ("auto", "int", "hex", "ipv4", "ipv6", "mac", "string")


def percpu_stride(value_size):
    """Bytes one CPU's copy of a per-CPU value takes in a lookup buffer (rounded up to 8)."""
    return (value_size + 7) & ~7


# ---------------------------------------------------------------- one side of a map (key or value)

class Codec(object):
    """Encoder/decoder for a map's key or (one CPU's) value.

    fmt: one of FORMATS. btf/type_id: the map's BTF and the side's type id (0 or None when absent).
    """

    def __init__(self, fmt, size, btf=None, type_id=0, what="value"):
        if fmt not in FORMATS:
            raise CodecError("unknown format %r; use one of %s" % (fmt, ", ".join(FORMATS)))
        self.size = size
        self.what = what
        self.btf_codec = None
        self.hint = ""
        if fmt == "auto":
            if btf is not None and type_id:
                self.btf_codec = BtfCodec(btf, type_id)
                if self.btf_codec.size != size:
                    raise CodecError("%s: BTF type is %d byte(s) but the map's %s size is %d"
                                     % (what, self.btf_codec.size, what, size))
                fmt = "btf"
            else:
                fmt = "hex"
                self.hint = " (the map has no BTF type for its %s, so auto means hex; set %s_format, e.g. int)" % (
                    what, what)
        self.fmt = fmt
        self.decode = self._decoder()
        self._unpack = self._struct_format()

    def _struct_format(self):
        """A struct format reading this side as a whole-byte integer, for decode_many; None otherwise."""
        letters = {1: "b", 2: "h", 4: "i", 8: "q"}
        if self.size not in letters:
            return None
        if self.fmt == "int":
            signed = False
        elif self.fmt == "btf":
            signed = self.btf_codec.plain_signed_int()
            if signed is None:
                return None
        else:
            return None
        letter = letters[self.size]
        return "=" + (letter if signed else letter.upper())

    def _decoder(self):
        """The fastest decode for this format (maps of 65,536 entries are decoded entry by entry)."""
        if self.fmt == "btf":
            signed = self.btf_codec.plain_signed_int()
            if signed is None:
                return self.btf_codec.decode
            return lambda data: int.from_bytes(data, BYTEORDER, signed=signed)
        if self.fmt == "int":
            return lambda data: int.from_bytes(data, BYTEORDER)
        if self.fmt == "hex":
            return decode_hex
        if self.fmt == "ipv4":
            return decode_ipv4
        if self.fmt == "ipv6":
            return decode_ipv6
        if self.fmt == "mac":
            return decode_mac
        return decode_string

    def decode_many(self, blob, count, stride=None):
        """Decode `count` items laid out every `stride` bytes (default: the size) in one bytes blob."""
        size = self.size
        stride = stride or size
        if stride == size and self._unpack:
            return [v[0] for v in struct.iter_unpack(self._unpack, blob[:count * size])]
        if stride == size and self.fmt == "ipv4":
            return ["%d.%d.%d.%d" % q for q in struct.iter_unpack("4B", blob[:count * 4])]
        decode = self.decode
        return [decode(blob[i * stride:i * stride + size]) for i in range(count)]

    def labels_many(self, blob, count):
        """label() of `count` keys laid out back to back in one bytes blob, as strings."""
        decoded = self.decode_many(blob, count)
        if decoded and isinstance(decoded[0], (dict, list)):
            size = self.size
            return [blob[i * size:(i + 1) * size].hex() for i in range(count)]
        if decoded and not isinstance(decoded[0], str):
            return [str(d) for d in decoded]
        return decoded

    def encode_many(self, items, label_of=None):
        """encode() of every item, as a list; label_of(i) names item i in the error of a bad one. Whole
        columns of IPv4 addresses or integers (10,000 entries) go through one fast loop; anything that loop
        does not take (whitespace, "0x2a", negative numbers, a bad item) is encoded item by item."""
        fast = self._encode_fast(items)
        if fast is not None:
            return fast
        out = []
        for i, item in enumerate(items):
            try:
                out.append(self.encode(item))
            except CodecError:
                if label_of is None:
                    raise
                self.encode(item, label_of(i))  # raises again, naming the item
                raise
        return out

    def _encode_fast(self, items):
        try:
            if self.fmt == "ipv4" and self.size == 4:
                pton, family = socket.inet_pton, socket.AF_INET
                return [pton(family, item) for item in items]
            signed = {"int": False}.get(self.fmt)
            if self.fmt == "btf":
                signed = self.btf_codec.plain_signed_int()
            if signed is not None and set(map(type, items)) <= set((int,)):
                size = self.size
                return [item.to_bytes(size, BYTEORDER, signed=signed) for item in items]
        except (OSError, TypeError, ValueError, OverflowError):
            pass
        return None

    def encode(self, value, label=None):
        what = label or self.what
        if self.fmt == "btf":
            return self.btf_codec.encode(value, what)
        if self.fmt == "int":
            return encode_int(value, self.size, what)
        if self.fmt == "hex":
            try:
                return encode_hex(value, self.size, what)
            except CodecError as e:
                raise CodecError(str(e) + self.hint)
        if self.fmt == "ipv4":
            return encode_ipv4(value, self.size, what)
        if self.fmt == "ipv6":
            return encode_ipv6(value, self.size, what)
        if self.fmt == "mac":
            return encode_mac(value, self.size, what)
        return encode_string(value, self.size, what)

    def label(self, data):
        """A string naming a key in results and diffs."""
        decoded = self.decode(data)
        if isinstance(decoded, (dict, list)):
            return data.hex()
        return str(decoded)


def split_percpu(data, value_size, ncpus):
    """One bytes value per CPU out of a per-CPU lookup buffer."""
    stride = percpu_stride(value_size)
    return [data[i * stride:i * stride + value_size] for i in range(ncpus)]


def join_percpu(value, value_size, ncpus):
    """The same value for every CPU, laid out the way BPF_MAP_UPDATE_ELEM wants it."""
    pad = b"\0" * (percpu_stride(value_size) - value_size)
    return (value + pad) * ncpus


def sum_values(values):
    """Sum per-CPU decoded values: ints add, dicts add field by field, lists item by item.

    Returns None when the values are not numbers (raw hex, strings)."""
    if not values:
        return None
    first = values[0]
    if isinstance(first, bool):
        return None
    if isinstance(first, (int, float)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return sum(values)
        return None
    if isinstance(first, dict):
        out = {}
        for key in first:
            out[key] = sum_values([v.get(key) for v in values])
            if out[key] is None:
                return None
        return out
    if isinstance(first, list):
        out = []
        for i in range(len(first)):
            item = sum_values([v[i] for v in values])
            if item is None:
                return None
            out.append(item)
        return out
    return None
