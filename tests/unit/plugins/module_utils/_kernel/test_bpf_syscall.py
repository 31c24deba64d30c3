"""bpf_syscall's pure parts (the calls themselves: tests/integration/test_bpf_syscall.py on the real kernel)."""
import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs


@pytest.mark.parametrize("cpu_list, count", [
    ("0", 1), ("0-1", 2), ("0-3,8,10-11", 7), ("", 0), (None, 0), ("0-127\n", 128), ("1,3,5", 3),
])
def test_cpu_count(cpu_list, count):
    assert bs.cpu_count(cpu_list) == count


def test_possible_cpus_reads_the_kernel_list(tmp_path):
    path = tmp_path / "possible"
    path.write_text("0-3,6\n")
    assert bs.possible_cpus(str(path)) == 5


def test_btf_calls_ask_only_the_fields_the_kernel_knows(monkeypatch):
    """A 5.10 kernel knows a 16-byte bpf_btf_info and refuses (E2BIG) a longer one whose extra bytes are set (the
    name pointer): btf_data asks for the 16 bytes every kernel has, btf_info falls back to them."""
    import errno
    import struct as st
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
    asked = []

    def old_kernel(fd, size, fill=None):
        buf = bytearray(size)
        if fill:
            import ctypes
            cbuf = ctypes.create_string_buffer(size)
            fill(cbuf)
            buf = bytearray(cbuf.raw)
        asked.append(size)
        if size > 16 and any(buf[16:]):
            raise OSError(errno.E2BIG, "Argument list too long")
        st.pack_into("=II", buf, 8, 0, 7)  # btf_size 0, id 7
        return bytes(buf)
    monkeypatch.setattr(bs, "_info", old_kernel)
    assert bs.btf_data(3) == b""
    assert asked == [16, 16]
    assert bs.btf_info(3) == {"id": 7, "size": 0, "name": "", "kernel_btf": False}
