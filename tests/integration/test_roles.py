"""The role ebpf_programs and the rollout playbook, run through real ansible-playbook on localhost (the role
ebpf_host: test_ebpf_host.py).

ebpf_programs through playbooks/rollout.yml, against three inventory hosts that are all this machine
(connection local), each with its own pin root, state, config and lib directories and its own veth pair between
two network namespaces made here; pings run inside those namespaces only. The rollouts run from a copy of the
collection taken when the fleet is made, so an edit of the working tree during the tests changes nothing the
role installs: a module_utils install that is not needed is a failure. The role is one ebpf_state run per host
(two when the host lacks an object or the module_utils); what it did is read from those runs' results, and the
module runs per host are counted from the tasks that ran there (controller-only actions left out). In order:
  check mode (changed, nothing in the kernel) -> rollout (2 module runs, changed) -> rollout again (1 module run,
  nothing changed) -> check mode again (nothing to change) -> a damaged object written again, nothing else ->
  module_utils installed again only when one is missing or damaged -> a kprobe program refused by the gate where
  probes.probe("kprobe") says unsupported, no program changed -> prune drops a program removed from the list ->
  a canary whose health check cannot pass (its program counts packets on an interface where nothing sends any)
  is rolled back and the rollout stops before the next batch -> the verifier rejecting the third program undoes
  the second.
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

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes

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
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name(), "action": task.action}, "hosts": {},
                                        "start": time.time()})

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


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


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
    - hypermesh.ebpf.ebpf_program: {name: "{{ n }}", state: absent, pin_root: "{{ r }}", state_dir: "{{ s }}"}
"""


# ebpf_state's two tasks in the role: the run with digests only, and the one with what the host lacked
FIRST = "Apply the desired state on the host (one transaction)"
UPLOAD = "Apply the desired state on the host, with what it lacked (one transaction)"
ROLE = "hypermesh.ebpf.ebpf_programs : "
# actions that run on the controller only (no module run on the host)
_CONTROLLER_NAMES = ("set_fact", "validate_argument_spec", "include_role", "include_tasks", "import_role",
                     "import_tasks", "debug", "fail", "assert", "meta")
CONTROLLER_ACTIONS = frozenset(a for name in _CONTROLLER_NAMES for a in (name, "ansible.builtin." + name))


def module_runs(doc, host):
    """Names of the tasks that ran a module on host (not skipped, not a controller-only action)."""
    return [t["task"]["name"] for p in doc["plays"] for t in p["tasks"]
            if host in t["hosts"] and not t["hosts"][host].get("skipped")
            and t["task"]["action"] not in CONTROLLER_ACTIONS]


def state_runs(doc, host):
    """(first, upload) ebpf_state results of host (upload None when it was skipped or did not run)."""
    first = task_results(doc, host, FIRST)
    upload = [r for r in task_results(doc, host, UPLOAD) if not r.get("skipped")]
    return (first[0] if first else None), (upload[0] if upload else None)


def state_result(doc, host):
    """The result of the ebpf_state run that did the work (the upload when there was one)."""
    first, upload = state_runs(doc, host)
    return upload or first


def actions(result):
    return [(p["name"], p["action"]) for p in result["programs"]]


def sha_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


NOTHING_INSTALLED = {"objects": [], "code": False, "unit": False}


def test_rollout_check_mode_first_changes_nothing_in_the_kernel(fleet):
    rc, doc = fleet.rollout([counter(), OPENAT], check=True)
    assert rc == 0, failure_messages(doc)
    objects = sorted([sha_of(counter()["object"]), sha_of(OPENAT["object"])])
    for h in HOSTS:
        assert doc["stats"][h]["changed"] > 0
        first, upload = state_runs(doc, h)
        # the first run names what the host lacks and changes nothing; the second brings it (check mode: the
        # objects are stored, an inert cache the gate reads; the code is only predicted)
        assert not first["changed"] and sorted(first["missing"]["objects"]) == objects and first["missing"]["code"]
        assert upload["changed"] and upload["installed"]["code"] is True, upload
        assert sorted(upload["installed"]["objects"]) == objects
        assert actions(upload) == [("counter", "load"), ("openat", "load")]
        assert module_runs(doc, h) == [ROLE + FIRST, ROLE + UPLOAD]
        assert fleet.xdp_prog(h) is None
        assert not os.path.exists(fleet.dirs(h)["pin_root"])
        assert fleet.desired(h) is None
        assert not os.path.exists(installed_module_utils(fleet, h))


