"""The roles ebpf_host and ebpf_programs and the rollout playbook, run through real ansible-playbook on localhost.

ebpf_host: check mode (nothing changes), then for real inside a private mount namespace (bpffs unmounted there
first, /etc/sysctl.d bind-mounted from a temp dir, a temp fstab), twice: changed, then not changed; the live
sysctl is put back afterwards.

ebpf_programs through playbooks/rollout.yml, against three inventory hosts that are all this machine
(connection local), each with its own pin root, state, config and lib directories and its own veth pair between
two network namespaces made here; pings run inside those namespaces only. The rollouts run from a copy of the
collection taken when the fleet is made, so an edit of the working tree during the tests changes nothing the
role installs: a module_utils install that is not needed is a failure. In order:
  check mode (changed, nothing in the kernel) -> rollout (changed) -> rollout again (nothing changed) ->
  check mode again (nothing to change) -> module_utils installed again only when one is missing or damaged ->
  a kprobe program refused by the gate where probes.probe("kprobe") says unsupported, nothing changed ->
  prune drops a program
  removed from the list -> a canary whose health check cannot pass (its program counts packets on an interface
  where nothing sends any) is rolled back and the rollout stops before the next batch -> boot-time re-apply from
  desired.json (skipped until the module code it calls exists).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.conftest import COLLECTIONS, TOP, needs_root
from tests.integration.netns import make_veth_pair

from ansible_collections.hypermesh.ebpf.plugins.module_utils import probes

pytestmark = needs_root

OBJECTS = os.path.join(TOP, "examples", "objects")
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
HOSTS = ("h1", "h2", "h3")

# ansible-core has no json stdout callback any more (it moved to ansible.posix): a small one, written at run time.
CALLBACK = """
import json
import time
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "hm_json"

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name()}, "hosts": {}, "start": time.time()})

    def _record(self, result, **extra):
        res = getattr(result, "result", None)
        if not isinstance(res, dict):
            res = result._result
        host = getattr(result, "host", None) or result._host
        out = json.loads(json.dumps(res, default=str))
        out.update(extra)
        out["_seconds"] = round(time.time() - self.plays[-1]["tasks"][-1]["start"], 2)
        self.plays[-1]["tasks"][-1]["hosts"][host.get_name()] = out

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, failed=True, ignore_errors=ignore_errors)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        summary = dict((h, stats.summarize(h)) for h in sorted(stats.processed))
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, default=str))
"""
_CALLBACK_DIR = []


def callback_env(collections=COLLECTIONS):
    """Environment for ansible-playbook with the hm_json stdout callback, the collection found in `collections`."""
    if not _CALLBACK_DIR:
        import atexit
        import shutil
        import tempfile
        d = tempfile.mkdtemp(prefix="hm_callback_")
        atexit.register(shutil.rmtree, d, True)
        with open(os.path.join(d, "hm_json.py"), "w") as f:
            f.write(CALLBACK)
        _CALLBACK_DIR.append(d)
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=collections,
                ANSIBLE_CALLBACK_PLUGINS=_CALLBACK_DIR[0], ANSIBLE_STDOUT_CALLBACK="hm_json",
                ANSIBLE_NOCOLOR="1", LANG="C")


def run_playbook(playbook, inventory="localhost,", extra=None, check=False, limit=None, prefix=None,
                 collections=COLLECTIONS):
    """ansible-playbook with the json callback; returns (rc, parsed output)."""
    cmd = list(prefix or []) + [PLAYBOOK, "-i", inventory, playbook]
    if inventory == "localhost,":
        cmd += ["-c", "local", "-e", "ansible_python_interpreter=" + sys.executable]
    for e in extra or []:
        cmd += ["-e", e]
    if check:
        cmd.append("--check")
    if limit:
        cmd += ["--limit", limit]
    env = callback_env(collections)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOP, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])
    except ValueError:
        raise AssertionError("no JSON from ansible-playbook (rc=%d)\n%s\n%s"
                             % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))


def task_results(doc, host, name_part):
    """Results of every task whose name contains name_part, for host."""
    out = []
    for play in doc["plays"]:
        for task in play["tasks"]:
            if name_part in task["task"]["name"] and host in task["hosts"]:
                out.append(task["hosts"][host])
    return out


def changed_tasks(doc, host):
    """Names of the tasks that reported a change for host."""
    return [t["task"]["name"] for p in doc["plays"] for t in p["tasks"] if t["hosts"].get(host, {}).get("changed")]


def failure_messages(doc):
    msgs = []
    for play in doc["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if res.get("failed") and not res.get("ignore_errors"):
                    msgs.append("%s %s: %s" % (host, task["task"]["name"], res.get("msg")))
    return "\n".join(msgs)


# ---------------------------------------------------------------------------------------------------------------
# ebpf_host

HOST_PLAY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: hypermesh.ebpf.ebpf_host
"""


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def test_ebpf_host_check_mode_changes_nothing(tmp_path):
    play = _write(str(tmp_path / "host.yml"), HOST_PLAY)
    fstab = _write(str(tmp_path / "fstab"), "# test fstab\n")
    before = open("/proc/sys/kernel/bpf_stats_enabled").read()
    want = "0" if before.strip() == "1" else "1"
    rc, doc = run_playbook(play, check=True, extra=[
        json.dumps({"ebpf_host_fstab": fstab, "ebpf_host_sysctls": {"kernel.bpf_stats_enabled": int(want)}})])
    assert rc == 0, failure_messages(doc)
    assert doc["stats"]["localhost"]["changed"] >= 2           # the fstab line, the sysctl file, the live value
    live = task_results(doc, "localhost", "apply the sysctls")[0]
    assert "set kernel.bpf_stats_enabled=%s" % want in live["stdout"]
    assert open("/proc/sys/kernel/bpf_stats_enabled").read() == before
    assert open(fstab).read() == "# test fstab\n"
    assert not os.path.exists("/etc/sysctl.d/60-hypermesh-ebpf.conf")


