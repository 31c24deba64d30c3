# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""State of one managed program: what the kernel holds under `<pin_root>/<name>/` (the source of truth) and the
small record of what the kernel cannot tell (object digest, program name, attach spec), kept in
/var/lib/hypermesh-ebpf/programs/<name>.json and written atomically.

Layout under `<pin_root>/<name>/`: `prog`, `link` (tracing, cgroup, tcx, perf links), `maps/<map>`, and
`stage_<pid>/` while a run builds the next version (a leftover stage dir is from a killed run: its pins still
count as ours, so the next run can adopt what it attached, then it is removed).

Nothing here follows a path another local user could have planted: check_dirs() refuses a pin root (or any
directory above it) or a `<pin_root>/<name>` that is a symbolic link, another user's or writable by others (bpffs
is often mounted 1777), before anything under it is read or changed; remove_tree() removes through directory
descriptors, never through a link; the records' directories must be ours and writable by no one else, and a
record is opened with O_NOFOLLOW and written 0600.
Importable without ansible.
"""
import errno
import json
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs, libc
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout

STAGE_PREFIX = "stage_"  # bpffs refuses names with a dot


def record_path(name, state_dir=None):
    """<state_dir>/programs/<name>.json; state_dir None: the default (layout.STATE_DIR)."""
    return os.path.join(state_dir or layout.STATE_DIR, layout.RECORDS, name + ".json")


def _records_dir(state_dir=None, make=False):
    """<state_dir>/programs, checked (ours, writable by no one else, no link); made 0755 when `make`."""
    top = state_dir or layout.STATE_DIR
    d = os.path.join(top, layout.RECORDS)
    if make:
        parent = os.path.dirname(os.path.normpath(top))
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        host_paths.make_own_dir(top, 0o755)
        host_paths.make_own_dir(d, 0o755)
    elif host_paths.check_own_dir(top):
        host_paths.check_own_dir(d)
    return d


def read_record(name, state_dir=None):
    """The record of `name`, or None when there is none (or it is unreadable or not JSON). Raises UnsafePath
    when the records' directory is not root's alone."""
    _records_dir(state_dir)
    try:
        fd = os.open(record_path(name, state_dir), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd) as f:
            return json.load(f)
    except (IOError, OSError, ValueError):
        return None


def write_record(name, record, state_dir=None):
    """Write the record atomically (temp file in the same dir, rename; mode 0600); None deletes it.

    No fsync: the record describes pins on bpffs, which do not outlive the kernel, so a power cut loses both
    alike; a record lost or left empty by one reads as missing (read_record) and the next run converges from
    what the kernel shows. The rename keeps a reader from ever seeing half a record, and the page cache keeps
    it across a killed process (the kill -9 tests)."""
    path = record_path(name, state_dir)
    if record is None:
        _records_dir(state_dir)
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        return
    _records_dir(state_dir, make=True)
    atomic_file.write(path, (json.dumps(record, indent=1, sort_keys=True)).encode("utf-8"), 0o600)


def check_dirs(pin_root, name):
    """Refuse (host_paths.UnsafePath, naming the path and the problem) unless the pin root and every directory
    above it, `<pin_root>/<name>` and `<pin_root>/_shared` are safe for root to use (see the module doc); a
    missing one is fine (it is made 0700 when needed)."""
    if host_paths.check_dir_chain(pin_root):
        host_paths.check_own_dir(os.path.join(pin_root, name))
        host_paths.check_own_dir(os.path.join(pin_root, layout.SHARED))


def make_dir(path):
    """mkdir 0700 under a checked pin root; an existing `path` must be ours. True when made here."""
    return host_paths.make_own_dir(path, 0o700)


def _pin_info(path, kind):
    """(id, info) of the object pinned at path, or (None, None) when nothing (or another kind) is there."""
    try:
        fd = bs.obj_get(path)
    except OSError:
        return None, None
    try:
        info = {"prog": bs.prog_info, "map": bs.map_info, "link": bs.link_info}[kind](fd)
        return info["id"], info
    except OSError:
        return None, None
    finally:
        bs.close(fd)


class Live(object):
    """What the kernel holds for program `name` under pin_root (read-only snapshot)."""

    def __init__(self, pin_root, name):
        self.dir = os.path.join(pin_root, name)
        self.prog_id, self.prog = _pin_info(os.path.join(self.dir, layout.PIN_PROG), "prog")
        self.link_id, self.link = _pin_info(os.path.join(self.dir, layout.PIN_LINK), "link")
        self.maps = {}
        mdir = os.path.join(self.dir, layout.PIN_MAPS)
        if os.path.isdir(mdir):
            for m in sorted(os.listdir(mdir)):
                mid, _info = _pin_info(os.path.join(mdir, m), "map")
                self.maps[m] = mid
        self.stages = []
        self.owned_prog_ids = set([self.prog_id]) if self.prog_id else set()
        if os.path.isdir(self.dir):
            for entry in os.listdir(self.dir):
                if entry.startswith(STAGE_PREFIX):
                    sdir = os.path.join(self.dir, entry)
                    self.stages.append(sdir)
                    pid, _info = _pin_info(os.path.join(sdir, layout.PIN_PROG), "prog")
                    if pid:
                        self.owned_prog_ids.add(pid)

    @property
    def exists(self):
        return os.path.isdir(self.dir)

    def summary(self):
        """For diff/result output: what is pinned and its kernel ids."""
        if not self.exists:
            return {}
        out = {"prog_id": self.prog_id, "maps": dict(self.maps)}
        if self.prog:
            out["prog_name"] = self.prog.get("name")
            out["prog_type"] = self.prog.get("type_name")
            out["prog_tag"] = self.prog.get("tag")
        if self.link:
            out["link_id"] = self.link_id
            out["link_type"] = self.link.get("type_name")
        return out


def remove_tree(path, dry_run=False):
    """Unpin everything below path and remove its directories (bpffs: unlink drops the pin). The whole tree is
    checked first: a symbolic link, an entry not ours or a directory not on bpffs is refused (UnsafePath) with
    nothing removed (host_paths.remove_bpf_tree). dry_run: only the check."""
    host_paths.remove_bpf_tree(path, libc.statfs, dry_run)


def managed_names(pin_root, state_dir=None):
    """Names of the programs this collection manages under pin_root: a directory `<pin_root>/<name>` AND a state
    record of ours for that name and that pin_root. Never `_shared` (libbpf's maps pinned by name), never a
    directory another tool made (no record): prune and rollback touch only these."""
    if not os.path.isdir(pin_root):
        return []
    root = os.path.normpath(pin_root)
    out = []
    for entry in sorted(os.listdir(root)):
        if entry == layout.SHARED or entry.startswith(".") or not os.path.isdir(os.path.join(root, entry)):
            continue
        rec = read_record(entry, state_dir)
        if not isinstance(rec, dict) or rec.get("name") != entry:
            continue
        if os.path.normpath(rec.get("pin_root") or root) != root:
            continue  # ours, but managed under another pin_root: that directory here is someone else's
        out.append(entry)
    return out
