"""ebpf_program on this machine's kernel, through real `ansible` runs, one test per attach type.

Each supported attach type: the four-run check (check, apply, apply, check: changed, changed, not changed,
not changed), the kernel shows the program attached (netlink or link lists), traffic or syscalls move the
counter in the pinned map, then `absent` (check mode first) leaves no program, map, link or pin of ours.
Whether an attach type is supported is decided by probes.probe() before the module runs: a supported type
must attach (the test fails otherwise); an unsupported one skips the attach test, with the probe's reason, and
test_refused_without_change asserts it is refused with the requirements message and nothing changes (kprobe
here: CONFIG_KPROBES off; fentry/lsm where the probe says no). Traffic stays inside namespaces this test creates.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import needs_root
from test_ebpf_program_common import (pin_root_fixture, PREFIX, counter, kernel_ids, kname, leaked, obj, ping,
                                      private_object, run, run_with_diff_text)

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes

pytestmark = needs_root


pin_root = pin_root_fixture("hm-prog-test")


@pytest.fixture(scope="module")
def cgroup_dir():
    path = "/sys/fs/cgroup/unified/hm-prog-test-%d" % os.getpid()
    os.mkdir(path)
    yield path
    os.rmdir(path)


def _openat(n=20):
    for _unused in range(n):
        os.close(os.open("/etc/hostname", os.O_RDONLY))


def _unlink(n=5):
    d = tempfile.mkdtemp()
    for i in range(n):
        p = os.path.join(d, str(i))
        open(p, "w").close()
        os.unlink(p)
    os.rmdir(d)


def _cgroup_ping(ctx):
    cmd = "echo $$ > %s/cgroup.procs && exec ip netns exec %s ping -n -q -c 3 -i 0.2 -W 1 %s" % (
        ctx["cgroup"], ctx["pair"].ns_a, ctx["pair"].addr_b)
    subprocess.run(["sh", "-c", cmd], capture_output=True, check=False)


def _link_of(prog_id):
    for lid in bs.iter_ids("link"):
        try:
            fd = bs.get_fd_by_id("link", lid)
        except OSError:
            continue
        try:
            info = bs.link_info(fd)
        finally:
            bs.close(fd)
        if info["prog_id"] == prog_id:
            return info
    return None


def _kernel_xdp(ctx, r):
    return netlink.xdp_query(ctx["pair"].if_b, ctx["pair"].ns_b)["prog_id"] == r["prog_id"]


def _kernel_tc(ctx, r):
    return r["prog_id"] in [f["prog_id"] for f in netlink.tc_query(ctx["pair"].if_b, "ingress", ctx["pair"].ns_b)]


def _kernel_tcx(ctx, r):
    ok = r["prog_id"] in netlink.tcx_query(ctx["pair"].if_b, "ingress", ctx["pair"].ns_b)
    return ok and _link_of(r["prog_id"])["id"] == r["link_id"]


def _kernel_link(ctx, r):
    link = _link_of(r["prog_id"])
    return link is not None and link["id"] == r["link_id"]


def _kernel_cgroup(ctx, r):
    fd = os.open(ctx["cgroup"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = bs.prog_query(fd, bs.BPF_CGROUP_INET_EGRESS)
    finally:
        os.close(fd)
    return r["prog_id"] in ids and _kernel_link(ctx, r)


def _ping(ctx):
    ping(ctx["pair"].ns_a, ctx["pair"].addr_b)


def _netdev(kind, **extra):
    def attach(ctx):
        d = {"interface": ctx["pair"].if_b, "netns": ctx["pair"].ns_b}
        d.update(extra)
        return {kind: d}
    return attach


# attach type -> object, program, maps (pinned counter first), attach option, stimulus, kernel check
CASES = {
    "xdp": ("xdp_counter", "xdp_count", ["xdp_stats"], _netdev("xdp", mode="generic"), _ping, _kernel_xdp),
    "tc": ("tc_counter", "tc_count", ["tc_stats"], _netdev("tc", direction="ingress"), _ping, _kernel_tc),
    "tcx": ("tc_counter", "tc_count", ["tc_stats"], _netdev("tcx", direction="ingress"), _ping, _kernel_tcx),
    "tracepoint": ("tp_openat", "count_openat", ["openat_count"], None, lambda ctx: _openat(), _kernel_link),
    "raw_tracepoint": ("rawtp_sys_enter", "count_sys_enter", ["sys_enter_count"], None,
                       lambda ctx: _openat(), _kernel_link),
    "cgroup": ("cgroup_egress", "cgroup_egress_bytes", ["egress_bytes"],
               lambda ctx: {"cgroup": {"path": ctx["cgroup"], "type": "egress"}}, _cgroup_ping, _kernel_cgroup),
    "fentry": ("fentry_unlinkat", "fentry_unlinkat", ["fentry_count"], None, lambda ctx: _unlink(),
               _kernel_link),
    "lsm": ("lsm_file_open", "lsm_file_open", ["file_open_count"], None, lambda ctx: _openat(), _kernel_link),
}


def skip_unless_supported(kind):
    """Skip, with the probe's reason, when probes.probe(kind) says this kernel does not support `kind`."""
    found = probes.probe(kind)
    if not found["supported"]:
        pytest.skip("probes.probe(%r): not supported here: %s" % (kind, found["reason"]))


