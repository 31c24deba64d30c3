"""version_code: LINUX_VERSION_CODE from the vDSO's "Linux" note (this process' vDSO, and crafted notes)."""
import os
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import version_code


def _pad(data):
    return data + b"\0" * (-len(data) % 4)


def note(name, ntype, desc):
    raw = name.encode() + b"\0"
    return struct.pack("<III", len(raw), len(desc), ntype) + _pad(raw) + _pad(desc)


def test_notes_are_read_in_order_with_their_padding():
    data = note("GNU", 3, b"\x01\x02\x03\x04\x05") + note("Linux", 0, struct.pack("<I", 0x413ff))
    assert version_code.notes(data) == [("GNU", 3, b"\x01\x02\x03\x04\x05"), ("Linux", 0, struct.pack("<I", 0x413ff))]


def test_a_truncated_note_ends_the_list():
    data = note("Linux", 0, struct.pack("<I", 1))
    assert version_code.notes(data[:-2]) == []
    assert version_code.notes(b"\0" * 5) == []


def test_this_kernels_code_matches_its_release():
    """The running kernel's note: major and minor as uname says (the sublevel may be frozen at 255)."""
    code = version_code.linux_version_code()
    assert code is not None, "no vDSO note found in /proc/self/maps' [vdso]"
    major, minor = [int(x) for x in os.uname().release.split(".")[:2]]
    assert (code >> 16, (code >> 8) & 0xff) == (major, minor)


def test_no_vdso_line_is_none(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/true\n")
    assert version_code._vdso_range(str(maps)) is None
