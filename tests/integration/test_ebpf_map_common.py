"""Helpers shared by test_ebpf_map.py and test_ebpf_info.py (no tests in here).

- module(): tests/conftest.py's ansible_module(); when the `json` stdout callback cannot be loaded (it lives in
  ansible.posix, which ansible-core alone lacks) the same ad-hoc run goes through the `minimal` callback and its
  `host | STATUS => {json}` line is parsed instead (that output drops `diff`).
- veth_netns(): two network namespaces joined by a veth pair, 10.199.N.1/24 <-> 10.199.N.2/24, removed after.
- load_object(): `bpftool prog loadall` with maps pinned like a managed program's (<root>/<name>/maps/<map>).
"""
import contextlib
import json
import os
import subprocess
import sys

from tests.conftest import TOP, COLLECTIONS, ansible_module

OBJECTS = os.path.join(TOP, "examples", "objects")


def _minimal(module_name, args, check, diff):
    fq = module_name if "." in module_name else "hypermesh.ebpf." + module_name
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local",
           "-i", "localhost,", "-m", fq, "-a", json.dumps(args or {}),
           "-e", "ansible_python_interpreter=" + sys.executable]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_NOCOLOR="1", LANG="C")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOP)
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
    return result


_USE_MINIMAL = []


def module(module_name, args=None, check=False, diff=False):
    if not _USE_MINIMAL:
        try:
            return ansible_module(module_name, args, check=check, diff=diff)
        except AssertionError as e:
            if "callback" not in str(e):
                raise
            _USE_MINIMAL.append(True)
    return _minimal(module_name, args, check, diff)


def bpftool_json(*args):
    return json.loads(subprocess.check_output(["bpftool", "-j"] + list(args)))


def bpftool_dump(path):
    """The raw key/value bytes of a map, sorted: for 'nothing changed' comparisons."""
    return sorted((e["key"], e.get("value", e.get("values"))) for e in bpftool_json("map", "dump", "pinned", path))


def ping(netns, address, count=3):
    proc = subprocess.run(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
                           "-W", "1", address], capture_output=True)
    return proc.returncode == 0


@contextlib.contextmanager
def veth_netns(prefix):
    pid = os.getpid()
    a, b = "%s-a-%d" % (prefix, pid), "%s-b-%d" % (prefix, pid)
    a_if, b_if = "hva%d" % (pid % 100000), "hvb%d" % (pid % 100000)
    net = "10.199.%d" % (200 + pid % 50)
    subprocess.check_call(["ip", "netns", "add", a])
    try:
        subprocess.check_call(["ip", "netns", "add", b])
        for cmd in (["ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b],
                    ["ip", "-n", a, "addr", "add", net + ".1/24", "dev", a_if],
                    ["ip", "-n", b, "addr", "add", net + ".2/24", "dev", b_if],
                    ["ip", "-n", a, "link", "set", "lo", "up"], ["ip", "-n", b, "link", "set", "lo", "up"],
                    ["ip", "-n", a, "link", "set", a_if, "up"], ["ip", "-n", b, "link", "set", b_if, "up"]):
            subprocess.check_call(cmd)
        yield {"a": a, "b": b, "a_if": a_if, "b_if": b_if, "a_ip": net + ".1", "b_ip": net + ".2"}
    finally:
        subprocess.call(["ip", "netns", "del", a])
        subprocess.call(["ip", "netns", "del", b], stderr=subprocess.DEVNULL)


def load_object(obj, pin_root, name):
    """Load every program of `obj`, pin them at <pin_root>/<name>/progs/<prog> and the maps at
    <pin_root>/<name>/maps/<map>; returns {prog name: pin path}."""
    base = os.path.join(pin_root, name)
    os.makedirs(base, exist_ok=True)
    subprocess.check_call(["bpftool", "prog", "loadall", obj, os.path.join(base, "progs"),
                           "pinmaps", os.path.join(base, "maps")])
    progs = os.path.join(base, "progs")
    return dict((p, os.path.join(progs, p)) for p in os.listdir(progs))
