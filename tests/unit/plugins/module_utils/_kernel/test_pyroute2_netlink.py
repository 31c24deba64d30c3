"""pyroute2_netlink.load() on every pyroute2 the collection supports: 0.5.14 (Debian 11's, on Python 3.9 as
there), 0.7.2 (Debian 12's: the system python3's python3-pyroute2) and 0.9.x (the venv's, from pip). Each runs
in a fresh interpreter: only pyroute2.netlink is imported, the whole package comes on first use, and a failure
is raised with the stand-in taken back out."""
import glob
import os
import subprocess
import sys

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5))
COLLECTIONS = os.path.join(TOP, ".cache", "collections")
CACHE_0514 = os.path.join(TOP, ".cache", "pyroute2-0.5.14")  # scripts/bootstrap.sh installs it

LOAD = r"""
import importlib.metadata, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import pyroute2_netlink
nl, exc = pyroute2_netlink.load()
assert nl.__name__ == "pyroute2.netlink" and issubclass(exc.NetlinkError, Exception)
assert nl.nlmsg and nl.nla and nl.genlmsg and nl.NLA_F_NESTED == 1 << 15
loaded = sorted(m for m in sys.modules if m.startswith("pyroute2"))
assert "pyroute2.iproute" not in loaded and "asyncio" not in sys.modules, loaded
assert pyroute2_netlink.load()[0] is nl  # a second call: the same modules
from pyroute2 import IPRoute  # the stand-in runs the real __init__ now
import pyroute2
assert "pyroute2.iproute" in sys.modules and IPRoute is pyroute2.IPRoute
print(importlib.metadata.version("pyroute2"))
"""


def _pythons():
    """(id, python, PYTHONPATH or None, the version expected): the interpreters this machine has for each."""
    py39 = sorted(glob.glob("/root/.pyenv/versions/3.9.*/bin/python3.9")) or [sys.executable]
    return [("0.5.14", py39[-1], CACHE_0514, "0.5.14"), ("0.7.2", "/usr/bin/python3", None, "0.7."),
            ("venv", sys.executable, None, "0.9.")]


@pytest.mark.parametrize("python,pythonpath,version", [p[1:] for p in _pythons()], ids=[p[0] for p in _pythons()])
def test_load_imports_only_the_netlink_part_on_each_supported_pyroute2(python, pythonpath, version):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        if not os.path.isdir(os.path.join(pythonpath, "pyroute2")):
            pytest.skip("probe: pyroute2 0.5.14 is not in .cache (scripts/bootstrap.sh installs it)")
        env["PYTHONPATH"] = pythonpath
    if not os.path.exists(python):
        pytest.skip("probe: no %s here" % python)
    if not pythonpath and subprocess.run([python, "-c", "import pyroute2"], env=env, capture_output=True,
                                         check=False).returncode:
        pytest.skip("probe: %s has no pyroute2 (Debian's python3-pyroute2 is not installed)" % python)
    proc = subprocess.run([python, "-c", LOAD, COLLECTIONS], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(version), proc.stdout


FAIL = r"""
import sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import pyroute2_netlink
try:
    pyroute2_netlink.load()
except %s as e:
    assert "pyroute2" not in sys.modules, sorted(sys.modules)
    print("RAISED", type(e).__name__, e)
"""


def test_a_pyroute2_that_breaks_on_import_is_raised_not_swallowed(tmp_path):
    """Not an ImportError (which netlink.py reports as 'pyroute2 is required'): the error itself goes on."""
    pkg = tmp_path / "pyroute2" / "netlink"
    pkg.mkdir(parents=True)
    (tmp_path / "pyroute2" / "__init__.py").write_text("raise AssertionError('the package init ran')\n")
    (pkg / "__init__.py").write_text("raise RuntimeError('broken netlink')\n")
    proc = subprocess.run([sys.executable, "-c", FAIL % "RuntimeError", COLLECTIONS, str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "RAISED RuntimeError broken netlink", proc.stderr


def test_no_pyroute2_is_an_import_error(tmp_path):
    code = FAIL.replace("sys.path.insert(0, sys.argv[2])", "sys.path[:] = [p for p in sys.path if 'pyroute2' not in "
                        "p and 'site-packages' not in p and 'dist-packages' not in p]; sys.path.insert(0, sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code % "ImportError", COLLECTIONS, str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("RAISED ImportError"), (proc.stdout, proc.stderr)
