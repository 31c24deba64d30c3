"""Host safety on the real kernel: prune touches only what is ours, and hostile inputs are refused cleanly.

- Prune (the ebpf_programs role through ansible-playbook on localhost, a private pin root and state dir): a host
  running a program with a map pinned by name (`<pin_root>/_shared/`) rolls out again with prune and succeeds
  (before, `_shared` was listed as a managed program and prune failed on every run); a directory another tool
  pinned under the pin root (no record of ours) survives every prune, the same map id pinned; a program dropped
  from the list is pruned. ebpf_info with pin_root /sys/fs/bpf lists none of the directories there that have
  no record of ours.
- Inputs: an ebpf_map `src` that is /dev/zero, bigger than the limit (a sparse file) or writable by others; map
  and program names that are paths; an ELF object whose program name is not UTF-8, whose map name begins with
  `/` or is `..`, or whose pinned-by-name map would be pinned outside `_shared` (`../../x`). Each run fails with
  a message naming the problem, and afterwards the kernel's prog/map/link lists hold nothing new of ours, no pin
  was made (inside or outside the pin root), no record was written and the map's entries are unchanged.
"""
import json
import os
import subprocess
import uuid

import pytest

from tests.conftest import ansible_module, needs_root
from tests.integration.test_roles import failure_messages, run_playbook, state_result
from test_ebpf_program_common import OBJECTS, kernel_ids, kname, leaked, mounts, private_object

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state

pytestmark = needs_root

PLAY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: hypermesh.ebpf.ebpf_programs
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory, pair):
    """A private pin root and state/config dirs for the role, and a directory "another tool" pinned there."""
    mounts()
    tmp = tmp_path_factory.mktemp("inputs")
    root = "/sys/fs/bpf/hmt_inputs_%s" % uuid.uuid4().hex[:8]
    os.mkdir(root, 0o755)
    other = os.path.join(root, "othertool")
    os.mkdir(other, 0o755)
    subprocess.check_call(["bpftool", "map", "create", os.path.join(other, "m"), "type", "array", "key", "4",
                           "value", "4", "entries", "1", "name", "hm_othertool"])
    h = {"root": root, "state": str(tmp / "state"), "etc": str(tmp / "etc"), "lib": str(tmp / "lib"),
         "other": other, "other_id": _map_id(os.path.join(other, "m")), "tmp": str(tmp), "pair": pair}
    yield h
    for name in sorted(os.listdir(root)):
        if name not in ("othertool", "_shared"):
            ansible_module("ebpf_program", {"name": name, "state": "absent", "pin_root": root, "state_dir": h["state"]})
    subprocess.call(["rm", "-rf", root])


def _map_id(path):
    fd = bs.obj_get(path)
    try:
        return bs.map_info(fd)["id"]
    finally:
        bs.close(fd)


def _rollout(host, programs):
    path = os.path.join(host["tmp"], "vars-%s.json" % uuid.uuid4().hex[:6])
    with open(path, "w") as f:
        json.dump({"ebpf_programs": programs, "ebpf_programs_pin_root": host["root"],
                   "ebpf_programs_state_dir": host["state"], "ebpf_programs_config_dir": host["etc"],
                   "ebpf_programs_lib_dir": host["lib"], "ebpf_programs_persist": False,
                   "ebpf_programs_health": "none", "ebpf_programs_prune": True}, f)
    play = os.path.join(host["tmp"], "play.yml")
    with open(play, "w") as f:
        f.write(PLAY)
    return run_playbook(play, extra=["@" + path])


def _shared_prog(host):
    p = host["pair"]
    return {"name": "shared", "object": os.path.join(OBJECTS, "xdp_pinned_shared.bpf.o"),
            "attach": {"xdp": {"interface": p.if_b, "netns": p.ns_b, "mode": "generic"}}}


OPENAT = {"name": "openat", "object": os.path.join(OBJECTS, "tp_openat.bpf.o"),
          "attach": {"tracepoint": "syscalls/sys_enter_openat"}}


