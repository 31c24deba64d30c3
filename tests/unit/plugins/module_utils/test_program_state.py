"""program_state: the record (atomic write, read, delete) and Live on a directory without pins."""
import json
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_state as ps


def test_record_roundtrip(tmp_path):
    d = str(tmp_path)
    assert ps.read_record("p", d) is None
    rec = {"name": "p", "sha256": "ab", "attach": {"type": "xdp", "interface": "eth0", "netns": None}}
    ps.write_record("p", rec, d)
    assert ps.read_record("p", d) == rec
    assert json.load(open(ps.record_path("p", d))) == rec
    assert sorted(os.listdir(os.path.join(d, "programs"))) == ["p.json"]  # no temp file left
    ps.write_record("p", None, d)
    assert ps.read_record("p", d) is None
    ps.write_record("p", None, d)  # deleting twice is fine


def test_corrupt_record_reads_as_missing(tmp_path):
    d = str(tmp_path)
    os.makedirs(os.path.join(d, "programs"))
    open(ps.record_path("p", d), "w").write("{not json")
    assert ps.read_record("p", d) is None


def test_live_of_nothing(tmp_path):
    live = ps.Live(str(tmp_path), "absent")
    assert not live.exists and live.prog_id is None and live.maps == {} and live.summary() == {}


def test_live_sees_stage_dirs_and_managed_names(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "p", ps.STAGE_PREFIX + "123"))
    os.makedirs(os.path.join(root, "_shared"))
    live = ps.Live(root, "p")
    assert live.exists and live.stages == [os.path.join(root, "p", ps.STAGE_PREFIX + "123")]
    assert ps.managed_names(root) == ["p"]
    ps.remove_tree(os.path.join(root, "p"))
    assert not os.path.exists(os.path.join(root, "p"))