def skip_if_supported(kind):
    """Skip, with the probe's reason, when probes.probe(kind) says `kind` works here (nothing to refuse)."""
    found = probes.probe(kind)
    if found["supported"]:
        pytest.skip("probes.probe(%r): supported here, nothing to refuse (the kernel matrix has kernels "
                    "without it): %s" % (kind, found["reason"]))


@pytest.mark.parametrize("kind", sorted(CASES))
def test_attach_type(kind, pin_root, pair, cgroup_dir):
    skip_unless_supported(kind)  # decided before the module runs; an unsupported kind: test_refused_without_change
    objname, prog, maps, attach, stimulate, in_kernel = CASES[kind]
    ctx = {"pair": pair, "cgroup": cgroup_dir}
    name = "t-%s-%d" % (kind.replace("_", "-"), os.getpid())
    # the example source built with hmt_-prefixed names: our objects stay recognisable in the kernel's lists
    args = {"name": name, "object": private_object(objname, [prog] + maps), "pin_root": pin_root}
    knames, kmaps = [kname(prog)], [kname(m) for m in maps]
    if attach:
        args["attach"] = attach(ctx)
    before = kernel_ids()

    runs = [run_with_diff_text(args, check=True), run(args, diff=True), run(args, diff=True), run(args, check=True)]
    assert [r.get("changed") for r in runs] == [True, True, False, False], runs
    assert not any(r.get("failed") for r in runs), runs
    r = runs[1]
    shown = runs[0]["_diff_text"]  # what `ansible --check --diff` printed before the first apply
    assert '-    "state": "absent"' in shown and '+    "state": "attached"' in shown, shown
    assert r["prog_id"] in bs.iter_ids("prog")
    assert in_kernel(ctx, r), r
    assert runs[2]["prog_id"] == r["prog_id"]
    map_path = os.path.join(pin_root, name, "maps", PREFIX + maps[0])
    c0 = counter(map_path)
    stimulate(ctx)
    c1 = counter(map_path)
    assert c1 > c0, (kind, c0, c1)
    print("%s: prog %d, counter %s %d -> %d" % (kind, r["prog_id"], maps[0], c0, c1))

    absent = {"name": name, "state": "absent", "pin_root": pin_root}
    rc = run(absent, check=True)
    assert rc["changed"] and os.path.exists(os.path.join(pin_root, name, "prog"))
    ra = run(absent)
    assert ra["changed"] and not run(absent)["changed"]
    assert not os.path.exists(os.path.join(pin_root, name))
    assert not any(leaked(before, knames, kmaps).values())
    assert r["prog_id"] not in set(bs.iter_ids("prog"))


