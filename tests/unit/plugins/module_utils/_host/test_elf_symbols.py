"""elf_symbols: a function symbol of a binary this test builds with clang becomes the file offset the uprobe PMU
wants (checked against readelf's symbol value and program headers), for PIE and non-PIE executables, a shared
library, a stripped binary (.dynsym only), a 32-bit one and a big-endian one written here byte by byte; unknown,
imported, data and doubly defined symbols and malformed files are ElfErrors naming the binary; a binary another
user could have planted or can change is refused before it is read (host_paths.open_trusted_file)."""
import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import elf_symbols

needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="probe: no clang to build test binaries")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="probe: euid is not 0 (chown to another uid needs root)")

SOURCE = r"""
int hm_data = 5;
__attribute__((noinline)) int hm_tick(int x) { __asm__ volatile("" ::: "memory"); return x + 1; }
static __attribute__((noinline, used)) int hm_local(int x) { return x * 2; }
int main(int argc, char **argv) { (void)argv; return hm_tick(argc) + hm_local(argc) + hm_data; }
"""
OTHER = r"""
static __attribute__((noinline, used)) int hm_local(int x) { return x * 3; }
int hm_other(int x) { return hm_local(x); }
"""


def build(tmp_path, name, *flags, **sources):
    """clang -O0 <flags> of the given sources (name -> text) into tmp_path/bin/<name>, mode 0755."""
    src_dir = tmp_path / "src"
    src_dir.mkdir(exist_ok=True)
    files = []
    for base, text in sorted((sources or {"main": SOURCE}).items()):
        path = src_dir / (base + ".c")
        path.write_text(text)
        files.append(str(path))
    out_dir = tmp_path / "bin"
    out_dir.mkdir(mode=0o755, exist_ok=True)
    out = str(out_dir / name)
    subprocess.check_call(["clang", "-O0", "-o", out] + list(flags) + files)
    os.chmod(out, 0o755)
    return out


def readelf_offset(path, symbol):
    """What readelf says: the symbol's value, moved into the file by the executable LOAD segment holding it."""
    syms = subprocess.check_output(["readelf", "-sW", path], text=True)
    values = set(int(line.split()[1], 16) for line in syms.splitlines()
                 if len(line.split()) >= 8 and line.split()[7].split("@")[0] == symbol and line.split()[3] == "FUNC")
    assert len(values) == 1, (symbol, values)
    value = values.pop()
    for line in subprocess.check_output(["readelf", "-lW", path], text=True).splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in f[6:-1]:
            offset, vaddr, filesz = int(f[1], 16), int(f[2], 16), int(f[4], 16)
            if vaddr <= value < vaddr + filesz:
                return value - vaddr + offset
    raise AssertionError("readelf: %s in no executable LOAD segment" % symbol)


@needs_clang
@pytest.mark.parametrize("kind, flags", [("pie", ["-fPIE", "-pie"]), ("no-pie", ["-no-pie"]),
                                         ("shared", ["-fPIC", "-shared"])])
def test_function_offsets_are_readelfs(tmp_path, kind, flags):
    path = build(tmp_path, kind, *flags)
    for symbol in ("hm_tick", "hm_local", "main"):
        assert elf_symbols.function_offset(path, symbol) == readelf_offset(path, symbol)


@needs_clang
def test_a_non_pie_executable_moves_the_address_into_the_file(tmp_path):
    path = build(tmp_path, "no-pie", "-no-pie")
    offset = elf_symbols.function_offset(path, "hm_tick")
    assert offset < 0x400000 and offset == readelf_offset(path, "hm_tick")  # linked at 0x400000 and above
    with open(path, "rb") as f:
        f.seek(offset)
        code = f.read(4)
    assert code[:1] in (b"\x55", b"\xf3", b"\x48")  # push %rbp / endbr64 / rex.w: the function's first bytes


@needs_clang
def test_a_stripped_binary_keeps_its_exported_functions(tmp_path):
    full = build(tmp_path, "full", "-rdynamic")
    stripped = str(tmp_path / "bin" / "stripped")
    subprocess.check_call(["strip", "-o", stripped, full])
    assert elf_symbols.function_offset(stripped, "hm_tick") == elf_symbols.function_offset(full, "hm_tick")
    with pytest.raises(elf_symbols.ElfError, match="has no function symbol hm_local"):
        elf_symbols.function_offset(stripped, "hm_local")  # static: only in the .symtab strip removed


@needs_clang
def test_a_32_bit_binary(tmp_path):
    src = "int hm_tick(int x) { return x + 1; }\nvoid _start(void) { for (;;) hm_tick(0); }\n"
    try:
        path = build(tmp_path, "x32", "-m32", "-nostdlib", "-static", main=src)
    except subprocess.CalledProcessError:
        pytest.skip("probe: clang cannot link a 32-bit binary here")
    assert elf_symbols.function_offset(path, "hm_tick") == readelf_offset(path, "hm_tick")


