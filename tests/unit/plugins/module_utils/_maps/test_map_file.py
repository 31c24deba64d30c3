"""map_file: the src forms ebpf_map reads, the JSON ebpf_map_info's dest writes (the same text as json.dumps),
and the dest file written only when it changes (not in check mode)."""
import json
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_file


def write(tmp_path, text, name="src"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


FORMS = [
    ("json list", '[{"key": "10.0.0.1", "value": 1}, {"key": "10.0.0.2"}]',
     [{"key": "10.0.0.1", "value": 1}, {"key": "10.0.0.2"}]),
    ("json object", '{"10.0.0.1": 1, "10.0.0.2": null}',
     [{"key": "10.0.0.1", "value": 1}, {"key": "10.0.0.2", "value": None}]),
    ("saved result", '{"changed": false, "count": 1, "entries": [{"key": 5, "value": 6}]}', [{"key": 5, "value": 6}]),
    ("lines", "# blocklist\n10.0.0.1 1\n\n10.0.0.2,2  # trailing comment\n  10.0.0.3\n",
     [{"key": "10.0.0.1", "value": "1"}, {"key": "10.0.0.2", "value": "2"}, {"key": "10.0.0.3"}]),
    ("empty", "", []),
]


@pytest.mark.parametrize("label,text,expected", FORMS, ids=[f[0] for f in FORMS])
def test_load_entries_forms(tmp_path, label, text, expected):
    assert map_file.load_entries(write(tmp_path, text)) == expected


BAD = [
    ("three fields", "10.0.0.1 1 2\n", "line 1"),
    ("bad json", '[{"key": 1,}]', "is not valid JSON"),
    ("json scalar list", "[1, 2]", "entry 0 is 1"),
    ("not utf-8", b"\xff\xfe".decode("latin-1"), None),
]


@pytest.mark.parametrize("label,text,message", BAD, ids=[b[0] for b in BAD])
def test_load_entries_errors(tmp_path, label, text, message):
    path = tmp_path / "src"
    if message is None:
        path.write_bytes(b"\xff\xfe 1\n")
        message = "is not UTF-8"
    else:
        path.write_text(text)
    with pytest.raises(map_file.EntriesFileError) as e:
        map_file.load_entries(str(path))
    assert message in str(e.value) and str(path) in str(e.value)


def test_load_entries_missing_file(tmp_path):
    with pytest.raises(map_file.EntriesFileError, match="cannot read src .*No such file"):
        map_file.load_entries(str(tmp_path / "nope"))


COLUMNS = [
    (["10.0.0.1", 'a"b\\', "\u00e9"], [1, 2, 3]),
    ([1, 2], [{"packets": 1}, [1, 2]]),
    ([1, 2, 3], [True, None, 1.5]),
    ([], []),
]


@pytest.mark.parametrize("keys,values", COLUMNS)
def test_entries_json_is_what_json_dumps_writes(keys, values):
    assert map_file.entries_json(keys, values) == json.dumps([{"key": k, "value": v} for k, v in zip(keys, values)])
    labels = [str(k) for k in keys]
    assert map_file.entries_json(labels, values, as_dict=True) == json.dumps(dict(zip(labels, values)))


def test_entries_json_percpu():
    text = map_file.entries_json([7], [3], [[1, 2]])
    assert json.loads(text) == [{"key": 7, "values": [1, 2], "value": 3}]


def test_write_if_changed(tmp_path):
    path = str(tmp_path / "dump.json")
    assert map_file.write_if_changed(path, "[]\n", check_mode=True) is True
    assert not os.path.exists(path)
    assert map_file.write_if_changed(path, "[]\n") is True
    assert open(path).read() == "[]\n" and os.stat(path).st_mode & 0o777 == 0o644
    assert map_file.write_if_changed(path, "[]\n") is False
    assert map_file.write_if_changed(path, "[1]\n") is True
    assert open(path).read() == "[1]\n" and os.stat(path).st_mode & 0o777 == 0o644
    os.chmod(path, 0o666)  # the mode comes from the code, never from the file replaced: same content, rewritten
    assert map_file.write_if_changed(path, "[1]\n") is True and os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(os.listdir(str(tmp_path))) == ["dump.json"]  # no temporary file left


def test_write_if_changed_bad_dest(tmp_path):
    with pytest.raises(map_file.EntriesFileError, match="does not exist"):
        map_file.write_if_changed(str(tmp_path / "no" / "dump.json"), "[]")
    with pytest.raises(map_file.EntriesFileError, match="is a directory"):
        map_file.write_if_changed(str(tmp_path), "[]")


def test_src_that_is_not_a_regular_file_is_refused_without_reading_it():
    """/dev/zero would never end: refused from its fstat, not read."""
    with pytest.raises(map_file.EntriesFileError, match="not a regular file"):
        map_file.load_entries("/dev/zero")


def test_src_above_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(map_file, "SRC_MAX_BYTES", 16)
    path = tmp_path / "big.txt"
    path.write_text("1 2\n" * 5)  # 20 bytes
    with pytest.raises(map_file.EntriesFileError, match="more than the limit of 16"):
        map_file.load_entries(str(path))
    path.write_text("1 2\n" * 4)  # 16 bytes: at the limit is fine
    assert len(map_file.load_entries(str(path))) == 4


def test_src_others_can_write_is_refused(tmp_path):
    path = tmp_path / "open.txt"
    path.write_text("1 2\n")
    os.chmod(str(path), 0o666)
    with pytest.raises(map_file.EntriesFileError, match="can be written by other users"):
        map_file.load_entries(str(path))
    os.chmod(str(path), 0o644)
    assert map_file.load_entries(str(path)) == [{"key": "1", "value": "2"}]
