"""probes.py logic against fake /proc and /sys trees and a fake bpf() layer.

The fake layer answers each bpf command the way a kernel would (an fd, or BpfError with an errno) and hands
out real fds (of /dev/null) so the tests can check that every probe closes everything it opened.
The real kernel is probed in tests/integration/test_ebpf_facts.py.
"""
import errno
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bpf
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host.requirements import FEATURES
from tests.unit.fixtures import fakehost

ROOT_CAPS = fakehost.STATUS_ROOT
NO_CAPS = fakehost.STATUS_NOBODY


class FakeKernel(object):
    """Per-command answers: None (success) or an errno. Records every call."""

    def __init__(self, monkeypatch, **errors):
        self.errors = errors
        self.calls = []
        self.fds = []
        for name in ("prog_load", "map_create", "link_create", "raw_tracepoint_open", "prog_query",
                     "enable_stats"):
            monkeypatch.setattr(bpf, name, self._make(name))

    def _make(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            err = self.errors.get(name)
            if callable(err):
                err = err(*args, **kwargs)
            if err:
                raise bpf.BpfError(err, name.upper())
            if name == "prog_query":
                return []
            fd = os.open(os.devnull, os.O_RDONLY)
            self.fds.append(fd)
            return fd
        return call

    def all_closed(self):
        for fd in self.fds:
            try:
                os.fstat(fd)
            except OSError:
                continue
            return False
        return True

    def called(self, name):
        return [c for c in self.calls if c[0] == name]


def run(tmp_path, tree, feature, overrides=None):
    host = probes._Host(fakehost.build(tmp_path, tree, overrides))
    return probes.run_probe(feature, host)


def test_every_feature_has_a_probe():
    assert sorted(probes.PROBES) == FEATURES


# Debian 11 cloud guest tree, root capabilities, a kernel that answers like 5.10 would for the newer features.
@pytest.mark.parametrize("feature", ["xdp", "tc", "tracepoint", "raw_tracepoint", "kprobe", "uprobe", "fentry",
                                     "cgroup", "bpf_link", "ringbuf", "btf", "bpf_stats", "global_data"])
def test_supported_on_debian11_and_fds_closed(tmp_path, monkeypatch, feature):
    kernel = FakeKernel(monkeypatch, link_create=errno.EBADF)
    result = run(tmp_path, fakehost.DEBIAN11, feature)
    assert result["supported"] is True and result["probed"] is True, result
    assert "message" not in result
    assert result["min_kernel"]
    assert kernel.all_closed()


def test_lsm_refused_when_bpf_not_active(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "lsm")
    reason = ("bpf is not in the active LSM list (lockdown,capability,yama,apparmor,tomoyo); "
              "boot with lsm=lockdown,capability,yama,apparmor,tomoyo,bpf")
    assert result == {
        "supported": False, "probed": True, "min_kernel": "5.7", "reason": reason,
        "message": "lsm programs are not supported on kernel 5.10.0-30-cloud-amd64: " + reason +
                   "; lsm needs kernel >= 5.7 with CONFIG_BPF_LSM, CONFIG_DEBUG_INFO_BTF and bpf in the active "
                   "LSM list (boot with lsm=...,bpf)"}
    assert kernel.calls == []  # decided before asking the kernel


def test_lsm_supported_when_bpf_active(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "lsm", {"sys/kernel/security/lsm": "lockdown,capability,bpf"})
    assert result["supported"] is True, result
    (_name, args, kwargs), = kernel.called("prog_load")
    assert args[0] == bpf.BPF_PROG_TYPE_LSM
    assert kwargs["expected_attach_type"] == bpf.BPF_LSM_MAC
    assert kwargs["attach_btf_id"] == 3  # bpf_lsm_file_open in the fixture BTF
    assert kernel.all_closed()


def test_lsm_without_config(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "lsm",
                 {"boot/config-5.10.0-30-cloud-amd64": "# CONFIG_BPF_LSM is not set\n"})
    assert not result["supported"] and "CONFIG_BPF_LSM" in result["reason"]


def test_lsm_list_unknown_is_not_probed(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.KERNEL_6_18_BARE, "lsm")
    assert result["probed"] is False and result["supported"] is False
    assert "active LSM list is unknown" in result["reason"]


def test_kprobe_refused_without_kprobes_in_config(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.KERNEL_6_18_BARE, "kprobe",
                 {"proc/config.gz": "CONFIG_BPF=y\n# CONFIG_KPROBES is not set\n"})
    assert result["supported"] is False and result["probed"] is True
    assert "built without kprobes (CONFIG_KPROBES is not set)" in result["reason"]
    assert kernel.calls == []


def test_kprobe_refused_when_tracefs_has_no_kprobe_events(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "kprobe", {"sys/bus/event_source/devices/kprobe/type": None,
                                                         "sys/kernel/tracing/kprobe_events": None})
    assert result["supported"] is False and "without kprobes" in result["reason"]


def test_kprobe_with_tracefs_kprobe_events_only(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "kprobe", {"sys/bus/event_source/devices/kprobe/type": None})
    assert result["supported"] is True and "kprobe_events" in result["reason"]
    (_name, _args, kwargs), = kernel.called("prog_load")
    assert kwargs["kern_version"] == (5 << 16) + (10 << 8)


def test_kprobe_cannot_look_without_tracefs_or_config(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.KERNEL_6_18_BARE, "kprobe")
    assert result["probed"] is False and "kprobe" in result["reason"]


def test_uprobe_on_this_kind_of_kernel_without_kprobes(tmp_path, monkeypatch):
    """6.18 without kprobes still has the uprobe PMU: a kprobe-type program loads (with the kernel version)."""
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.KERNEL_6_18_BARE, "uprobe", {"proc/self/status": ROOT_CAPS})
    assert result["supported"] is True and "uprobe perf PMU" in result["reason"], result
    (_name, args, kwargs), = kernel.called("prog_load")
    assert args[0] == bpf.BPF_PROG_TYPE_KPROBE and kwargs["kern_version"] == (6 << 16) + (18 << 8) + 44
    assert kernel.all_closed()


