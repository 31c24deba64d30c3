# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ebpf_state puts onto the host before its gate: the objects the programs use, the code the boot-time
re-apply runs and the re-apply unit.

- objects: `<objects_dir>/<sha256>.bpf.o`, root's, 0644 (the directory 0755, made when missing, its chain
  checked). Intact = a regular file of ours that nobody else can write, whose digest is its name. A missing or
  damaged one is written atomically from its `content` (its digest checked first); without a content it is
  missing.
- code: `<lib_dir>/ansible_collections/hypermesh/ebpf/plugins/module_utils/` and its packages (`_kernel/`, ...),
  current when every directory from lib_dir down and every file in it is ours, writable by no one else, no link,
  only `*.py` files in the packages, and its digest (code_digest) is the wanted one. Otherwise it is replaced
  whole from `files` (written beside it, exchanged with it in one rename), or missing.
- unit: hypermesh-ebpf-reapply.service on a host booted with systemd: written when it differs (then
  `systemctl daemon-reload`), enabled when it is not.

Install(params) reads and checks everything first: bad input is refused (InstallError) and a missing piece
reported before anything is touched; then the module installs the objects (before its gate) and the rest (after
its commit). Check mode: the objects are still written (a cache the gate reads), code
and unit are predicted. `runner` replaces systemctl (unit tests). Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import errno
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import host_command
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libc
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout

CODE_PATH = ("ansible_collections", "hypermesh", "ebpf", "plugins", "module_utils")
REAPPLY = "ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply"
SYSTEMD_RUN_DIR = "/run/systemd/system"  # a directory only on a host booted with systemd (sd_booted)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CODE_NAME = re.compile(r"^_[a-z]+/[A-Za-z_][A-Za-z0-9_]*\.py$")  # <package>/<file>.py, one level below module_utils
_PACKAGE_NAME = re.compile(r"^_[a-z]+$")
_UNIT_PATH_OK = re.compile(r"^/[A-Za-z0-9_@+,./-]*$")  # nothing a unit file would split, quote or expand
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

UNIT = """\
# Managed by hypermesh.ebpf (ebpf_state)
[Unit]
Description=Re-apply the eBPF programs rolled out by hypermesh.ebpf
Documentation=file://%(desired)s
After=sys-fs-bpf.mount network-online.target
Wants=sys-fs-bpf.mount network-online.target
ConditionPathExists=%(desired)s

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=PYTHONPATH=%(lib_dir)s
Environment=PYTHONDONTWRITEBYTECODE=1
Environment=LANG=C
LimitMEMLOCK=infinity
ExecStart=%(python)s -m %(module)s --desired %(desired)s --state-dir %(state_dir)s

[Install]
WantedBy=multi-user.target
"""


class InstallError(ValueError):
    """Bad input (a content that is not base64 or not the digest it is given for, a bad name): nothing changed."""


# ---- digests and files --------------------------------------------------------------------------------------
def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def code_names(top, strict=True):
    """The code files under `top` (a module_utils directory) as names "<package>/<file>.py", sorted. strict (the
    installed copy): ValueError naming the first entry that is not a package directory or not a *.py file in
    one; not strict (the controller's tree): such entries and __pycache__ are skipped."""
    names = []
    for pkg in sorted(os.listdir(top)):
        if not _PACKAGE_NAME.match(pkg) or not os.path.isdir(os.path.join(top, pkg)):
            if strict:
                raise ValueError("%s is not a module_utils package" % os.path.join(top, pkg))
            continue
        for name in sorted(os.listdir(os.path.join(top, pkg))):
            if not _CODE_NAME.match(pkg + "/" + name):
                if not strict:
                    continue
                raise ValueError("%s is not a module_utils file" % os.path.join(top, pkg, name))
            names.append(pkg + "/" + name)
    return names


def code_digest(files):
    """The digest of a set of code files {name: bytes}: sha256 of "<name> <sha256 of content>\\n" over the files
    sorted by name (the controller computes the same over plugins/module_utils/_*/*.py)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(("%s %s\n" % (name, sha256_hex(files[name]))).encode("utf-8"))
    return h.hexdigest()


def decode(text, what):
    """The bytes of a base64 `content` (whitespace ignored); InstallError when it is not base64."""
    try:
        return base64.b64decode("".join(str(text).split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InstallError("%s: content is not base64 (%s)" % (what, e))


def _lstat(path):
    try:
        return os.lstat(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def file_problem(st):
    """What makes a file (its lstat) unfit for root to read and run, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return "is owned by uid %d" % st.st_uid
    if st.st_mode & 0o022:
        return "is writable by group or others (mode %04o)" % stat.S_IMODE(st.st_mode)
    return None


