# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Values <-> bytes, in plain formats or as a BTF type says: the encoders map keys and values (_maps/map_codec.py)
and an object's global variables (_program/program_globals.py) share.

One job: the bytes of one value (an int, "10.0.0.1", "aa:bb:..", a hex string, a dict of struct fields, a list
for an array) for a given size or BTF type of a btf.Btf, and back. No kernel calls here.

  int     unsigned integer in host byte order (negative numbers are stored as two's complement);
          "42", "0x2a" and 42 are all accepted
  hex     raw bytes in order: "0a000001", "0x0a000001", "0a 00 00 01", "0a:00:00:01" or a list of ints
  ipv4    dotted quad, stored in network byte order (4 bytes)
  ipv6    any form inet_pton accepts ("2001:db8::1", "::ffff:10.0.0.1"), network byte order (16 bytes)
  mac     "aa:bb:cc:dd:ee:ff" (6 bytes)
  string  UTF-8, padded with NULs to the size (a value that does not fit is an error)
  BtfCodec  one BTF type and everything under it: ints, enums (by name or number), bools, floats, bitfields,
          structs and unions as dicts by field name, arrays as lists, char arrays as strings
Every encoder checks the size: a value that does not fit, or a raw value of another length, is a CodecError.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import struct
import sys

BYTEORDER = sys.byteorder


class CodecError(ValueError):
    """A key or value that cannot be encoded for this map (wrong size, unparseable, unknown field)."""


def _field(t, name, default=None):
    """Read a field of a btf.py type whether it is a dict or an object."""
    if isinstance(t, dict):
        return t.get(name, default)
    return getattr(t, name, default)


def _kind(t):
    return _field(t, "kind") or _field(t, "kind_name")


def _int_flag(t, flag):
    """An int type's encoding flag ("signed", "char", "bool"), as btf.py records it."""
    return bool(_field(t, flag)) or _field(t, "encoding") == flag


def _enum_item(item):
    if isinstance(item, (tuple, list)):
        return item[0], item[1]
    return _field(item, "name"), _field(item, "val", _field(item, "value"))


# ---------------------------------------------------------------- plain formats

def parse_int(value, what):
    """An integer from an int, an integral float or text ("42", "0x2a"); CodecError otherwise (a bool too)."""
    if isinstance(value, bool):
        raise CodecError("%s: expected an integer, got a boolean" % what)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 0)
        except ValueError:
            pass
    raise CodecError("%s: %r is not an integer" % (what, value))


def encode_int(value, size, what="value", signed=None):
    number = parse_int(value, what)
    if signed is None:
        signed = number < 0
    try:
        return number.to_bytes(size, BYTEORDER, signed=signed)
    except OverflowError:
        raise CodecError("%s: %d does not fit in %d byte(s)" % (what, number, size))


def decode_int(data, signed=False):
    return int.from_bytes(data, BYTEORDER, signed=signed)


def encode_hex(value, size, what="value"):
    if isinstance(value, (list, tuple)):
        try:
            data = bytes(bytearray(value))
        except (TypeError, ValueError):
            raise CodecError("%s: a list of bytes must hold integers 0..255" % what)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("0x"):
            text = text[2:]
        for sep in (" ", ":", "-", "_"):
            text = text.replace(sep, "")
        try:
            data = bytes(bytearray.fromhex(text))
        except ValueError:
            raise CodecError("%s: %r is not a hex string" % (what, value))
    else:
        raise CodecError("%s: format hex wants a hex string, got %r" % (what, value))
    if len(data) != size:
        raise CodecError("%s: %d byte(s) given, the map wants exactly %d" % (what, len(data), size))
    return data


def decode_hex(data):
    return data.hex()


def encode_ipv4(value, size, what="value"):
    if size != 4:
        raise CodecError("%s: format ipv4 needs 4 bytes, the map has %d" % (what, size))
    try:
        return socket.inet_pton(socket.AF_INET, value.strip())  # strict dotted quad, unlike inet_aton
    except (AttributeError, OSError):
        raise CodecError("%s: %r is not an IPv4 address" % (what, value))


def decode_ipv4(data):
    return socket.inet_ntop(socket.AF_INET, data)


def encode_ipv6(value, size, what="value"):
    if size != 16:
        raise CodecError("%s: format ipv6 needs 16 bytes, the map has %d" % (what, size))
    try:
        return socket.inet_pton(socket.AF_INET6, value.strip())
    except (AttributeError, OSError):
        raise CodecError("%s: %r is not an IPv6 address" % (what, value))


def decode_ipv6(data):
    return socket.inet_ntop(socket.AF_INET6, data)