def py_digests(directory):
    """"<package>/<file>.py" -> sha256 of the .py files in directory's packages (what the role compares before
    installing module_utils)."""
    out = {}
    for pkg in sorted(os.listdir(directory)):
        if not pkg.startswith("_") or not os.path.isdir(os.path.join(directory, pkg)):
            continue
        for name in sorted(os.listdir(os.path.join(directory, pkg))):
            if name.endswith(".py"):
                with open(os.path.join(directory, pkg, name), "rb") as f:
                    out[pkg + "/" + name] = hashlib.sha256(f.read()).hexdigest()
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
        # a first rollout: two module runs (digests only, then with the objects and the code the host lacked)
        assert module_runs(doc, h) == [ROLE + FIRST, ROLE + UPLOAD], module_runs(doc, h)
        first, res = state_runs(doc, h)
        assert actions(res) == [("counter", "load"), ("openat", "load")]
        # what the first run named is what the second installed (the check mode before stored the objects)
        assert first["missing"]["code"] is True and res["installed"]["code"] is True, (first, res)
        assert sorted(res["installed"]["objects"]) == sorted(first["missing"]["objects"])
        # the health checks ran and saw movement: counter packets and the openat run count
        assert [p["health"] for p in res["programs"]] == ["ok", "ok"], res["programs"]
        assert fleet.xdp_prog(h), "no XDP program on %s" % h
        assert fleet.pinned(h, "counter") and fleet.pinned(h, "openat", "link")
        desired = json.loads(fleet.desired(h))
        assert [p["program"]["name"] for p in desired["programs"]] == ["counter", "openat"]
        lib = installed_module_utils(fleet, h)
        assert os.path.exists(os.path.join(lib, "_state", "reapply.py"))
        assert os.path.exists(os.path.join(lib, "_kernel", "bpf_syscall.py"))
        assert module_utils_in_sync(fleet, h)
    ids = dict((h, fleet.xdp_prog(h)) for h in HOSTS)
    desired = dict((h, fleet.desired(h)) for h in HOSTS)

    rc, doc = fleet.rollout([counter(), OPENAT])
    assert rc == 0, failure_messages(doc)
    for h in HOSTS:
        assert changed_tasks(doc, h) == [], h
        # a rollout that changes nothing: ONE module run on the host
        assert module_runs(doc, h) == [ROLE + FIRST], module_runs(doc, h)
        first, upload = state_runs(doc, h)
        assert upload is None and "missing" not in first
        assert actions(first) == [("counter", "none"), ("openat", "none")]
        assert first["installed"] == NOTHING_INSTALLED and first["desired_changed"] is False
        assert fleet.xdp_prog(h) == ids[h]
        assert fleet.desired(h) == desired[h]

    rc, doc = fleet.rollout([counter(), OPENAT], check=True, limit="h1")
    assert rc == 0, failure_messages(doc)
    assert doc["stats"]["h1"]["changed"] == 0, changed_tasks(doc, "h1")
    assert module_runs(doc, "h1") == [ROLE + FIRST]

    # a damaged object on the host (same name, other content) is written again, and nothing else changes
    obj = json.loads(desired["h1"])["programs"][0]["program"]["object"]
    with open(obj, "ab") as f:
        f.write(b"damage")
    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1")
    assert rc == 0, failure_messages(doc)
    assert changed_tasks(doc, "h1") == [ROLE + UPLOAD], changed_tasks(doc, "h1")
    first, upload = state_runs(doc, "h1")
    sha = os.path.basename(obj).split(".")[0]
    assert first["missing"] == {"objects": [sha], "code": False}, first
    assert upload["installed"] == {"objects": [sha], "code": False, "unit": False}, upload
    assert actions(upload) == [("counter", "none"), ("openat", "none")]
    assert sha_of(obj) == sha
    assert fleet.xdp_prog("h1") == ids["h1"]
    assert fleet.desired("h1") == desired["h1"]