def read_intact(path):
    """(content, None) of a regular file of ours nobody else can write (opened without following a link),
    else (None, why): "is missing", "is a symbolic link", ..."""
    st = _lstat(path)
    if st is None:
        return None, "is missing"
    problem = file_problem(st)
    if problem:
        return None, problem
    fd = os.open(path, _READ_FLAGS)
    try:
        if not os.path.samestat(os.fstat(fd), st):
            return None, "changed while it was read"
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks), None
            chunks.append(chunk)
    finally:
        os.close(fd)


def _make_dirs(path):
    """Every missing directory down to `path` made 0755 (the existing ones checked first: host_paths)."""
    path = os.path.normpath(path)
    if host_paths.check_dir_chain(path):
        return
    missing = []
    while _lstat(path) is None:
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        host_paths.make_own_dir(d, 0o755)
        os.chmod(d, 0o755)  # whatever the umask; its parent is root's alone, nobody can swap it


def _remove(path):
    """Remove a file, link or tree (a link is never followed: rmtree works through directory descriptors)."""
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


def _set_aside(path):
    """Move what is at `path` (in a directory of ours) out of the way and remove it."""
    aside = os.path.join(os.path.dirname(path), ".%s.old.%d.%s" % (
        os.path.basename(path), os.getpid(), binascii.hexlify(os.urandom(6)).decode("ascii")))
    os.rename(path, aside)
    _remove(aside)


def _exchange(a, b):
    """Swap two paths in one rename (renameat2 RENAME_EXCHANGE). False when libc, kernel or filesystem cannot."""
    try:
        libc.renameat2(a, b, libc.RENAME_EXCHANGE)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return True


# ---- objects ------------------------------------------------------------------------------------------------
def object_path(objects_dir, sha256):
    return os.path.join(objects_dir, sha256 + ".bpf.o")


def wanted_objects(objects):
    """{sha256: bytes or None} of the `objects` option, checked: a digest of 64 hex digits, a content that is
    base64 and has that digest. InstallError otherwise."""
    out = {}
    for i, o in enumerate(objects or []):
        sha = str(o.get("sha256") or "").strip().lower()
        if not _SHA256.match(sha):
            raise InstallError("objects[%d]: sha256 must be 64 hex digits, got %r" % (i, o.get("sha256")))
        data = None
        if o.get("content") is not None:
            data = decode(o["content"], "object %s" % sha)
            if sha256_hex(data) != sha:
                raise InstallError("object %s: the content given has sha256 %s" % (sha, sha256_hex(data)))
        if out.get(sha) is None:
            out[sha] = data
    return out


def object_problem(objects_dir, sha256):
    """None when the object is there intact, else why."""
    data, why = read_intact(object_path(objects_dir, sha256))
    if why:
        return why
    if sha256_hex(data) != sha256:
        return "has sha256 %s" % sha256_hex(data)
    return None


def plan_objects(objects_dir, wanted):
    """(to write [(sha256, bytes)], missing [sha256]) for {sha256: bytes or None}. Refuses (UnsafePath) an
    objects directory or a directory above it that another user could change."""
    if not wanted:
        return [], []
    exists = host_paths.check_dir_chain(objects_dir)
    write, missing = [], []
    for sha in sorted(wanted):
        if exists and object_problem(objects_dir, sha) is None:
            continue
        if wanted[sha] is None:
            missing.append(sha)
        else:
            write.append((sha, wanted[sha]))
    return write, missing


def install_objects(objects_dir, write):
    """Write [(sha256, bytes)] into the objects directory (made 0755 when missing): 0644, atomically. Returns
    the digests written."""
    if not write:
        return []
    _make_dirs(objects_dir)
    for sha, data in write:
        path = object_path(objects_dir, sha)
        st = _lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            _set_aside(path)  # a rename cannot replace a directory
        atomic_file.write(path, data, 0o644)
    return [sha for sha, _data in write]


# ---- the re-apply code ---------------------------------------------------------------------------------------
def code_dir(lib_dir):
    return os.path.join(lib_dir, *CODE_PATH)