def encode_mac(value, size, what="value"):
    if size != 6:
        raise CodecError("%s: format mac needs 6 bytes, the map has %d" % (what, size))
    text = str(value).strip().lower().replace("-", ":")
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise CodecError("%s: %r is not a MAC address (aa:bb:cc:dd:ee:ff)" % (what, value))
    try:
        return bytes(bytearray(int(p, 16) for p in parts))
    except ValueError:
        raise CodecError("%s: %r is not a MAC address (aa:bb:cc:dd:ee:ff)" % (what, value))


def decode_mac(data):
    return ":".join("%02x" % b for b in bytearray(data))


def encode_string(value, size, what="value"):
    if not isinstance(value, str):
        raise CodecError("%s: format string wants a string, got %r" % (what, value))
    data = value.encode("utf-8")
    if len(data) > size:
        raise CodecError("%s: %r is %d byte(s), the map holds %d" % (what, value, len(data), size))
    return data + b"\0" * (size - len(data))


def decode_string(data):
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---------------------------------------------------------------- BTF-driven

class BtfCodec(object):
    """Encode/decode one BTF type (and everything under it) of a btf.Btf."""

    def __init__(self, btf, type_id):
        self.btf = btf
        self.type_id = type_id
        self.size = btf.size_of(type_id)

    def _type(self, type_id):
        rid = self.btf.resolve(type_id)
        return rid, self.btf.types[rid]

    def plain_signed_int(self):
        """For a whole-byte integer (or enum) type: whether it is signed; None for anything else."""
        t = self._type(self.type_id)[1]
        kind = _kind(t)
        if kind in ("enum", "enum64"):
            return False
        if kind != "int" or _int_flag(t, "bool") or (_field(t, "bits") or self.size * 8) != self.size * 8:
            return None
        return _int_flag(t, "signed")

    # -- encode
    def encode(self, value, what="value"):
        buf = bytearray(self.size)
        self._put(self.type_id, value, buf, 0, None, what)
        return bytes(buf)

    def _put(self, type_id, value, buf, bit_off, bit_size, what):
        rid, t = self._type(type_id)
        kind = _kind(t)
        byte_off = bit_off // 8
        if kind in ("int", "enum", "enum64", "ptr"):
            size = self.btf.size_of(rid) if kind != "ptr" else 8
            signed = kind == "int" and _int_flag(t, "signed")
            if kind in ("enum", "enum64") and isinstance(value, str):
                value = self._enum_value(t, value, what)
            if kind == "int" and _int_flag(t, "bool") and isinstance(value, bool):
                value = int(value)
            if kind == "int" and _int_flag(t, "char") and isinstance(value, str) and len(value) == 1:
                value = ord(value)
            bits = _field(t, "bits") if kind == "int" else None
            if bit_size or (bits and bits < size * 8):
                self._put_bits(value, buf, bit_off, bit_size or bits, signed, what)
                return
            buf[byte_off:byte_off + size] = encode_int(value, size, what, signed=signed or None)
        elif kind == "float":
            size = self.btf.size_of(rid)
            try:
                buf[byte_off:byte_off + size] = struct.pack("<f" if size == 4 else "<d", float(value))
            except (TypeError, ValueError, struct.error):
                raise CodecError("%s: %r is not a number" % (what, value))
        elif kind == "array":
            self._put_array(t, value, buf, byte_off, what)
        elif kind in ("struct", "union"):
            self._put_struct(t, kind, value, buf, bit_off, what)
        else:
            raise CodecError("%s: BTF kind %s cannot be written" % (what, kind))

    def _put_bits(self, value, buf, bit_off, nbits, signed, what):
        number = parse_int(value, what)
        lo, hi = (-(1 << (nbits - 1)), (1 << (nbits - 1)) - 1) if signed else (0, (1 << nbits) - 1)
        if number < 0 and not signed:
            lo = -(1 << (nbits - 1))
        if not lo <= number <= hi:
            raise CodecError("%s: %d does not fit in %d bit(s)" % (what, number, nbits))
        number &= (1 << nbits) - 1
        first, last = bit_off // 8, (bit_off + nbits + 7) // 8
        word = int.from_bytes(bytes(buf[first:last]), "little")
        shift = bit_off - first * 8
        word = (word & ~(((1 << nbits) - 1) << shift)) | (number << shift)
        buf[first:last] = word.to_bytes(last - first, "little")

    def _enum_value(self, t, name, what):
        items = [_enum_item(i) for i in _field(t, "values") or []]
        for item_name, item_value in items:
            if item_name == name:
                return item_value
        try:
            return int(name, 0)
        except ValueError:
            names = [n for n, _v in items]
            raise CodecError("%s: %r is not one of %s" % (what, name, ", ".join(names)))

    def _is_char(self, type_id):
        _rid, t = self._type(type_id)
        return _kind(t) == "int" and self.btf.size_of(type_id) == 1 and (
            _int_flag(t, "char") or _field(t, "name") in ("char", "signed char", "unsigned char"))

    def _put_array(self, t, value, buf, byte_off, what):
        elem, nelems = _field(t, "type"), _field(t, "nelems")
        esize = self.btf.size_of(elem)
        if isinstance(value, str) and self._is_char(elem):
            buf[byte_off:byte_off + nelems] = encode_string(value, nelems, what)
            return
        if not isinstance(value, (list, tuple)):
            raise CodecError("%s: expected a list of up to %d item(s), got %r" % (what, nelems, value))
        if len(value) > nelems:
            raise CodecError("%s: %d item(s) given, the array holds %d" % (what, len(value), nelems))
        for i, item in enumerate(value):
            self._put(elem, item, buf, (byte_off + i * esize) * 8, None, "%s[%d]" % (what, i))

    def _members(self, t):
        for m in _field(t, "members") or []:
            yield (_field(m, "name") or "", _field(m, "type"), _field(m, "bits_offset", _field(m, "offset", 0)),
                   _field(m, "bitfield_size", 0) or 0)

    def _field_names(self, t):
        names = []
        for name, mtype, _o, _b in self._members(t):
            if name:
                names.append(name)
            else:
                names.extend(self._field_names(self._type(mtype)[1]))
        return names

    def _put_struct(self, t, kind, value, buf, bit_off, what):
        if not isinstance(value, dict):
            raise CodecError("%s: expected a dict with fields %s, got %r"
                             % (what, ", ".join(self._field_names(t)), value))
        known = self._field_names(t)
        unknown = sorted(k for k in value if k not in known)
        if unknown:
            raise CodecError("%s: unknown field(s) %s; the %s has %s"
                             % (what, ", ".join(unknown), kind, ", ".join(known)))
        if kind == "union" and len(value) > 1:
            raise CodecError("%s: a union takes one field, got %s" % (what, ", ".join(sorted(value))))
        for name, mtype, moff, bsize in self._members(t):
            if not name:
                sub = self._type(mtype)[1]
                subset = dict((k, v) for k, v in value.items() if k in self._field_names(sub))
                if subset:
                    self._put(mtype, subset, buf, bit_off + moff, None, what)
            elif name in value:
                self._put(mtype, value[name], buf, bit_off + moff, bsize or None, "%s.%s" % (what, name))

    # -- decode
    def decode(self, data):
        return self._get(self.type_id, bytes(data), 0, None)

    def _get(self, type_id, data, bit_off, bit_size):
        rid, t = self._type(type_id)
        kind = _kind(t)
        byte_off = bit_off // 8
        if kind in ("int", "enum", "enum64", "ptr"):
            size = self.btf.size_of(rid) if kind != "ptr" else 8
            signed = kind == "int" and _int_flag(t, "signed")
            bits = _field(t, "bits") if kind == "int" else None
            if bit_size or (bits and bits < size * 8):
                nbits = bit_size or bits
                first, last = bit_off // 8, (bit_off + nbits + 7) // 8
                word = int.from_bytes(data[first:last], "little") >> (bit_off - first * 8)
                number = word & ((1 << nbits) - 1)
                if signed and number >> (nbits - 1):
                    number -= 1 << nbits
            else:
                number = decode_int(data[byte_off:byte_off + size], signed=signed)
            if kind == "int" and _int_flag(t, "bool"):
                return bool(number)
            return number
        if kind == "float":
            size = self.btf.size_of(rid)
            return struct.unpack("<f" if size == 4 else "<d", data[byte_off:byte_off + size])[0]
        if kind == "array":
            elem, nelems = _field(t, "type"), _field(t, "nelems")
            esize = self.btf.size_of(elem)
            if self._is_char(elem):
                return decode_string(data[byte_off:byte_off + nelems])
            return [self._get(elem, data, (byte_off + i * esize) * 8, None) for i in range(nelems)]
        if kind in ("struct", "union"):
            out = {}
            for name, mtype, moff, bsize in self._members(t):
                item = self._get(mtype, data, bit_off + moff, bsize or None)
                if not name and isinstance(item, dict):
                    out.update(item)
                else:
                    out[name] = item
            return out
        return data[byte_off:byte_off + self.btf.size_of(rid)].hex()
