"""pinned_map: plan() decisions and apply()'s all-or-nothing undo, against a fake map in place of bpf(2).

The fake map behaves as the kernel's does where it matters here: a hash map refuses a new key when full (E2BIG),
BPF_MAP_UPDATE_BATCH stops at the first failure after writing the ones before it, arrays cannot delete."""
import errno
import os
import struct

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map as pmod


def k(n):
    return n.to_bytes(4, "little")


def v(n):
    return n.to_bytes(8, "little")


class FakeMap(object):
    def __init__(self, max_entries=4, array=False, batch=True):
        self.max_entries = max_entries
        self.array = array
        self.batch = batch
        self.data = dict((k(i), v(0)) for i in range(max_entries)) if array else {}
        self.calls = []

    def lookup(self, fd, key, size):
        return self.data.get(key)

    def update(self, fd, key, value, flags=0):
        self.calls.append(("update", key))
        if self.array and key not in self.data:
            raise bs.BpfError(errno.E2BIG, "BPF_MAP_UPDATE_ELEM")
        if key not in self.data and len(self.data) >= self.max_entries:
            raise bs.BpfError(errno.E2BIG, "BPF_MAP_UPDATE_ELEM")
        self.data[key] = value

    def delete(self, fd, key):
        self.calls.append(("delete", key))
        if self.array:
            raise bs.BpfError(errno.EINVAL, "BPF_MAP_DELETE_ELEM")
        return self.data.pop(key, None) is not None

    def update_batch(self, fd, keys, values, flags=0):
        self.calls.append(("batch", len(keys)))
        if not self.batch:
            raise bs.BpfError(errno.EINVAL, "BPF_MAP_UPDATE_BATCH")
        for key, value in zip(keys, values):
            self.update(fd, key, value)
        return len(keys)

    def next_key(self, fd, key, size):
        keys = list(self.data)
        if key is None:
            return keys[0] if keys else None
        i = keys.index(key) + 1
        return keys[i] if i < len(keys) else None


@pytest.fixture
def fake(monkeypatch):
    box = {}

    def make(**kw):
        m = FakeMap(**kw)
        monkeypatch.setattr(bs, "map_lookup", m.lookup)
        monkeypatch.setattr(bs, "map_update", m.update)
        monkeypatch.setattr(bs, "map_delete", m.delete)
        monkeypatch.setattr(bs, "map_update_batch", m.update_batch)
        monkeypatch.setattr(bs, "map_next_key", m.next_key)

        def no_batch(*a):
            raise bs.BpfError(errno.EINVAL, "BPF_MAP_LOOKUP_BATCH")
        monkeypatch.setattr(bs, "map_lookup_batch", no_batch)
        pm = object.__new__(pmod.PinnedMap)
        pm.fd, pm.path, pm.frozen, pm.read_only = 99, "/sys/fs/bpf/x", False, False
        pm.key_size, pm.value_size, pm.buf_size, pm.max_entries = 4, 8, 8, kw.get("max_entries", 4)
        pm.is_array, pm.percpu, pm.ncpus, pm.info, pm.btf = kw.get("array", False), False, 1, {}, None
        pm.read_method = None
        box["map"] = m
        return pm, m
    return make


def test_plan_present_absent_and_untouched(fake):
    pm, m = fake()
    m.data = {k(1): v(10), k(2): v(20)}
    p = pmod.plan(pm, [(k(1), v(10)), (k(2), v(21)), (k(3), v(30))])
    assert p["updates"] == [(k(2), v(21)), (k(3), v(30))] and p["deletes"] == []
    assert p["before"] == {k(2): v(20), k(3): None} and p["previous"] == {k(2): v(20), k(3): None}
    p = pmod.plan(pm, [(k(1), None), (k(9), None)], state="absent")
    assert p["deletes"] == [k(1)] and p["after"] == {k(1): None}


def test_plan_key_without_value_keeps_existing(fake):
    pm, m = fake()
    m.data = {k(1): v(77)}
    p = pmod.plan(pm, [(k(1), None), (k(2), None)])
    assert p["updates"] == [(k(2), v(0))]


def test_plan_exact_reads_everything(fake):
    pm, m = fake()
    m.data = {k(1): v(1), k(2): v(2), k(3): v(3)}
    p = pmod.plan(pm, [(k(2), v(2))], exact=True)
    assert sorted(p["deletes"]) == [k(1), k(3)] and p["updates"] == []
    assert pm.read_method == "next_key"        # batch lookups refused: fallback used