# the attach types a kernel may lack (config, lockdown, boot options): object, program, maps
OPTIONAL = {
    "kprobe": ("kprobe_unlinkat", "kprobe_unlinkat", ["unlink_count"]),
    "fentry": ("fentry_unlinkat", "fentry_unlinkat", ["fentry_count"]),
    "lsm": ("lsm_file_open", "lsm_file_open", ["file_open_count"]),
}


@pytest.mark.parametrize("kind", sorted(OPTIONAL))
def test_refused_without_change(kind, pin_root):
    """An attach type probes.probe() says is unsupported: refused in check mode and for real, with the
    requirements message (type, kernel release, what it needs), and nothing of ours is left in the kernel."""
    skip_if_supported(kind)
    objname, prog, maps = OPTIONAL[kind]
    before = kernel_ids()
    name = "t-refused-%s-%d" % (kind, os.getpid())
    args = {"name": name, "object": private_object(objname, [prog] + maps), "pin_root": pin_root}
    for check in (True, False):
        r = run(args, check=check)
        assert r.get("failed") and not r.get("changed"), r
        assert kind in r["msg"] and os.uname().release in r["msg"] and "%s needs kernel" % kind in r["msg"], r
    assert not os.path.exists(os.path.join(pin_root, name))
    assert not any(leaked(before, [kname(prog)], [kname(m) for m in maps]).values())


def test_loaded_then_attached_then_loaded(pin_root, pair):
    """state: loaded pins without attaching; attached attaches the same program; loaded again detaches."""
    name = "t-loaded-%d" % os.getpid()
    base = {"name": name, "object": obj("xdp_counter"), "pin_root": pin_root}
    att = dict(base, attach={"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}})
    r1 = run(dict(base, state="loaded"))
    assert r1["changed"] and r1["state"] == "loaded" and not run(dict(base, state="loaded"))["changed"]
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0
    r2 = run(att)
    assert r2["changed"] and netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r2["prog_id"]
    r3 = run(dict(base, state="loaded"))
    assert r3["changed"] and netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]


def test_noop_decides_without_libbpf_and_a_change_still_loads_it(pin_root, pair):
    """A re-apply of an unchanged object decides from the record, the pins and one netlink query: with no
    libbpf to be loaded it still answers 'not changed'; a change in the same situation is refused clearly and
    leaves the program as it was. No libbpf, by the standard loader: the module's process runs with
    LD_LIBRARY_PATH naming a directory where each soname libbpf.py tries (LIBBPF_NAMES) is an empty file, so
    dlopen() takes that file first and fails ("file too short") before the host's libbpf."""
    name = "t-nolibbpf-%d" % os.getpid()
    args = {"name": name, "object": obj("xdp_counter"), "pin_root": pin_root,
            "attach": {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}}
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libbpf
    hide = tempfile.mkdtemp(prefix="hm-no-libbpf-")
    for soname in libbpf.LIBBPF_NAMES:
        open(os.path.join(hide, soname), "w").close()
    probe = subprocess.run([sys.executable, "-c", "import ctypes, sys\nfor n in sys.argv[1:]:\n    try:\n"
                            "        ctypes.CDLL(n)\n        sys.exit(1)\n    except OSError:\n        pass"]
                           + list(libbpf.LIBBPF_NAMES), env=dict(os.environ, LD_LIBRARY_PATH=hide), check=False)
    assert probe.returncode == 0, "the loader still found a libbpf past LD_LIBRARY_PATH"
    no_libbpf = {"LD_LIBRARY_PATH": hide}
    r1 = run(args)
    assert r1["changed"] and netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r1["prog_id"]
    r2 = run(args, env=no_libbpf)
    assert not r2["failed"] and not r2["changed"] and r2["prog_id"] == r1["prog_id"], r2
    r3 = run(dict(args, attach={"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "auto"}}),
             env=no_libbpf)
    assert r3["failed"] and "libbpf is not installed" in r3["msg"], r3
    shutil.rmtree(hide)
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r1["prog_id"]
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0