@pytest.mark.parametrize("overrides, reason", [
    ({"sys/bus/event_source/devices/uprobe/type": None},
     "no uprobe perf PMU at /sys/bus/event_source/devices/uprobe (CONFIG_UPROBE_EVENTS off, or a kernel before 4.17)"),
    ({"boot/config-5.10.0-30-cloud-amd64": "CONFIG_BPF=y\n# CONFIG_UPROBE_EVENTS is not set\n"},
     "the kernel was built without uprobe events (CONFIG_UPROBE_EVENTS is not set): no uprobe perf PMU"),
])
def test_uprobe_refused_without_the_pmu_or_config(tmp_path, monkeypatch, overrides, reason):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "uprobe", overrides)
    assert result["supported"] is False and result["probed"] is True and result["reason"] == reason, result
    assert result["message"].startswith("uprobe programs are not supported on kernel 5.10.0-30-cloud-amd64: ")
    assert result["message"].endswith("; uprobe needs kernel >= 4.17 built with CONFIG_UPROBE_EVENTS and "
                                      "CONFIG_BPF_EVENTS (the uprobe perf PMU, /sys/bus/event_source/devices/uprobe)")
    assert kernel.calls == []


def test_tracepoint_missing_from_tracefs(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "tracepoint",
                 {"sys/kernel/tracing/events/syscalls/sys_enter_openat/id": None,
                  "boot/config-5.10.0-30-cloud-amd64": "# CONFIG_FTRACE_SYSCALLS is not set\n"})
    assert result["supported"] is False
    assert "syscalls/sys_enter_openat" in result["reason"] and "CONFIG_FTRACE_SYSCALLS" in result["reason"]


def test_tracepoint_without_mounted_tracefs_is_not_probed_on_a_tree(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.KERNEL_6_18_BARE, "tracepoint")
    assert result["probed"] is False and "tracefs is not mounted" in result["reason"]


