"""The collection as ansible-builder sees it: the built tarball declares the host-side packages
(meta/execution-environment.yml), and the execution environment definition in docs/ makes a build context."""
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The collection built into a tarball and installed from it, as a user of the tarball has it."""
    work = tmp_path_factory.mktemp("ee")
    run(os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(work), TOP)
    tarball = [f for f in os.listdir(str(work)) if f.endswith(".tar.gz")][0]
    collections = work / "collections"
    run(os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-p", str(collections),
        str(work / tarball), env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections)))
    return work, collections


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
