"""ebpf_map and ebpf_map_info on this machine's kernel, through real `ansible` runs.

Setup: ebpf_program loads the example objects as managed programs under a private pin root (maps at
`<root>/<name>/maps/<map>`), the XDP blocklist attached in generic mode on the b side of a veth pair between two
network namespaces this test creates; traffic is a ping from the a side.
"""
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from tests.conftest import needs_root
from test_ebpf_map_common import bpftool_dump, bpftool_json, drop_program, module, ping, program, veth_netns

pytestmark = needs_root

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs  # noqa: E402


@pytest.fixture(scope="module")
def pin_root():
    root = "/sys/fs/bpf/hm-test-map-%d" % os.getpid()
    os.makedirs(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pair():
    with veth_netns() as p:
        yield p


@pytest.fixture(scope="module")
def blocklist(pin_root, pair):
    """xdp_blocklist loaded, maps pinned at <pin_root>/blocklist/maps/, attached (generic) on the b side."""
    program(pin_root, "blocklist", "xdp_blocklist.bpf.o",
            attach={"xdp": {"interface": pair["b_if"], "netns": pair["b"], "mode": "generic"}})
    yield {"maps": os.path.join(pin_root, "blocklist", "maps"), "name": "blocklist", "pin_root": pin_root}
    drop_program(pin_root, "blocklist")


def dropped_sum(blocklist_maps):
    r = module("ebpf_map_info", {"path": os.path.join(blocklist_maps, "verdicts"), "keys": [1]})
    assert not r.get("failed"), r
    assert r["map"]["percpu"] and r["count"] == 1
    return r["entries"][0]["value"]


def test_blocklist_drops_and_four_run_check(blocklist, pair):
    maps = blocklist["maps"]
    src = pair["a_ip"]
    assert ping(pair["a"], pair["b_ip"]), "no traffic before anything is blocked"
    args = {"name": "blocklist", "map": "blocklist", "pin_root": blocklist["pin_root"], "key_format": "ipv4",
            "entries": [{"key": src, "value": 0}]}
    runs = [module("ebpf_map", args, check=True, diff=True), module("ebpf_map", args, diff=True),
            module("ebpf_map", args), module("ebpf_map", args, check=True)]
    assert [r.get("changed") for r in runs] == [True, True, False, False], runs
    assert runs[0]["added"] == [src] and runs[1]["added"] == [src] and runs[2]["added"] == []
    for r in runs[:2]:
        assert r["diff"] == {"before": {"entries": {src: None}}, "after": {"entries": {src: 0}}}, r
    # the fifth look: what the kernel holds
    dump = bpftool_json("map", "dump", "pinned", os.path.join(maps, "blocklist"))
    assert [e["key"] for e in dump] == [["0x%02x" % int(x) for x in src.split(".")]]

    before = dropped_sum(maps)
    assert not ping(pair["a"], pair["b_ip"]), "ping still answered with its source in the blocklist"
    after = dropped_sum(maps)
    assert after >= before + 2, (before, after)
    r = module("ebpf_map_info", {"path": os.path.join(maps, "blocklist"), "key_format": "ipv4"})
    assert r["entries"][0]["key"] == src and r["entries"][0]["value"] >= 2, r
    assert r["read_method"] in ("batch", "next_key")
    # the value is the program's drop counter: listing the key without a value keeps it (not changed)
    keep = dict(args, entries=[{"key": src}])
    assert module("ebpf_map", keep)["changed"] is False
    assert module("ebpf_map_info", {"path": os.path.join(maps, "blocklist"), "key_format": "ipv4"}
                  )["entries"][0]["value"] == r["entries"][0]["value"]

    absent = dict(args, state="absent", entries=[{"key": src}])
    runs = [module("ebpf_map", absent, check=True), module("ebpf_map", absent), module("ebpf_map", absent),
            module("ebpf_map", absent, check=True)]
    assert [r.get("changed") for r in runs] == [True, True, False, False], runs
    assert runs[1]["removed"] == [src]
    assert bpftool_json("map", "dump", "pinned", os.path.join(maps, "blocklist")) == []
    assert ping(pair["a"], pair["b_ip"]), "traffic not restored after removing the source"


def test_percpu_sums_equal_bpftool(blocklist, pair):
    ping(pair["a"], pair["b_ip"], count=3)
    path = os.path.join(blocklist["maps"], "verdicts")
    ours = module("ebpf_map_info", {"path": path})
    theirs = [e["formatted"] for e in bpftool_json("map", "dump", "pinned", path)]  # bpftool's BTF view
    assert ours["count"] == len(theirs) == 2
    for mine, bt in zip(sorted(ours["entries"], key=lambda e: e["key"]), sorted(theirs, key=lambda e: e["key"])):
        assert mine["key"] == bt["key"]
        cpus = [v["value"] for v in sorted(bt["values"], key=lambda v: v["cpu"])]
        assert mine["values"] == cpus
        assert mine["value"] == sum(cpus)
    assert sum(e["value"] for e in ours["entries"]) > 0, "no packet counted at all"


def test_percpu_struct_write_and_sum(pin_root, pair):
    """xdp_counter's struct counters: a value written through BTF lands on every CPU; sums equal bpftool's."""
    program(pin_root, "counter", "xdp_counter.bpf.o", state="loaded")
    path = os.path.join(pin_root, "counter", "maps", "xdp_stats")
    r = module("ebpf_map", {"path": path, "entries": [{"key": 0, "value": {"packets": 5, "bytes": 700}}]})
    assert r.get("changed") is True, r
    theirs = [e["formatted"] for e in bpftool_json("map", "dump", "pinned", path)]
    assert [v["value"] for v in theirs[0]["values"]] == [{"packets": 5, "bytes": 700}] * bs.possible_cpus()
    ours = module("ebpf_map_info", {"path": path})
    assert ours["entries"][0]["value"] == {"packets": 5 * bs.possible_cpus(), "bytes": 700 * bs.possible_cpus()}
    assert ours["entries"][0]["values"] == [v["value"] for v in theirs[0]["values"]]
    bad = module("ebpf_map", {"path": path, "entries": [{"key": 0, "value": {"packets": 1, "octets": 2}}]})
    assert bad.get("failed") and "octets" in bad["msg"] and "packets, bytes" in bad["msg"], bad
    drop_program(pin_root, "counter")


def test_info_wait_for_a_counter_to_move(pin_root):
    """wait_for: one module run that returns once traffic moves the counter, and fails with the last value
    when nothing moves it in time."""
    with veth_netns() as p:
        for ns, ifname in ((p["a"], p["a_if"]), (p["b"], p["b_if"])):    # no IPv6 chatter: only our pings
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % ifname],
                           check=True)
        program(pin_root, "waitcount", "xdp_counter.bpf.o",
                attach={"xdp": {"interface": p["b_if"], "netns": p["b"], "mode": "generic"}})
        try:
            args = {"name": "waitcount", "map": "xdp_stats", "pin_root": pin_root, "keys": [0]}
            before = module("ebpf_map_info", args)["entries"][0]["value"]["packets"]
            # a mark no traffic reaches in a second (the fresh veth does send some IPv6 neighbour discovery):
            # the wait runs out and says where the counter stayed
            mark = before + 10 ** 9
            r = module("ebpf_map_info", dict(args, wait_for={"above": mark, "field": "packets", "timeout": 1}))
            assert r.get("failed"), r
            stayed = r["wait"]["value"]
            assert "xdp_stats[0].packets stayed at %d, not above %d, for 1.0 s" % (stayed, mark) in r["msg"], r
            assert r["wait"]["reached"] is False and stayed >= before and r["wait"]["seconds"] >= 1
            before = stayed
            # traffic starts while the module waits: it returns with the moved counter
            timer = threading.Timer(4.0, ping, (p["a"], p["b_ip"]))
            timer.start()
            try:
                r = module("ebpf_map_info", dict(args, wait_for={"above": before, "field": "packets", "timeout": 30}))
            finally:
                timer.join()
            assert not r.get("failed") and r["wait"]["reached"] is True, r
            assert r["wait"]["value"] > before and r["entries"][0]["value"]["packets"] == r["wait"]["value"]
            assert 0 < r["wait"]["seconds"] < 30, r["wait"]    # it waited for the pings: not a single read
            # what it refuses
            r = module("ebpf_map_info", dict(args, keys=[], wait_for={"above": 0}))
            assert r.get("failed") and "exactly one key" in r["msg"], r
            r = module("ebpf_map_info", dict(args, wait_for={"above": 0, "field": "octets", "timeout": 1}))
            assert r.get("failed") and "no such member (members: bytes, packets)" in r["msg"], r
        finally:
            drop_program(pin_root, "waitcount")


