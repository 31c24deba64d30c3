"""program_state: the record (atomic write, read, delete) and Live on a directory without pins."""
import json
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps


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
    assert ps.managed_names(root, str(tmp_path / "state")) == []  # no record of ours: not managed
    ps.write_record("p", {"name": "p", "pin_root": root}, str(tmp_path / "state"))
    assert ps.managed_names(root, str(tmp_path / "state")) == ["p"]
    with pytest.raises(host_paths.UnsafePath, match="is not on a bpf filesystem"):
        ps.remove_tree(os.path.join(root, "p"))  # removal is for bpffs only (tests/integration: the real one)
    assert os.path.isdir(os.path.join(root, "p", ps.STAGE_PREFIX + "123"))


def test_managed_names_need_a_record_of_ours_and_pins(tmp_path):
    """Prune and rollback act on managed_names: never _shared, never a directory another tool made (no record),
    never a record for another pin_root or a record without its directory."""
    root, state = str(tmp_path / "bpf"), str(tmp_path / "state")
    for d in ("ours", "_shared", "foreign", "elsewhere"):
        os.makedirs(os.path.join(root, d))
    open(os.path.join(root, "afile"), "w").close()
    ps.write_record("ours", {"name": "ours", "pin_root": root + "/"}, state)
    ps.write_record("_shared", {"name": "_shared", "pin_root": root}, state)
    ps.write_record("elsewhere", {"name": "elsewhere", "pin_root": "/sys/fs/bpf/other"}, state)
    ps.write_record("gone", {"name": "gone", "pin_root": root}, state)
    ps.write_record("journal", {"name": "journal", "pending": {"state": "attached"}}, state)
    os.makedirs(os.path.join(root, "journal"))  # a first run killed after its journal: ours
    assert ps.managed_names(root, state) == ["journal", "ours"]
    assert ps.managed_names(str(tmp_path / "nothing"), state) == []


def test_a_record_is_written_0600_in_dirs_of_ours(tmp_path):
    d = str(tmp_path / "state")
    ps.write_record("p", {"name": "p"}, d)
    assert os.stat(ps.record_path("p", d)).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(d, "programs")).st_mode & 0o777 == 0o755


def test_records_in_a_directory_others_can_write_are_refused(tmp_path):
    d = str(tmp_path)
    ps.write_record("p", {"name": "p"}, d)
    os.chmod(os.path.join(d, "programs"), 0o777)
    with pytest.raises(host_paths.UnsafePath, match="programs is writable by group or others"):
        ps.read_record("p", d)
    with pytest.raises(host_paths.UnsafePath, match="programs is writable by group or others"):
        ps.write_record("p", {"name": "p", "x": 1}, d)
    assert json.load(open(ps.record_path("p", d))) == {"name": "p"}


def test_a_record_that_is_a_link_is_not_followed(tmp_path):
    d = str(tmp_path)
    os.makedirs(os.path.join(d, "programs"))
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps({"name": "p", "pending": {"attach": {"type": "xdp"}}}))
    os.symlink(str(planted), ps.record_path("p", d))
    assert ps.read_record("p", d) is None


def test_check_dirs_refuses_a_linked_name_dir(tmp_path):
    root = tmp_path / "root"
    (root).mkdir()
    (tmp_path / "victim").mkdir()
    os.symlink(str(tmp_path / "victim"), str(root / "x"))
    with pytest.raises(host_paths.UnsafePath, match="x is a symbolic link"):
        ps.check_dirs(str(root), "x")
    ps.check_dirs(str(root), "other")  # not there yet: fine