def test_plan_duplicate_keys_disagreeing(fake):
    pm, _m = fake()
    with pytest.raises(pmod.MapError, match="given twice with different values"):
        pmod.plan(pm, [(k(1), v(1)), (k(1), v(2))])


def test_array_absent_means_zero(fake):
    pm, m = fake(array=True)
    m.data[k(1)] = v(5)
    p = pmod.plan(pm, [(k(1), None), (k(2), None)], state="absent")
    assert p["deletes"] == [k(1)]
    pm.apply(p["deletes"], p["updates"], p["previous"])
    assert m.data[k(1)] == v(0) and ("delete", k(1)) not in m.calls
    assert pmod.plan(pm, [(k(1), None)], state="absent")["deletes"] == []


def test_apply_rolls_back_a_partial_batch(fake):
    pm, m = fake(max_entries=4)
    m.data = {k(1): v(100), k(2): v(200), k(3): v(300)}
    before = dict(m.data)
    p = pmod.plan(pm, [(k(1), v(7)), (k(40), v(1)), (k(41), v(1))])
    with pytest.raises(pmod.MapError) as err:
        pm.apply(p["deletes"], p["updates"], p["previous"])
    assert "map is full" in str(err.value) and "restored" in str(err.value)
    assert m.data == before


def test_apply_rolls_back_deletes_too(fake):
    pm, m = fake(max_entries=3)
    m.data = {k(1): v(1), k(2): v(2), k(3): v(3)}
    before = dict(m.data)
    # delete 1 (frees a slot), then write 4 and 5: the second new key does not fit
    with pytest.raises(pmod.MapError):
        pm.apply([k(1)], [(k(4), v(4)), (k(5), v(5))], {k(4): None, k(5): None})
    assert m.data == before


def test_apply_without_batch_support_goes_one_by_one(fake):
    pm, m = fake(batch=False)
    pm.apply([], [(k(1), v(1)), (k(2), v(2))])
    assert m.data == {k(1): v(1), k(2): v(2)}
    assert [c[0] for c in m.calls] == ["batch", "update", "update"]


def test_frozen_map_refuses_before_writing(fake):
    pm, m = fake()
    pm.frozen = pm.read_only = True
    with pytest.raises(pmod.MapError, match="read-only from user space \\(frozen with BPF_MAP_FREEZE\\)"):
        pm.apply([], [(k(1), v(1))])
    assert m.calls == []


def test_rollback_failure_is_reported(fake, monkeypatch):
    pm, m = fake(max_entries=1)
    m.data = {k(1): v(1)}

    def broken_delete(fd, key):
        raise bs.BpfError(errno.EPERM, "BPF_MAP_DELETE_ELEM")
    with pytest.raises(pmod.MapError) as err:
        pm.apply([k(1)], [(k(2), v(2)), (k(3), v(3))], {k(2): None, k(3): None})
    assert "restored" in str(err.value)
    m.data = {k(1): v(1)}
    monkeypatch.setattr(bs, "map_delete", broken_delete)
    with pytest.raises(pmod.MapError) as err:
        pm.apply([], [(k(2), v(2))], {k(2): None})
    assert "ALSO failed" in str(err.value)


def test_array_index_checked_before_writing(fake):
    pm, _m = fake(array=True)
    pm.check_key(k(3), "3")
    with pytest.raises(pmod.MapError, match="index 4 is out of range, the array has 4 entries"):
        pm.check_key(k(4), "4")


def test_map_path(tmp_path):
    assert pmod.map_path(path="/x/y") == "/x/y"
    (tmp_path / "blk" / "maps").mkdir(parents=True)
    (tmp_path / "blk" / "maps" / "blocklist").write_text("")
    (tmp_path / "blk" / "maps" / "verdicts").write_text("")
    root = str(tmp_path)
    assert pmod.map_path(name="blk", map_name="blocklist", pin_root=root) == root + "/blk/maps/blocklist"
    with pytest.raises(pmod.MapError, match="program blk has no map nope .*; its maps: blocklist, verdicts"):
        pmod.map_path(name="blk", map_name="nope", pin_root=root)
    with pytest.raises(pmod.MapError, match="no program named other is managed under " + root):
        pmod.map_path(name="other", map_name="blocklist", pin_root=root)


def test_map_path_falls_back_to_shared(tmp_path):
    os.makedirs(str(tmp_path / "_shared"))
    (tmp_path / "_shared" / "events").write_text("")
    assert pmod.map_path(name="p", map_name="events", pin_root=str(tmp_path)) == str(tmp_path / "_shared" / "events")


