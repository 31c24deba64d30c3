"""program_spec: names, pin_root, objects, program choice and attach points, as tables."""
import hashlib
import os
import re
import subprocess

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec as ps

from tests.conftest import TOP  # noqa: E402
XDP_OBJ = os.path.join(TOP, "examples", "objects", "xdp_counter.bpf.o")


@pytest.mark.parametrize("name", ["a", "xdp-counter", "X_1", "a" * 63])
def test_good_names(name):
    assert ps.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "..", "../x", "a..b", ".x", "a.b", "_shared", "-x", "a" * 64,
                                  "a b", "a\nb"])
def test_bad_names(name):
    with pytest.raises(ps.SpecError, match="not valid"):
        ps.check_name(name)


@pytest.mark.parametrize("root", ["relative/path", "/sys/fs/bpf/../etc", ""])
def test_pin_root_must_be_absolute_without_dotdot(root):
    with pytest.raises(ps.SpecError, match="absolute"):
        ps.check_pin_root(root)


def test_pin_root_outside_bpffs(tmp_path):
    with pytest.raises(ps.SpecError, match="not on a bpf filesystem"):
        ps.check_pin_root(str(tmp_path / "a" / "b"))


@pytest.fixture
def bpffs(tmp_path):
    """A bpffs of the test's own, mounted on a temporary directory (mount(2) needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a bpffs needs root (uid %d)" % os.geteuid())
    where = tmp_path / "bpffs"
    where.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(where)], check=True)
    try:
        yield str(where)
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_pin_root_on_bpffs(bpffs):
    assert ps.check_pin_root(bpffs + "/hypermesh/") == bpffs + "/hypermesh"
    assert ps.check_pin_root(bpffs + "/a/b") == bpffs + "/a/b"   # checked on its nearest existing parent


def test_read_object(tmp_path):
    with pytest.raises(ps.SpecError, match="does not exist"):
        ps.read_object(str(tmp_path / "nope.o"))
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"hello world")
    with pytest.raises(ps.SpecError, match="not an ELF"):
        ps.read_object(str(junk))
    data = open(XDP_OBJ, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    assert ps.read_object(XDP_OBJ) == (data, digest)
    assert ps.read_object(XDP_OBJ, digest.upper()) == (data, digest)
    with pytest.raises(ps.SpecError, match="not the expected"):
        ps.read_object(XDP_OBJ, "0" * 64)


def test_an_object_others_could_change_is_refused(tmp_path):
    os.chmod(str(tmp_path), 0o755)
    good = tmp_path / "good.o"
    good.write_bytes(open(XDP_OBJ, "rb").read())
    os.chmod(str(good), 0o644)
    assert ps.read_object(str(good))[1]
    os.chmod(str(good), 0o664)
    with pytest.raises(ps.SpecError, match=r"good.o is writable by group or others \(mode 0664\): refusing"):
        ps.read_object(str(good))
    os.chmod(str(good), 0o644)
    link = tmp_path / "link.o"
    link.symlink_to(good)
    with pytest.raises(ps.SpecError, match="link.o is a symbolic link: refusing"):
        ps.read_object(str(link))
    os.chmod(str(tmp_path), 0o777)
    with pytest.raises(ps.SpecError, match="writable by group or others.*refusing"):
        ps.read_object(str(good))
    os.chmod(str(tmp_path), 0o755)
    with pytest.raises(ps.SpecError, match="is not an absolute path"):
        ps.read_object("examples/objects/xdp_counter.bpf.o")


def test_a_huge_object_is_not_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(ps, "OBJECT_MAX_BYTES", 64)
    with pytest.raises(ps.SpecError, match="larger than"):
        ps.read_object(XDP_OBJ)


def test_choose_program():
    progs = [{"name": "a", "section": "xdp"}, {"name": "b", "section": "xdp"}]
    assert ps.choose_program(progs, "b", "o")["name"] == "b"
    assert ps.choose_program(progs[:1], None, "o")["name"] == "a"
    with pytest.raises(ps.SpecError, match="has 2 programs"):
        ps.choose_program(progs, None, "o")
    with pytest.raises(ps.SpecError, match="program c not found in o"):
        ps.choose_program(progs, "c", "o")


@pytest.mark.parametrize("section,expected", [
    ("tracepoint/syscalls/sys_enter_openat", {"type": "tracepoint", "target": "syscalls/sys_enter_openat"}),
    ("tp/sched/sched_switch", {"type": "tracepoint", "target": "sched/sched_switch"}),
    ("raw_tracepoint/sys_enter", {"type": "raw_tracepoint", "target": "sys_enter"}),
    ("raw_tp/sys_exit", {"type": "raw_tracepoint", "target": "sys_exit"}),
    ("kprobe/do_unlinkat", {"type": "kprobe", "target": "do_unlinkat"}),
    ("kretprobe/do_unlinkat", {"type": "kretprobe", "target": "do_unlinkat"}),
    ("fentry/do_unlinkat", {"type": "fentry", "target": "do_unlinkat"}),
    ("fexit.s/x", {"type": "fexit", "target": "x"}),
    ("lsm/file_open", {"type": "lsm", "target": "file_open"}),
    ("xdp", {"type": "xdp"}),
    ("classifier", {"type": "tc"}),
    ("tc", {"type": "tc"}),
    ("tcx/egress", {"type": "tcx", "direction": "egress"}),
    ("tc/ingress", {"type": "tcx", "direction": "ingress"}),
    ("cgroup_skb/egress", {"type": "cgroup", "cgroup_type": "egress"}),
    ("cgroup/connect4", {"type": "cgroup", "cgroup_type": "connect4"}),
    ("socket", {"type": None}),
])
def test_from_section(section, expected):
    assert ps.from_section(section) == expected


@pytest.mark.parametrize("attach,section,expected", [
    (None, "tracepoint/syscalls/sys_enter_openat", {"type": "tracepoint", "target": "syscalls/sys_enter_openat"}),
    ({"raw_tracepoint": "sys_exit"}, "raw_tracepoint/sys_enter", {"type": "raw_tracepoint", "target": "sys_exit"}),
    ({"xdp": {"interface": "eth0", "netns": None, "mode": None}}, "xdp",
     {"type": "xdp", "interface": "eth0", "netns": None, "mode": "auto"}),
    ({"tc": {"interface": "eth0", "direction": "egress", "priority": 7}}, "classifier",
     {"type": "tc", "interface": "eth0", "netns": None, "direction": "egress", "priority": 7}),
    ({"tcx": {"interface": "eth0", "netns": "blue"}}, "tcx/egress",
     {"type": "tcx", "interface": "eth0", "netns": "blue", "direction": "egress"}),
    ({"cgroup": {"path": "/sys/fs/cgroup/x/"}}, "cgroup_skb/ingress",
     {"type": "cgroup", "path": "/sys/fs/cgroup/x", "cgroup_type": "ingress"}),
    ({"xdp": None, "lsm": "file_open"}, "lsm/bprm_check_security", {"type": "lsm", "target": "file_open"}),
])
def test_normalize(attach, section, expected):
    assert ps.normalize(attach, section) == expected


@pytest.mark.parametrize("attach,section,message", [
    (None, "xdp", "attach.xdp.interface"),
    (None, "classifier", "attach.tc.interface"),
    (None, "cgroup_skb/egress", "attach.cgroup.path"),
    (None, "socket", "does not say where"),
    ({"xdp": {"interface": "a"}, "tracepoint": "a/b"}, "xdp", "at most one"),
    ({"xdp": {"netns": "x"}}, "xdp", "attach.xdp.interface is required"),
    ({"cgroup": {"path": "/x"}}, "xdp", "attach.cgroup.type must be one of"),
])
def test_normalize_errors(attach, section, message):
    with pytest.raises(ps.SpecError, match=message):
        ps.normalize(attach, section)


def test_retarget_only_when_target_differs():
    assert ps.retarget({"type": "fentry", "target": "do_unlinkat"}, "fentry/do_unlinkat") is None
    assert ps.retarget({"type": "fentry", "target": "vfs_read"}, "fentry/do_unlinkat") == "vfs_read"
    assert ps.retarget({"type": "xdp", "interface": "a"}, "xdp") is None


def test_every_kind_is_gated_by_known_features():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host.requirements import REQUIREMENTS
    assert set(ps.FEATURES) == set(ps.ATTACH_KINDS)
    for features in ps.FEATURES.values():
        assert all(f in REQUIREMENTS for f in features)


@pytest.mark.parametrize("name", ["../../etc", "/abs", ".", "..", "a/b", "xdp_\udcffount", "sp ace", "", "x" * 256])
def test_elf_names_that_are_not_safe_pin_names_are_refused(name):
    with pytest.raises(ps.SpecError) as e:
        ps.check_elf_names("/o.bpf.o", [{"name": "ok"}], [{"name": name}])
    assert "map name" in str(e.value) and "nothing changed" in str(e.value)
    str(e.value).encode("ascii")  # the message itself is plain ASCII (undecodable bytes shown as \xNN)
    with pytest.raises(ps.SpecError, match="program name"):
        ps.check_elf_names("/o.bpf.o", [{"name": name}])


@pytest.mark.parametrize("name", ["xdp_count", ".bss", "xdp_coun.rodata", "a-b"])
def test_elf_names_that_are_fine(name):
    ps.check_elf_names("/o.bpf.o", [{"name": name}], [{"name": name}])


# ---- uprobe / uretprobe ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("section, kind", [("uprobe/hm_tick", "uprobe"), ("uretprobe/x", "uretprobe"),
                                           ("uprobe", "uprobe"), ("uprobe.s/x", "uprobe")])
def test_a_uprobe_section_names_the_kind_only(section, kind):
    assert ps.from_section(section) == {"type": kind}
    with pytest.raises(ps.SpecError, match="section %r is a %s program: set attach.%s.path and attach.%s.symbol"
                       % (section, kind, kind, kind)):
        ps.normalize(None, section)


@pytest.mark.parametrize("kind", ["uprobe", "uretprobe"])
@pytest.mark.parametrize("value, expected", [
    ({"path": "/usr/bin/x", "symbol": "hm_tick"},
     {"path": "/usr/bin/x", "symbol": "hm_tick", "offset": None, "pid": None}),
    ({"path": "/usr//bin/./x", "offset": 0x1150, "pid": 42},
     {"path": "/usr/bin/x", "symbol": None, "offset": 0x1150, "pid": 42}),
    ({"path": "/lib/libc.so.6", "offset": 0, "symbol": None},
     {"path": "/lib/libc.so.6", "symbol": None, "offset": 0, "pid": None}),
])
def test_normalize_uprobe(kind, value, expected):
    expected = dict(expected, type=kind)
    assert ps.normalize({kind: value}, "uprobe/hm_tick") == expected
    assert ps.FEATURES[kind] == ("uprobe", "perf_link")


@pytest.mark.parametrize("value, message", [
    ("/usr/bin/x", "attach.uprobe.path is required"),
    ({"symbol": "f"}, "attach.uprobe.path is required"),
    ({"path": "bin/x", "symbol": "f"}, "attach.uprobe.path 'bin/x' must be an absolute path without '..'"),
    ({"path": "/usr/../x", "symbol": "f"}, "must be an absolute path without '..'"),
    ({"path": "/x"}, "attach.uprobe takes exactly one of symbol .* and offset"),
    ({"path": "/x", "symbol": "f", "offset": 4}, "attach.uprobe takes exactly one of symbol"),
    ({"path": "/x", "offset": -1}, r"attach.uprobe.offset must be a file offset \(an integer >= 0\), got -1"),
    ({"path": "/x", "offset": True}, "attach.uprobe.offset must be a file offset"),
    ({"path": "/x", "symbol": "f", "pid": 0}, r"attach.uprobe.pid must be a process id \(an integer > 0\), got 0"),
])
def test_normalize_uprobe_errors(value, message):
    with pytest.raises(ps.SpecError, match=message):
        ps.normalize({"uprobe": value}, "uprobe/x")


def test_a_uprobe_has_no_btf_target():
    assert ps.retarget({"type": "uprobe", "path": "/x", "symbol": "f", "offset": None, "pid": None}, "uprobe") is None


def test_the_holder_holds_exactly_the_kinds_the_spec_routes_to_it():
    """holder.py runs from its own copy of a few files (not program_spec): its list must be the same."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import holder
    assert holder.HELD_KINDS == ps.HELD_KINDS
    assert all(ps.FEATURES[k][-1] in ("perf_link", "bpf_link") for k in ps.HELD_KINDS)