def test_unreadable_tracefs_is_not_probed(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)

    def denied(path, *args, **kwargs):
        if "/sys/kernel/tracing/" in str(path):
            raise OSError(errno.EACCES, "Permission denied", path)
        return real_stat(path, *args, **kwargs)
    real_stat = os.stat
    host = probes._Host(fakehost.build(tmp_path, fakehost.DEBIAN11))
    monkeypatch.setattr(probes.os, "stat", denied)
    result = probes.run_probe("tracepoint", host)
    assert result["probed"] is False and "cannot look into tracefs at /sys/kernel/tracing" in result["reason"]


def test_fentry_attaches_to_bpf_fentry_test1(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.KERNEL_6_18_BARE, "fentry")
    assert result["supported"] is True, result
    (_name, args, kwargs), = kernel.called("prog_load")
    assert args[0] == bpf.BPF_PROG_TYPE_TRACING and kwargs["expected_attach_type"] == bpf.BPF_TRACE_FENTRY
    assert kwargs["attach_btf_id"] == 2
    (_name, args, _kwargs), = kernel.called("raw_tracepoint_open")
    assert args[0] is None
    assert kernel.all_closed()


def test_fentry_without_btf(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.KERNEL_6_18_BARE, "fentry", {"sys/kernel/btf/vmlinux": None})
    assert result["supported"] is False and "CONFIG_DEBUG_INFO_BTF" in result["reason"]


def test_eperm_without_capabilities_is_not_probed(tmp_path, monkeypatch):
    FakeKernel(monkeypatch, prog_load=errno.EPERM)
    result = run(tmp_path, fakehost.DEBIAN11, "xdp", {"proc/self/status": NO_CAPS})
    assert result["supported"] is False and result["probed"] is False and result["min_kernel"] == "4.8"
    assert result["reason"] == "could not probe: needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN (EPERM)"
    assert result["message"].startswith("xdp programs are not supported on kernel 5.10.0-30-cloud-amd64: could not "
                                        "probe: needs CAP_BPF")


def test_eperm_with_capabilities_is_a_kernel_refusal(tmp_path, monkeypatch):
    FakeKernel(monkeypatch, prog_load=errno.EPERM)
    result = run(tmp_path, fakehost.DEBIAN11, "fentry", {"sys/kernel/security/lockdown": "none [integrity]\n"})
    assert result["probed"] is True and result["supported"] is False
    assert "EPERM although this process has CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN" in result["reason"]
    assert "lockdown mode: integrity" in result["reason"]


def test_einval_on_load_names_the_program_type(tmp_path, monkeypatch):
    FakeKernel(monkeypatch, prog_load=errno.EINVAL)
    result = run(tmp_path, fakehost.DEBIAN11, "raw_tracepoint")
    assert result["supported"] is False and result["probed"] is True
    assert "minimal raw_tracepoint program does not load: EINVAL" in result["reason"]


@pytest.mark.parametrize("err, supported, text", [
    (None, True, "succeeds"),
    (errno.EINVAL, False, "does not know the tcx attach types"),
])
def test_tcx(tmp_path, monkeypatch, err, supported, text):
    kernel = FakeKernel(monkeypatch, prog_query=err)
    result = run(tmp_path, fakehost.DEBIAN11, "tcx")
    assert result["supported"] is supported and text in result["reason"]
    (_name, args, _kwargs), = kernel.called("prog_query")
    assert args == (1, bpf.BPF_TCX_INGRESS)


@pytest.mark.parametrize("feature, err, supported", [
    ("bpf_link", errno.EBADF, True), ("bpf_link", errno.EINVAL, False),
    ("perf_link", errno.EBADF, True), ("perf_link", errno.EINVAL, False),
])
def test_link_discriminators(tmp_path, monkeypatch, feature, err, supported):
    kernel = FakeKernel(monkeypatch, link_create=err)
    result = run(tmp_path, fakehost.DEBIAN11, feature)
    assert result["supported"] is supported and result["probed"] is True, result
    assert kernel.all_closed()


