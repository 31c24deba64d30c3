"""ebpf_facts' orchestration: which parts are gathered, which features probed, what is warned about."""
import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec as spec_mod

from ansible_collections.hypermesh.ebpf.plugins.modules import ebpf_facts
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import hardware, kernel_info, probes
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host.requirements import FEATURES


@pytest.fixture
def fake_parts(monkeypatch):
    seen = {}

    def kernel(allow_private_mount=True):
        seen["kernel"] = allow_private_mount
        return {"release": "6.1.0-50-cloud-amd64"}

    def features(names, allow_private_mount=True):
        seen["features"] = (list(names), allow_private_mount)
        return dict((n, {"supported": n != "kprobe", "probed": n != "bpf_stats", "min_kernel": "5.8",
                         "reason": "could not probe: needs CAP_SYS_ADMIN (EPERM)" if n == "bpf_stats" else "ok"})
                    for n in names)
    monkeypatch.setattr(kernel_info, "facts", kernel)
    monkeypatch.setattr(hardware, "facts", lambda: {"cpus": {}})
    monkeypatch.setattr(probes, "probe_all", features)
    return seen


def test_all_parts_and_features(fake_parts):
    facts, warnings = ebpf_facts.gather(ebpf_facts.PARTS, None, True)
    assert sorted(facts) == ["attach_kinds", "features", "hardware", "kernel"]  # attach_kinds: every feature probed
    assert fake_parts["features"] == (FEATURES, True)
    assert sorted(facts["attach_kinds"]) == sorted(spec_mod.FEATURES)
    assert warnings == ["eBPF feature bpf_stats: could not probe: needs CAP_SYS_ADMIN (EPERM)"]


def test_subset_without_private_mounts(fake_parts):
    facts, warnings = ebpf_facts.gather(["kernel", "features"], ["xdp", "tcx"], False)
    assert sorted(facts) == ["features", "kernel"]  # no attach_kinds from a subset of the features
    assert fake_parts == {"kernel": False, "features": (["xdp", "tcx"], False)}
    assert warnings == []


def test_hardware_only_probes_nothing(fake_parts):
    facts, _warnings = ebpf_facts.gather(["hardware"], None, True)
    assert list(facts) == ["hardware"] and "features" not in fake_parts
