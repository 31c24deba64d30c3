"""kill -9 at every step: the next apply converges and nothing is leaked.

The module honours HYPERMESH_EBPF_TEST_KILL_AT=<step> (test-only, see program_apply.py): it SIGKILLs itself right
after that step. For a fresh apply, a replace (object changed) and a removal, killed at each step, the next run
must converge (the kernel then holds exactly the desired program, a further run reports no change) and, once
removed, the kernel's lists hold none of our programs, maps or links.
"""
import os
import shutil

import pytest

from tests.conftest import needs_root
from test_ebpf_program_common import pin_root_fixture, PREFIX, counter, kernel_ids, kname, leaked, ping, private_object, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_apply
from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_state
from ansible_collections.hypermesh.ebpf.plugins.module_utils import program_spec

pytestmark = needs_root

KINDS = {
    "xdp": ("xdp_counter", "xdp_count", "xdp_stats"),
    "raw_tracepoint": ("rawtp_sys_enter", "count_sys_enter", "sys_enter_count"),
}


pin_root = pin_root_fixture("hm-prog-kill")


def _objects(kind, tmpdir):
    src, prog, m = KINDS[kind]
    o1 = private_object(src, [prog, m])
    o2 = os.path.join(tmpdir, src + "-v2.bpf.o")
    shutil.copyfile(o1, o2)
    with open(o2, "ab") as f:
        f.write(b"\0")
    return o1, o2


def _args(kind, name, pin_root, pair, objpath):
    a = {"name": name, "object": objpath, "pin_root": pin_root}
    if kind == "xdp":
        a["attach"] = {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}
    return a


def _assert_converged(kind, name, pin_root, pair, objpath):
    r = run(_args(kind, name, pin_root, pair, objpath))
    assert not r.get("failed"), r
    again = run(_args(kind, name, pin_root, pair, objpath))
    assert again["changed"] is False and again["prog_id"] == r["prog_id"], (r, again)
    rec = program_state.read_record(name)
    assert rec["sha256"] == program_spec.file_sha256(objpath) and rec["prog_id"] == r["prog_id"]
    entries = sorted(os.listdir(os.path.join(pin_root, name)))
    assert not [e for e in entries if e.startswith(program_state.STAGE_PREFIX)], entries
    if kind == "xdp":
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r["prog_id"]
    else:
        fd = bs.get_fd_by_id("link", r["link_id"])
        try:
            assert bs.link_info(fd)["prog_id"] == r["prog_id"]
        finally:
            bs.close(fd)
    src, prog, m = KINDS[kind]
    path = os.path.join(pin_root, name, "maps", PREFIX + m)
    c0 = counter(path)
    if kind == "xdp":
        ping(pair.ns_a, pair.addr_b, count=2)
    else:
        os.getppid()
    assert counter(path) > c0
    return r


def _kill_env(step):
    return {program_apply.KILL_ENV: step}


@pytest.mark.parametrize("step", program_apply.STEPS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("scenario", ["fresh", "replace"])
def test_kill_during_apply(scenario, kind, step, pin_root, pair, tmp_path):
    src, prog, m = KINDS[kind]
    o1, o2 = _objects(kind, str(tmp_path))
    name = "k-%s-%s-%s" % (scenario[0], kind[:3], step)
    before = kernel_ids()
    if scenario == "replace":
        assert run(_args(kind, name, pin_root, pair, o1))["changed"]
        target = o2
    else:
        target = o1
    killed = run(_args(kind, name, pin_root, pair, target), env=_kill_env(step))
    assert killed.get("failed") and killed.get("rc") == 137, killed  # 128 + SIGKILL
    _assert_converged(kind, name, pin_root, pair, target)
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert not os.path.exists(os.path.join(pin_root, name))
    assert not any(leaked(before, [kname(prog)], [kname(m)]).values())
    if kind == "xdp":
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0


@pytest.mark.parametrize("step", ["attach", "swap"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kill_during_absent(kind, step, pin_root, pair, tmp_path):
    src, prog, m = KINDS[kind]
    o1, _ = _objects(kind, str(tmp_path))
    name = "k-a-%s-%s" % (kind[:3], step)
    before = kernel_ids()
    assert run(_args(kind, name, pin_root, pair, o1))["changed"]
    killed = run({"name": name, "state": "absent", "pin_root": pin_root}, env=_kill_env(step))
    assert killed.get("failed") and killed.get("rc") == 137, killed  # 128 + SIGKILL
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert not run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]
    assert not os.path.exists(os.path.join(pin_root, name))
    assert not any(leaked(before, [kname(prog)], [kname(m)]).values())
    if kind == "xdp":
        assert netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == 0
