"""Helpers shared by test_ebpf_map.py and test_ebpf_info.py (no tests in here).

- module(): tests/conftest.py's ansible_module(); when it cannot load its stdout callback, and whenever a diff is
  wanted, the same ad-hoc run goes through the `minimal` callback and its `host | STATUS => {json}` is parsed
  instead (at -vvv when a diff is wanted: below that every callback leaves `diff` out).
- veth_netns(): tests/integration/netns.py's veth pair between two namespaces, as a dict.
- program() / drop_program(): an example object as a managed program through ebpf_program (maps pinned at
  <pin_root>/<name>/maps/<map>).
- load_object(): `bpftool prog loadall` with maps pinned the same way, for setups without ebpf_program.
"""
import contextlib
import json
import os
import subprocess
import sys

from tests.conftest import TOP, COLLECTIONS, ansible_module
from tests.integration.netns import make_veth_pair
from tests.integration.netns import ping as netns_ping

OBJECTS = os.path.join(TOP, "examples", "objects")


def _minimal(module_name, args, check, diff):
    fq = module_name if "." in module_name else "hypermesh.ebpf." + module_name
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local",
           "-i", "localhost,", "-m", fq, "-a", json.dumps(args or {}),
           "-e", "ansible_python_interpreter=" + sys.executable]
    if check:
        cmd.append("--check")
    if diff:
        cmd += ["--diff", "-vvv"]  # below -vvv the callbacks drop `diff` from the printed result
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_NOCOLOR="1", LANG="C")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOP, check=False)
    out = proc.stdout
    marker = out.find("localhost | ")
    arrow = out.find(" => ", marker)
    if marker < 0 or arrow < 0:
        raise AssertionError("ansible produced no result (rc=%d)\nstdout:\n%s\nstderr:\n%s"
                             % (proc.returncode, out[-4000:], proc.stderr[-4000:]))
    status = out[marker + len("localhost | "):arrow]
    result, _end = json.JSONDecoder().raw_decode(out[arrow + 4:].lstrip())
    if status.startswith("FAILED"):
        result["failed"] = True
    return result


_USE_MINIMAL = []


def module(module_name, args=None, check=False, diff=False):
    if diff:
        # conftest's ansible_module() reads the tree callback, which (like every callback below -vvv) leaves
        # `diff` out of the result: the diff tests go through `minimal` at -vvv
        return _minimal(module_name, args, check, diff)
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
    """True when at least one of `count` pings is answered."""
    return netns_ping(netns, address, count=count)


@contextlib.contextmanager
def veth_netns():
    """tests/integration/netns.py's pair, as a dict: a, b (namespaces), a_if, b_if, a_ip, b_ip."""
    with make_veth_pair() as p:
        yield {"a": p.ns_a, "b": p.ns_b, "a_if": p.if_a, "b_if": p.if_b, "a_ip": p.addr_a, "b_ip": p.addr_b}


def program(pin_root, name, obj, **extra):
    """Load (and attach, given attach=...) an example object as managed program `name` through ebpf_program."""
    args = dict(extra, name=name, object=os.path.join(OBJECTS, obj), pin_root=pin_root)
    r = module("ebpf_program", args)
    assert not r.get("failed"), r
    return r


def drop_program(pin_root, name):
    r = module("ebpf_program", {"name": name, "state": "absent", "pin_root": pin_root})
    assert not r.get("failed"), r


def load_object(obj, pin_root, name):
    """Load every program of `obj`, pin them at <pin_root>/<name>/progs/<prog> and the maps at
    <pin_root>/<name>/maps/<map>; returns {prog name: pin path}."""
    base = os.path.join(pin_root, name)
    os.makedirs(base, exist_ok=True)
    subprocess.check_call(["bpftool", "prog", "loadall", obj, os.path.join(base, "progs"),
                           "pinmaps", os.path.join(base, "maps")])
    progs = os.path.join(base, "progs")
    return dict((p, os.path.join(progs, p)) for p in os.listdir(progs))
