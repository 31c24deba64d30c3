"""map_runner.apply_entries: the argument checks (refused before the map is opened), then the decisions on a real
pinned hash map (bpf(2) as root, under a bpffs directory of this test): add, no-op, exact, absent, check mode,
a bad entry and a frozen map refused with the map unchanged."""
import os
import shutil
import struct

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_file, map_runner, pinned_map

root_only = pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/fs/bpf"),
                               reason="probe: not root, or no bpffs at /sys/fs/bpf (creating a map needs both)")


@pytest.mark.parametrize("params,message", [
    ({"path": "/x", "name": "a", "map": "m"}, "mutually exclusive: path|name"),
    ({"path": "/x", "map": "m"}, "mutually exclusive: path|map"),
    ({"map": "m"}, "one of the following is required: path, name"),
    ({"path": "/x", "exact": True, "state": "absent"}, "exact=true removes every entry not listed"),
    ({"path": "/x", "entries": [{"key": 1}], "src": "/y"}, "mutually exclusive: entries|src"),
    ({"name": "a", "map": "../m"}, "map '../m' is not valid"),
])
def test_arguments_are_refused_before_the_map_is_opened(params, message):
    with pytest.raises(pinned_map.MapError, match=message.replace("|", r"\|").replace("(", r"\(")):
        map_runner.apply_entries(params)


def test_an_unknown_option_is_refused():
    with pytest.raises(ValueError, match="unsupported parameters: colour"):
        map_runner.apply_entries({"path": "/x", "colour": 1})


def test_a_missing_entries_file_is_an_entries_file_error(tmp_path):
    with pytest.raises(map_file.EntriesFileError):
        map_runner.apply_entries({"path": "/x", "src": str(tmp_path / "none.yml")})


def test_errors_are_the_refusals_with_the_map_left_as_it_was():
    assert pinned_map.MapError in map_runner.ERRORS and map_file.EntriesFileError in map_runner.ERRORS
    assert OSError in map_runner.ERRORS


@pytest.fixture
def hash_map():
    """make(frozen=False) -> the path of a pinned BPF hash map (u32 -> u32, 8 entries) under /sys/fs/bpf."""
    top = "/sys/fs/bpf/hm-unit-map-runner-%d" % os.getpid()
    os.mkdir(top, 0o700)
    made = []

    def make(frozen=False):
        path = os.path.join(top, "m%d" % len(made))
        fd = bs.map_create(bs.BPF_MAP_TYPE_HASH, 4, 4, 8)
        try:
            if frozen:
                bs.map_freeze(fd)
            bs.obj_pin(fd, path)
        finally:
            bs.close(fd)
        made.append(path)
        return path
    yield make
    shutil.rmtree(top)


def _entries(path):
    fd = bs.obj_get(path)
    try:
        out, key = {}, None
        while True:
            try:
                key = bs.map_next_key(fd, key, 4)
            except OSError:
                return out
            if key is None:
                return out
            out[struct.unpack("=I", key)[0]] = struct.unpack("=I", bs.map_lookup(fd, key, 4))[0]
    finally:
        bs.close(fd)


def apply(path, entries, **kw):
    params = dict(path=path, entries=entries, key_format="int", value_format="int")
    check = kw.pop("check_mode", False)
    params.update(kw)
    return map_runner.apply_entries(params, check_mode=check, diff=True)


@root_only
def test_entries_are_added_once_then_nothing_changes(hash_map):
    path = hash_map()
    r = apply(path, [{"key": 1, "value": 10}, {"key": 2, "value": 20}])
    assert r["changed"] and r["counts"] == {"added": 2, "updated": 0, "removed": 0}
    assert _entries(path) == {1: 10, 2: 20}
    assert r["diff"]["after"]["entries"] == {"1": 10, "2": 20} and r["diff"]["before"]["entries"] == {"1": None, "2": None}
    again = apply(path, [{"key": 1, "value": 10}, {"key": 2, "value": 20}])
    assert again["changed"] is False and again["counts"] == {"added": 0, "updated": 0, "removed": 0}
    assert again["invocation"]["module_args"]["entries"] == "(2 entries)"


@root_only
def test_check_mode_predicts_and_writes_nothing(hash_map):
    path = hash_map()
    apply(path, [{"key": 1, "value": 10}])
    r = apply(path, [{"key": 1, "value": 11}, {"key": 3, "value": 30}], check_mode=True)
    assert r["changed"] and r["counts"] == {"added": 1, "updated": 1, "removed": 0}
    assert _entries(path) == {1: 10}


@root_only
def test_exact_removes_what_is_not_listed_and_absent_removes_what_is(hash_map):
    path = hash_map()
    apply(path, [{"key": k, "value": k} for k in (1, 2, 3)])
    r = apply(path, [{"key": 2, "value": 2}], exact=True)
    assert r["changed"] and r["counts"]["removed"] == 2 and _entries(path) == {2: 2}
    r = apply(path, [{"key": 2}], state="absent")
    assert r["changed"] and r["removed"] == ["2"] and _entries(path) == {}
    assert apply(path, [{"key": 2}], state="absent")["changed"] is False


@root_only
@pytest.mark.parametrize("entries,message", [
    ([{"key": 1, "value": 1}, {"value": 2}], r"entries\[1\] has no key"),
    ([{"key": 1, "value": 1, "colour": 3}], r"entries\[0\]: unknown field\(s\) colour"),
])
def test_a_bad_entry_leaves_the_map_as_it_was(hash_map, entries, message):
    path = hash_map()
    apply(path, [{"key": 5, "value": 5}])
    with pytest.raises(pinned_map.MapError, match=message):
        apply(path, entries)
    assert _entries(path) == {5: 5}


@root_only
def test_a_frozen_map_is_refused_with_nothing_written(hash_map):
    path = hash_map(frozen=True)
    with pytest.raises(pinned_map.MapError, match="read-only from user space .*frozen with BPF_MAP_FREEZE"):
        apply(path, [{"key": 1, "value": 1}])
    assert apply(path, [], state="present")["changed"] is False  # nothing asked: nothing refused


@root_only
def test_a_path_with_no_map_is_refused(hash_map, tmp_path):
    with pytest.raises(map_runner.ERRORS):
        apply("/sys/fs/bpf/hm-unit-no-such-map-%d" % os.getpid(), [{"key": 1, "value": 1}])
