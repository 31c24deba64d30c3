"""The requirements table and the one refusal message of the collection."""
import re

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import requirements as req

DESIGN_FEATURES = ["xdp", "tc", "tcx", "tracepoint", "raw_tracepoint", "kprobe", "uprobe", "fentry", "cgroup", "lsm",
                   "bpf_link", "perf_link", "holder", "ringbuf", "btf", "bpf_stats", "global_data", "xdp_multiprog"]


def test_table_has_exactly_the_design_features():
    assert sorted(req.REQUIREMENTS) == sorted(DESIGN_FEATURES)
    assert req.FEATURES == sorted(DESIGN_FEATURES)


@pytest.mark.parametrize("feature", DESIGN_FEATURES)
def test_entries_are_complete(feature):
    entry = req.REQUIREMENTS[feature]
    assert re.match(r"^\d+\.\d+$", entry["min_kernel"])
    assert entry["needs"] and entry["what"]
    assert req.needs(feature).startswith("kernel >= %s " % entry["min_kernel"])


@pytest.mark.parametrize("feature, min_kernel", [
    ("xdp", "4.8"), ("tcx", "6.6"), ("raw_tracepoint", "4.17"), ("fentry", "5.5"), ("lsm", "5.7"),
    ("bpf_link", "5.7"), ("perf_link", "5.15"), ("uprobe", "4.17"), ("ringbuf", "5.8"), ("bpf_stats", "5.8"),
    ("global_data", "5.2"), ("holder", "4.7"), ("xdp_multiprog", "5.10"),
])
def test_min_kernels(feature, min_kernel):
    assert req.min_kernel(feature) == min_kernel


def test_refusal_names_feature_release_reason_and_needs():
    reason = ("bpf is not in the active LSM list (lockdown,capability,yama,apparmor); "
              "boot with lsm=lockdown,capability,yama,apparmor,bpf")
    msg = req.refusal("lsm", "5.10.0-30-cloud-amd64", reason)
    assert msg.startswith("lsm programs are not supported on kernel 5.10.0-30-cloud-amd64: bpf is not in the "
                          "active LSM list (lockdown,capability,yama,apparmor); boot with lsm=")
    assert "; lsm needs kernel >= 5.7 with CONFIG_BPF_LSM" in msg
    assert "bpf in the active LSM list" in msg


def test_refusal_without_reason_or_release_still_reads():
    msg = req.refusal("tcx", None, "")
    assert msg == ("tcx programs are not supported on kernel (unknown release): the probe on this kernel failed; "
                   "tcx needs kernel >= 6.6 (tcx links: BPF_TCX_INGRESS/BPF_TCX_EGRESS attach types)")


def test_unknown_feature():
    with pytest.raises(KeyError, match="unknown eBPF feature 'usdt'"):
        req.refusal("usdt", "6.1.0", "no")
    with pytest.raises(KeyError):
        req.min_kernel("nope")
