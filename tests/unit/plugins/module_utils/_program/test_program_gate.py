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


def _found(no=(), reasons=None):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host.requirements import FEATURES
    out = {}
    for f in FEATURES:
        ok = f not in no
        out[f] = {"supported": ok, "probed": True, "reason": (reasons or {}).get(f, "probe of %s" % f)}
        if not ok:
            out[f]["message"] = "%s refused" % f
    return out


def test_attach_kinds_all_supported_none_held():
    kinds = pg.attach_kinds(_found())
    assert all(k["supported"] and not k["held"] for k in kinds.values()), kinds
    assert kinds["tracepoint"]["message"] == "supported (tracepoint, perf_link)"


def test_attach_kinds_without_perf_links_are_held_where_the_holder_works():
    kinds = pg.attach_kinds(_found(no=("perf_link",), reasons={"perf_link": "EINVAL"}))
    for kind in ("tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe"):
        assert kinds[kind]["supported"] and kinds[kind]["held"], kind
        assert kinds[kind]["message"] == "supported through the holder (the kernel has no perf_link: EINVAL)"
    assert kinds["xdp"] == {"supported": True, "held": False, "message": "supported (xdp)"}
    assert not kinds["raw_tracepoint"]["held"]


def test_attach_kinds_without_the_holder_are_refused_with_the_link_refusal():
    kinds = pg.attach_kinds(_found(no=("perf_link", "holder")))
    assert kinds["tracepoint"] == {"supported": False, "held": False, "message": "perf_link refused"}


def test_attach_kinds_missing_program_type_is_not_held():
    kinds = pg.attach_kinds(_found(no=("kprobe", "perf_link")))
    assert kinds["kprobe"] == {"supported": False, "held": False, "message": "kprobe refused"}
    assert kinds["tracepoint"]["held"]


def test_before_5_7_raw_tracepoint_is_held_and_fentry_refused():
    kinds = pg.attach_kinds(_found(no=("bpf_link", "perf_link")))
    assert kinds["raw_tracepoint"]["held"] and kinds["raw_tracepoint"]["supported"]
    assert kinds["fentry"] == {"supported": False, "held": False, "message": "bpf_link refused"}
    assert kinds["cgroup"]["supported"] and not kinds["cgroup"]["held"]
    assert kinds["cgroup"]["message"].startswith("supported through BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI")