# ---- attach.xdp.priority / proceed_on: libxdp's dispatcher ---------------------------------------------------
@pytest.mark.parametrize("given, extra", [
    ({}, {}),  # neither: one program per interface, through netlink, the record as before
    ({"priority": 20}, {"priority": 20, "proceed_on": ["pass"]}),
    ({"proceed_on": ["drop"]}, {"priority": 50, "proceed_on": ["drop"]}),
    ({"priority": 0, "proceed_on": ["PASS", "drop", "pass"]}, {"priority": 0, "proceed_on": ["drop", "pass"]}),
    ({"priority": 1000, "proceed_on": []}, {"priority": 1000, "proceed_on": []}),
    ({"priority": 7, "proceed_on": ["redirect", "aborted", "tx"]},
     {"priority": 7, "proceed_on": ["aborted", "tx", "redirect"]}),
])
def test_xdp_multiprog_normalised(given, extra):
    value = dict({"interface": "veth0", "netns": None, "mode": None, "priority": None, "proceed_on": None}, **given)
    want = dict({"type": "xdp", "interface": "veth0", "netns": None, "mode": "auto"}, **extra)
    spec = ps.normalize({"xdp": value}, "xdp")
    assert spec == want
    assert ps.is_multiprog(spec) == bool(extra)
    assert ps.features(spec) == (("xdp", "xdp_multiprog") if extra else ("xdp",))


@pytest.mark.parametrize("given, needle", [
    ({"priority": -1}, "attach.xdp.priority must be an integer from 0 to 1000"),
    ({"priority": 1001}, "attach.xdp.priority must be an integer from 0 to 1000"),
    ({"priority": True}, "attach.xdp.priority must be an integer"),
    ({"priority": "5"}, "attach.xdp.priority must be an integer"),
    ({"proceed_on": "pass"}, "attach.xdp.proceed_on must be a list of XDP actions"),
    ({"proceed_on": ["pass", "accept"]}, "attach.xdp.proceed_on: 'accept' is not an XDP action"),
    ({"priority": 10, "mode": "offload"}, "attach.xdp.mode offload cannot be used with attach.xdp.priority"),
])
def test_xdp_multiprog_refused(given, needle):
    with pytest.raises(ps.SpecError, match=re.escape(needle)):
        ps.normalize({"xdp": dict({"interface": "veth0"}, **given)}, "xdp")