def _pruned(doc):
    """The names ebpf_state pruned (the role's one transaction)."""
    return state_result(doc, "localhost")["pruned"]


def test_prune_with_a_shared_map_succeeds_and_spares_other_tools_pins(host):
    rc, doc = _rollout(host, [_shared_prog(host)])
    assert rc == 0, failure_messages(doc)
    shared = os.path.join(host["root"], "_shared", "shared_counter")
    assert os.path.exists(shared) and os.path.exists(os.path.join(host["root"], "shared", "prog"))
    assert _pruned(doc) == []
    rc, doc = _rollout(host, [_shared_prog(host)])  # every run with prune: was "ebpf_program name=_shared" failing
    assert rc == 0, failure_messages(doc)
    assert _pruned(doc) == []
    assert _map_id(os.path.join(host["other"], "m")) == host["other_id"]
    # the shared program dropped from the list: pruned, its _shared pin with it; the other tool's pins stay
    rc, doc = _rollout(host, [OPENAT])
    assert rc == 0, failure_messages(doc)
    assert _pruned(doc) == ["shared"]
    assert not os.path.exists(os.path.join(host["root"], "shared")) and not os.path.exists(shared)
    assert os.path.exists(os.path.join(host["root"], "openat", "link"))
    assert sorted(os.listdir(host["other"])) == ["m"] and _map_id(os.path.join(host["other"], "m")) == host["other_id"]
    rc, doc = _rollout(host, [])
    assert rc == 0, failure_messages(doc)
    assert _pruned(doc) == ["openat"]
    assert sorted(os.listdir(host["root"])) == ["othertool"]
    assert _map_id(os.path.join(host["other"], "m")) == host["other_id"]


def test_info_at_the_bpffs_root_lists_only_directories_with_a_record_of_ours(host):
    """pin_root /sys/fs/bpf holds other tools' (and other tests') directories: none is managed without a record
    in this state dir, so a prune there would remove nothing."""
    foreign = "/sys/fs/bpf/hm-foreign-inputs-%d" % os.getpid()
    os.mkdir(foreign)
    try:
        r = ansible_module("ebpf_info", {"pin_root": "/sys/fs/bpf", "state_dir": host["state"]})
        assert not r.get("failed"), r
        assert r["managed_names"] == [], r["managed_names"]
    finally:
        os.rmdir(foreign)


# ---- inputs -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def counter_prog(host):
    """A managed program with a map holding one entry, for the ebpf_map input tests."""
    r = ansible_module("ebpf_program", {"name": "inputs-blk", "object": os.path.join(OBJECTS, "xdp_blocklist.bpf.o"),
                                        "pin_root": host["root"], "state": "loaded", "state_dir": host["state"]})
    assert not r.get("failed"), r
    r = ansible_module("ebpf_map", {"name": "inputs-blk", "map": "blocklist", "pin_root": host["root"],
                                    "key_format": "ipv4", "entries": [{"key": "192.0.2.1"}]})
    assert not r.get("failed") and r["changed"], r
    yield os.path.join(host["root"], "inputs-blk", "maps", "blocklist")
    ansible_module("ebpf_program", {"name": "inputs-blk", "state": "absent", "pin_root": host["root"],
                                    "state_dir": host["state"]})


def _dump(path):
    return sorted((e["key"], e.get("value")) for e in json.loads(subprocess.check_output(
        ["bpftool", "-j", "map", "dump", "pinned", path])))


def _src_file(host, kind):
    path = os.path.join(host["tmp"], "src-" + kind)
    if kind == "zero":
        return "/dev/zero"
    with open(path, "w") as f:
        f.write("192.0.2.7\n")
    if kind == "big":
        os.truncate(path, (64 << 20) + 1)  # sparse: nothing of it needs to be read to refuse it
    elif kind == "writable":
        os.chmod(path, 0o666)
    return path