def test_ebpf_host_rejects_unknown_sysctl(tmp_path):
    play = _write(str(tmp_path / "host.yml"), HOST_PLAY)
    rc, doc = run_playbook(play, extra=[json.dumps({"ebpf_host_sysctls": {"kernel.panic": 1}})])
    assert rc != 0
    assert "kernel.panic" in failure_messages(doc)
    assert not os.path.exists("/etc/sysctl.d/60-hypermesh-ebpf.conf")


def test_ebpf_host_mounts_bpffs_and_sets_sysctls_idempotently(tmp_path):
    """For real, in a private mount namespace: bpffs unmounted there first, /etc/sysctl.d from a temp dir."""
    play = _write(str(tmp_path / "host.yml"), HOST_PLAY)
    fstab = _write(str(tmp_path / "fstab"), "# test fstab\n")
    sysctl_d = tmp_path / "sysctl.d"
    sysctl_d.mkdir()
    before = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    want = "0" if before == "1" else "1"
    extra = json.dumps({"ebpf_host_fstab": fstab, "ebpf_host_packages": False,
                        "ebpf_host_sysctls": {"kernel.bpf_stats_enabled": int(want)}})
    script = tmp_path / "inner.sh"
    runs = []
    for i in (1, 2):
        out = str(tmp_path / ("run%d.json" % i))
        runs.append(out)
    _write(str(script), "\n".join([
        "set -e",
        # bpffs may be mounted more than once on top of itself (each mount hides the one below)
        "while grep -q ' /sys/fs/bpf bpf ' /proc/mounts; do umount -l /sys/fs/bpf; done",
        "mount --bind %s /etc/sysctl.d" % sysctl_d,
        '"$@" > %s || true' % runs[0],
        "grep ' /sys/fs/bpf bpf ' /proc/mounts > %s/mounts" % tmp_path,
        '"$@" > %s || true' % runs[1],
    ]) + "\n")
    env = callback_env()
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", str(script), PLAYBOOK,
                               "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + sys.executable,
                               "-e", extra, play], capture_output=True, text=True, env=env, cwd=TOP, check=False)
        assert proc.returncode == 0, proc.stderr
        docs = [json.load(open(r)) for r in runs]
        assert docs[0]["stats"]["localhost"]["failures"] == 0, failure_messages(docs[0])
        first, second = docs[0]["stats"]["localhost"], docs[1]["stats"]["localhost"]
        # run 1: fstab line, sysctl file, bpffs mounted + sysctl set; run 2: nothing to do
        assert first["changed"] == 3, first
        assert second["changed"] == 0 and second["failures"] == 0, second
        live = task_results(docs[0], "localhost", "apply the sysctls")[0]["stdout"]
        assert "mount bpffs on /sys/fs/bpf" in live and "set kernel.bpf_stats_enabled=%s" % want in live
        assert "/sys/fs/bpf bpf" in open(str(tmp_path / "mounts")).read()
        assert open("/proc/sys/kernel/bpf_stats_enabled").read().strip() == want
        assert open(fstab).read().count(" /sys/fs/bpf bpf ") == 1
        assert open(str(sysctl_d / "60-hypermesh-ebpf.conf")).read().endswith(
            "kernel.bpf_stats_enabled = %s\n" % want)
        # the host's own mount table and /etc/sysctl.d never changed
        assert not os.path.exists("/etc/sysctl.d/60-hypermesh-ebpf.conf")
        assert any(line.split()[1] == "/sys/fs/bpf" for line in open("/proc/self/mounts"))
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(before + "\n")


