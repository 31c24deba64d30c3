"""ebpf_state on the real kernel: a host's whole desired state as one transaction.

Two XDP programs on the two ends of a veth pair (xdp_counter on side a, xdp_blocklist on side b, with a blocklist
entry) and a tracepoint program, built with private symbol names (so the kernel's id lists tell ours from other
tests'). Traffic only between the pair's namespaces.
- first apply: everything loaded, entry declared, health checks passed (traffic on the pair), desired state
  generation 1; the same run again changes nothing (one module run, same kernel ids);
- check mode: exact predictions per program, nothing changed;
- a health check that cannot pass (a counter on the idle side) with a replaced program, a new program, a new
  map key and a program applied by hand with ebpf_program (also in the run, replaced by it): the host ends as
  it was, the very same kernel program ids, records, map entries, and the desired state untouched;
- prune removes only names with a record of ours;
- the controller SIGKILLed mid-health-wait: the module finishes its transaction on its own and the host is
  rolled back;
- at the end, nothing of ours is left in the kernel;
- what a run installs before its gate (objects, reapply_code; run through ansible-playbook, the code is too
  large for a command line): without contents the missing ones are listed and nothing changes; with them the
  objects are written (root's, 0644, under their digest) and the programs applied, the code installed whole (and
  importable from lib_dir); a damaged object or code is missing again, rewritten given its content (objects also
  in check mode), and nothing is written again when current. No systemd here: the unit is not written.
"""
import base64
import glob
import hashlib
import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.conftest import COLLECTIONS, TOP, ansible_module, needs_root
from test_ebpf_program_common import kernel_ids, kname, leaked, pin_root_fixture, private_object, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps

pytestmark = needs_root

pin_root = pin_root_fixture("hm-state")
TAG = "hmst%d" % (os.getpid() % 100000)
CNT, BLK, TP, HAND, NEW, OLD = (TAG + s for s in ("_cnt", "_blk", "_tp", "_hand", "_new", "_old"))
SYMBOLS = {"xdp_counter": ["xdp_count", "xdp_stats"], "xdp_blocklist": ["xdp_blocklist", "blocklist", "verdicts"],
           "tp_openat": ["count_openat", "openat_count"], "rawtp_sys_enter": ["count_sys_enter", "sys_enter_count"]}
KPROGS = [kname(s[0]) for s in SYMBOLS.values()]
KMAPS = [kname(m) for s in SYMBOLS.values() for m in s[1:]]


def objpath(src):
    return private_object(src, SYMBOLS[src])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("hm-state")
    return str(d)


def variant(work, src, tag=b"\0"):
    """A copy of the private object with bytes appended: same program, another digest."""
    dst = os.path.join(work, "%s-v%d.bpf.o" % (src, len(tag)))
    shutil.copyfile(objpath(src), dst)
    with open(dst, "ab") as f:
        f.write(tag)
    return dst


@pytest.fixture(scope="module")
def before_ids():
    return kernel_ids()


def state(args, check=False, diff=False):
    return ansible_module("ebpf_state", args, check=check, diff=diff)


def desired_path(work):
    return os.path.join(work, "etc", "desired.json")


def programs(pair, blk_object=None, blk_keys=("192.0.2.10",), blk_health=None, timeout=20):
    xdp_a = {"xdp": {"interface": pair.if_a, "netns": pair.ns_a, "mode": "generic"}}
    xdp_b = {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}
    return [
        {"name": CNT, "object": objpath("xdp_counter"), "attach": xdp_a,
         "health": {"check": "counter", "map": kname("xdp_stats"), "key": 0, "field": "packets",
                    "timeout": timeout}},
        {"name": BLK, "object": blk_object or objpath("xdp_blocklist"), "attach": xdp_b,
         "maps": [{"map": kname("blocklist"), "key_format": "ipv4", "entries": [{"key": k} for k in blk_keys]}],
         "health": blk_health or {"check": "counter", "map": kname("verdicts"), "key": 0, "timeout": timeout}},
        {"name": TP, "object": objpath("tp_openat"), "health": {"timeout": timeout}},
    ]


def args_for(pin_root, work, progs, **kw):
    a = {"programs": progs, "pin_root": pin_root, "desired": desired_path(work)}
    a.update(kw)
    return a


