"""btf_values.py holds the encoders map keys and values and an object's globals share (their behaviour is tested
through map_codec in tests/unit/plugins/module_utils/_maps/test_map_codec.py): one copy, used by both."""
import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf_values as bv
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_codec as mc


@pytest.mark.parametrize("name", ["CodecError", "BtfCodec", "BYTEORDER", "encode_int", "encode_hex", "encode_ipv4",
                                  "encode_ipv6", "encode_mac", "encode_string", "decode_hex", "decode_mac",
                                  "decode_string"])
def test_map_codec_uses_the_one_copy(name):
    assert getattr(mc, name) is getattr(bv, name)


@pytest.mark.parametrize("given, want", [(42, 42), ("42", 42), (" 0x2a ", 42), (42.0, 42), ("-3", -3)])
def test_parse_int(given, want):
    assert bv.parse_int(given, "v") == want


@pytest.mark.parametrize("given, message", [(True, "expected an integer, got a boolean"), ("4x", "is not an integer"),
                                            (4.5, "is not an integer"), (None, "is not an integer")])
def test_parse_int_refuses(given, message):
    with pytest.raises(bv.CodecError, match=message):
        bv.parse_int(given, "v")