# ---------------------------------------------------------------------------------------------------------------
# ebpf_programs and the rollout

# what of the collection a rollout uses (the roles reach plugins/ through role_path/../..)
COLLECTION_PARTS = ("galaxy.yml", "meta", "plugins", "playbooks", "roles")


def snapshot_collection(tmp):
    """A copy of the working tree's collection under tmp; returns its collections path."""
    collections = os.path.join(tmp, "collections")
    dest = os.path.join(collections, "ansible_collections", "hypermesh", "ebpf")
    os.makedirs(dest)
    for part in COLLECTION_PARTS:
        src = os.path.join(TOP, part)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, part), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, os.path.join(dest, part))
    return collections


class Fleet(object):
    """Three inventory hosts (all this machine), each with its own directories and veth pair; the rollouts run
    from a copy of the collection (self.collection), taken once."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.collections = snapshot_collection(tmp)
        self.collection = os.path.join(self.collections, "ansible_collections", "hypermesh", "ebpf")
        # one level under /sys/fs/bpf: ebpf_program creates the pin root but not its parents
        self.root = "/sys/fs/bpf/hmt_roles_%s" % uuid.uuid4().hex[:8]
        self.pairs = {}
        self.pings = {}
        self.inventory = os.path.join(tmp, "inventory.ini")

    def dirs(self, host):
        return {"pin_root": self.root + "_" + host, "state": os.path.join(self.tmp, host, "state"),
                "etc": os.path.join(self.tmp, host, "etc"), "lib": os.path.join(self.tmp, host, "lib")}

    def write_inventory(self):
        lines = ["[fleet]"]
        for h in HOSTS:
            d, p = self.dirs(h), self.pairs[h]
            lines.append(" ".join([
                h, "ansible_connection=local", "ansible_python_interpreter=" + sys.executable,
                "ebpf_programs_pin_root=" + d["pin_root"], "ebpf_programs_state_dir=" + d["state"],
                "ebpf_programs_config_dir=" + d["etc"], "ebpf_programs_lib_dir=" + d["lib"],
                "t_ns_a=" + p.ns_a, "t_if_a=" + p.if_a, "t_ns_b=" + p.ns_b, "t_if_b=" + p.if_b]))
        _write(self.inventory, "\n".join(lines) + "\n")

    def start_ping(self, host):
        p = self.pairs[host]
        self.pings[host] = subprocess.Popen(["ip", "netns", "exec", p.ns_a, "ping", "-q", "-i", "0.2", p.addr_b],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_ping(self, host):
        proc = self.pings.pop(host, None)
        if proc:
            proc.terminate()
            proc.wait()

    def programs_file(self, programs, name="programs.yml"):
        path = os.path.join(self.tmp, name)
        _write(path, json.dumps({"ebpf_programs": programs}))
        return "@" + path

    def rollout(self, programs, check=False, limit=None, extra=()):
        return run_playbook(os.path.join(self.collection, "playbooks", "rollout.yml"), inventory=self.inventory,
                            extra=[self.programs_file(programs), "rollout_prepare_hosts=false"] + list(extra),
                            check=check, limit=limit, collections=self.collections)

    def cleanup(self, name, host):
        """Detach and unpin program `name` of `host` through the module (like an operator)."""
        d = self.dirs(host)
        return run_playbook(os.path.join(self.tmp, "cleanup.yml"), collections=self.collections,
                            extra=[json.dumps({"n": name, "r": d["pin_root"], "s": d["state"]})])

    def xdp_prog(self, host, side="b"):
        p = self.pairs[host]
        ns, ifname = (p.ns_b, p.if_b) if side == "b" else (p.ns_a, p.if_a)
        out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", ifname], capture_output=True, text=True,
                             check=True).stdout
        return ((json.loads(out)[0].get("xdp") or {}).get("prog") or {}).get("id")

    def desired(self, host):
        path = os.path.join(self.dirs(host)["etc"], "desired.json")
        return open(path).read() if os.path.exists(path) else None

    def pinned(self, host, name, what="prog"):
        return os.path.exists(os.path.join(self.dirs(host)["pin_root"], name, what))


def counter(extra=None):
    prog = {"name": "counter", "object": os.path.join(OBJECTS, "xdp_counter.bpf.o"),
            "attach": {"xdp": {"interface": "{{ t_if_b }}", "netns": "{{ t_ns_b }}", "mode": "generic"}},
            "health": {"check": "counter", "map": "xdp_stats", "key": 0, "field": "packets", "timeout": 15}}
    prog.update(extra or {})
    return prog


OPENAT = {"name": "openat", "object": os.path.join(OBJECTS, "tp_openat.bpf.o"),
          "attach": {"tracepoint": "syscalls/sys_enter_openat"}, "health": {"timeout": 15}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("fleet"))
    f = Fleet(tmp)
    stack = []
    opener = None
    _write(os.path.join(tmp, "cleanup.yml"), CLEANUP_PLAY)
    try:
        # something that opens files all the time, so the openat program's run count moves on a quiet host too
        opener = subprocess.Popen(["sh", "-c", "while :; do cat /etc/hostname >/dev/null; sleep 0.2; done"])
        for h in HOSTS:
            cm = make_veth_pair()
            f.pairs[h] = cm.__enter__()
            stack.append(cm)
            f.start_ping(h)
        f.write_inventory()
        yield f
    finally:
        if opener:
            opener.kill()
            opener.wait()
        for h in list(f.pings):
            f.stop_ping(h)
        for h in HOSTS:  # detach and unpin what the tests left (through the module, like an operator)
            d = f.dirs(h)
            if os.path.isdir(d["pin_root"]):
                for name in os.listdir(d["pin_root"]):
                    f.cleanup(name, h)
        for cm in reversed(stack):
            cm.__exit__(None, None, None)
        for h in HOSTS:
            pin_root = f.dirs(h)["pin_root"]
            if os.path.isdir(pin_root) and not os.listdir(pin_root):
                os.rmdir(pin_root)


CLEANUP_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - hypermesh.ebpf.ebpf_program: {name: "{{ n }}", state: absent, pin_root: "{{ r }}"}
      environment: {HYPERMESH_EBPF_STATE_DIR: "{{ s }}"}
"""


