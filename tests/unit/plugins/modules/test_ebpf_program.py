"""ebpf_program: the argument spec agrees with DOCUMENTATION and with program_spec's attach kinds."""
import yaml

from ansible_collections.hypermesh.ebpf.plugins.modules import ebpf_program as m
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec


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


def test_no_test_switch_in_product_code():
    """Faults are injected from the test side (tests/integration/kill_runner.py): plugins/ and roles/ hold no
    environment switch that makes the module kill itself, and the module's documentation names none."""
    import os
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))))
    hits = []
    for part in ("plugins", "roles"):
        for root, _dirs, files in os.walk(os.path.join(top, part)):
            for f in files:
                if f.endswith((".py", ".yml", ".yaml", ".j2")):
                    text = open(os.path.join(root, f), encoding="utf-8").read()
                    for needle in ("TEST_KILL", "signal.SIGKILL", "os.kill(os.getpid()"):
                        if needle in text:
                            hits.append((os.path.join(root, f), needle))
    assert hits == []
    assert "TEST" not in m.DOCUMENTATION and "tests only" not in m.DOCUMENTATION.lower()


def test_privileges_need_capabilities(monkeypatch, tmp_path):
    status = tmp_path / "status"
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/proc/self/status":
            return real_open(str(status), *a, **k)
        return real_open(path, *a, **k)
    monkeypatch.setattr("builtins.open", fake_open)
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    assert not program_runner.has_privileges()
    status.write_text("CapEff:\t0000000000200000\n")  # CAP_SYS_ADMIN
    assert program_runner.has_privileges()
    status.write_text("CapEff:\t0000008000000000\n")  # CAP_BPF
    assert program_runner.has_privileges()
