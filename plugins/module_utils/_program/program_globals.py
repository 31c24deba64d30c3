# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `globals` option: values for an object's global variables (`const volatile` in .rodata, .data, .bss),
checked against the object's BTF, normalised for the record and the diff, and written into the sections' maps
before load.

One job: `plan(path, given)` refuses an unknown name or a value that does not fit (SpecError, before anything
changes) and returns the normalised values and the bytes to write; `load_into(obj, plan)` hands those bytes to
libbpf between open and load. A value is typed by its variable's BTF type (btf_values.BtfCodec): integers
(decimal or "0x.." text, range-checked, no negative number for an unsigned type), bools (true/false, 0/1),
enums (a name or a number), structs (dicts), arrays (lists), char arrays (strings). Text for an unsigned integer
or an array of unsigned integers of 4, 16 or 6 bytes may be an IPv4 address, an IPv6 address or a MAC address,
stored in network byte order as map keys are (format ipv4/ipv6/mac); a byte array also takes a hex string.
Importable without ansible.
"""

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf_values as bv
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf_globals
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_spec import SpecError

_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
              "0": False}
_ADDRESS = {4: "an IPv4 address", 16: "an IPv6 address", 6: "a MAC address"}


class Plan(object):
    """`values`: {name: normalised value} (the record and the diff); `writes`: {section: [(offset, bytes)]}."""

    def __init__(self, objs, values, writes):
        self.objs = objs
        self.values = values
        self.writes = writes


def _listing(objs):
    if not objs.variables:
        return "it has none"
    return "it has: " + ", ".join("%s (%s, %s)" % (v["name"], v["type"], v["section"])
                                  for v in sorted(objs.variables.values(), key=lambda v: v["name"]))


def plan(path, given, data):
    """The checked plan for `given` ({name: value}) against the object at `path` (its bytes `data`); SpecError
    naming the name."""
    if not isinstance(given, dict):
        raise SpecError("globals must be a dict of {variable name: value}, got %r" % (given,))
    try:
        objs = elf_globals.ObjectGlobals(data, path)
    except elf_globals.ElfError as e:
        raise SpecError("globals: cannot read the global variables of %s: %s" % (path, e))
    if objs.btf is None:
        raise SpecError("globals: object %s has no BTF (.BTF section), so its variables have no types: build it "
                        "with clang -g" % path)
    unknown = sorted(n for n in given if n not in objs.variables)
    if unknown:
        raise SpecError("globals: object %s has no global variable %s (%s): nothing changed"
                        % (path, ", ".join(repr(n) for n in unknown), _listing(objs)))
    values, writes = {}, {}
    for name in sorted(given):
        var = objs.variables[name]
        what = "globals.%s (%s in %s)" % (name, var["type"], var["section"])
        try:
            data, shown = encode(objs.btf, var["type_id"], given[name], what)
        except bv.CodecError as e:
            raise SpecError("%s: nothing changed" % e)
        if len(data) != var["size"]:
            raise SpecError("%s: the type is %d byte(s), the section holds %d" % (what, len(data), var["size"]))
        values[name] = shown
        writes.setdefault(var["section"], []).append((var["offset"], data))
    return Plan(objs, values, writes)


def load_into(obj, the_plan):
    """Before load: each section's contents (libbpf's initial value, or the ELF section's bytes where this
    libbpf cannot tell) with the planned values written in, set on its map (libbpf.BpfObject)."""
    for section in sorted(the_plan.writes):
        elf = the_plan.objs.sections[section]
        base = obj.initial_value(section)
        if base is None:
            base = elf
        if len(base) != len(elf):
            raise SpecError("globals: libbpf's %s map is %d bytes, the object's section %d: refusing it"
                            % (section, len(base), len(elf)))
        buf = bytearray(base)
        for offset, data in the_plan.writes[section]:
            buf[offset:offset + len(data)] = data
        obj.set_initial_value(section, bytes(buf))


def uses_global_data(map_defs):
    """Whether an object (libbpf's map definitions) has data sections' maps: they need global data support."""
    return any(d["name"].endswith(elf_globals.SECTIONS) for d in map_defs)


# ---- one value ----------------------------------------------------------------------------------------------
def encode(btf, type_id, value, what):
    """(bytes, normalised value) of `value` for BTF type `type_id`; CodecError when it does not fit."""
    rid = btf.resolve(type_id)
    t = btf.types[rid]
    kind = t["kind"]
    codec = bv.BtfCodec(btf, type_id)
    size = codec.size
    if kind == "int" and t.get("bool"):
        flag = _bool(value, what)
        return codec.encode(int(flag), what), flag
    if isinstance(value, str) and _takes_address(btf, t, size):
        data = _address(value.strip(), size)
        if data is not None:
            return data, _address_text(data)
    byte_array = kind == "array" and btf.size_of(t["type"]) == 1 and _unsigned_int(btf, t["type"])
    if isinstance(value, str) and byte_array:
        hint = " (%s or hex)" % _ADDRESS[size] if size in _ADDRESS else " (hex)"
        data = bv.encode_hex(value, size, what + hint)
        return data, data.hex()
    try:
        data = codec.encode(value, what)
    except bv.CodecError as e:
        if isinstance(value, str) and _takes_address(btf, t, size) and kind == "int":
            raise bv.CodecError("%s (nor %s)" % (e, _ADDRESS[size]))
        raise
    shown = data.hex() if byte_array else codec.decode(data)  # bytes (a list of them too) shown as hex
    if kind == "int" and not isinstance(value, (list, dict)):
        number = _number(value)
        if number is not None and number != shown:
            bits = size * 8
            span = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.get("signed") else (0, (1 << bits) - 1)
            raise bv.CodecError("%s: %d does not fit (%d..%d)" % (what, number, span[0], span[1]))
    if kind in ("enum", "enum64"):
        names = [n for n, v in t["values"] if v == shown or v == shown - (1 << (size * 8))]
        if names:
            shown = names[0]
    return data, shown


def _bool(value, what):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    raise bv.CodecError("%s: %r is not a bool (true or false)" % (what, value))


def _number(value):
    try:
        return bv.parse_int(value, "")
    except bv.CodecError:
        return None  # a one-character string for a char, say: encoded, but not as a number


def _unsigned_int(btf, type_id):
    t = btf.types[btf.resolve(type_id)]
    return t["kind"] == "int" and not t.get("signed") and not t.get("bool") and t["name"] != "char"


def _takes_address(btf, t, size):
    """An address fits an unsigned integer or an array of unsigned integers (not char) of its size."""
    if size not in _ADDRESS:
        return False
    if t["kind"] == "int":
        return _unsigned_int(btf, t["id"])
    return t["kind"] == "array" and _unsigned_int(btf, t["type"])


_ADDRESS_CODECS = {4: (bv.encode_ipv4, bv.decode_ipv4), 16: (bv.encode_ipv6, bv.decode_ipv6),
                   6: (bv.encode_mac, bv.decode_mac)}


def _address(text, size):
    """Network-order bytes of an address of `size` bytes written as text, or None when it is not one."""
    try:
        return _ADDRESS_CODECS[size][0](text, size)
    except bv.CodecError:
        return None


def _address_text(data):
    return _ADDRESS_CODECS[len(data)][1](data)