def test_exact_removes_the_rest(pin_root):
    fd = bs.map_create(bs.BPF_MAP_TYPE_HASH, 4, 8, 64, name="hm_exact")
    path = os.path.join(pin_root, "exact")
    bs.obj_pin(fd, path)
    bs.close(fd)
    add = {"path": path, "key_format": "int", "value_format": "int",
           "entries": [{"key": k, "value": k * 10} for k in range(1, 6)]}
    assert module("ebpf_map", add)["changed"]
    exact = {"path": path, "key_format": "int", "value_format": "int", "exact": True,
             "entries": [{"key": 2, "value": 20}, {"key": 9, "value": 90}]}
    r = module("ebpf_map", exact)
    assert r["changed"] and r["added"] == ["9"] and sorted(r["removed"]) == ["1", "3", "4", "5"], r
    assert not module("ebpf_map", exact)["changed"]
    got = module("ebpf_map_info", {"path": path, "key_format": "int", "value_format": "int"})["entries"]
    assert sorted((e["key"], e["value"]) for e in got) == [(2, 20), (9, 90)]


# ------------------------------------------------------------------ bad inputs write nothing

@pytest.fixture
def small_map(pin_root):
    """A 4-entry hash map holding 3 entries."""
    fd = bs.map_create(bs.BPF_MAP_TYPE_HASH, 4, 8, 4, name="hm_small")
    for k in (1, 2, 3):
        bs.map_update(fd, k.to_bytes(4, "little"), (k * 100).to_bytes(8, "little"))
    path = os.path.join(pin_root, "small-%d" % time.monotonic_ns())
    bs.obj_pin(fd, path)
    yield path, fd
    bs.close(fd)
    os.unlink(path)


