"""An object given a kern_version (what the loader does before 5.0) loads on this kernel as the file does.

libbpf.BpfObject hands libbpf the object from memory with a "version" section (elf_kversion.py): the kernel loads
the program (kernels from 5.0 do not check the code), and the kernel objects are the file's: the same program,
the same maps under the same names (libbpf names an object's .data/.rodata maps after the object), the same
initial values of its globals. Nothing is left loaded.
"""
import os

import pytest

from tests.conftest import needs_root
from tests.integration.test_ebpf_program_common import PREFIX, kernel_ids, leaked, private_object

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libbpf

pytestmark = needs_root

OBJECTS = [("tp_openat", "count_openat", "openat_count"), ("xdp_port_drop", "xdp_port_drop", "port_verdicts")]


def _loaded(path, prog, **kw):
    """(program info, {map name: (type, key size, value size, max entries, bytes of key 0)}) as the kernel has
    them, the object closed again."""
    with libbpf.BpfObject(path, **kw) as obj:
        obj.select(prog)
        obj.load()
        info = bs.prog_info(obj.program_fd(prog))
        maps = {}
        for m in obj.maps():
            mi = bs.map_info(m["fd"])
            first = bs.map_lookup(m["fd"], b"\0" * mi["key_size"], mi["value_size"]) if mi["type"] == 2 else None
            maps[mi["name"]] = (mi["type"], mi["key_size"], mi["value_size"], mi["max_entries"], first)
        return info, maps, obj.kern_version()


@pytest.mark.parametrize("src,prog,cmap", OBJECTS)
def test_an_object_given_a_kern_version_loads_as_the_file_does(src, prog, cmap):
    path = private_object(src, [prog, cmap])
    before = kernel_ids()
    plain, plain_maps, _code = _loaded(path, PREFIX + prog)
    given, given_maps, code = _loaded(path, PREFIX + prog, kern_version=0x413ff)
    assert code == 0x413ff
    assert (given["type"], given["name"], given["tag"]) == (plain["type"], plain["name"], plain["tag"])
    assert given_maps == plain_maps and (PREFIX + cmap)[:15] in given_maps
    if src == "xdp_port_drop":
        assert any(name.endswith(".rodata") for name in given_maps), given_maps
    assert not any(leaked(before, [PREFIX + prog], [PREFIX + cmap]).values())
    assert os.path.exists(path)
