"""perf: tracepoint ids from tracefs, the perf_event_attr we pass (kprobes, uprobes), and how each failure becomes
a PerfError (an OSError with the errno and a message that says what to do). The opens are real perf_event_open
calls (root, fast); each closes its fd."""
import errno
import os
import struct

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf

TP = "syscalls/sys_enter_openat"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="probe: euid is not 0 (perf_event_open on a tracepoint)")


def _tracefs_or_skip():
    base = perf.tracefs_dir()
    if base is None or not os.path.exists(os.path.join(base, "events", TP, "id")):
        pytest.skip("probe: tracefs with %s is not mounted here" % TP)
    return base


@pytest.mark.parametrize("bad", ["openat", "a/b/c", "../x", "syscalls/../../x", ""])
def test_a_tracepoint_that_is_not_category_slash_name_is_einval(bad):
    with pytest.raises(perf.PerfError) as e:
        perf.tracepoint_id(bad)
    assert e.value.errno == errno.EINVAL and "category/name" in str(e.value)
    assert isinstance(e.value, OSError)  # program_runner.errors() maps OSError to a clear refusal


def test_tracefs_dir_is_the_first_with_events(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    (second / "events").mkdir(parents=True)
    monkeypatch.setattr(perf, "TRACEFS_DIRS", (str(first), str(second)))
    assert perf.tracefs_dir() == str(second)
    (first / "events").mkdir(parents=True)
    assert perf.tracefs_dir() == str(first)


def test_no_tracefs_says_how_to_mount_it(tmp_path, monkeypatch):
    monkeypatch.setattr(perf, "TRACEFS_DIRS", (str(tmp_path / "none"),))
    assert perf.tracefs_dir() is None
    with pytest.raises(perf.PerfError) as e:
        perf.tracepoint_id(TP)
    assert e.value.errno == errno.ENOENT and "mount -t tracefs" in str(e.value)


def test_the_id_is_read_from_tracefs(tmp_path, monkeypatch):
    (tmp_path / "events" / "cat" / "tp").mkdir(parents=True)
    (tmp_path / "events" / "cat" / "tp" / "id").write_text("1234\n")
    monkeypatch.setattr(perf, "TRACEFS_DIRS", (str(tmp_path),))
    assert perf.tracepoint_id("cat/tp") == 1234
    with pytest.raises(perf.PerfError) as e:
        perf.tracepoint_id("cat/other")
    assert e.value.errno == errno.ENOENT and "cat/other does not exist on this kernel" in str(e.value)


def test_the_real_tracepoint_id():
    base = _tracefs_or_skip()
    with open(os.path.join(base, "events", TP, "id")) as f:
        assert perf.tracepoint_id(TP) == int(f.read())


def test_the_attr_is_perf_attr_size_ver1():
    attr = perf._attr(perf.PERF_TYPE_TRACEPOINT, 77, 5, 6)
    assert len(attr) == perf._ATTR_SIZE == 72
    ptype, size, config, period = struct.unpack_from("=IIQQ", attr)
    assert (ptype, size, config, period) == (perf.PERF_TYPE_TRACEPOINT, 72, 77, 1)
    assert struct.unpack_from("=QQ", attr, 56) == (5, 6)  # config1, config2: the kprobe's name and offset


@root_only
def test_open_tracepoint_is_a_perf_event_fd():
    _tracefs_or_skip()
    fd = perf.open_tracepoint(TP)
    try:
        assert os.readlink("/proc/self/fd/%d" % fd) == "anon_inode:[perf_event]"
    finally:
        os.close(fd)


@root_only
def test_the_kernel_refusal_is_a_perf_error_with_its_errno():
    """A tracepoint id the kernel does not know: perf_event_open refuses (ENOENT or EINVAL), said as such."""
    with pytest.raises(perf.PerfError) as e:
        perf._perf_event_open(perf._attr(perf.PERF_TYPE_TRACEPOINT, 0xFFFFFFF0))
    assert e.value.errno in (errno.ENOENT, errno.EINVAL) and "perf_event_open failed" in str(e.value)


@root_only
def test_a_kprobe_on_a_missing_function_is_refused():
    if not os.path.exists(os.path.join(perf.KPROBE_PMU, "type")):
        pytest.skip("probe: no kprobe PMU (%s)" % perf.KPROBE_PMU)
    with pytest.raises(perf.PerfError) as e:
        perf.open_kprobe("hm_no_such_kernel_function_%d" % os.getpid())
    assert e.value.errno in (errno.ENOENT, errno.EINVAL)


def test_no_kprobe_pmu_says_the_kernel_has_no_kprobes(tmp_path, monkeypatch):
    monkeypatch.setattr(perf, "KPROBE_PMU", str(tmp_path / "kprobe"))
    with pytest.raises(perf.PerfError) as e:
        perf.open_kprobe("do_sys_openat2")
    assert e.value.errno == errno.ENOENT and "kernel without kprobes" in str(e.value)


def test_an_unknown_architecture_is_enosys(monkeypatch):
    monkeypatch.setattr(perf.platform, "machine", lambda: "pdp11")
    with pytest.raises(perf.PerfError) as e:
        perf._perf_event_open(perf._attr(perf.PERF_TYPE_TRACEPOINT, 1))
    assert e.value.errno == errno.ENOSYS and "pdp11" in str(e.value)


# ---- uprobes ---------------------------------------------------------------------------------------------------

def _fake_uprobe_pmu(tmp_path, monkeypatch, retprobe="config:0"):
    pmu = tmp_path / "uprobe"
    (pmu / "format").mkdir(parents=True)
    (pmu / "type").write_text("8\n")
    (pmu / "format" / "retprobe").write_text(retprobe + "\n")
    monkeypatch.setattr(perf.layout, "UPROBE_PMU", str(pmu))
    seen = []

    def fake_open(attr, pid=-1):
        ptype, _size, config = struct.unpack_from("=IIQ", attr)
        config1, config2 = struct.unpack_from("=QQ", attr, 56)
        import ctypes
        seen.append({"type": ptype, "config": config, "path": ctypes.string_at(config1), "offset": config2,
                     "pid": pid})
        return 99
    monkeypatch.setattr(perf, "_perf_event_open", fake_open)
    return seen


def test_a_uprobe_attr_names_the_path_and_offset(tmp_path, monkeypatch):
    seen = _fake_uprobe_pmu(tmp_path, monkeypatch, retprobe="config:3")
    assert perf.open_uprobe("/usr/bin/hm", 0x1150) == 99
    assert perf.open_uprobe("/usr/bin/hm", 0x20, retprobe=True, pid=1234) == 99
    assert seen == [{"type": 8, "config": 0, "path": b"/usr/bin/hm", "offset": 0x1150, "pid": -1},
                    {"type": 8, "config": 1 << 3, "path": b"/usr/bin/hm", "offset": 0x20, "pid": 1234}]


def test_no_uprobe_pmu_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(perf.layout, "UPROBE_PMU", str(tmp_path / "uprobe"))
    with pytest.raises(perf.PerfError) as e:
        perf.open_uprobe("/usr/bin/hm", 0x10)
    assert e.value.errno == errno.ENOENT and "kernel without CONFIG_UPROBE_EVENTS" in str(e.value)


def _uprobe_pmu_or_skip():
    if not os.path.exists(os.path.join(perf.layout.UPROBE_PMU, "type")):
        pytest.skip("probe: no uprobe PMU (%s)" % perf.layout.UPROBE_PMU)


@root_only
def test_a_real_uprobe_and_uretprobe_are_perf_event_fds():
    """At getpid of the libc this Python has mapped (the offset from elf_symbols); every fd closed again."""
    _uprobe_pmu_or_skip()
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import elf_symbols
    with open("/proc/self/maps") as f:
        libcs = [line.split()[-1] for line in f if "/libc.so" in line or "/libc-" in line]
    if not libcs:
        pytest.skip("probe: no libc mapped into this Python (/proc/self/maps)")
    libc_path = libcs[0]
    offset = elf_symbols.function_offset(libc_path, "getpid")
    for retprobe, pid in ((False, -1), (True, os.getpid())):
        fd = perf.open_uprobe(libc_path, offset, retprobe=retprobe, pid=pid)
        try:
            assert os.readlink("/proc/self/fd/%d" % fd) == "anon_inode:[perf_event]"
        finally:
            os.close(fd)


@root_only
def test_kernel_refusals_of_a_uprobe_say_what_was_asked():
    _uprobe_pmu_or_skip()
    exe = os.path.realpath("/proc/self/exe")
    with pytest.raises(perf.PerfError) as e:
        perf.open_uprobe("/nonexistent/hm-binary", 0x10)
    assert e.value.errno == errno.ENOENT and "uprobe at offset 0x10 of /nonexistent/hm-binary: no such file" \
        in str(e.value)
    with pytest.raises(perf.PerfError) as e:
        perf.open_uprobe(exe, 0x10, retprobe=True, pid=2 ** 22 + 1)  # above the kernel's PID_MAX_LIMIT
    assert e.value.errno == errno.ESRCH and "uretprobe at offset 0x10 of %s for pid %d: no such process" \
        % (exe, 2 ** 22 + 1) in str(e.value)
