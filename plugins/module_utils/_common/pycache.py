# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bytecode of the collection's module_utils, kept on the managed host between runs.

Ansible ships a module and the module_utils it imports as Python source in a zip (AnsiballZ), and Python never
writes bytecode for code it imports from a zip: every run compiles them again. For ebpf_program that is about
130 KB of source and 40-50 ms of CPU per task, more than everything else a no-op re-apply does.

Every module that imports more than a little calls use_host_copy("<its name>") before those imports. It copies
the zip's module_utils (the packages _kernel/, _host/, ... with them) once into /var/cache/hypermesh-ebpf/pycache/<module>/<digest>/ (a directory per module,
as each ships its own set; the digest is of the files' names, sizes and CRC-32s: a changed collection gets a
directory of its own, and the module's copies made more than a day before for other digests are removed),
compiles them there (__pycache__, per Python
version, written even under PYTHONDONTWRITEBYTECODE: the directory is ours, not a source tree) and puts that
directory first in the package's search path, so later runs load the bytecode as for any installed library.
A module missing there is still found in the zip. The directory is root's and writable by no one else (it
holds code run as root); when it is not so or the host refuses to write it (OSError: read-only, full), the
imports stay in the zip. Anything else (a source that does not compile, a zip pycache cannot read) is raised:
it would be a bug, and the module fails loudly instead of running slower unseen. Why it depends on AnsiballZ:
it finds the zip through the package's loader (`archive`) and `__path__`, as zipimport sets them on every
supported ansible-core (tests/integration/test_smoke.py checks the copy on each, scripts/core_range.sh).
Outside AnsiballZ (tests, the boot-time re-apply: ordinary files with their own bytecode cache) it does
nothing. It is a cache of code the module runs anyway, so it is kept in check mode too. Importable without
ansible.
"""
import hashlib
import os
import shutil
import sys
import time

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout

PRUNE_AFTER = 86400     # seconds
PACKAGE = __name__.rsplit(".", 2)[0]       # ansible_collections.hypermesh.ebpf.plugins.module_utils


def _ours(path):
    """A directory owned by us and writable by no one else (no symlink)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return os.path.isdir(path) and not os.path.islink(path) and st.st_uid == os.geteuid() and \
        not st.st_mode & 0o022


def _zip_members(archive, prefix):
    """{name: ZipInfo} of the package's .py files in the zip and of its packages' ("_kernel/libbpf.py")."""
    import zipfile
    with zipfile.ZipFile(archive) as z:
        return dict((i.filename[len(prefix):], i) for i in z.infolist()
                    if i.filename.startswith(prefix) and i.filename.endswith(".py")
                    and i.filename[len(prefix):].count("/") <= 1)


def _zip_sources(archive, members):
    import zipfile
    with zipfile.ZipFile(archive) as z:
        out = dict((name, z.read(info)) for name, info in members.items())
    out.setdefault("__init__.py", b"")  # _compile's mark of a complete set
    return out


def _build(root, target, sources):
    """Write the sources into `target` through a temporary directory renamed into place (atomic)."""
    tmp = os.path.join(root, ".tmp-%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o700)
    try:
        for name, data in sources.items():
            if "/" in name and not os.path.isdir(os.path.join(tmp, os.path.dirname(name))):
                os.mkdir(os.path.join(tmp, os.path.dirname(name)), 0o700)
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        _compile(tmp)
        os.rename(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(e, OSError) and _ours(target)):  # another run may have won the rename: as good
            raise
    # copies made more than a day ago for other versions of the collection (or for other modules, whose sets
    # of module_utils differ), leftovers of killed runs; one still in use is made again on its next run
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        try:
            if entry != os.path.basename(target) and os.lstat(path).st_mtime < time.time() - PRUNE_AFTER:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _compile(target):
    """Bytecode of every file for this Python, unless this Python has compiled the copy already (the top
    __init__.py, compiled last, marks a complete set)."""
    import importlib.util
    if os.path.exists(importlib.util.cache_from_source(os.path.join(target, "__init__.py"))):
        return
    import py_compile
    sources = []
    for name in sorted(os.listdir(target)):
        if os.path.isdir(os.path.join(target, name)) and name != "__pycache__":
            sources.extend(os.path.join(name, n) for n in sorted(os.listdir(os.path.join(target, name)))
                           if n.endswith(".py"))
        elif name.endswith(".py") and name != "__init__.py":
            sources.append(name)
    for name in sources + ["__init__.py"]:
        src = os.path.join(target, name)
        py_compile.compile(src, cfile=importlib.util.cache_from_source(src), doraise=True)


def _own_dir(path):
    """`path` as a directory of ours (made when missing); False when it is not ours or cannot be made."""
    if not os.path.isdir(path):
        os.makedirs(path, 0o700)
    return _ours(path)


def use_host_copy(module, root=layout.PYCACHE_ROOT, package=PACKAGE):
    """Import the rest of `package` from the host copy of module `module` (see the module doc). Returns the
    directory used, or None when the imports stay where they are."""
    pkg = sys.modules.get(package)
    loader = getattr(getattr(pkg, "__spec__", None), "loader", None)
    archive = getattr(loader, "archive", None)
    path = getattr(pkg, "__path__", None)
    if not archive or not isinstance(path, list) or not path or not path[-1].startswith(archive + os.sep):
        return None                 # not imported from a zip
    prefix = path[-1][len(archive) + 1:].replace(os.sep, "/") + "/"
    try:
        members = _zip_members(archive, prefix)
        digest = hashlib.sha256()   # of names, sizes and CRC-32s: read from the zip's directory, no inflating
        for name in sorted(members):
            digest.update(("%s %d %08x\n" % (name, members[name].file_size, members[name].CRC)).encode())
        base = os.path.join(root, module)
        target = os.path.join(base, digest.hexdigest()[:32])
        if not _ours(target):
            if not (_own_dir(root) and _own_dir(base)):
                return None
            _build(base, target, _zip_sources(archive, members))
        if not _ours(target):
            return None
        _compile(target)
    except OSError:  # the host's state (read-only, full, not ours): an optimisation only, the imports stay in the zip
        return None
    if target not in path:
        path.insert(0, target)
    for name, mod in list(sys.modules.items()):  # packages imported already (this file's own, at least)
        sub = getattr(mod, "__path__", None)
        if name.startswith(package + ".") and isinstance(sub, list) and name.count(".") == package.count(".") + 1:
            there = os.path.join(target, name.rpartition(".")[2])
            if os.path.isdir(there) and there not in sub:
                sub.insert(0, there)
    return target