def test_module_utils_are_installed_only_when_missing_or_damaged(fleet):
    """ebpf_state compares the digest of the installed module_utils with the controller's: a rollout with nothing
    new installs nothing; a truncated installed file is reported by check mode and put back.
    The fleet's collection is a copy nothing edits: an install here is the defect this test is for."""
    lib = installed_module_utils(fleet, "h1")
    assert module_utils_in_sync(fleet, "h1")
    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1")
    assert rc == 0, failure_messages(doc)
    assert changed_tasks(doc, "h1") == []
    first, upload = state_runs(doc, "h1")
    assert upload is None and first["installed"] == NOTHING_INSTALLED, first

    victim = os.path.join(lib, "_state", "reapply.py")
    open(victim, "w").close()  # truncated
    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1", check=True)
    assert rc == 0, failure_messages(doc)
    first, upload = state_runs(doc, "h1")
    assert first["missing"] == {"objects": [], "code": True}, first
    assert upload["changed"] and upload["installed"] == {"objects": [], "code": True, "unit": False}, upload
    assert os.path.getsize(victim) == 0

    rc, doc = fleet.rollout([counter(), OPENAT], limit="h1")
    assert rc == 0, failure_messages(doc)
    assert changed_tasks(doc, "h1") == [ROLE + UPLOAD], changed_tasks(doc, "h1")
    first, upload = state_runs(doc, "h1")
    assert upload["installed"] == {"objects": [], "code": True, "unit": False}, upload
    assert actions(upload) == [("counter", "none"), ("openat", "none")]
    assert os.path.getsize(victim) > 0
    assert module_utils_in_sync(fleet, "h1")


def test_gate_refuses_a_host_without_the_feature_and_changes_nothing(fleet):
    """kprobe, which probes.probe() says this kernel lacks (decided before the rollout; on a kernel with
    kprobes there is nothing to refuse, and the kernel matrix runs this gate where kprobes are missing)."""
    found = probes.probe("kprobe")
    if found["supported"]:
        pytest.skip("probes.probe('kprobe'): supported here, the gate has nothing to refuse: %s" % found["reason"])
    kprobe = {"name": "kp", "object": os.path.join(OBJECTS, "kprobe_unlinkat.bpf.o"),
              "attach": {"kprobe": "do_unlinkat"}}
    kp_sha = sha_of(kprobe["object"])
    before = fleet.desired("h1")
    ids = fleet.xdp_prog("h1")
    rc, doc = fleet.rollout([counter(), OPENAT, kprobe], limit="h1")
    assert rc != 0, "the gate let a kprobe program through although %s" % found["reason"]
    msg = failure_messages(doc)
    assert "refused, nothing changed: program kp" in msg, msg
    assert os.uname().release in msg and "kprobe needs kernel" in msg, msg
    # the first run named the object the host lacked; the second stored it for the gate, which refused: the
    # object it stored is taken away again, the host as it was
    first, upload = state_runs(doc, "h1")
    assert first["missing"] == {"objects": [kp_sha], "code": False}, first
    assert upload["failed"] and not upload["changed"], upload
    assert changed_tasks(doc, "h1") == []
    assert not os.path.exists(os.path.join(fleet.dirs("h1")["state"], "objects", kp_sha + ".bpf.o"))
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
        res = state_result(doc, h)
        assert res["pruned"] == ["openat"], res
        assert actions(res) == [("openat", "remove"), ("counter", "none")]
        assert module_runs(doc, h) == [ROLE + FIRST]
        assert not os.path.exists(os.path.join(fleet.dirs(h)["pin_root"], "openat"))
        assert fleet.pinned(h, "counter")
        assert [p["program"]["name"] for p in json.loads(fleet.desired(h))["programs"]] == ["counter"]
        assert not os.path.exists(os.path.join(fleet.dirs(h)["etc"], "desired.previous.json"))
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
    assert "program counter-a: health check failed: counter" in msg and "stayed at" in msg, msg
    assert "rolled back to what the host ran before (restored: none; removed: counter-a)" in msg, msg
    res = state_result(doc, "h1")
    assert res["failed_program"] == "counter-a" and res["rolled_back"] is True, res
    assert actions(res) == [("counter", "none"), ("counter-a", "load")]
    # h1 rolled back: counter-a gone (pins and XDP), counter untouched, desired state as before
    assert fleet.xdp_prog("h1", side="a") is None
    assert not os.path.exists(os.path.join(fleet.dirs("h1")["pin_root"], "counter-a"))
    assert fleet.xdp_prog("h1") == ids["h1"]
    assert fleet.desired("h1") == desired["h1"]
    assert doc["stats"]["h1"]["failures"] == 1
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
    res = state_result(doc, "h1")
    assert actions(res) == [("counter", "none"), ("openat2", "load"), ("bad", "load")]
    assert res["failed_program"] == "bad" and res["rolled_back"] is True, res
    assert res["rollback"]["removed"] == ["openat2"] and res["rollback"]["errors"] == [], res["rollback"]
    msg = failure_messages(doc)
    assert "program bad: " in msg and "rolled back to what the host ran before" in msg, msg
    for name in ("openat2", "bad"):
        assert not os.path.exists(os.path.join(fleet.dirs("h1")["pin_root"], name))
    assert fleet.xdp_prog("h1") == ids and fleet.xdp_prog("h1", side="a") is None
    assert fleet.desired("h1") == before