BAD = [
    ("wrong key size", {"key_format": "hex", "entries": [{"key": "0a0000", "value": 1}]}, "3 byte(s) given"),
    ("value too big", {"key_format": "int", "value_format": "int", "entries": [{"key": 1, "value": 1 << 64}]},
     "does not fit"),
    ("bad address", {"key_format": "ipv4", "entries": [{"key": "10.0.0.256", "value": 1}]},
     "not an IPv4 address"),
    ("ipv6 on 4 bytes", {"key_format": "ipv6", "entries": [{"key": "::1", "value": 1}]}, "needs 16 bytes"),
    ("second entry bad", {"key_format": "int", "value_format": "int",
                          "entries": [{"key": 1, "value": 5}, {"key": "x", "value": 1}]}, "not an integer"),
    ("map full", {"key_format": "int", "value_format": "int",
                  "entries": [{"key": 1, "value": 7}, {"key": 40, "value": 1}, {"key": 41, "value": 1}]},
     "map is full"),
]


@pytest.mark.parametrize("label,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_writes_nothing(small_map, label, args, message):
    path, _fd = small_map
    before = bpftool_dump(path)
    r = module("ebpf_map", dict(args, path=path))
    assert r.get("failed"), r
    assert message in r["msg"], r["msg"]
    assert bpftool_dump(path) == before


def test_map_full_rolls_back_in_the_kernel(small_map):
    """The map-full case above fails in the kernel mid-way (BPF_MAP_UPDATE_BATCH wrote key 1 and 40 before
    E2BIG on 41): the message says the entries were restored and key 1 holds its old value again."""
    path, fd = small_map
    r = module("ebpf_map", {"path": path, "key_format": "int", "value_format": "int",
                            "entries": [{"key": 1, "value": 7}, {"key": 40, "value": 1}, {"key": 41, "value": 1}]})
    assert r.get("failed") and "restored" in r["msg"], r
    assert bs.map_lookup(fd, (1).to_bytes(4, "little"), 8) == (100).to_bytes(8, "little")
    assert bs.map_lookup(fd, (40).to_bytes(4, "little"), 8) is None


def test_unknown_map(pin_root):
    r = module("ebpf_map", {"path": os.path.join(pin_root, "nope"), "entries": [{"key": "00", "value": "00"}]})
    assert r.get("failed") and "no pinned map at" in r["msg"], r
    r = module("ebpf_map", {"name": "nope", "map": "blocklist", "pin_root": pin_root,
                            "entries": [{"key": "00", "value": "00"}]})
    assert r.get("failed") and "no program named nope is managed under " + pin_root in r["msg"], r
    r = module("ebpf_map_info", {"path": os.path.join(pin_root, "nope")})
    assert r.get("failed") and "no pinned map at" in r["msg"], r


def test_a_pinned_program_is_not_a_map(blocklist):
    prog = os.path.join(blocklist["pin_root"], "blocklist", "prog")
    r = module("ebpf_map_info", {"path": prog})
    assert r.get("failed") and r["msg"] == "%s is pinned but is not a map" % prog, r
    r = module("ebpf_map", {"name": "blocklist", "map": "nope", "pin_root": blocklist["pin_root"],
                            "entries": [{"key": "00000000"}]})
    assert r.get("failed") and "its maps: blocklist, verdicts" in r["msg"], r


def test_key_without_value(pin_root):
    """state=present with no value: a missing key is added as zeros, an existing key keeps its value."""
    fd = bs.map_create(bs.BPF_MAP_TYPE_HASH, 4, 8, 8, name="hm_novalue")
    bs.map_update(fd, (1).to_bytes(4, "little"), (5).to_bytes(8, "little"))
    path = os.path.join(pin_root, "novalue")
    bs.obj_pin(fd, path)
    bs.close(fd)
    args = {"path": path, "key_format": "int", "value_format": "int", "entries": [{"key": 1}, {"key": 2}]}
    r = module("ebpf_map", args)
    assert r["changed"] and r["added"] == ["2"] and r["updated"] == [], r
    assert not module("ebpf_map", args)["changed"]
    got = module("ebpf_map_info", {"path": path, "key_format": "int", "value_format": "int"})["entries"]
    assert sorted((e["key"], e["value"]) for e in got) == [(1, 5), (2, 0)]


def test_read_only_map(pin_root):
    """BPF_MAP_FREEZE makes a map read-only for the syscall side (BPF_F_RDONLY at create time only limits the
    creating fd: the kernel does not keep it in map_flags, and the pin opens read-write)."""
    fd = bs.map_create(bs.BPF_MAP_TYPE_HASH, 4, 8, 8, name="hm_ro")
    bs.map_update(fd, (1).to_bytes(4, "little"), (5).to_bytes(8, "little"))
    bs.map_freeze(fd)
    path = os.path.join(pin_root, "ro-frozen")
    bs.obj_pin(fd, path)
    bs.close(fd)
    before = bpftool_dump(path)
    for check in (True, False):
        r = module("ebpf_map", {"path": path, "key_format": "int", "value_format": "int",
                                "entries": [{"key": 2, "value": 1}]}, check=check)
        assert r.get("failed") and "read-only" in r["msg"], r
    assert bpftool_dump(path) == before
    r = module("ebpf_map_info", {"path": path, "key_format": "int", "value_format": "int"})
    assert r["map"]["frozen"] is True and r["entries"] == [{"key": 1, "value": 5}], r
    os.unlink(path)


def test_array_index_out_of_range(pin_root):
    fd = bs.map_create(bs.BPF_MAP_TYPE_ARRAY, 4, 4, 4, name="hm_arr")
    path = os.path.join(pin_root, "arr")
    bs.obj_pin(fd, path)
    bs.close(fd)
    r = module("ebpf_map", {"path": path, "key_format": "int", "value_format": "int",
                            "entries": [{"key": 1, "value": 3}, {"key": 4, "value": 1}]})
    assert r.get("failed") and "out of range" in r["msg"], r
    assert all(int("".join(x[2:] for x in e["value"]), 16) == 0 for e in bpftool_json("map", "dump", "pinned", path))
    # absent in an array zeroes the entry; zero counts as absent (idempotent)
    assert module("ebpf_map", {"path": path, "key_format": "int", "value_format": "int",
                               "entries": [{"key": 1, "value": 3}]})["changed"]
    gone = {"path": path, "key_format": "int", "state": "absent", "entries": [{"key": 1}]}
    assert module("ebpf_map", gone)["changed"]
    assert not module("ebpf_map", gone)["changed"]


def test_map_without_batch_lookup_reads_with_next_key(pin_root):
    """DEVMAP_HASH has no BPF_MAP_LOOKUP_BATCH (ENOTSUPP): the read falls back to GET_NEXT_KEY and says so."""
    fd = bs.map_create(25, 4, 4, 16, name="hm_devmap")   # BPF_MAP_TYPE_DEVMAP_HASH, value: an ifindex
    path = os.path.join(pin_root, "devmap")
    bs.obj_pin(fd, path)
    bs.close(fd)
    lo = 1
    entries = [{"key": 1, "value": lo}, {"key": 7, "value": lo}]
    args = {"path": path, "key_format": "int", "value_format": "int", "entries": entries}
    assert module("ebpf_map", args)["changed"]
    assert not module("ebpf_map", args)["changed"]
    r = module("ebpf_map_info", {"path": path, "key_format": "int", "value_format": "int"})
    assert r["read_method"] == "next_key", r
    assert sorted((e["key"], e["value"]) for e in r["entries"]) == [(1, lo), (7, lo)]
    assert len(bpftool_json("map", "dump", "pinned", path)) == 2
    r = module("ebpf_map", dict(args, exact=True, entries=entries[:1]))
    assert r["changed"] and r["removed"] == ["7"], r


def test_percpu_hash_value_on_every_cpu(pin_root):
    fd = bs.map_create(bs.BPF_MAP_TYPE_PERCPU_HASH, 4, 4, 8, name="hm_pcpu")
    path = os.path.join(pin_root, "pcpu")
    bs.obj_pin(fd, path)
    bs.close(fd)
    args = {"path": path, "key_format": "int", "value_format": "int", "entries": [{"key": 3, "value": 7}]}
    assert module("ebpf_map", args)["changed"]
    assert not module("ebpf_map", args)["changed"]
    theirs = bpftool_json("map", "dump", "pinned", path)
    ncpu = bs.possible_cpus()
    assert [v["value"] for v in theirs[0]["values"]] == [["0x07", "0x00", "0x00", "0x00"]] * ncpu
    r = module("ebpf_map_info", {"path": path, "key_format": "int", "value_format": "int"})
    assert r["entries"] == [{"key": 3, "values": [7] * ncpu, "value": 7 * ncpu}]
    # one CPU differing makes the entry differ: the next run writes it again
    fd = bs.obj_get(path)
    stride = 8
    buf = bytearray(bs.map_lookup(fd, (3).to_bytes(4, "little"), stride * ncpu))
    buf[0] = 9
    bs.map_update(fd, (3).to_bytes(4, "little"), bytes(buf))
    bs.close(fd)
    r = module("ebpf_map", args, diff=True)
    assert r["changed"] and r["updated"] == ["3"], r
    assert r["diff"]["before"]["entries"]["3"] == [9] + [7] * (ncpu - 1)
    assert r["diff"]["after"]["entries"]["3"] == 7


# ------------------------------------------------------------------ files on the host: ebpf_map src, ebpf_map_info dest

def _hash(pin_root, name, max_entries=64, entries=()):
    fd = bs.map_create(bs.BPF_MAP_TYPE_HASH, 4, 8, max_entries, name="hm_" + name[:10])
    for k, v in entries:
        bs.map_update(fd, k.to_bytes(4, "big"), v.to_bytes(8, "little"))
    path = os.path.join(pin_root, "%s-%d" % (name, time.monotonic_ns()))
    bs.obj_pin(fd, path)
    bs.close(fd)
    return path


def _kernel_view(path):
    """{dotted quad: value} from bpftool's dump."""
    out = {}
    for e in bpftool_json("map", "dump", "pinned", path):
        out[".".join(str(int(b, 16)) for b in e["key"])] = int("".join(b[2:] for b in reversed(e["value"])), 16)
    return out


def test_src_file_four_run_check_and_forms(pin_root, tmp_path):
    path = _hash(pin_root, "src")
    src = tmp_path / "entries.json"
    src.write_text('[{"key": "192.0.2.1", "value": 10}, {"key": "192.0.2.2", "value": 20}]')
    args = {"path": path, "key_format": "ipv4", "value_format": "int", "src": str(src)}
    runs = [module("ebpf_map", args, check=True, diff=True), module("ebpf_map", args, diff=True),
            module("ebpf_map", args), module("ebpf_map", args, check=True)]
    assert [r.get("changed") for r in runs] == [True, True, False, False], runs
    assert sorted(runs[1]["added"]) == ["192.0.2.1", "192.0.2.2"] and runs[1]["src_entries"] == 2, runs[1]
    assert runs[1]["diff"]["after"]["entries"] == {"192.0.2.1": 10, "192.0.2.2": 20}, runs[1]
    assert _kernel_view(path) == {"192.0.2.1": 10, "192.0.2.2": 20}
    # a line file with exact: one value changed, one key only (kept), the rest removed
    lines = tmp_path / "blocklist.txt"
    lines.write_text("# sources\n192.0.2.1 11\n192.0.2.3\n")
    r = module("ebpf_map", dict(args, src=str(lines), exact=True))
    assert r["changed"] and r["updated"] == ["192.0.2.1"] and r["added"] == ["192.0.2.3"], r
    assert r["removed"] == ["192.0.2.2"], r
    assert _kernel_view(path) == {"192.0.2.1": 11, "192.0.2.3": 0}
    # a JSON object {key: value}, as ebpf_map_info writes with entries_as=dict
    obj = tmp_path / "entries-dict.json"
    obj.write_text('{"192.0.2.1": 11, "192.0.2.3": 0}')
    assert module("ebpf_map", dict(args, src=str(obj), exact=True))["changed"] is False


BAD_SRC = [
    ("a bad key on line 2", "192.0.2.9 1\n192.0.2.x 2\n", "entry[1].key: '192.0.2.x' is not an IPv4 address"),
    ("three fields", "192.0.2.9 1 2\n", "line 1"),
    ("broken JSON", '[{"key": "192.0.2.9", "value": 1},]', "is not valid JSON"),
    ("unknown field", '[{"key": "192.0.2.9", "val": 1}]', "unknown field(s) val"),
    ("value too big", '[{"key": "192.0.2.9", "value": 1}, {"key": "192.0.2.8", "value": 18446744073709551616}]',
     "entry[1].value: 18446744073709551616 does not fit"),
]


@pytest.mark.parametrize("label,text,message", BAD_SRC, ids=[b[0] for b in BAD_SRC])
def test_bad_src_writes_nothing(pin_root, tmp_path, label, text, message):
    path = _hash(pin_root, "badsrc", entries=[(0xc0000201, 5)])
    src = tmp_path / "src"
    src.write_text(text)
    before = bpftool_dump(path)
    r = module("ebpf_map", {"path": path, "key_format": "ipv4", "value_format": "int", "src": str(src),
                            "exact": True})
    assert r.get("failed") and message in r["msg"] and str(src) in r["msg"], r
    assert bpftool_dump(path) == before
    os.unlink(path)


def test_src_missing_or_with_entries(pin_root, tmp_path):
    path = _hash(pin_root, "srcmiss")
    r = module("ebpf_map", {"path": path, "key_format": "ipv4", "src": str(tmp_path / "nope")})
    assert r.get("failed") and "cannot read src %s: No such file" % (tmp_path / "nope") in r["msg"], r
    src = tmp_path / "one"
    src.write_text("192.0.2.1\n")
    r = module("ebpf_map", {"path": path, "key_format": "ipv4", "src": str(src), "entries": [{"key": "192.0.2.2"}]})
    assert r.get("failed") and "mutually exclusive: entries|src" in r["msg"], r
    assert bpftool_json("map", "dump", "pinned", path) == []


def test_info_entries_as_dict_equals_bpftool(pin_root):
    path = _hash(pin_root, "asdict", max_entries=512, entries=[(0x0a000000 + i, i * 3) for i in range(300)])
    r = module("ebpf_map_info", {"path": path, "key_format": "ipv4", "value_format": "int", "entries_as": "dict"})
    assert r["count"] == 300 and r["entries"] == _kernel_view(path), r["count"]
    r = module("ebpf_map_info", {"path": path, "key_format": "ipv4", "value_format": "int", "entries_as": "dict",
                                 "keys": ["10.0.0.7", "10.9.9.9"]})
    assert r["entries"] == {"10.0.0.7": 21} and r["read_method"] == "lookup", r


def test_info_dest_four_run_check_and_round_trip(pin_root, tmp_path):
    path = _hash(pin_root, "dest", max_entries=4096, entries=[(0x0a000000 + i, i) for i in range(3000)])
    dest = tmp_path / "dump.json"
    args = {"path": path, "key_format": "ipv4", "value_format": "int", "dest": str(dest)}
    first = module("ebpf_map_info", args, check=True)
    assert first["changed"] is True and not dest.exists() and "entries" not in first, first
    runs = [module("ebpf_map_info", args), module("ebpf_map_info", args), module("ebpf_map_info", args, check=True)]
    assert [r["changed"] for r in runs] == [True, False, False], runs
    assert runs[0]["count"] == 3000 and runs[0]["dest"] == str(dest) and "entries" not in runs[0], runs[0]
    dumped = json.loads(dest.read_text())
    assert dict((e["key"], e["value"]) for e in dumped) == _kernel_view(path)
    # the kernel changes, the file follows
    fd = bs.obj_get(path)
    bs.map_update(fd, (0x0a000001).to_bytes(4, "big"), (99).to_bytes(8, "little"))
    bs.close(fd)
    assert module("ebpf_map_info", args)["changed"] is True
    # the dump loads into another map through ebpf_map src: same contents
    copy = _hash(pin_root, "copy", max_entries=4096)
    r = module("ebpf_map", {"path": copy, "key_format": "ipv4", "value_format": "int", "src": str(dest)})
    assert r["changed"] and len(r["added"]) == 3000, r.get("msg")
    assert _kernel_view(copy) == _kernel_view(path)
    # entries_as=dict into the file works the same way
    as_dict = tmp_path / "dump-dict.json"
    assert module("ebpf_map_info", dict(args, dest=str(as_dict), entries_as="dict"))["changed"]
    assert json.loads(as_dict.read_text()) == _kernel_view(path)
    assert module("ebpf_map", {"path": copy, "key_format": "ipv4", "value_format": "int", "src": str(as_dict),
                               "exact": True})["changed"] is False
    r = module("ebpf_map_info", dict(args, dest=str(tmp_path / "no" / "dump.json")))
    assert r.get("failed") and "does not exist" in r["msg"], r


def test_module_utils_compiled_once_per_host(pin_root):
    """Through Ansible the modules import their module_utils from the AnsiballZ zip; pycache keeps a
    compiled copy per module on the host (a directory each: ebpf_map and ebpf_map_info ship other sets)."""
    import glob
    path = _hash(pin_root, "pycache")
    assert module("ebpf_map", {"path": path, "key_format": "int", "value_format": "int",
                               "entries": [{"key": 1, "value": 2}]})["changed"]
    assert module("ebpf_map_info", {"path": path, "key_format": "int", "value_format": "int"})["count"] == 1
    for name, util in (("ebpf_map", "map_runner"), ("ebpf_map_info", "pinned_map")):
        found = glob.glob("/var/cache/hypermesh-ebpf/pycache/%s/*/_*/__pycache__/%s.*.pyc" % (name, util))
        assert found, name  # (copies for other versions of the collection may be kept a while)