def test_perf_link_targets_a_non_perf_fd(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch, link_create=errno.EBADF)
    run(tmp_path, fakehost.DEBIAN11, "perf_link")
    (_name, args, _kwargs), = kernel.called("link_create")
    prog_fd, target, attach_type = args
    assert attach_type == bpf.BPF_PERF_EVENT and target == prog_fd


def test_global_data_loads_a_direct_map_value_read(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "global_data")
    assert result["supported"] is True, result
    (_name, args, _kwargs), = kernel.called("map_create")
    assert args[:4] == (bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1) and args[4] & bpf.BPF_F_RDONLY_PROG
    (_name, args, _kwargs), = kernel.called("prog_load")
    first = args[1][:8]  # ld_imm64 of the map value: src_reg BPF_PSEUDO_MAP_VALUE
    assert first[0] == 0x18 and first[1] >> 4 == bpf.BPF_PSEUDO_MAP_VALUE
    assert kernel.all_closed()


@pytest.mark.parametrize("errors, words", [
    ({"map_create": errno.EINVAL}, "BPF_F_RDONLY_PROG"),
    ({"prog_load": errno.EINVAL}, "BPF_PSEUDO_MAP_VALUE"),
])
def test_global_data_refused(tmp_path, monkeypatch, errors, words):
    kernel = FakeKernel(monkeypatch, **errors)
    result = run(tmp_path, fakehost.DEBIAN11, "global_data")
    assert result["supported"] is False and words in result["reason"], result
    assert "global_data needs kernel >= 5.2" in result["message"]
    assert kernel.all_closed()


def test_ringbuf_unknown_map_type(tmp_path, monkeypatch):
    FakeKernel(monkeypatch, map_create=errno.EINVAL)
    result = run(tmp_path, fakehost.DEBIAN11, "ringbuf")
    assert result["supported"] is False and "ringbuf" in result["reason"]


def test_bpf_stats_needs_sys_admin(tmp_path, monkeypatch):
    FakeKernel(monkeypatch, enable_stats=errno.EPERM)
    result = run(tmp_path, fakehost.DEBIAN11, "bpf_stats", {"proc/self/status": "CapEff:\t000000c000001000\n"})
    assert result["probed"] is False and result["reason"] == "could not probe: needs CAP_SYS_ADMIN (EPERM)"


def test_bpf_stats_unknown_command(tmp_path, monkeypatch):
    FakeKernel(monkeypatch, enable_stats=errno.EINVAL)
    result = run(tmp_path, fakehost.DEBIAN11, "bpf_stats")
    assert result["supported"] is False and "BPF_ENABLE_STATS" in result["reason"]


@pytest.mark.parametrize("content, text", [(None, "CONFIG_DEBUG_INFO_BTF"), (b"\0" * 32, "bad magic")])
def test_btf(tmp_path, monkeypatch, content, text):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "btf", {"sys/kernel/btf/vmlinux": content})
    assert result["supported"] is False and text in result["reason"]


def test_cgroup_needs_cgroup2_mounted(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "cgroup", {"proc/self/mountinfo": "27 1 254:1 / / rw - ext4 x rw\n"})
    assert result["supported"] is False and "no cgroup v2 hierarchy is mounted" in result["reason"]


def test_tc_needs_cls_bpf(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "tc",
                 {"boot/config-5.10.0-30-cloud-amd64": "# CONFIG_NET_CLS_BPF is not set\nCONFIG_NET_SCH_INGRESS=m\n"})
    assert result["supported"] is False and "CONFIG_NET_CLS_BPF" in result["reason"]


