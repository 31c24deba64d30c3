# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LINUX_VERSION_CODE of the running kernel: what a kprobe program had to carry before 5.0.

Before 5.0 the kernel loads a kprobe (and uprobe) program only when its kern_version equals the LINUX_VERSION_CODE
the kernel was built with. The release uname reports does not always give it: 4.19.y and 4.14.y stable trees
freeze the sublevel at 255 in LINUX_VERSION_CODE (4.19.222 is 0x413ff, not 0x413de), distributions name releases
their own way (Debian's 4.19.0-21 is a 4.19.2xx). The kernel itself says it: every vDSO carries an ELF note
"Linux" of type 0 whose descriptor is LINUX_VERSION_CODE. One job: read that note from this process' vDSO (its
range in /proc/self/maps, its bytes through ctypes; _kernel/elf.py reads the ELF). Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import elf

SHT_NOTE = 7
MAX_VDSO = 1 << 20


def _vdso_range(maps="/proc/self/maps"):
    with open(maps) as f:
        for line in f:
            if line.rstrip().endswith("[vdso]"):
                start, end = line.split()[0].split("-")
                return int(start, 16), int(end, 16)
    return None


def notes(data, order="<"):
    """[(name, type, descriptor bytes)] of an SHT_NOTE section's bytes (4-byte aligned name and descriptor)."""
    out, off = [], 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(order + "III", data, off)
        off += 12
        name_end, desc = off + namesz, off + ((namesz + 3) & ~3)
        if desc + descsz > len(data):
            break
        out.append((data[off:name_end].rstrip(b"\0").decode("ascii", "replace"), ntype, data[desc:desc + descsz]))
        off = desc + ((descsz + 3) & ~3)
    return out


def from_vdso_bytes(data):
    """LINUX_VERSION_CODE from the bytes of a vDSO image, or None when it has no "Linux" note of type 0."""
    image = elf.ElfFile.from_bytes(data, "[vdso]")
    for section in image.sections():
        if section["type"] != SHT_NOTE:
            continue
        for name, ntype, desc in notes(image.section_bytes(section), image.order):
            if name == "Linux" and ntype == 0 and len(desc) >= 4:
                return struct.unpack_from(image.order + "I", desc)[0]
    return None


def linux_version_code():
    """The running kernel's LINUX_VERSION_CODE from this process' vDSO; None without a vDSO (or its note)."""
    where = _vdso_range()
    if not where or not 0 < where[1] - where[0] <= MAX_VDSO:
        return None
    try:
        return from_vdso_bytes(ctypes.string_at(where[0], where[1] - where[0]))
    except elf.ElfError:
        return None