def test_rollout_check_mode_first_changes_nothing_in_the_kernel(fleet):
    rc, doc = fleet.rollout([counter(), OPENAT], check=True)
    assert rc == 0, failure_messages(doc)
    for h in HOSTS:
        assert doc["stats"][h]["changed"] > 0
        would = task_results(doc, h, "Install the collection's module_utils (check mode")  # the first install
        assert would and would[0].get("changed") and "module_utils/reapply.py" in would[0]["msg"], would
        assert fleet.xdp_prog(h) is None
        assert not os.path.exists(fleet.dirs(h)["pin_root"])
        assert fleet.desired(h) is None


def py_digests(directory):
    """name -> sha256 of the .py files in directory (what the role compares before installing module_utils)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            with open(os.path.join(directory, name), "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def installed_module_utils(fleet, host):
    return os.path.join(fleet.dirs(host)["lib"], "ansible_collections/hypermesh/ebpf/plugins/module_utils")


def module_utils_in_sync(fleet, host):
    """True when the host's installed module_utils are the controller's (nothing for the role to install)."""
    controller = os.path.join(fleet.collection, "plugins", "module_utils")
    return py_digests(installed_module_utils(fleet, host)) == py_digests(controller)


def test_rollout_applies_then_changes_nothing(fleet):
    rc, doc = fleet.rollout([counter(), OPENAT])
    assert rc == 0, failure_messages(doc)
    for h in HOSTS:
        assert doc["stats"][h]["changed"] > 0 and doc["stats"][h]["failures"] == 0
        assert fleet.xdp_prog(h), "no XDP program on %s" % h
        assert fleet.pinned(h, "counter") and fleet.pinned(h, "openat", "link")
        # the health checks ran and saw movement: counter packets and the openat run count
        waited = task_results(doc, h, "Wait for the health counters to move")[0]["results"][0]
        assert waited["entries"][0]["value"]["packets"] > 0 and waited["wait"]["reached"] is True, waited
        runs = task_results(doc, h, "Wait for the programs to run")[0]
        assert any(p.get("managed_name") == "openat" and p["run_cnt"] > 0 for p in runs["programs"]), runs
        desired = json.loads(fleet.desired(h))
        assert [p["program"]["name"] for p in desired["programs"]] == ["counter", "openat"]
        lib = os.path.join(fleet.dirs(h)["lib"], "ansible_collections/hypermesh/ebpf/plugins/module_utils")
        assert os.path.exists(os.path.join(lib, "reapply.py")) and os.path.exists(os.path.join(lib, "bpf_syscall.py"))
        assert module_utils_in_sync(fleet, h)
    ids = dict((h, fleet.xdp_prog(h)) for h in HOSTS)
    desired = dict((h, fleet.desired(h)) for h in HOSTS)

    rc, doc = fleet.rollout([counter(), OPENAT])
    assert rc == 0, failure_messages(doc)
    for h in HOSTS:
        assert changed_tasks(doc, h) == [], h
        assert fleet.xdp_prog(h) == ids[h]
        assert fleet.desired(h) == desired[h]

    rc, doc = fleet.rollout([counter(), OPENAT], check=True, limit="h1")
    assert rc == 0, failure_messages(doc)
    assert doc["stats"]["h1"]["changed"] == 0, changed_tasks(doc, "h1")

    # a damaged object on the host (same name, other content) is copied again, and nothing else changes
    obj = json.loads(desired["h1"])["programs"][0]["program"]["object"]
    with open(obj, "ab") as f:
        f.write(b"damage")
    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1")
    assert rc == 0, failure_messages(doc)
    changed = changed_tasks(doc, "h1")
    assert changed == [
        "hypermesh.ebpf.ebpf_programs : Copy the objects (content addressed, so a rollback finds the previous ones)"
    ], changed
    assert hashlib.sha256(open(obj, "rb").read()).hexdigest() == os.path.basename(obj).split(".")[0]
    assert fleet.xdp_prog("h1") == ids["h1"]


def test_module_utils_are_installed_only_when_missing_or_damaged(fleet):
    """The persist step lists module_utils on the controller and on the host (sha256): a rollout with nothing
    new skips the tar and the unarchive; a truncated installed file is reported by check mode and put back.
    The fleet's collection is a copy nothing edits: an install here is the defect this test is for."""
    lib = installed_module_utils(fleet, "h1")
    assert module_utils_in_sync(fleet, "h1")
    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1")
    assert rc == 0, failure_messages(doc)
    assert changed_tasks(doc, "h1") == []
    for name in ("Pack the collection's module_utils", "Install the collection's module_utils",
                 "Remove the packed module_utils"):
        res = task_results(doc, "h1", name)[0]
        assert res.get("skipped") and not res.get("changed"), (name, res)
    assert not task_results(doc, "h1", "Find the module_utils already on the host")[0].get("changed")

    victim = os.path.join(lib, "reapply.py")
    open(victim, "w").close()  # truncated
    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1", check=True)
    assert rc == 0, failure_messages(doc)
    would = task_results(doc, "h1", "Install the collection's module_utils (check mode")[0]
    assert would["changed"] and "module_utils/reapply.py" in would["msg"], would
    assert task_results(doc, "h1", "Install the collection's module_utils for the re-apply")[0].get("skipped")
    assert os.path.getsize(victim) == 0

    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1")
    assert rc == 0, failure_messages(doc)
    changed = changed_tasks(doc, "h1")
    assert changed == ["hypermesh.ebpf.ebpf_programs : Install the collection's module_utils for the re-apply "
                       "(same code as the modules)"], changed
    assert os.path.getsize(victim) > 0
    assert module_utils_in_sync(fleet, "h1")
    assert not os.path.exists(task_results(doc, "h1", "Pack the collection's module_utils")[0]["stdout"])


