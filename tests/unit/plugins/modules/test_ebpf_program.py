"""ebpf_program: the argument spec agrees with DOCUMENTATION and with program_spec's attach kinds."""
import yaml

from ansible_collections.hypermesh.ebpf.plugins.modules import ebpf_program as m
from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_run
from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_spec


def _doc():
    return yaml.safe_load(m.DOCUMENTATION)


def test_options_match_documentation():
    doc = _doc()["options"]
    assert set(doc) == set(m.ARGUMENT_SPEC)
    for key, spec in m.ARGUMENT_SPEC.items():
        assert doc[key]["type"] == spec["type"], key
        assert doc[key].get("default") == spec.get("default"), key
        assert doc[key].get("choices") == spec.get("choices"), key


def test_attach_suboptions_match():
    doc = _doc()["options"]["attach"]["suboptions"]
    spec = m.ARGUMENT_SPEC["attach"]["options"]
    assert set(doc) == set(spec) == set(program_spec.ATTACH_KINDS)
    assert m.ARGUMENT_SPEC["attach"]["mutually_exclusive"] == [list(program_spec.ATTACH_KINDS)]
    for kind in ("xdp", "tc", "tcx", "cgroup"):
        assert set(doc[kind]["suboptions"]) == set(spec[kind]["options"]), kind
    assert sorted(doc["cgroup"]["suboptions"]["type"]["choices"]) == sorted(program_spec.CGROUP_TYPES)


def test_kill_switch_is_documented_as_test_only():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_apply
    assert program_apply.KILL_ENV in m.DOCUMENTATION and "tests only" in m.DOCUMENTATION
    for step in program_apply.STEPS:
        assert step in m.DOCUMENTATION


def test_privileges_need_capabilities(monkeypatch, tmp_path):
    status = tmp_path / "status"
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/proc/self/status":
            return real_open(str(status), *a, **k)
        return real_open(path, *a, **k)
    monkeypatch.setattr("builtins.open", fake_open)
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    assert not program_run.has_privileges()
    status.write_text("CapEff:\t0000000000200000\n")  # CAP_SYS_ADMIN
    assert program_run.has_privileges()
    status.write_text("CapEff:\t0000008000000000\n")  # CAP_BPF
    assert program_run.has_privileges()
