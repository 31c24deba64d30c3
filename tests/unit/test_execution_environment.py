"""The collection as ansible-builder sees it: the built tarball declares the host-side packages
(meta/execution-environment.yml) and its dependency ansible.posix (galaxy.yml), and the execution environment
definition in docs/ makes a build context."""
import json
import os
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def run(*argv, **kw):
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)
    assert proc.returncode == 0, "%s failed (%d):\n%s\n%s" % (argv[0], proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


# ansible.posix, the collection's dependency, as scripts/bootstrap.sh unpacked it (Galaxy is not reachable here)
POSIX = os.path.join(TOP, ".cache", "collections", "ansible_collections", "ansible", "posix")


def build(work):
    run(os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(work), TOP)
    return work / [f for f in os.listdir(str(work)) if f.endswith(".tar.gz")][0]


def install(tarball, collections, *more_paths):
    """ansible-galaxy collection install --offline: dependencies only from what is installed in the paths."""
    argv = [os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "-p", str(collections),
            str(tarball)]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=":".join([str(collections)] + [str(p) for p in more_paths]))
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The collection built into a tarball and installed from it, as a user of the tarball has it, with its
    dependency ansible.posix found installed."""
    assert os.path.isdir(POSIX), "no ansible.posix in .cache/collections: run scripts/bootstrap.sh"
    work = tmp_path_factory.mktemp("ee")
    tarball = build(work)
    deps = work / "deps" / "ansible_collections" / "ansible"
    deps.mkdir(parents=True)
    os.symlink(POSIX, str(deps / "posix"))
    collections = work / "collections"
    proc = install(tarball, collections, work / "deps")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'ansible.posix:" in proc.stdout and "is already installed" in proc.stdout, proc.stdout
    return work, collections


def test_the_tarball_declares_ansible_posix(installed, tmp_path):
    work, collections = installed
    with open(str(collections / "ansible_collections" / "hypermesh" / "ebpf" / "MANIFEST.json")) as f:
        deps = json.load(f)["collection_info"]["dependencies"]
    assert list(deps) == ["ansible.posix"], deps
    # without it installed, an offline install is refused, naming it
    tarball = [f for f in os.listdir(str(work)) if f.endswith(".tar.gz")][0]
    proc = install(work / tarball, tmp_path / "collections")
    assert proc.returncode != 0
    assert "* ansible.posix:%s (dependency of hypermesh.ebpf" % deps["ansible.posix"] in proc.stderr, proc.stderr


def test_the_tarball_declares_the_host_side_packages(installed):
    _unused, collections = installed
    out = run(os.path.join(BIN, "ansible-builder"), "introspect", str(collections))
    for dep in ("pyroute2>=0.5.14", "libbpf1 [platform:dpkg]", "libbpf [platform:rpm]"):
        assert "%s  # from collection hypermesh.ebpf" % dep in out, out


def test_the_documented_definition_makes_a_build_context(installed):
    work, _unused = installed
    ctx = work / "context"
    run(os.path.join(BIN, "ansible-builder"), "create", "-f", os.path.join(TOP, "docs", "execution-environment.yml"),
        "-c", str(ctx))
    with open(str(ctx / "_build" / "requirements.yml")) as f:
        assert "hypermesh.ebpf" in f.read()
    with open(str(ctx / "Dockerfile")) as f:
        assert "ansible-galaxy collection install" in f.read()