def test_gate_refuses_a_host_without_the_feature_and_changes_nothing(fleet):
    """kprobe, which probes.probe() says this kernel lacks (decided before the rollout; on a kernel with
    kprobes there is nothing to refuse, and the kernel matrix runs this gate where kprobes are missing)."""
    found = probes.probe("kprobe")
    if found["supported"]:
        pytest.skip("probes.probe('kprobe'): supported here, the gate has nothing to refuse: %s" % found["reason"])
    kprobe = {"name": "kp", "object": os.path.join(OBJECTS, "kprobe_unlinkat.bpf.o"),
              "attach": {"kprobe": "do_unlinkat"}}
    before = fleet.desired("h1")
    ids = fleet.xdp_prog("h1")
    rc, doc = fleet.rollout([counter(), OPENAT, kprobe], limit="h1")
    assert rc != 0, "the gate let a kprobe program through although %s" % found["reason"]
    msg = failure_messages(doc)
    assert "refused, nothing changed" in msg and os.uname().release in msg, msg
    assert "kprobe needs kernel" in msg, msg
    assert changed_tasks(doc, "h1") == []
    assert fleet.xdp_prog("h1") == ids
    assert not fleet.pinned("h1", "kp")
    assert fleet.desired("h1") == before


def test_prune_removes_a_program_dropped_from_the_list(fleet):
    link = os.path.join(fleet.dirs("h1")["pin_root"], "openat", "link")
    link_id = json.loads(subprocess.run(["bpftool", "-j", "link", "show", "pinned", link], capture_output=True,
                                        text=True, check=True).stdout)["id"]
    rc, doc = fleet.rollout([counter()], extra=["ebpf_programs_prune=true"])
    assert rc == 0, failure_messages(doc)
    for h in HOSTS:
        pruned = task_results(doc, h, "no longer listed")[0]["results"]
        assert [r["item"] for r in pruned if r["changed"]] == ["openat"]
        assert not os.path.exists(os.path.join(fleet.dirs(h)["pin_root"], "openat"))
        assert fleet.pinned(h, "counter")
        assert [p["program"]["name"] for p in json.loads(fleet.desired(h))["programs"]] == ["counter"]
        previous = json.load(open(os.path.join(fleet.dirs(h)["etc"], "desired.previous.json")))
        assert [p["program"]["name"] for p in previous["programs"]] == ["counter", "openat"]
    gone = subprocess.run(["bpftool", "link", "show", "id", str(link_id)], capture_output=True, text=True, check=False)
    assert gone.returncode != 0, "the tracepoint link %d is still in the kernel" % link_id


