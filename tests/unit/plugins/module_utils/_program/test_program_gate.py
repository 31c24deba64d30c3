"""program_gate: the probes decide; a yes is remembered for the boot, a no never is."""
import json
import sys
import types

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_gate as pg

PROBES = "ansible_collections.hypermesh.ebpf.plugins.module_utils._host.probes"


class Refused(Exception):
    pass


@pytest.fixture
def probes(monkeypatch, tmp_path):
    """A stand-in probes module that records what was probed; `no` lists the unsupported features."""
    fake = types.ModuleType(PROBES)
    fake.asked = []
    fake.no = set()

    def require(feature):
        fake.asked.append(feature)
        if feature in fake.no:
            raise Refused("%s is not supported" % feature)
    fake.require = require
    monkeypatch.setitem(sys.modules, PROBES, fake)
    import ansible_collections.hypermesh.ebpf.plugins.module_utils._host as mu
    monkeypatch.setattr(mu, "probes", fake, raising=False)
    monkeypatch.setattr(pg, "_boot_id", lambda: "boot-1")
    fake.memo = str(tmp_path / "run" / "features.json")
    return fake


def test_first_gate_probes_and_remembers(probes):
    pg.require(("tracepoint", "perf_link"), probes.memo)
    assert probes.asked == ["tracepoint", "perf_link"]
    assert json.load(open(probes.memo)) == {"boot_id": "boot-1", "supported": ["perf_link", "tracepoint"]}
    pg.require(("tracepoint", "perf_link"), probes.memo)
    pg.require(("perf_link",), probes.memo)
    assert probes.asked == ["tracepoint", "perf_link"]          # remembered: not probed again
    pg.require(("xdp",), probes.memo)
    assert probes.asked == ["tracepoint", "perf_link", "xdp"]
    assert json.load(open(probes.memo))["supported"] == ["perf_link", "tracepoint", "xdp"]


def test_refusal_is_never_remembered(probes):
    probes.no.add("kprobe")
    for _unused in range(2):
        with pytest.raises(Refused, match="kprobe is not supported"):
            pg.require(("kprobe", "perf_link"), probes.memo)
    assert probes.asked == ["kprobe", "kprobe"]


def test_another_boot_probes_again(probes, monkeypatch):
    pg.require(("xdp",), probes.memo)
    monkeypatch.setattr(pg, "_boot_id", lambda: "boot-2")
    pg.require(("xdp",), probes.memo)
    assert probes.asked == ["xdp", "xdp"]
    assert json.load(open(probes.memo))["boot_id"] == "boot-2"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"boot_id": "boot-1", "supported": "xdp"}'])
def test_unreadable_memo_means_probe(probes, content):
    import os
    os.makedirs(os.path.dirname(probes.memo))
    open(probes.memo, "w").write(content)
    pg.require(("xdp",), probes.memo)
    assert probes.asked == ["xdp"]


def test_memo_that_cannot_be_written_still_gates(probes, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    pg.require(("xdp",), str(blocker / "features.json"))     # its directory cannot exist
    assert probes.asked == ["xdp"]
