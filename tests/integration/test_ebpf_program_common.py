"""Helpers for the ebpf_program integration tests (no tests here).

- `run(args, check=False, diff=False, env=None)`: the module through real `ansible` (tests/conftest.py's
  ansible_module; should that fail to produce a result file, the same command with the core `minimal`
  callback, parsed). Also returns the printed diff text as result["_diff_text"] in that case.
- `kernel_ids()`: every prog/map/link id the kernel holds; `leaked(before, after, prog_names, map_names)`: the new
  ids that belong to our objects (other engineers' tests run on the same kernel at the same time, so a plain
  set difference would blame us for their objects).
- `counter(path)`: first u64 of a pinned map's key 0, summed over CPUs for per-CPU maps.
- `mounts()`: bpffs at /sys/fs/bpf and tracefs, as the host needs them for these tests.
- `converge_routed(prog, obj_path, spec, route, sha_suffix="")`: program_lifecycle's converge of the object's
  first program at `spec`, handed the route the gate takes on an older kernel (`route`: "held" or
  "prog_attach"), for the tests of those routes on this one.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import pytest

from tests.conftest import COLLECTIONS, TOP, ansible_module, mounts

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs

OBJECTS = os.path.join(TOP, "examples", "objects")
_MINIMAL = []


def obj(name):
    return os.path.join(OBJECTS, name + ".bpf.o")


def _minimal(args, check, diff, env):
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local",
           "-i", "localhost,", "-m", "hypermesh.ebpf.ebpf_program", "-a", json.dumps(args or {}),
           "-e", "ansible_python_interpreter=" + sys.executable]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    full = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
                ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_NOCOLOR="1", LANG="C")
    full.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=TOP, check=False)
    out = proc.stdout
    marker = out.find("localhost | ")
    arrow = out.find(" => ", marker)
    if marker < 0 or arrow < 0:
        raise AssertionError("ansible produced no result (rc=%d)\nstdout:\n%s\nstderr:\n%s"
                             % (proc.returncode, out[-4000:], proc.stderr[-4000:]))
    status = out[marker + len("localhost | "):arrow]
    result = json.loads(out[arrow + 4:])
    if status.startswith("FAILED"):
        result["failed"] = True
    result["_diff_text"] = out[:marker]
    return result


def run(args, check=False, diff=False, env=None):
    if not _MINIMAL:
        try:
            return ansible_module("ebpf_program", args, check=check, diff=diff, env=env)
        except AssertionError as e:
            if "callback" not in str(e):
                raise
            _MINIMAL.append(True)
    return _minimal(args, check, diff, env)


def run_with_diff_text(args, check=False):
    """run() with --diff, also returning what ansible printed as the diff in result["_diff_text"] (result files
    of callbacks leave the diff out)."""
    return _minimal(args, check, True, None)


def kernel_ids():
    return dict((kind, set(bs.iter_ids(kind))) for kind in ("prog", "map", "link"))


def _name(kind, oid):
    try:
        fd = bs.get_fd_by_id(kind, oid)
    except OSError:
        return None
    try:
        info = {"prog": bs.prog_info, "map": bs.map_info, "link": bs.link_info}[kind](fd)
        return info.get("name", info.get("prog_id"))
    finally:
        bs.close(fd)


def leaked(before, prog_names, map_names, wait=3.0):
    """New kernel objects (since `before`) that are ours: progs/maps by name, links whose prog is ours.
    Waits up to `wait` s, since the kernel frees programs after an RCU grace period."""
    deadline = time.time() + wait
    while True:
        now = kernel_ids()
        progs = dict((i, _name("prog", i)) for i in now["prog"] - before["prog"])
        ours_p = set(i for i, n in progs.items() if n and n in [p[:15] for p in prog_names])
        maps = dict((i, _name("map", i)) for i in now["map"] - before["map"])
        ours_m = set(i for i, n in maps.items() if n and n in [m[:15] for m in map_names])
        links = dict((i, _name("link", i)) for i in now["link"] - before["link"])
        ours_l = set(i for i, pid in links.items() if pid in ours_p)
        out = {"prog": ours_p, "map": ours_m, "link": ours_l}
        if not any(out.values()) or time.time() > deadline:
            return out
        time.sleep(0.2)


def counter(path):
    fd = bs.obj_get(path)
    try:
        info = bs.map_info(fd)
        percpu = "percpu" in info["type_name"]
        size = info["value_size"]
        if percpu:
            size = ((size + 7) // 8) * 8 * bs.possible_cpus()
        raw = bs.map_lookup(fd, struct.pack("=I", 0), size)
    finally:
        bs.close(fd)
    if raw is None:
        return 0
    if not percpu:
        return struct.unpack_from("=Q", raw, 0)[0]
    step = ((info["value_size"] + 7) // 8) * 8
    return sum(struct.unpack_from("=Q", raw, off)[0] for off in range(0, len(raw), step))


def ns_exec(netns, *cmd):
    return subprocess.run(["ip", "netns", "exec", netns] + list(cmd), capture_output=True, text=True, check=False)


def ping(from_ns, addr, count=3):
    return ns_exec(from_ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", addr).returncode == 0


# ---- private builds: the example sources with our own symbol names -----------------------------------------
PREFIX = "hmt_"
_BUILT = {}
_BUILD_DIR = []


def private_object(src, symbols):
    """examples/<src>.bpf.c built with every name in `symbols` (programs, maps) renamed to hmt_<name>, so the
    kernel's id lists tell our objects from those other tests load from the same examples at the same time."""
    key = (src, tuple(symbols))
    if key in _BUILT:
        return _BUILT[key]
    if not _BUILD_DIR:
        import tempfile
        _BUILD_DIR.append(tempfile.mkdtemp(prefix="hm-prog-objs-"))
    out = os.path.join(_BUILD_DIR[0], "%s-%d.bpf.o" % (src, len(_BUILT)))
    machine = os.uname().machine
    multiarch = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, machine + "-linux-gnu")
    cmd = ["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/" + multiarch]
    cmd += ["-D%s=%s%s" % (s, PREFIX, s) for s in symbols]
    cmd += ["-c", os.path.join(TOP, "examples", src + ".bpf.c"), "-o", out]
    subprocess.check_call(cmd)
    _BUILT[key] = out
    return out