class Traffic(object):
    """In the background: ping between the pair's namespaces (both XDP programs see packets) and openat(2) calls
    of our own (the tracepoint program counts them: a quiet machine may make none in a health wait)."""

    def __init__(self, pair):
        self.proc = subprocess.Popen(["ip", "netns", "exec", pair.ns_b, "ping", "-n", "-q", "-i", "0.2", "-W", "1",
                                      pair.addr_a], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stop = threading.Event()
        self.opener = threading.Thread(target=self._open_files)
        self.opener.start()

    def _open_files(self):
        while not self.stop.wait(0.1):
            os.close(os.open("/etc/hostname", os.O_RDONLY))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.opener.join()
        self.proc.terminate()
        self.proc.wait()


def _map_entries(path):
    """{key bytes: value bytes} of a pinned map (raw)."""
    fd = bs.obj_get(path)
    try:
        info = bs.map_info(fd)
        size = info["value_size"]
        if "percpu" in info["type_name"]:
            size = ((size + 7) // 8) * 8 * bs.possible_cpus()
        out, key = {}, None
        while True:
            key = bs.map_next_key(fd, key, info["key_size"])
            if key is None:
                return out
            out[key] = bs.map_lookup(fd, key, size)
    finally:
        bs.close(fd)


def host_view(pin_root, pair, names, link_ids=True):
    """What the host runs for `names`: record, pinned ids, the XDP slots, the blocklist's keys. link_ids=False
    compares which program each pinned link runs instead of the link's id (a rollback gives a perf or raw
    tracepoint program back its very program, on a new link: such a link cannot be held without running)."""
    view = {}
    for n in names:
        live = ps.Live(pin_root, n)
        view[n] = {"record": ps.read_record(n), "prog_id": live.prog_id, "maps": dict(live.maps),
                   "exists": live.exists}
        view[n]["link"] = live.link_id if link_ids else (live.link or {}).get("prog_id")
    view["xdp_a"] = netlink.xdp_query(pair.if_a, pair.ns_a).get("prog_id")
    view["xdp_b"] = netlink.xdp_query(pair.if_b, pair.ns_b).get("prog_id")
    blk = os.path.join(pin_root, BLK, "maps", kname("blocklist"))
    view["blocklist"] = sorted(socket.inet_ntoa(k) for k in _map_entries(blk)) if os.path.exists(blk) else None
    return view


def read_desired(work):
    with open(desired_path(work)) as f:
        return f.read()


def by_name(res):
    return dict((e["name"], e) for e in res["programs"])


# ---- tests, in order (module-scoped state) -----------------------------------------------------------------
def test_first_apply(pin_root, pair, work, before_ids):
    with Traffic(pair):
        res = state(args_for(pin_root, work, programs(pair)))
    assert not res["failed"] and res["changed"], (res.get("msg"), res)
    got = by_name(res)
    assert [got[n]["action"] for n in (CNT, BLK, TP)] == ["load"] * 3, res
    assert all(got[n]["health"] == "ok" for n in (CNT, BLK, TP)), res
    assert got[BLK]["maps"][0]["changed"] and got[BLK]["maps"][0]["counts"]["added"] == 1
    view = host_view(pin_root, pair, [CNT, BLK, TP])
    assert view["xdp_a"] == view[CNT]["prog_id"] == got[CNT]["prog_id"]
    assert view["xdp_b"] == view[BLK]["prog_id"]
    assert view[TP]["link"] and view[TP]["record"]["attach"]["type"] == "tracepoint"
    assert view["blocklist"] == ["192.0.2.10"]
    doc = json.loads(read_desired(work))
    assert doc["generation"] == 1 and res["generation"] == 1
    assert [p["program"]["name"] for p in doc["programs"]] == [CNT, BLK, TP]


def test_second_apply_changes_nothing(pin_root, pair, work):
    view = host_view(pin_root, pair, [CNT, BLK, TP])
    saved = read_desired(work)
    res = state(args_for(pin_root, work, programs(pair)))
    assert not res["failed"] and not res["changed"], (res.get("msg"), res)
    assert [e["action"] for e in res["programs"]] == ["none"] * 3
    assert host_view(pin_root, pair, [CNT, BLK, TP]) == view
    assert read_desired(work) == saved and res["generation"] == 1


def test_check_mode_predicts_exactly(pin_root, pair, work):
    view = host_view(pin_root, pair, [CNT, BLK, TP, NEW])
    saved = read_desired(work)
    progs = programs(pair, blk_object=variant(work, "xdp_blocklist"), blk_keys=("192.0.2.10", "192.0.2.11"))
    progs[2]["state"] = "loaded"
    progs.append({"name": NEW, "object": objpath("rawtp_sys_enter")})
    res = state(args_for(pin_root, work, progs), check=True, diff=True)
    assert not res["failed"] and res["changed"], (res.get("msg"), res)
    got = by_name(res)
    assert [(got[n]["action"], got[n]["changed"]) for n in (CNT, BLK, TP, NEW)] == [
        ("none", False), ("replace", True), ("detach", True), ("load", True)], res
    assert got[BLK]["reason"].startswith("object sha256 ")
    assert got[BLK]["maps"][0]["changed"] and got[BLK]["maps"][0]["counts"]["added"] == 1
    assert res["generation"] == 2 and res["desired_changed"]
    assert host_view(pin_root, pair, [CNT, BLK, TP, NEW]) == view
    assert read_desired(work) == saved
    # the same check mode without changes predicts none
    res = state(args_for(pin_root, work, programs(pair)), check=True)
    assert not res["changed"] and [e["action"] for e in res["programs"]] == ["none"] * 3


def test_failed_health_check_rolls_back_to_what_ran(pin_root, pair, work, before_ids):
    # a program applied by hand before the run (not in desired.json), which the run replaces
    hand = run({"name": HAND, "object": objpath("rawtp_sys_enter"), "pin_root": pin_root})
    assert hand["changed"] and not hand.get("failed"), hand
    names = [CNT, BLK, TP, HAND, NEW]
    view = host_view(pin_root, pair, names, link_ids=False)
    saved = read_desired(work)
    progs = programs(pair, blk_object=variant(work, "xdp_blocklist"), blk_keys=("192.0.2.10", "192.0.2.11"),
                     blk_health={"check": "counter", "map": kname("verdicts"), "key": 1, "timeout": 2})
    progs.append({"name": HAND, "object": variant(work, "rawtp_sys_enter")})
    progs.append({"name": NEW, "object": objpath("rawtp_sys_enter"), "health": {"check": "none"}})
    # verdicts[1] counts drops of blocklisted sources: nothing sends from 192.0.2.x, so it cannot move
    res = state(args_for(pin_root, work, progs))
    assert res["failed"] and res["failed_program"] == BLK and res["rolled_back"], res
    assert "health check failed" in res["msg"] and "rolled back" in res["msg"], res["msg"]
    got = by_name(res)
    assert [got[n]["action"] for n in (CNT, BLK, TP, HAND, NEW)] == ["none", "replace", "none", "replace", "load"]
    after = host_view(pin_root, pair, names, link_ids=False)
    assert after == view, (view, after)     # same prog ids, records, attach points, map ids and keys
    assert not os.path.exists(os.path.join(pin_root, NEW)) and ps.read_record(NEW) is None
    assert read_desired(work) == saved
    assert not any(leaked_now(pin_root, before_ids).values())


def leaked_now(pin_root, before_ids, wait=3.0):
    """Our programs and maps created since the module began that nothing under pin_root pins now (replaced or
    new objects that a rollback must have released). Waits for the kernel's RCU-deferred frees."""
    pinned = {"prog": set(), "map": set()}
    for n in (CNT, BLK, TP, HAND, NEW, OLD):
        live = ps.Live(pin_root, n)
        if live.prog_id:
            pinned["prog"].add(live.prog_id)
            pinned["map"].update(live.maps.values())
    deadline = time.time() + wait
    while True:
        ours = leaked(before_ids, KPROGS, KMAPS, wait=0)
        extra = {"prog": ours["prog"] - pinned["prog"], "map": ours["map"] - pinned["map"]}
        if not any(extra.values()) or time.time() > deadline:
            return extra
        time.sleep(0.2)


def test_prune_removes_only_names_with_our_record(pin_root, pair, work):
    old = run({"name": OLD, "object": objpath("rawtp_sys_enter"), "pin_root": pin_root})
    assert old["changed"], old
    foreign = os.path.join(pin_root, TAG + "_foreign")
    os.mkdir(foreign)
    try:
        res = state(args_for(pin_root, work, programs(pair), prune=True))
        assert not res["failed"] and sorted(res["pruned"]) == sorted([HAND, OLD]), res
        assert [e["action"] for e in res["programs"]][:2] == ["remove", "remove"]
        assert not os.path.exists(os.path.join(pin_root, OLD)) and ps.read_record(OLD) is None
        assert not os.path.exists(os.path.join(pin_root, HAND))
        assert os.path.isdir(foreign) and os.path.isdir(os.path.join(pin_root, CNT))
    finally:
        os.rmdir(foreign)


def _module_pid(tree_root):
    """The pid of the running ebpf_state module below process tree_root (its AnsiballZ python)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        argv = cmd.split(b"\0")
        if os.path.basename(argv[0]).startswith(b"python") and any(b"AnsiballZ_ebpf_state" in a for a in argv) \
                and _descends(int(entry), tree_root):
            return int(entry)
    return None


def _parent(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _descends(pid, root):
    while pid > 1:
        if pid == root:
            return True
        try:
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            return False
    return False


def test_controller_killed_mid_health_wait_host_rolled_back(pin_root, pair, work, before_ids):
    names = [CNT, BLK, TP, NEW]
    view = host_view(pin_root, pair, names, link_ids=False)
    saved = read_desired(work)
    progs = programs(pair, blk_object=variant(work, "xdp_blocklist", b"\0\0"), blk_keys=("192.0.2.10", "192.0.2.12"),
                     blk_health={"check": "counter", "map": kname("verdicts"), "key": 1, "timeout": 8})
    progs.append({"name": NEW, "object": objpath("rawtp_sys_enter"), "health": {"check": "none"}})
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local", "-i", "localhost,",
           "-m", "hypermesh.ebpf.ebpf_state", "-a", json.dumps(args_for(pin_root, work, progs)),
           "-e", "ansible_python_interpreter=" + sys.executable]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               LANG="C")
    controller = subprocess.Popen(cmd, env=env, cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)
    module = None
    deadline = time.time() + 60
    while time.time() < deadline and module is None:  # the module is in its health wait once NEW is pinned
        if os.path.exists(os.path.join(pin_root, NEW, "prog")):
            module = _module_pid(controller.pid)
        time.sleep(0.1)
    assert module, "the module never reached its health wait"
    # kill every controller process above the module (the ansible worker, its parent, the shell between)
    chain, pid = [], _parent(module)
    while pid > 1 and _descends(pid, controller.pid):
        chain.append(pid)
        pid = _parent(pid)
    for pid in chain:
        os.kill(pid, signal.SIGKILL)
    controller.wait()
    assert os.path.exists("/proc/%d" % module), "the module died with its controller"
    deadline = time.time() + 60
    while time.time() < deadline and os.path.exists("/proc/%d" % module) and _state_of(module) != "Z":
        time.sleep(0.1)
    assert not os.path.exists("/proc/%d" % module) or _state_of(module) == "Z"
    assert host_view(pin_root, pair, names, link_ids=False) == view
    assert read_desired(work) == saved
    assert not any(leaked_now(pin_root, before_ids).values())


def _state_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_remove_everything_leaves_nothing(pin_root, pair, work, before_ids):
    res = state(args_for(pin_root, work, [], prune=True))
    assert not res["failed"] and sorted(res["pruned"]) == sorted([CNT, BLK, TP]), res
    assert json.loads(read_desired(work))["programs"] == []
    assert not any(leaked(before_ids, KPROGS, KMAPS).values())


# ---- what the run installs before its gate -------------------------------------------------------------------
INST = TAG + "_inst"
UNIT = "/etc/systemd/system/hypermesh-ebpf-reapply.service"
REAPPLY = "ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply"


def state_play(args, check=False):
    """ebpf_state through ansible-playbook, the arguments in the playbook file; returns the module's result and
    the text ansible printed."""
    d = tempfile.mkdtemp(prefix="hm-state-play-")
    try:
        book = os.path.join(d, "play.json")
        with open(book, "w") as f:
            json.dump([{"hosts": "localhost", "gather_facts": False,
                        "tasks": [{"name": "state", "hypermesh.ebpf.ebpf_state": args}]}], f)
        cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-c", "local", "-i", "localhost,",
               book, "-e", "ansible_python_interpreter=" + sys.executable] + (["--check"] if check else [])
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
                   ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
                   ANSIBLE_CALLBACK_TREE_DIR=os.path.join(d, "tree"), ANSIBLE_NOCOLOR="1", LANG="C")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOP, check=False)
        try:
            with open(os.path.join(d, "tree", "localhost")) as f:
                text = f.read()
        except OSError:
            raise AssertionError("no result (rc=%d)\n%s\n%s"
                                 % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
        result = json.loads(text)
        result.setdefault("failed", proc.returncode != 0)
        return result, text + proc.stdout + proc.stderr
    finally:
        shutil.rmtree(d)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def b64(data):
    return base64.b64encode(data).decode("ascii")


def code_files():
    d = os.path.join(TOP, "plugins", "module_utils")
    return dict((os.path.relpath(p, d), open(p, "rb").read()) for p in sorted(glob.glob(os.path.join(d, "_*", "*.py"))))


def code_digest(files):
    """The documented digest, written out here: sha256 over "<name> <sha256>\\n" of the files sorted by name."""
    return sha("".join("%s %s\n" % (n, sha(files[n])) for n in sorted(files)).encode())


@pytest.fixture(scope="module")
def store(work):
    data = open(objpath("rawtp_sys_enter"), "rb").read()
    d = {"objects_dir": os.path.join(work, "var", "objects"), "lib_dir": os.path.join(work, "usr", "lib"),
         "desired": os.path.join(work, "inst", "desired.json"), "data": data, "sha": sha(data)}
    d["object"] = os.path.join(d["objects_dir"], d["sha"] + ".bpf.o")
    d["code"] = os.path.join(d["lib_dir"], "ansible_collections", "hypermesh", "ebpf", "plugins", "module_utils")
    return d


def install_args(pin_root, store, contents=False):
    obj = {"sha256": store["sha"]}
    files = code_files()
    code = {"digest": code_digest(files)}
    if contents:
        obj["content"] = b64(store["data"])
        code["files"] = [{"name": n, "content": b64(c)} for n, c in sorted(files.items())]
    return {"programs": [{"name": INST, "object": store["object"], "sha256": store["sha"],
                          "health": {"check": "none"}}],
            "pin_root": pin_root, "desired": store["desired"], "objects_dir": store["objects_dir"],
            "objects": [obj], "lib_dir": store["lib_dir"], "reapply_code": code}


def code_tree(store):
    """{"<package>/<file>": (mode, uid, content)} of the installed code ("<package>": (mode, uid, None) for its
    packages), and the directory's inode."""
    out = {}
    for pkg in os.listdir(store["code"]):
        st = os.lstat(os.path.join(store["code"], pkg))
        out[pkg] = (stat_mode(st), st.st_uid, None)
        for n in os.listdir(os.path.join(store["code"], pkg)):
            p = os.path.join(store["code"], pkg, n)
            st = os.lstat(p)
            out[pkg + "/" + n] = (stat_mode(st), st.st_uid, open(p, "rb").read())
    return out, os.lstat(store["code"]).st_ino


def installed_as_wanted():
    """code_tree's view of the collection's module_utils installed as they should be: files 0644, packages 0755."""
    want = dict((n, (0o644, 0, c)) for n, c in code_files().items())
    want.update((n.split("/")[0], (0o755, 0, None)) for n in code_files())
    return want


def stat_mode(st):
    return st.st_mode & 0o7777


def test_install_missing_objects_and_code_listed_nothing_changed(pin_root, store):
    unit_before = os.path.exists(UNIT)
    res, _text = state_play(install_args(pin_root, store))
    assert not res["failed"] and not res["changed"], res
    assert res["missing"] == {"objects": [store["sha"]], "code": True}, res
    assert "programs" not in res and "installed" not in res
    assert not os.path.exists(os.path.join(pin_root, INST)) and ps.read_record(INST) is None
    assert not os.path.exists(store["desired"]) and not os.path.exists(os.path.dirname(store["objects_dir"]))
    assert not os.path.exists(store["lib_dir"]) and os.path.exists(UNIT) == unit_before


def test_install_with_contents_writes_objects_code_and_applies(pin_root, store):
    args = install_args(pin_root, store, contents=True)
    res, text = state_play(args)
    assert not res["failed"] and res["changed"], (res.get("msg"), res)
    assert res["installed"] == {"objects": [store["sha"]], "code": True, "unit": False}, res
    assert args["objects"][0]["content"] not in text  # no_log
    st = os.lstat(store["object"])
    assert (st.st_uid, stat_mode(st)) == (0, 0o644) and open(store["object"], "rb").read() == store["data"]
    assert stat_mode(os.lstat(store["objects_dir"])) == 0o755 and os.listdir(store["objects_dir"]) == [
        store["sha"] + ".bpf.o"]
    assert [e["action"] for e in res["programs"]] == ["load"]
    live = ps.Live(pin_root, INST)
    assert live.prog_id == res["programs"][0]["prog_id"] and ps.read_record(INST)["sha256"] == store["sha"]
    assert json.loads(open(store["desired"]).read())["generation"] == 1
    files, _ino = code_tree(store)
    assert files == installed_as_wanted()
    d = store["code"]
    while d != os.path.dirname(store["lib_dir"]):
        assert (os.lstat(d).st_uid, stat_mode(os.lstat(d))) == (0, 0o755), d
        d = os.path.dirname(d)
    # the boot-time re-apply imports the installed code from lib_dir
    out = subprocess.run([sys.executable, "-c", "import %s as r; print(r.__file__)" % REAPPLY], cwd="/",
                         env={"PYTHONPATH": store["lib_dir"], "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == os.path.join(store["code"], "_state", "reapply.py")
    installed = sorted(os.path.relpath(os.path.join(r, f), store["code"]) for r, _d, fs in os.walk(store["code"]) for f in fs)
    assert installed == sorted(code_files())  # no __pycache__ left by that import
    # no systemd on this host (/run/systemd/system is not a directory): no unit
    assert not os.path.isdir("/run/systemd/system") and not os.path.exists(UNIT)


def test_install_damaged_object_and_code_missing_then_rewritten(pin_root, store):
    prog_id = ps.Live(pin_root, INST).prog_id
    os.chmod(store["object"], 0o646)                      # writable by others: damaged
    planted = os.path.join(store["code"], "_state", "planted.py")   # a file that is not the collection's: not current
    with open(planted, "w") as f:
        f.write("import os\n")
    res, _text = state_play(install_args(pin_root, store))
    assert not res["failed"] and not res["changed"], res
    assert res["missing"] == {"objects": [store["sha"]], "code": True}, res
    assert stat_mode(os.lstat(store["object"])) == 0o646 and os.path.exists(planted)
    # check mode with the contents: the object is written (the gate reads it), the code only predicted
    res, _text = state_play(install_args(pin_root, store, contents=True), check=True)
    assert not res["failed"] and res["changed"], res
    assert res["installed"] == {"objects": [store["sha"]], "code": True, "unit": False}, res
    assert stat_mode(os.lstat(store["object"])) == 0o644 and os.path.exists(planted)
    assert [e["action"] for e in res["programs"]] == ["none"]
    # really, with the contents: the code directory replaced whole
    with open(store["object"], "r+b") as f:
        f.write(b"damaged")
    _files, ino = code_tree(store)
    res, _text = state_play(install_args(pin_root, store, contents=True))
    assert not res["failed"] and res["changed"], (res.get("msg"), res)
    assert res["installed"] == {"objects": [store["sha"]], "code": True, "unit": False}, res
    assert open(store["object"], "rb").read() == store["data"]
    files, new_ino = code_tree(store)
    assert new_ino != ino and files == installed_as_wanted()
    assert [e["action"] for e in res["programs"]] == ["none"] and ps.Live(pin_root, INST).prog_id == prog_id


def test_install_current_changes_nothing(pin_root, store):
    files, ino = code_tree(store)
    obj = os.lstat(store["object"])
    for contents in (False, True):
        res, _text = state_play(install_args(pin_root, store, contents=contents))
        assert not res["failed"] and not res["changed"], (res.get("msg"), res)
        assert res["installed"] == {"objects": [], "code": False, "unit": False}, res
        assert [e["action"] for e in res["programs"]] == ["none"]
    assert code_tree(store) == (files, ino)
    assert os.lstat(store["object"]).st_mtime_ns == obj.st_mtime_ns and not os.path.exists(UNIT)


def test_install_cleanup_leaves_nothing(pin_root, store, before_ids):
    res = state({"programs": [], "pin_root": pin_root, "desired": store["desired"], "prune": True})
    assert not res["failed"] and res["pruned"] == [INST], res
    assert not any(leaked(before_ids, KPROGS, KMAPS).values())
