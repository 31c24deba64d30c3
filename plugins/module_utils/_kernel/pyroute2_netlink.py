# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pyroute2.netlink without the rest of pyroute2: the one place that depends on how pyroute2 is packaged.

Why: `import pyroute2` runs pyroute2/__init__.py, which imports all of pyroute2 (ndb, ipdb, conntrack, asyncio,
multiprocessing: 130-200 ms on every version), although netlink.py needs only pyroute2.netlink (the message
classes, ~15 ms) and modules run once per task. load() imports that submodule under a stand-in for the package
that runs the real pyroute2/__init__.py on first use of any of its attributes, so code that later does
`import pyroute2` or `from pyroute2 import IPRoute` in the same process still gets the whole package.

It relies on two things every supported pyroute2 has (0.5.14 on Debian 11, 0.7.2 on Debian 12, 0.9.x from pip):
pyroute2.netlink and pyroute2.netlink.exceptions import without the package's __init__, and the package is an
ordinary directory with a source loader. tests/unit/plugins/module_utils/_kernel/test_pyroute2_netlink.py runs
load() on each of them. Nothing here is caught: an ImportError is netlink.py's "pyroute2 is not installed";
anything else is a bug to see. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import sys


def load():
    """(pyroute2.netlink, pyroute2.netlink.exceptions). Does nothing special when pyroute2 is imported already.
    Raises ImportError when pyroute2 is not installed."""
    if "pyroute2" not in sys.modules:
        import importlib.util
        import types
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("No module named 'pyroute2'")
        pkg = types.ModuleType("pyroute2")
        pkg.__file__ = spec.origin
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__package__ = "pyroute2"
        pkg.__spec__ = spec
        pkg.__loader__ = spec.loader

        def _load_whole_package(name):
            # PEP 562: called for an attribute the stand-in lacks; run the real __init__ in it, once
            del pkg.__dict__["__getattr__"]
            exec(spec.loader.get_code("pyroute2"), pkg.__dict__)
            try:
                return pkg.__dict__[name]
            except KeyError:
                raise AttributeError("module 'pyroute2' has no attribute %r" % name)
        pkg.__getattr__ = _load_whole_package
        sys.modules["pyroute2"] = pkg
        try:
            import pyroute2.netlink  # noqa: F401
        except BaseException:  # not caught: the stand-in is taken back out, and the error goes on
            if sys.modules.get("pyroute2") is pkg:
                del sys.modules["pyroute2"]
            raise
    from pyroute2 import netlink as nl_mod
    from pyroute2.netlink import exceptions as exc_mod
    return nl_mod, exc_mod