def test_probe_caches_and_require_refuses(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    host = probes._Host(fakehost.build(tmp_path, fakehost.DEBIAN11))
    monkeypatch.setattr(probes, "_HOST", [host])
    monkeypatch.setattr(probes, "_RESULTS", {})
    assert probes.require("xdp") is None
    probes.probe("xdp")
    assert len(kernel.called("prog_load")) == 1  # cached
    with pytest.raises(probes.Unsupported) as info:
        probes.require("lsm")
    message = str(info.value)
    assert message.startswith("lsm programs are not supported on kernel 5.10.0-30-cloud-amd64: bpf is not in the "
                              "active LSM list (lockdown,capability,yama,apparmor,tomoyo); boot with lsm=")
    assert "lsm needs kernel >= 5.7" in message
    assert info.value.feature == "lsm"
    with pytest.raises(probes.Unsupported, match="on kernel 9.9.9-given"):
        probes.require("lsm", release="9.9.9-given")


def test_probe_all_subset(tmp_path, monkeypatch):
    FakeKernel(monkeypatch, link_create=errno.EBADF)
    monkeypatch.setattr(probes, "_HOST", [probes._Host(fakehost.build(tmp_path, fakehost.DEBIAN11))])
    monkeypatch.setattr(probes, "_RESULTS", {})
    found = probes.probe_all(["xdp", "bpf_link"])
    assert sorted(found) == ["bpf_link", "xdp"]
    assert all(r["supported"] for r in found.values())


def test_unknown_feature():
    with pytest.raises(KeyError, match="unknown eBPF feature"):
        probes.run_probe("usdt", probes._Host("/nonexistent"))


def test_holder_refused_without_systemd(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "holder")  # the tree has no run/systemd/system
    reason = "the host was not booted with systemd (no /run/systemd/system), which keeps the holder running"
    assert result["supported"] is False and result["probed"] is True, result
    assert result["reason"] == reason and result["min_kernel"] == "4.7"
    assert result["message"].startswith("held attachments (tracepoint, kprobe and uprobe programs kept attached by "
                                        "the holder service, hypermesh-ebpf-holder.service, where the kernel cannot "
                                        "pin them) are not supported on kernel 5.10.0-30-cloud-amd64: " + reason)
    assert "; holder needs kernel >= 4.7 with perf events that run bpf programs" in result["message"]
    assert kernel.calls == []  # decided before asking the kernel


def test_holder_with_systemd_sets_a_program_on_a_perf_event(tmp_path, monkeypatch):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf
    kernel = FakeKernel(monkeypatch)
    events, set_on = [], []

    def open_tracepoint(target):
        events.append((target, os.open(os.devnull, os.O_RDONLY)))
        return events[-1][1]
    monkeypatch.setattr(perf, "open_tracepoint", open_tracepoint)
    monkeypatch.setattr(perf, "set_bpf", lambda event, prog: set_on.append((event, prog)))
    result = run(tmp_path, fakehost.DEBIAN11, "holder", {"run/systemd/system": fakehost.DIR})
    assert result["supported"] is True, result
    (_name, args, _kwargs), = kernel.called("prog_load")
    assert args[0] == bpf.BPF_PROG_TYPE_TRACEPOINT
    assert [t for t, _fd in events] == [probes.TRACEPOINT]
    assert set_on == [(events[0][1], kernel.fds[0])]
    assert kernel.all_closed()
    with pytest.raises(OSError):
        os.fstat(events[0][1])  # the perf event was closed too


@pytest.mark.parametrize("feature", ["kprobe", "uprobe"])
def test_before_5_0_the_probe_carries_the_kernels_own_version_code(tmp_path, monkeypatch, feature):
    """4.19.222 from a stable tree reports LINUX_VERSION_CODE 0x413ff (sublevel frozen at 255), not the 0x413de
    its release gives: the probe loads with the kernel's code, as the loader gives the real programs theirs."""
    kernel = FakeKernel(monkeypatch)
    host = probes._Host(fakehost.build(tmp_path, fakehost.DEBIAN11, {"proc/sys/kernel/osrelease": "4.19.222\n"}))
    host._cache["version_code"] = 0x413ff
    result = probes.run_probe(feature, host)
    (_name, _args, kwargs), = kernel.called("prog_load")
    assert kwargs["kern_version"] == 0x413ff
    assert result["supported"] is True, result


# ---- xdp_multiprog: libxdp, bpffs, and a program extension that loads and attaches to two xdp programs ------
class _FakeLibxdp(object):
    def __init__(self, monkeypatch, error=None, bpffs=True):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc, libxdp

        def load():
            if error:
                raise libxdp.LibxdpError(error, errno.ENOENT, "dlopen")
        monkeypatch.setattr(libxdp, "_load", load)
        monkeypatch.setattr(libc, "statfs", lambda path: probes.BPF_FS_MAGIC if bpffs else 0x01021994)


def _multiprog_kernel(monkeypatch, btf_error=None, **errors):
    kernel = FakeKernel(monkeypatch, **errors)

    def btf_load(blob):
        kernel.calls.append(("btf_load", (blob,), {}))
        if btf_error:
            raise bpf.BpfError(btf_error, "BPF_BTF_LOAD")
        fd = os.open(os.devnull, os.O_RDONLY)
        kernel.fds.append(fd)
        return fd
    monkeypatch.setattr(bpf, "btf_load", btf_load)
    return kernel


def test_xdp_multiprog_supported(tmp_path, monkeypatch):
    _FakeLibxdp(monkeypatch)
    kernel = _multiprog_kernel(monkeypatch)
    result = run(tmp_path, fakehost.DEBIAN11, "xdp_multiprog")
    assert result["supported"] is True, result
    loads = kernel.called("prog_load")
    assert [c[1][0] for c in loads] == [bpf.BPF_PROG_TYPE_XDP, bpf.BPF_PROG_TYPE_XDP, bpf.BPF_PROG_TYPE_EXT]
    ext = loads[2][2]
    assert ext["attach_prog_fd"] == kernel.fds[1] and ext["attach_btf_id"] == 5 and ext["func_info"] == [(0, 5)]
    (_name, args, kwargs), = kernel.called("link_create")
    assert args[1] == kernel.fds[2] and kwargs["target_btf_id"] == 5  # the second xdp program
    assert kernel.called("raw_tracepoint_open")
    assert kernel.all_closed()


def test_xdp_multiprog_btf_blob_parses():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf
    blob, func = probes._freplace_btf()
    parsed = btf.Btf(blob)
    assert parsed.types[func]["kind"] == "func" and parsed.types[func]["name"] == "hm_probe"
    assert parsed.find("xdp_md", "struct")


@pytest.mark.parametrize("libxdp_error, bpffs, kernel_errors, words", [
    ("libxdp is not installed on this host (looked for libxdp.so.1); install libxdp1", True, {},
     "libxdp is not installed on this host"),
    (None, False, {}, "no bpffs is mounted at /sys/fs/bpf"),
    (None, True, {"btf_error": errno.EINVAL}, "BTF with a global function (BTF_FUNC_GLOBAL, 5.6+)"),
    (None, True, {"prog_load": lambda t, *a, **k: errno.EPERM if t == bpf.BPF_PROG_TYPE_EXT else None},
     "a minimal program extension (freplace) of an xdp program does not load: EPERM although this process has"),
    (None, True, {"prog_load": lambda t, *a, **k: errno.EINVAL if t == bpf.BPF_PROG_TYPE_EXT else None},
     "a minimal program extension (freplace) of an xdp program does not load: EINVAL"),
    (None, True, {"raw_tracepoint_open": errno.ENOTSUP}, "attaching a program extension to an xdp program"),
    (None, True, {"link_create": errno.EINVAL}, "cannot be attached to a second program (5.10+)"),
])
def test_xdp_multiprog_refused(tmp_path, monkeypatch, libxdp_error, bpffs, kernel_errors, words):
    _FakeLibxdp(monkeypatch, libxdp_error, bpffs)
    kernel = _multiprog_kernel(monkeypatch, **kernel_errors)
    result = run(tmp_path, fakehost.DEBIAN11, "xdp_multiprog")
    assert result["supported"] is False and words in result["reason"], result
    assert result["message"].startswith("several xdp programs on one interface")
    assert "xdp_multiprog needs kernel >= 5.10" in result["message"]
    assert kernel.all_closed()
    if libxdp_error or not bpffs:
        assert kernel.calls == []  # decided before asking the kernel