def test_failed_canary_is_rolled_back_and_stops_the_rollout(fleet):
    """h1 (the canary) gets a program counting packets on an interface nothing sends to: its health check
    cannot pass. h1 must end up running what it ran before, and h2/h3 must not be touched."""
    fleet.stop_ping("h1")
    ids = dict((h, fleet.xdp_prog(h)) for h in HOSTS)
    desired = dict((h, fleet.desired(h)) for h in HOSTS)
    # counter-a counts what arrives on the a side (ping replies): moves on h2/h3, not on h1 (no ping there)
    counter_a = {"name": "counter-a", "object": os.path.join(OBJECTS, "xdp_counter.bpf.o"),
                 "attach": {"xdp": {"interface": "{{ t_if_a }}", "netns": "{{ t_ns_a }}", "mode": "generic"}},
                 "health": {"check": "counter", "map": "xdp_stats", "key": 0, "field": "packets", "timeout": 4}}
    try:
        rc, doc = fleet.rollout([counter(), counter_a])
    finally:
        fleet.start_ping("h1")
    assert rc != 0
    msg = failure_messages(doc)
    assert "health check failed on h1" in msg and "counter-a" in msg and "stayed at" in msg, msg
    assert "rolled back to the previous desired state: counter" in msg, msg
    # h1 rolled back: counter-a gone (pins and XDP), counter untouched, desired state as before
    assert fleet.xdp_prog("h1", side="a") is None
    assert not os.path.exists(os.path.join(fleet.dirs("h1")["pin_root"], "counter-a"))
    assert fleet.xdp_prog("h1") == ids["h1"]
    assert fleet.desired("h1") == desired["h1"]
    assert doc["stats"]["h1"]["rescued"] == 1
    # the rollout stopped before the next batch: h2 and h3 never ran a task
    for h in ("h2", "h3"):
        assert all(h not in t["hosts"] for p in doc["plays"] for t in p["tasks"]), h
        assert fleet.xdp_prog(h, side="a") is None
        assert fleet.xdp_prog(h) == ids[h]
        assert fleet.desired(h) == desired[h]