def kname(symbol):
    """The kernel's name for a renamed symbol (BPF_OBJ_NAME_LEN 16: 15 characters)."""
    return (PREFIX + symbol)[:15]


def forget(pin_root):
    """Fixture teardown: remove whatever a failed test left under pin_root, through the module (detaches XDP/tc
    from the recorded attach point, unpins, deletes the record), then the directory."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
    records = os.path.join(layout.STATE_DIR, layout.RECORDS)
    for entry in sorted(os.listdir(records)) if os.path.isdir(records) else []:
        rec = program_state.read_record(entry[:-5]) if entry.endswith(".json") else None
        if rec and rec.get("pin_root") == pin_root:
            run({"name": rec["name"], "state": "absent", "pin_root": pin_root})
    shutil.rmtree(pin_root, ignore_errors=True)


def pin_root_fixture(tag):
    """A module-scoped `pin_root` fixture for a test file: /sys/fs/bpf/<tag>-<pid> (bpffs and tracefs mounted
    first); afterwards whatever the tests left under it is removed through the module (`forget`)."""
    @pytest.fixture(scope="module")
    def pin_root():
        mounts()
        root = "/sys/fs/bpf/%s-%d" % (tag, os.getpid())
        yield root
        forget(root)
    return pin_root


def converge_routed(prog, obj_path, spec, route, sha_suffix=""):
    """prog.converge() of obj_path's first program, attached at spec through `route` (want[route] = True); a
    sha_suffix makes another digest, so the converge replaces the program."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.libbpf import BpfObject
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec
    obj = BpfObject(obj_path, pin_root_path=os.path.join(prog.pin_root, layout.SHARED))
    try:
        name = obj.programs()[0]["name"]
        obj.select(name)
        want = {"state": "attached", "sha256": program_spec.read_object(obj_path)[1] + sha_suffix,
                "program": name, "attach": spec, route: True}
        return prog.converge(want, obj_path, obj)
    finally:
        obj.close()
