"""Shared test helpers.

- Makes `ansible_collections.hypermesh.ebpf` importable from the working tree (scripts/bootstrap.sh links it).
- `mounts()` (and, as root, once per session before any test): bpffs at /sys/fs/bpf and tracefs, which systemd
  mounts at boot and a fresh machine of ours may lack.
- `run_module`: runs one of the collection's modules through real Ansible against localhost and returns the
  module's result dict. This is the path an operator uses; tests go through it rather than importing modules.
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(TOP, ".cache", "collections")
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)


def mounts():
    with open("/proc/mounts") as f:
        text = f.read()
    if " /sys/fs/bpf bpf " not in text:
        subprocess.check_call(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"])
    if " tracefs " not in text:
        subprocess.check_call(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"])


@pytest.fixture(scope="session", autouse=True)
def host_mounts():
    if os.geteuid() == 0:
        mounts()


def ansible_module(module, args=None, check=False, diff=False, env=None):
    """Run hypermesh.ebpf.<module> on localhost through `ansible`; return the module's result dict."""
    fq = module if "." in module else "hypermesh.ebpf." + module
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local",
           "-i", "localhost,", "-m", fq, "-e", "ansible_python_interpreter=" + sys.executable]
    if args:  # `-a {}` would be raw parameters, which a module without options refuses
        cmd += ["-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    tree = tempfile.mkdtemp(prefix="hm-ansible-tree-")
    full_env = dict(os.environ)
    full_env.update({
        "ANSIBLE_CONFIG": os.path.join(TOP, "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        # ansible-core's own `tree` callback writes each host's result as JSON: no extra collection needed
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
        "ANSIBLE_CALLBACK_TREE_DIR": tree,
        "ANSIBLE_NOCOLOR": "1",
        "LANG": "C",
    })
    if env:
        full_env.update(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=TOP, check=False)
    path = os.path.join(tree, "localhost")
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        raise AssertionError("ansible produced no result (rc=%d)\nstdout:\n%s\nstderr:\n%s"
                             % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(tree)
    # the tree callback leaves out the `failed` flag; ansible's exit code carries it
    result.setdefault("failed", proc.returncode != 0)
    return result


@pytest.fixture
def run_module():
    return ansible_module


def is_root():
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (bpf(), netlink, bpffs)")
