"""ebpf_program bad inputs on the real kernel: each gives a clear error and leaves the kernel as it was.

"As it was": no new program/map/link of the object under test in the kernel's id lists, no pin directory, no
state record (other engineers' tests run on the same kernel at the same time, so the comparison is restricted to
our objects; see test_ebpf_program_common.leaked).
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS, TOP, needs_root
from test_ebpf_program_common import pin_root_fixture, kernel_ids, kname, leaked, obj, private_object, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state

pytestmark = needs_root


pin_root = pin_root_fixture("hm-prog-bad")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    garbage = d / "garbage.bpf.o"
    garbage.write_bytes(os.urandom(4096))
    truncated = d / "truncated.bpf.o"
    with open(counter_object(), "rb") as f:
        truncated.write_bytes(f.read()[:900])
    return {"garbage": str(garbage), "truncated": str(truncated)}


@pytest.fixture
def tmpfs_root():
    path = "/tmp/hm-prog-tmpfs-%d" % os.getpid()
    os.makedirs(path)
    subprocess.check_call(["mount", "-t", "tmpfs", "tmpfs", path])
    yield os.path.join(path, "bpf", "hypermesh")
    subprocess.call(["umount", path])
    os.rmdir(path)


OURS = (kname("xdp_count"),)
OUR_MAPS = (kname("xdp_stats"),)


def counter_object():
    """xdp_counter built with our own names (hmt_xdp_count, hmt_xdp_stats)."""
    return private_object("xdp_counter", ["xdp_count", "xdp_stats"])


def _expect_clean_failure(args, pin_root, needle, progs=OURS, maps=OUR_MAPS, check_too=True):
    before = kernel_ids()
    modes = (True, False) if check_too else (False,)
    results = []
    for check in modes:
        r = run(args, check=check)
        assert r.get("failed"), r
        assert needle in r["msg"], (needle, r["msg"])
        results.append(r)
    name = args.get("name", "")
    if name and "/" not in name and ".." not in name:
        assert not os.path.exists(os.path.join(pin_root, name))
        assert program_state.read_record(name) is None
    assert not any(leaked(before, list(progs), list(maps)).values())
    return results[-1]


def _args(pin_root, **kw):
    a = {"name": "bad-%d" % os.getpid(), "object": counter_object(), "pin_root": pin_root,
         "attach": {"xdp": {"interface": "lo", "mode": "generic"}}}
    a.update(kw)
    return a


def test_missing_object(pin_root):
    _expect_clean_failure(_args(pin_root, object="/nonexistent/x.bpf.o"), pin_root, "does not exist")


def test_garbage_file(pin_root, files):
    _expect_clean_failure(_args(pin_root, object=files["garbage"]), pin_root, "not an ELF file")


def test_truncated_elf(pin_root, files):
    _expect_clean_failure(_args(pin_root, object=files["truncated"]), pin_root, "BPF object format invalid")


def test_unknown_program(pin_root):
    _expect_clean_failure(_args(pin_root, program="nope"), pin_root, "program nope not found")
    _expect_clean_failure(_args(pin_root, program="xdp_count"), pin_root, "program xdp_count not found")


def test_verifier_rejection(pin_root, pair):
    r = _expect_clean_failure(
        _args(pin_root, object=obj("bad_verifier"),
              attach={"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}),
        pin_root, "Permission denied", progs=("xdp_bad",), maps=(), check_too=False)
    assert "invalid access to packet" in r["msg"] and "invalid access to packet" in r["verifier_log"], r
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0


def test_unknown_interface(pin_root):
    _expect_clean_failure(_args(pin_root, attach={"xdp": {"interface": "hmnope0"}}), pin_root, "hmnope0")


def test_unknown_netns(pin_root):
    _expect_clean_failure(_args(pin_root, attach={"xdp": {"interface": "lo", "netns": "hm-no-such-ns"}}),
                          pin_root, "hm-no-such-ns")


@pytest.mark.parametrize("name", ["a/b", "..", "../etc", "a..b", "_shared", ".hidden", "a.b"])
def test_bad_name(pin_root, name):
    _expect_clean_failure(_args(pin_root, name=name), pin_root, "is not valid")


def test_pin_root_outside_bpffs(tmp_path):
    _expect_clean_failure(_args(str(tmp_path / "pins")), str(tmp_path / "pins"), "not on a bpf filesystem")
    assert not os.path.exists(str(tmp_path / "pins"))


def test_bpffs_not_mounted(tmpfs_root):
    _expect_clean_failure(_args(tmpfs_root), tmpfs_root, "mount -t bpf")


def test_sha256_mismatch(pin_root):
    _expect_clean_failure(_args(pin_root, sha256="0" * 64), pin_root, "not the expected")


def test_no_privileges(pin_root):
    """The same ansible run as root with every capability dropped (setpriv): refused before any change."""
    before = kernel_ids()
    args = _args(pin_root)
    cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
           os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local", "-i",
           "localhost,", "-m", "hypermesh.ebpf.ebpf_program", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=" + sys.executable]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_NOCOLOR="1", LANG="C")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOP, check=False)
    assert proc.returncode != 0 and "needs root" in proc.stdout, proc.stdout + proc.stderr
    assert not os.path.exists(os.path.join(pin_root, args["name"]))
    assert not any(leaked(before, list(OURS), list(OUR_MAPS)).values())


def test_foreign_slot_needs_force(pin_root, pair):
    """A program this collection did not attach holds the XDP slot: refused without force, taken with it."""
    pin = "/sys/fs/bpf/hm-foreign-%d" % os.getpid()
    subprocess.check_call(["bpftool", "prog", "load", obj("xdp_multi"), pin, "type", "xdp"])
    try:
        fd = bs.obj_get(pin)
        try:
            netlink.xdp_attach(pair.if_b, fd, mode="generic", netns=pair.ns_b)
            foreign = bs.prog_info(fd)["id"]
        finally:
            bs.close(fd)
        args = _args(pin_root, attach={"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}})
        r = _expect_clean_failure(args, pin_root, "force")
        assert "did not attach" in r["msg"] and str(foreign) in r["msg"], r
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == foreign
        r = run(dict(args, force=True))
        assert r["changed"] and netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r["prog_id"], r
        assert not run(dict(args, force=False))["changed"]  # now it is ours
        assert run({"name": args["name"], "state": "absent", "pin_root": pin_root})["changed"]
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0
    finally:
        os.unlink(pin)


def test_same_name_under_another_pin_root(pin_root):
    """A name is one program host-wide: applying it under a second pin_root is refused, nothing changes."""
    name = "bad-root-%d" % os.getpid()
    args = {"name": name, "object": private_object("rawtp_sys_enter", ["count_sys_enter", "sys_enter_count"]),
            "pin_root": pin_root}
    first = run(args)
    try:
        assert first["changed"]
        before = kernel_ids()
        other = pin_root + "-other"
        for check in (True, False):
            r = run(dict(args, pin_root=other), check=check)
            assert r.get("failed") and "is managed under pin_root " + pin_root in r["msg"], r
        assert not os.path.exists(other)
        assert not any(leaked(before, [kname("count_sys_enter")], [kname("sys_enter_count")]).values())
        again = run(args)
        assert not again["changed"] and again["prog_id"] == first["prog_id"]
    finally:
        assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