@pytest.mark.parametrize("kind,needle", [("zero", "not a regular file"), ("big", "more than the limit"),
                                         ("writable", "can be written by other users")])
def test_map_src_that_cannot_be_trusted_is_refused(host, counter_prog, kind, needle):
    before = _dump(counter_prog)
    r = ansible_module("ebpf_map", {"name": "inputs-blk", "map": "blocklist", "pin_root": host["root"],
                                    "key_format": "ipv4", "src": _src_file(host, kind)})
    assert r.get("failed") and needle in r["msg"], r
    assert _dump(counter_prog) == before


@pytest.mark.parametrize("name,map_name", [("inputs-blk", "../../othertool/m"), ("..", "othertool"),
                                           ("inputs-blk/maps", "blocklist")])
def test_map_names_that_are_paths_are_refused(host, counter_prog, name, map_name):
    before = _dump(counter_prog)
    r = ansible_module("ebpf_map", {"name": name, "map": map_name, "pin_root": host["root"],
                                    "entries": [{"key": "0x01000000"}]})
    assert r.get("failed") and "is not valid" in r["msg"], r
    assert _dump(counter_prog) == before
    assert _map_id(os.path.join(host["other"], "m")) == host["other_id"]


def _patched(host, src_obj, old, new, tag):
    """A copy of src_obj with the ELF string `old` (symbol and BTF name) replaced by `new` (NUL padded)."""
    with open(src_obj, "rb") as f:
        data = f.read()
    assert len(new) <= len(old)
    found = data.count(b"\0" + old + b"\0")
    assert found >= 1, (old, found)
    data = data.replace(b"\0" + old + b"\0", b"\0" + new + b"\0" * (len(old) - len(new) + 1))
    path = os.path.join(host["tmp"], "patched-%s.bpf.o" % tag)
    with open(path, "wb") as f:
        f.write(data)
    return path


ESCAPE = "/sys/fs/bpf/hmt_evil"  # where ../../hmt_evil from <pin_root>/_shared/ would land


@pytest.mark.parametrize("tag,symbol,new,needle", [
    ("prog-not-utf8", "xdp_count", b"hmt_xdp_\xffount", "is not printable ASCII"),
    ("map-abs", "xdp_stats", b"/tmp/hmt_evil", "would be a path"),
    ("map-dotdot", "xdp_stats", b"..", "would be a path"),
    ("shared-escape", "shared_counter", b"../../hmt_evil", "would be a path"),
])
def test_object_names_that_cannot_be_pinned_safely_are_refused(host, tag, symbol, new, needle):
    src = "xdp_pinned_shared" if symbol == "shared_counter" else "xdp_counter"
    prog = "xdp_shared" if src == "xdp_pinned_shared" else "xdp_count"
    built = private_object(src, [prog, symbol])
    path = _patched(host, built, ("hmt_" + symbol).encode(), new, tag)
    name = "inputs-" + tag
    p = host["pair"]
    args = {"name": name, "object": path, "pin_root": host["root"], "state_dir": host["state"],
            "attach": {"xdp": {"interface": p.if_b, "netns": p.ns_b, "mode": "generic"}}}
    before = kernel_ids()
    listing = sorted(os.listdir(host["root"]))
    for check in (True, False):
        r = ansible_module("ebpf_program", args, check=check)
        assert r.get("failed") and needle in r["msg"] and "nothing changed" in r["msg"], r
        assert "Traceback" not in r.get("module_stderr", ""), r
    assert sorted(os.listdir(host["root"])) == listing
    assert not os.path.lexists(ESCAPE) and not os.path.lexists("/tmp/hmt_evil")
    assert program_state.read_record(name, host["state"]) is None
    progs = [kname(prog), new.decode("ascii", "replace")[:15]]
    maps = [kname(symbol), new.decode("ascii", "replace")[:15]]
    assert not any(leaked(before, progs, maps).values())
    assert not any(set(bs.iter_ids(k)) - before[k] for k in ("link",))
