"""ebpf_map's orchestration against a fake map: check mode acts on nothing, read-only maps are refused even in
check mode, added/updated/removed and the diff come from the plan, big entry lists are not echoed back."""
import contextlib
import errno

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map as pmod
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_runner


class Fail(Exception):
    pass


def run(check=False, diff=True, **params):
    """What the module does with these parameters (defaults filled in as AnsibleModule would)."""
    args = dict(path="/sys/fs/bpf/m", key_format="ipv4", value_format="int")
    args.update(params)
    return map_runner.apply_entries(args, check_mode=check, diff=diff)


@pytest.fixture
def kernel(monkeypatch):
    data = {}
    writes = []

    def lookup(fd, key, size):
        return data.get(key)

    def update(fd, key, value, flags=0):
        writes.append(key)
        data[key] = value

    def delete(fd, key):
        writes.append(key)
        return data.pop(key, None) is not None

    def batch(fd, keys, values, flags=0):
        for key, value in zip(keys, values):
            update(fd, key, value)

    def no_batch_read(*a):
        raise bs.BpfError(errno.EINVAL, "BPF_MAP_LOOKUP_BATCH")

    def next_key(fd, key, size):
        keys = list(data)
        i = 0 if key is None else keys.index(key) + 1
        return keys[i] if i < len(keys) else None
    for name, fn in (("map_lookup", lookup), ("map_update", update), ("map_delete", delete),
                     ("map_update_batch", batch), ("map_next_key", next_key), ("close", lambda fd: None)):
        monkeypatch.setattr(bs, name, fn)
    monkeypatch.setattr(bs, "map_lookup_batch", no_batch_read)
    monkeypatch.setattr(lock, "HostLock", contextlib.nullcontext)
    state = {"frozen": False}
    real_class = pmod.PinnedMap

    def open_map(path, write=False):
        pm = object.__new__(real_class)
        pm.fd, pm.path, pm.frozen, pm.read_only = 5, path, state["frozen"], state["frozen"]
        pm.key_size, pm.value_size, pm.buf_size, pm.max_entries = 4, 8, 8, 1024
        pm.is_array, pm.percpu, pm.ncpus, pm.btf, pm.read_method = False, False, 1, None, None
        pm.info, pm.type_name = {"id": 1, "name": "m"}, "hash"
        return pm
    monkeypatch.setattr(pmod, "PinnedMap", open_map)
    return {"data": data, "writes": writes, "state": state}


IP1, IP2 = b"\x0a\0\0\x01", b"\x0a\0\0\x02"


def test_check_mode_predicts_and_writes_nothing(kernel):
    r = run(check=True, entries=[{"key": "10.0.0.1", "value": 3}])
    assert r["changed"] and r["added"] == ["10.0.0.1"] and kernel["writes"] == []
    assert r["diff"] == {"before": {"entries": {"10.0.0.1": None}}, "after": {"entries": {"10.0.0.1": 3}}}


def test_apply_then_idempotent(kernel):
    args = dict(entries=[{"key": "10.0.0.1", "value": 3}, {"key": "10.0.0.2"}])
    r = run(**args)
    assert r["changed"] and sorted(r["added"]) == ["10.0.0.1", "10.0.0.2"]
    assert kernel["data"] == {IP1: (3).to_bytes(8, "little"), IP2: bytes(8)}
    kernel["data"][IP2] = (9).to_bytes(8, "little")      # the program counts: a key without value keeps it
    r = run(**args)
    assert not r["changed"] and r["added"] == r["updated"] == r["removed"] == []


def test_update_and_remove_lists(kernel):
    kernel["data"].update({IP1: (1).to_bytes(8, "little"), IP2: (2).to_bytes(8, "little")})
    r = run(entries=[{"key": "10.0.0.1", "value": 5}], exact=True)
    assert r["updated"] == ["10.0.0.1"] and r["removed"] == ["10.0.0.2"]
    assert r["diff"]["before"]["entries"] == {"10.0.0.1": 1, "10.0.0.2": 2}
    assert r["diff"]["after"]["entries"] == {"10.0.0.1": 5, "10.0.0.2": None}


def test_frozen_refused_in_check_mode_too(kernel):
    kernel["state"]["frozen"] = True
    for check in (True, False):
        with pytest.raises(pmod.MapError, match="read-only from user space"):
            run(check=check, entries=[{"key": "10.0.0.1", "value": 1}])
    assert kernel["writes"] == []


def test_frozen_without_changes_is_fine(kernel):
    kernel["data"][IP1] = (1).to_bytes(8, "little")
    kernel["state"]["frozen"] = True
    assert not run(entries=[{"key": "10.0.0.1", "value": 1}])["changed"]


@pytest.mark.parametrize("params,message", [
    ({"exact": True, "state": "absent"}, "it needs state=present"),
    ({"entries": [{"value": 1}]}, "entries[0] has no key"),
    ({"entries": [{"key": "10.0.0.1", "val": 1}]}, "entries[0]: unknown field(s) val"),
    ({"entries": [{"key": "10.0.0.1", "value": 1}, {"key": "10.0.0.x", "value": 1}]},
     "entries[1].key: '10.0.0.x' is not an IPv4 address"),
])
def test_bad_input_writes_nothing(kernel, params, message):
    with pytest.raises((Fail, pmod.MapError, ValueError)) as err:
        run(**params)
    assert message in str(err.value)
    assert kernel["writes"] == []


def test_invocation_does_not_echo_entries(kernel):
    entries = [{"key": "10.0.%d.%d" % (i >> 8, i & 255), "value": i} for i in range(500)]
    r = run(entries=entries)
    assert r["invocation"]["module_args"]["entries"] == "(500 entries)"
    assert len(kernel["data"]) == 500


def test_report_keys_false_gives_counts_only(kernel):
    entries = [{"key": "10.0.0.%d" % i, "value": i} for i in range(1, 4)]
    full = run(entries=entries, diff=False)
    assert full["counts"] == {"added": 3, "updated": 0, "removed": 0}
    assert sorted(full["added"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    r = run(entries=[{"key": "10.0.0.1", "value": 9}], state="present", exact=True, report_keys=False, diff=False)
    assert r["changed"] and r["counts"] == {"added": 0, "updated": 1, "removed": 2}, r
    assert "added" not in r and "updated" not in r and "removed" not in r
    assert kernel["data"] == {bytes([10, 0, 0, 1]): (9).to_bytes(8, "little")}