def _code_chain(lib_dir):
    """lib_dir and every directory below it down to the code directory."""
    out = [os.path.normpath(lib_dir)]
    for part in CODE_PATH:
        out.append(os.path.join(out[-1], part))
    return out


def wanted_code(reapply_code):
    """(digest, {name: bytes} or None) of the `reapply_code` option, checked: flat *.py names, base64 contents
    whose digest (code_digest) is the one given. InstallError otherwise."""
    digest = str(reapply_code.get("digest") or "").strip().lower()
    if not _SHA256.match(digest):
        raise InstallError("reapply_code.digest must be 64 hex digits, got %r" % reapply_code.get("digest"))
    if reapply_code.get("files") is None:
        return digest, None
    files = {}
    for i, f in enumerate(reapply_code["files"]):
        name = f.get("name") or ""
        if not _CODE_NAME.match(name):
            raise InstallError("reapply_code.files[%d]: name must be <package>/<file>.py (e.g. _kernel/libbpf.py), "
                               "got %r" % (i, name))
        if name in files:
            raise InstallError("reapply_code.files: %s is listed more than once" % name)
        files[name] = decode(f.get("content") or "", "reapply_code file %s" % name)
    got = code_digest(files)
    if got != digest:
        raise InstallError("reapply_code: the files given have digest %s, not %s" % (got, digest))
    return digest, files


def installed_code(lib_dir):
    """(digest, None) of the installed code when every directory from lib_dir down to it, its packages and every
    file in them are ours and writable by no one else (no link, only *.py files), else (None, why). Refuses
    (UnsafePath) a directory above lib_dir that another user could change."""
    host_paths.check_dir_chain(os.path.dirname(os.path.normpath(lib_dir)))
    for path in _code_chain(lib_dir):
        st = _lstat(path)
        if st is None:
            return None, "%s is missing" % path
        problem = host_paths.dir_problem(st)
        if problem:
            return None, "%s %s" % (path, problem)
    try:
        names = code_names(path)
    except ValueError as e:
        return None, str(e)  # an older, flat layout among them: replaced whole
    for pkg in sorted(set(n.split("/")[0] for n in names)):
        problem = host_paths.dir_problem(_lstat(os.path.join(path, pkg)))
        if problem:
            return None, "%s %s" % (os.path.join(path, pkg), problem)
    files = {}
    for name in names:
        full = os.path.join(path, name)
        data, why = read_intact(full)
        if why:
            return None, "%s %s" % (full, why)
        files[name] = data
    return code_digest(files), None


def install_code(lib_dir, files):
    """Replace the code directory whole with `files` {name: bytes}: the directories down to it made 0755 (one
    that is a link, another user's or writable by others set aside and made again), the new directory (0755,
    files 0644) written beside the old one, exchanged with it in one rename, the old one removed."""
    _make_dirs(os.path.dirname(os.path.normpath(lib_dir)))
    chain = _code_chain(lib_dir)
    for path in chain[:-1]:
        st = _lstat(path)
        if st is not None and host_paths.dir_problem(st):
            _set_aside(path)
            st = None
        if st is None:
            host_paths.make_own_dir(path, 0o755)
            os.chmod(path, 0o755)
    target = chain[-1]
    new = tempfile.mkdtemp(prefix="." + CODE_PATH[-1] + ".new.", dir=chain[-2])
    try:
        for pkg in sorted(set(n.split("/")[0] for n in files)):
            os.mkdir(os.path.join(new, pkg), 0o755)
            os.chmod(os.path.join(new, pkg), 0o755)
        for name in sorted(files):
            fd = os.open(os.path.join(new, name), _WRITE_FLAGS, 0o644)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(files[name])
        os.chmod(new, 0o755)
        if _lstat(target) is None:
            os.rename(new, target)
        elif not _exchange(new, target):
            _set_aside(target)
            os.rename(new, target)
    finally:
        _remove(new)  # after an exchange: the old directory


# ---- the unit -----------------------------------------------------------------------------------------------
def unit_text(python, lib_dir, state_dir, desired):
    """The re-apply unit. InstallError for a path a unit file cannot hold as it is (not absolute, or with a space,
    quote, backslash, %, colon or control character)."""
    values = dict(python=python, lib_dir=os.path.normpath(lib_dir), state_dir=os.path.normpath(state_dir),
                  desired=os.path.normpath(desired), module=REAPPLY)
    for key in ("python", "lib_dir", "state_dir", "desired"):
        if not _UNIT_PATH_OK.match(values[key] or ""):
            raise InstallError("%s %r cannot be written into the re-apply unit (an absolute path without spaces, "
                               "quotes, backslashes, %%, colons or control characters)" % (key, values[key]))
    return UNIT % values


