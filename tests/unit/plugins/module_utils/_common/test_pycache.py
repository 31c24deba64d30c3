"""pycache: module_utils imported from a zip (as AnsiballZ ships them) come from a compiled host copy."""
import importlib
import importlib.util
import os
import sys
import zipfile

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import pycache as pc


@pytest.fixture
def zipped(tmp_path):
    """make(pkgname, {file: source}) -> imports package `pkgname` from a zip, as AnsiballZ does."""
    made = []

    def make(pkg, files, name="payload.zip"):
        archive = str(tmp_path / name)
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("top/__init__.py", "")
            z.writestr("top/%s/__init__.py" % pkg, "")
            for fname, src in files.items():
                z.writestr("top/%s/%s" % (pkg, fname), src)
        sys.path.insert(0, archive)
        made.append(archive)
        importlib.invalidate_caches()
        return importlib.import_module("top.%s" % pkg)
    yield make
    for archive in made:
        sys.path.remove(archive)
    for name in [m for m in sys.modules if m == "top" or m.startswith("top.")]:
        del sys.modules[name]


def test_nothing_happens_outside_a_zip(tmp_path):
    assert pc.use_host_copy("mod", root=str(tmp_path / "cache")) is None        # the package itself: plain files
    assert not os.path.exists(str(tmp_path / "cache"))


def test_zip_package_is_imported_from_a_compiled_copy(zipped, tmp_path):
    pkg = zipped("mu1", {"a.py": "X = 1\n", "b.py": "from top.mu1.a import X\nY = X + 1\n"})
    root = str(tmp_path / "cache")
    target = pc.use_host_copy("mod", root=root, package="top.mu1")
    assert target and os.path.dirname(target) == os.path.join(root, "mod")     # a directory per module
    assert sorted(os.listdir(target)) == ["__init__.py", "__pycache__", "a.py", "b.py"]
    for name in ("a.py", "b.py"):
        assert os.path.exists(importlib.util.cache_from_source(os.path.join(target, name)))
    for d in (root, os.path.dirname(target), target):
        assert oct(os.stat(d).st_mode & 0o777) == "0o700", d
    b = importlib.import_module("top.mu1.b")
    assert b.Y == 2 and b.__file__ == os.path.join(target, "b.py")
    assert pkg.__path__[0] == target
    assert pc.use_host_copy("mod", root=root, package="top.mu1") == target      # again: the same copy, not twice
    assert pkg.__path__.count(target) == 1


def test_changed_sources_get_a_new_copy_and_old_copies_go(zipped, tmp_path):
    root = str(tmp_path / "cache")
    zipped("mu2", {"a.py": "X = 1\n"}, "one.zip")
    first = pc.use_host_copy("mod", root=root, package="top.mu2")
    os.utime(first, (1, 1))                             # made long ago: goes when another copy is made
    os.makedirs(os.path.join(root, "mod", "recent"), 0o700)     # made just now (a concurrent run's): stays
    old_other = os.path.join(root, "other", "0123")     # another module's copy, however old: not this one's to prune
    os.makedirs(old_other, 0o700)
    os.utime(old_other, (1, 1))
    for name in [m for m in sys.modules if m == "top" or m.startswith("top.")]:
        del sys.modules[name]
    sys.path.remove(str(tmp_path / "one.zip"))
    zipped("mu2", {"a.py": "X = 2\n"}, "two.zip")
    second = pc.use_host_copy("mod", root=root, package="top.mu2")
    assert second != first
    assert sorted(os.listdir(os.path.join(root, "mod"))) == sorted([os.path.basename(second), "recent"])
    assert os.path.isdir(old_other)
    assert importlib.import_module("top.mu2.a").X == 2
    sys.path.insert(0, str(tmp_path / "one.zip"))    # for the fixture's cleanup


def test_a_copy_others_can_write_is_not_used(zipped, tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    os.chmod(str(root), 0o777)
    zipped("mu3", {"a.py": "X = 3\n"})
    assert pc.use_host_copy("mod", root=str(root), package="top.mu3") is None
    a = importlib.import_module("top.mu3.a")
    assert a.X == 3 and ".zip" in a.__file__                             # still imported from the zip
    assert os.listdir(str(root)) == []


def test_broken_source_is_raised_and_leaves_nothing(zipped, tmp_path):
    """Not a host condition: a source that does not compile fails loudly (the import would fail anyway)."""
    import py_compile
    zipped("mu4", {"a.py": "X = (\n"})
    with pytest.raises(py_compile.PyCompileError):
        pc.use_host_copy("mod", root=str(tmp_path / "cache"), package="top.mu4")
    assert os.listdir(str(tmp_path / "cache" / "mod")) == []  # the temporary copy is gone


def test_a_host_that_refuses_the_copy_leaves_the_imports_in_the_zip(zipped, tmp_path):
    """OSError is the host's state (here: the cache root's parent is a file, ENOTDIR): the zip is used."""
    zipped("mu7", {"a.py": "X = 7\n"})
    (tmp_path / "file").write_text("")
    assert pc.use_host_copy("mod", root=str(tmp_path / "file" / "cache"), package="top.mu7") is None
    a = importlib.import_module("top.mu7.a")
    assert a.X == 7 and ".zip" in a.__file__


def test_packages_below_the_package_come_from_the_copy_too(zipped, tmp_path):
    """The collection's module_utils are packages (_kernel/, _common/, ...): each is copied and compiled, and one
    imported before the call (pycache's own, _common) is pointed at the copy as well."""
    pkg = zipped("mu6", {"_k/__init__.py": "", "_k/a.py": "X = 6\n", "_c/__init__.py": "",
                         "_c/b.py": "from top.mu6._k.a import X\nY = X + 1\n"})
    early = importlib.import_module("top.mu6._c")
    assert ".zip" in early.__path__[0]
    target = pc.use_host_copy("mod", root=str(tmp_path / "cache"), package="top.mu6")
    assert target and pkg.__path__[0] == target
    assert sorted(os.listdir(target)) == ["__init__.py", "__pycache__", "_c", "_k"]
    for name in ("_k/a.py", "_k/__init__.py", "_c/b.py"):
        assert os.path.exists(importlib.util.cache_from_source(os.path.join(target, name))), name
    assert early.__path__[0] == os.path.join(target, "_c")
    b = importlib.import_module("top.mu6._c.b")
    assert b.Y == 7 and b.__file__ == os.path.join(target, "_c", "b.py")
    a = importlib.import_module("top.mu6._k.a")
    assert a.__file__ == os.path.join(target, "_k", "a.py")


def test_the_package_is_the_collections_module_utils():
    assert pc.PACKAGE == "ansible_collections.hypermesh.ebpf.plugins.module_utils"
