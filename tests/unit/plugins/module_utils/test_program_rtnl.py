"""program_rtnl: attribute parsing and a real RTM_GETLINK of lo (needs no privilege)."""
import struct

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_rtnl as rt


def test_attrs_walk_aligned():
    data = rt._attr(3, b"lo\0") + rt._attr(43, rt._attr(4, struct.pack("=I", 42)) + rt._attr(2, b"\x02"))
    attrs = dict(rt._attrs(data, 0))
    assert attrs[3].rstrip(b"\0") == b"lo"
    inner = dict(rt._attrs(attrs[43], 0))
    assert struct.unpack("=I", inner[4])[0] == 42 and rt.XDP_MODES[inner[2][0]] == "generic"


def test_lo():
    lo = rt.link("lo")
    assert lo["ifindex"] == 1 and lo["xdp_prog_id"] == 0


@pytest.mark.parametrize("ifname,netns,message", [
    ("hm-nope0", None, "interface hm-nope0 not found in the current network namespace"),
    ("lo", "hm-no-such-netns", "network namespace hm-no-such-netns does not exist"),
    ("a/b", None, "invalid interface name"),
    ("x" * 16, None, "invalid interface name"),
])
def test_errors(ifname, netns, message):
    with pytest.raises(rt.RtnlError, match=message):
        rt.link(ifname, netns)
