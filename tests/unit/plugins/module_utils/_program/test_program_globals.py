"""program_globals.py: `globals` checked, normalised and laid out against an object compiled here (its BTF), and
the sections handed to libbpf (a fake object: which section, which bytes)."""
import shutil
import struct
import subprocess

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_globals as pg
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_spec import SpecError
from tests.unit.fixtures import globals_object


def _plan(path, given):
    with open(path, "rb") as f:
        return pg.plan(path, given, f.read())


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return globals_object.build(tmp_path_factory)


@pytest.mark.parametrize("name, given, raw, shown", [
    ("drop_port", 53, struct.pack("<H", 53), 53),
    ("drop_port", "0x35", struct.pack("<H", 53), 53),
    ("drop_port", " 53 ", struct.pack("<H", 53), 53),
    ("drop_port", 65535, b"\xff\xff", 65535),
    ("addr4", "10.0.0.1", b"\x0a\x00\x00\x01", "10.0.0.1"),          # network byte order, as ipv4 map keys
    ("addr4", 167772161, struct.pack("=I", 167772161), 167772161),   # a number stays a host-order number
    ("addr6", "2001:DB8::1", bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
    ("addr6", "0a" * 16, b"\x0a" * 16, "0a" * 16),                    # a byte array also takes hex
    ("addr6", [1, 2], b"\x01\x02" + b"\0" * 14, "0102" + "00" * 14),
    ("mac", "AA-BB-CC-DD-EE-FF", bytes.fromhex("aabbccddeeff"), "aa:bb:cc:dd:ee:ff"),
    ("verbose", False, b"\0", False),
    ("verbose", "yes", b"\x01", True),
    ("verbose", 0, b"\0", False),
    ("mode", "MODE_LOG", struct.pack("<I", 7), "MODE_LOG"),
    ("mode", 7, struct.pack("<I", 7), "MODE_LOG"),                     # a number that names a value: its name
    ("mode", 3, struct.pack("<I", 3), 3),
    ("label", "abc", b"abc" + b"\0" * 5, "abc"),
    ("delta", -7, struct.pack("<i", -7), -7),
    ("cfg", {"b": 4}, struct.pack("<IHxx", 0, 4), {"a": 0, "b": 4}),
    ("hits", 2 ** 64 - 1, b"\xff" * 8, 2 ** 64 - 1),
    ("big", [3], struct.pack("<QQ", 3, 0), [3, 0]),
])
def test_values_are_typed_by_btf_and_normalised(path, name, given, raw, shown):
    plan = _plan(path, {name: given})
    section, offset = globals_object.LAYOUT[name][:2]
    assert plan.values == {name: shown}
    assert plan.writes == {section: [(offset, raw)]}


def test_the_normalised_value_plans_the_same_bytes(path):
    given = {"drop_port": "0x35", "addr4": "10.0.0.1", "mac": "AA-BB-CC-DD-EE-FF", "mode": 7, "verbose": "on",
             "addr6": [1, 2], "cfg": {"a": 1}, "label": "x"}
    first = _plan(path, given)
    again = _plan(path, first.values)
    assert again.values == first.values and again.writes == first.writes


@pytest.mark.parametrize("given, words", [
    ({"nope": 1}, ["no global variable 'nope'", "drop_port (const volatile __u16, .rodata)", "nothing changed"]),
    ({"drop_port": 70000}, ["globals.drop_port (const volatile __u16 in .rodata)", "70000 does not fit"]),
    ({"drop_port": -1}, ["-1 does not fit (0..65535)"]),
    ({"drop_port": "http"}, ["'http' is not an integer"]),
    ({"drop_port": True}, ["expected an integer, got a boolean"]),
    ({"delta": 2 ** 31}, ["does not fit"]),
    ({"addr4": "10.0.0.300"}, ["not an integer (nor an IPv4 address)"]),
    ({"addr6": "2001:db8::1::2"}, ["(an IPv6 address or hex)", "not a hex string"]),
    ({"mac": "aa:bb:cc"}, ["(a MAC address or hex)"]),
    ({"verbose": 2}, ["2 is not a bool"]),
    ({"mode": "MODE_X"}, ["'MODE_X' is not one of MODE_OFF, MODE_ON, MODE_LOG"]),
    ({"label": "much too long"}, ["is 13 byte(s)"]),
    ({"cfg": {"c": 1}}, ["unknown field(s) c"]),
    ({"cfg": 3}, ["expected a dict with fields a, b"]),
    ({"big": [1, 2, 3]}, ["3 item(s) given, the array holds 2"]),
])
def test_bad_input_is_refused_naming_the_variable(path, given, words):
    with pytest.raises(SpecError) as e:
        _plan(path, given)
    for word in words:
        assert word in str(e.value)


def test_not_a_dict(path):
    with pytest.raises(SpecError, match="globals must be a dict"):
        _plan(path, ["drop_port", 9])


def test_an_object_without_btf(tmp_path):
    src = ('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\nconst volatile int x = 1;\n'
           'SEC("xdp") int p(struct xdp_md *c) { return x; }\nchar LICENSE[] SEC("license") = "GPL";\n')
    built = globals_object.compile_object(tmp_path, src, "nobtf.bpf.o")
    strip = shutil.which("llvm-strip") or shutil.which("llvm-objcopy")
    if strip is None:
        pytest.skip("no llvm-strip on this machine to remove .BTF")
    subprocess.check_call([strip, "--remove-section=.BTF", "--remove-section=.BTF.ext", built])
    with pytest.raises(SpecError, match="has no BTF"):
        _plan(built, {"x": 2})


class FakeObject(object):
    """libbpf.BpfObject's two calls: initial_value (None: a libbpf without bpf_map__initial_value)."""

    def __init__(self, initial):
        self.initial = initial
        self.set = {}

    def initial_value(self, section):
        return self.initial.get(section)

    def set_initial_value(self, section, data):
        self.set[section] = data


def test_load_into_writes_whole_sections(path):
    plan = _plan(path, {"drop_port": 10, "misses": 1})
    fake = FakeObject({})
    pg.load_into(fake, plan)
    assert sorted(fake.set) == [".bss", ".rodata"]
    elf = plan.objs.sections[".rodata"]
    assert fake.set[".rodata"] == struct.pack("<H", 10) + elf[2:]          # the compiled bytes, one value new
    assert fake.set[".bss"] == struct.pack("<I", 1) + b"\0" * 20


def test_load_into_starts_from_libbpf_initial_value(path):
    plan = _plan(path, {"hits": 1})
    fake = FakeObject({".data": b"\xee" * 8 + b""})
    pg.load_into(fake, plan)
    assert fake.set == {".data": struct.pack("<Q", 1)}
    fake = FakeObject({".data": b"\xee" * 4})
    with pytest.raises(SpecError, match="libbpf's .data map is 4 bytes, the object's section 8"):
        pg.load_into(fake, plan)


def test_uses_global_data():
    assert pg.uses_global_data([{"name": "xdp_port.rodata"}, {"name": "verdicts"}])
    assert pg.uses_global_data([{"name": "g.bss"}])
    assert not pg.uses_global_data([{"name": "verdicts"}, {"name": "xdp_stats"}])