systemctl = host_command.systemctl
_systemctl = host_command.systemctl_checked


def plan_unit(text, path=layout.REAPPLY_UNIT_PATH, runner=None):
    """(write, enable): whether the unit file differs from `text` (or is not a regular file of ours), whether
    the unit is not enabled (a masked one is left as the administrator set it)."""
    runner = runner or systemctl
    if host_paths.check_dir_chain(os.path.dirname(path)):
        data, _why = read_intact(path)
    else:
        data = None
    _rc, out, _err = runner(["is-enabled", os.path.basename(path)])
    state = out.strip()
    return data != text.encode("utf-8"), state != "enabled" and not state.startswith("masked")


def install_unit(text, write, enable, path=layout.REAPPLY_UNIT_PATH, runner=None):
    """Write the unit (0644, atomically; then daemon-reload) and enable it, as plan_unit decided."""
    runner = runner or systemctl
    if write:
        _make_dirs(os.path.dirname(path))
        atomic_file.write(path, text.encode("utf-8"), 0o644)
        _systemctl(runner, ["daemon-reload"])
    if enable:
        _systemctl(runner, ["enable", os.path.basename(path)])


# ---- all of it ----------------------------------------------------------------------------------------------
class Install(object):
    """What one ebpf_state run installs, worked out before anything is touched (ebpf_state's options objects_dir,
    objects, reapply_code, lib_dir, reapply_unit, persist, desired). `missing` ({"objects": [sha256], "code":
    bool}) is set when a piece is missing and no content was given for it: then nothing is to be done. Raises
    InstallError (bad input) or host_paths.UnsafePath before anything is changed.
    The module calls objects() before the gate (the gate opens them), undo_objects() when the gate refuses, and
    rest() (code and unit, only predicted in check mode) after the transaction committed."""

    def __init__(self, params, state_dir=None, runner=None, python=None, systemd_dir=SYSTEMD_RUN_DIR,
                 unit_path=layout.REAPPLY_UNIT_PATH):
        self.objects_dir = params.get("objects_dir") or layout.OBJECTS_DIR
        self.lib_dir = params.get("lib_dir") or layout.LIB_DIR
        self.runner = runner
        self.unit_path = unit_path
        persist = params.get("persist", True)
        code = wanted_code(params["reapply_code"]) if persist and params.get("reapply_code") else None
        self.unit = None
        if persist and params.get("reapply_unit", True) and os.path.isdir(systemd_dir):
            self.unit = unit_text(python or sys.executable, self.lib_dir, state_dir or layout.STATE_DIR,
                                  params.get("desired") or layout.DESIRED)
        self.write_objects, missing_objects = plan_objects(self.objects_dir, wanted_objects(params.get("objects")))
        self.code_files, code_missing = None, False  # files to install; the code is not current and no files
        if code is not None and installed_code(self.lib_dir)[0] != code[0]:
            self.code_files, code_missing = code[1], code[1] is None
        self.missing = None
        if missing_objects or code_missing:
            self.missing = {"objects": missing_objects, "code": code_missing}
        self.new_objects = []   # paths objects() wrote where there was nothing

    def objects(self):
        """Write the missing or damaged objects (check mode too: a cache the gate needs). The digests written."""
        self.new_objects = [object_path(self.objects_dir, sha) for sha, _data in self.write_objects
                            if _lstat(object_path(self.objects_dir, sha)) is None]
        return install_objects(self.objects_dir, self.write_objects)

    def undo_objects(self):
        """Remove the objects objects() wrote where there was nothing (the gate refused: the host as it was)."""
        for path in self.new_objects:
            _remove(path)
        self.new_objects = []

    def rest(self, check_mode=False):
        """Install the re-apply code and unit where they are not current: {"code": bool, "unit": bool}."""
        unit_write, unit_enable = plan_unit(self.unit, self.unit_path, self.runner) if self.unit else (False, False)
        if not check_mode:
            if self.code_files is not None:
                install_code(self.lib_dir, self.code_files)
            if self.unit:
                install_unit(self.unit, unit_write, unit_enable, self.unit_path, self.runner)
        return {"code": self.code_files is not None, "unit": bool(unit_write or unit_enable)}