def test_apply_failure_midway_undoes_the_programs_applied_before_it(fleet):
    """All or nothing per host: the verifier rejects the third program (at load, so the check-mode gate passes
    it); the second, new in this run and already attached, must be removed again."""
    before = fleet.desired("h1")
    ids = fleet.xdp_prog("h1")
    openat2 = dict(OPENAT, name="openat2")
    bad = {"name": "bad", "object": os.path.join(OBJECTS, "bad_verifier.bpf.o"),
           "attach": {"xdp": {"interface": "{{ t_if_a }}", "netns": "{{ t_ns_a }}", "mode": "generic"}}}
    rc, doc = fleet.rollout([counter(), openat2, bad], limit="h1")
    assert rc != 0
    applied = task_results(doc, "h1", "Load, pin and attach")[0]["results"]
    assert [(r["item"]["name"], bool(r.get("failed"))) for r in applied] == [
        ("counter", False), ("openat2", False), ("bad", True)]
    msg = failure_messages(doc)
    assert "rolled back to the previous desired state: counter" in msg, msg
    removed = task_results(doc, "h1", "remove the programs that were not there before")[0]["results"]
    # `difference` works on sets: the loop's order is not the list's order
    assert dict((r["item"], r["changed"]) for r in removed) == {"openat2": True, "bad": False}
    for name in ("openat2", "bad"):
        assert not os.path.exists(os.path.join(fleet.dirs("h1")["pin_root"], name))
    assert fleet.xdp_prog("h1") == ids and fleet.xdp_prog("h1", side="a") is None
    assert fleet.desired("h1") == before


def test_reapply_restores_the_desired_state_after_the_kernel_lost_it(fleet):
    """What a reboot does to bpffs, done by hand: detach and unpin everything, then run the boot-time entry
    point the unit runs (python3 -m ...reapply with PYTHONPATH=<lib_dir>)."""
    d = fleet.dirs("h2")
    lib = d["lib"]
    before = json.loads(fleet.desired("h2"))
    fleet.cleanup("counter", "h2")
    assert fleet.xdp_prog("h2") is None and not fleet.pinned("h2", "counter")
    env = dict(os.environ, PYTHONPATH=lib, HYPERMESH_EBPF_STATE_DIR=d["state"], PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.hypermesh.ebpf.plugins.module_utils.reapply",
                           "--desired", os.path.join(d["etc"], "desired.json"), "--retry-seconds", "0"],
                          capture_output=True, text=True, env=env, cwd="/", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["program"] == "counter" and lines[0]["changed"] is True
    assert lines[-1] == {"summary": True, "programs": len(before["programs"]), "failed": []}
    assert fleet.xdp_prog("h2") and fleet.pinned("h2", "counter")
    again = subprocess.run(proc.args, capture_output=True, text=True, env=env, cwd="/", check=False)
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[0])["changed"] is False


def test_reapply_refuses_a_bad_desired_file(tmp_path):
    bad = _write(str(tmp_path / "desired.json"), json.dumps({"version": 99, "programs": []}))
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    for path, text in ((bad, "version 99"), (str(tmp_path / "missing.json"), "cannot read")):
        proc = subprocess.run([sys.executable, "-m", "ansible_collections.hypermesh.ebpf.plugins.module_utils.reapply",
                               "--desired", path], capture_output=True, text=True, env=env, cwd="/", check=False)
        assert proc.returncode == 2
        assert text in json.loads(proc.stdout.splitlines()[-1])["error"]