def big_endian_elf(path, symbols, vaddr=0x10000000, offset=0x1000):
    """A minimal ELF64 big-endian executable: one executable PT_LOAD (file offset `offset` at `vaddr`), a
    .symtab of STT_FUNC symbols {name: address} and its .strtab."""
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in symbols)
    syms = [struct.pack(">IBBHQQ", 0, 0, 0, 0, 0, 0)]
    pos = 1
    for name, addr in symbols.items():
        syms.append(struct.pack(">IBBHQQ", pos, (1 << 4) | 2, 0, 1, addr, 8))  # GLOBAL FUNC in section 1
        pos += len(name) + 1
    symtab = b"".join(syms)
    code = b"\0" * 0x100
    sym_off = offset + len(code)
    str_off = sym_off + len(symtab)
    sh_off = (str_off + len(strtab) + 7) & ~7
    ehdr = b"\x7fELF" + bytes([2, 2, 1, 0]) + b"\0" * 8
    ehdr += struct.pack(">HHIQQQIHHHHHH", 2, 21, 1, vaddr, 64, sh_off, 0, 64, 56, 1, 64, 4, 0)
    phdr = struct.pack(">IIQQQQQQ", 1, 5, offset, vaddr, vaddr, len(code), len(code), 0x1000)
    shdrs = [b"\0" * 64,
             struct.pack(">IIQQQQIIQQ", 0, 1, 6, vaddr, offset, len(code), 0, 0, 16, 0),  # .text
             struct.pack(">IIQQQQIIQQ", 0, 2, 0, 0, sym_off, len(symtab), 3, 1, 8, 24),  # .symtab -> 3
             struct.pack(">IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0)]  # .strtab
    data = bytearray(ehdr + phdr)
    data += b"\0" * (offset - len(data)) + code + symtab + strtab
    data += b"\0" * (sh_off - len(data)) + b"".join(shdrs)
    with open(path, "wb") as f:
        f.write(bytes(data))
    os.chmod(path, 0o755)
    return path


def test_a_big_endian_binary(tmp_path):
    path = big_endian_elf(str(tmp_path / "be"), {"hm_tick": 0x10000040, "hm_far": 0x20000000})
    assert elf_symbols.function_offset(path, "hm_tick") == 0x1040
    with pytest.raises(elf_symbols.ElfError, match="hm_far of binary .* lies in no executable segment"):
        elf_symbols.function_offset(path, "hm_far")
    assert elf_symbols.check_offset(path, 0x1040) == 0x1040


@needs_clang
def test_unknown_imported_and_data_symbols_name_the_binary(tmp_path):
    path = build(tmp_path, "prog")
    with pytest.raises(elf_symbols.ElfError) as e:
        elf_symbols.function_offset(path, "hm_no_such_function")
    assert str(e.value) == "binary %s has no function symbol hm_no_such_function (looked in .symtab and " \
                           ".dynsym)" % path
    with pytest.raises(elf_symbols.ElfError, match="only imports function __libc_start_main .*shared library"):
        elf_symbols.function_offset(path, "__libc_start_main")
    with pytest.raises(elf_symbols.ElfError, match=r"symbol hm_data of binary .* is not a function \(STT_OBJECT\)"):
        elf_symbols.function_offset(path, "hm_data")


@needs_clang
def test_a_function_defined_twice_is_ambiguous(tmp_path):
    path = build(tmp_path, "twice", main=SOURCE, other=OTHER)
    with pytest.raises(elf_symbols.ElfError, match="defines function hm_local 2 times .*attach.uprobe.offset"):
        elf_symbols.function_offset(path, "hm_local")
    assert elf_symbols.function_offset(path, "hm_other") == readelf_offset(path, "hm_other")


@needs_clang
def test_check_offset_wants_an_executable_segment(tmp_path):
    path = build(tmp_path, "prog")
    offset = elf_symbols.function_offset(path, "hm_tick")
    assert elf_symbols.check_offset(path, offset) == offset
    for bad in (0, 1 << 40):  # the ELF header (not executable); beyond the file
        with pytest.raises(elf_symbols.ElfError, match="offset 0x%x is not in an executable segment of binary %s"
                           % (bad, path)):
            elf_symbols.check_offset(path, bad)


@needs_clang
def test_files_that_are_no_binaries(tmp_path):
    d = tmp_path / "bin"
    d.mkdir(mode=0o755)
    text = d / "text"
    text.write_text("#!/bin/sh\n")
    with pytest.raises(elf_symbols.ElfError, match="%s is not an ELF file" % text):
        elf_symbols.function_offset(str(text), "hm_tick")
    obj = str(d / "x.o")
    (tmp_path / "x.c").write_text(SOURCE)
    subprocess.check_call(["clang", "-c", "-o", obj, str(tmp_path / "x.c")])
    with pytest.raises(elf_symbols.ElfError, match="is not an executable or shared library \\(ELF type 1\\)"):
        elf_symbols.function_offset(obj, "hm_tick")
    full = build(tmp_path, "full")
    cut = d / "cut"
    with open(full, "rb") as f:
        cut.write_bytes(f.read(200))
    with pytest.raises(elf_symbols.ElfError, match="%s is truncated or malformed" % cut):
        elf_symbols.function_offset(str(cut), "hm_tick")
    with pytest.raises(elf_symbols.ElfError, match="binary %s cannot be opened" % (d / "missing")):
        elf_symbols.function_offset(str(d / "missing"), "hm_tick")


# ---- who could have planted or can change the binary: refused before it is read ---------------------------

@needs_clang
@pytest.mark.parametrize("mode, problem", [(0o775, "is writable by group or others (mode 0775)"),
                                           (0o757, "is writable by group or others (mode 0757)")])
def test_a_binary_others_can_write_is_refused(tmp_path, mode, problem):
    path = build(tmp_path, "prog")
    os.chmod(path, mode)
    with pytest.raises(host_paths.UnsafePath) as e:
        elf_symbols.function_offset(path, "hm_tick")
    assert str(e.value).startswith("%s %s: refusing to use it" % (path, problem))


@needs_clang
def test_a_directory_others_can_write_is_refused(tmp_path):
    path = build(tmp_path, "prog")
    os.chmod(os.path.dirname(path), 0o777)
    with pytest.raises(host_paths.UnsafePath, match="bin is writable by group or others"):
        elf_symbols.function_offset(path, "hm_tick")
    os.chmod(os.path.dirname(path), 0o1777)  # sticky or not: others could have planted the binary's name
    with pytest.raises(host_paths.UnsafePath, match="bin is writable by group or others"):
        elf_symbols.function_offset(path, "hm_tick")


@needs_clang
def test_links_are_refused(tmp_path):
    path = build(tmp_path, "prog")
    os.symlink(path, str(tmp_path / "bin" / "link"))
    with pytest.raises(host_paths.UnsafePath, match="link is a symbolic link"):
        elf_symbols.function_offset(str(tmp_path / "bin" / "link"), "hm_tick")
    os.symlink(str(tmp_path / "bin"), str(tmp_path / "dirlink"))
    with pytest.raises(host_paths.UnsafePath, match="dirlink is a symbolic link"):
        elf_symbols.function_offset(str(tmp_path / "dirlink" / "prog"), "hm_tick")


@pytest.mark.parametrize("path", ["relative/prog", "/usr/../usr/bin/true", ""])
def test_a_path_must_be_absolute_without_dotdot(path):
    with pytest.raises(host_paths.UnsafePath, match="is not an absolute path without '..'"):
        host_paths.open_trusted_file(path)


def test_a_fifo_is_not_a_regular_file(tmp_path):
    d = tmp_path / "bin"
    d.mkdir(mode=0o755)
    os.mkfifo(str(d / "fifo"), 0o644)
    with pytest.raises(host_paths.UnsafePath, match="fifo is not a regular file"):
        host_paths.open_trusted_file(str(d / "fifo"))


@root_only
@needs_clang
def test_another_users_binary_is_refused(tmp_path):
    path = build(tmp_path, "prog")
    os.chown(path, 65534, 65534)
    with pytest.raises(host_paths.UnsafePath, match="prog is owned by uid 65534, not by uid 0"):
        elf_symbols.function_offset(path, "hm_tick")


@needs_clang
def test_open_trusted_file_checks_the_open_descriptor(tmp_path, monkeypatch):
    """A file swapped between the lstat and the open (not possible in a chain no one else can write, but the
    check is on the descriptor anyway) is refused: the open descriptor is not the file that was checked."""
    path = build(tmp_path, "prog")
    other = build(tmp_path, "other")
    real_open = os.open

    def swapping_open(p, flags, *args, **kwargs):
        if p == path:
            os.rename(other, path)
        return real_open(p, flags, *args, **kwargs)
    monkeypatch.setattr(host_paths.os, "open", swapping_open)
    with pytest.raises(host_paths.UnsafePath, match="prog changed while it was checked"):
        host_paths.open_trusted_file(path)
    monkeypatch.undo()
    fd = host_paths.open_trusted_file(path)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(path))
    finally:
        os.close(fd)