def test_map_path_needs_a_way_to_find_the_map():
    with pytest.raises(pmod.MapError, match="give either path, or name"):
        pmod.map_path(name="p")


def test_open_missing_pin():
    with pytest.raises(pmod.MapError, match="no pinned map at /nonexistent/m"):
        pmod.PinnedMap("/nonexistent/m")


def test_read_entries_percpu_values_and_sum(fake):
    pm, m = fake()
    pm.percpu, pm.ncpus, pm.value_size, pm.buf_size = True, 3, 4, 24
    m.data = {k(1): b"".join(n.to_bytes(4, "little") + b"\0" * 4 for n in (1, 2, 3)),
              k(2): b"".join(n.to_bytes(4, "little") + b"\0" * 4 for n in (0, 0, 5))}
    entries = pmod.read_entries(pm, "int", "int")
    assert entries == [{"key": 1, "values": [1, 2, 3], "value": 6}, {"key": 2, "values": [0, 0, 5], "value": 5}]
    assert pm.read_method == "next_key"
    assert pmod.read_entries(pm, "int", "hex", keys=[2, 9]) == [
        {"key": 2, "values": ["00000000", "00000000", "05000000"], "value": None}]
    assert pm.read_method == "lookup"


@pytest.mark.parametrize("name,map_name", [("blk", "../../../etc/x"), ("..", "m"), ("a/b", "m"), ("blk", ".."),
                                           ("blk", "caf\u00e9")])
def test_map_path_refuses_names_that_are_paths(tmp_path, name, map_name):
    with pytest.raises(pmod.MapError, match="is not valid"):
        pmod.map_path(name=name, map_name=map_name, pin_root=str(tmp_path))


# ---- the map's BTF: absent or unreadable means raw bytes; a bug in our code is not relabelled as that ----------
def _btf_blob(types=b"", strings=b"\0"):
    return struct.pack("<HBBI4I", 0xeB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings


def _int_type():
    return struct.pack("<3II", 1, 1 << 24, 4, 32)  # name "int" at offset 1, kind int, 4 bytes, 32 bits


@pytest.fixture
def btf_fd(monkeypatch):
    closed = []
    monkeypatch.setattr(bs, "get_fd_by_id", lambda kind, obj_id: 77)
    monkeypatch.setattr(bs, "close", closed.append)
    return closed


def test_btf_loaded_when_the_kernel_has_it(btf_fd, monkeypatch):
    monkeypatch.setattr(bs, "btf_data", lambda fd: _btf_blob(_int_type(), b"\0int\0"))
    btf = pmod.PinnedMap._load_btf(5)
    assert btf.types[1]["name"] == "int" and btf.types[1]["size"] == 4
    assert btf_fd == [77]


def test_btf_gone_means_raw_bytes(monkeypatch):
    def gone(kind, obj_id):
        raise bs.BpfError(errno.ENOENT, "BPF_BTF_GET_FD_BY_ID")
    monkeypatch.setattr(bs, "get_fd_by_id", gone)
    assert pmod.PinnedMap._load_btf(5) is None


def test_btf_refused_by_the_kernel_means_raw_bytes(btf_fd, monkeypatch):
    def refused(fd):
        raise bs.BpfError(errno.EPERM, "BPF_OBJ_GET_INFO_BY_FD")
    monkeypatch.setattr(bs, "btf_data", refused)
    assert pmod.PinnedMap._load_btf(5) is None
    assert btf_fd == [77]


@pytest.mark.parametrize("blob", [
    b"\0" * 32,                                                        # not BTF (magic)
    _btf_blob(_int_type()[:8], b"\0int\0"),                            # a type cut short (struct.error)
    _btf_blob(struct.pack("<3I", 1, 31 << 24, 0), b"\0x\0"),  # a kind this reader does not know
])
def test_btf_the_reader_cannot_parse_means_raw_bytes(btf_fd, monkeypatch, blob):
    monkeypatch.setattr(bs, "btf_data", lambda fd: blob)
    assert pmod.PinnedMap._load_btf(5) is None
    assert btf_fd == [77]


def test_btf_bug_is_not_swallowed(btf_fd, monkeypatch):
    def bug(fd):
        raise TypeError("a bug, not the host's state")
    monkeypatch.setattr(bs, "btf_data", bug)
    with pytest.raises(TypeError, match="a bug"):
        pmod.PinnedMap._load_btf(5)
    assert btf_fd == [77]  # the fd is still closed
