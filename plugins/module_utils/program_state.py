# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""State of one managed program: what the kernel holds under `<pin_root>/<name>/` (the source of truth) and the
small record of what the kernel cannot tell (object digest, program name, attach spec), kept in
/var/lib/hypermesh-ebpf/programs/<name>.json and written atomically.

Layout under `<pin_root>/<name>/`: `prog`, `link` (tracing, cgroup, tcx, perf links), `maps/<map>`, and
`stage_<pid>/` while a run builds the next version (a leftover stage dir is from a killed run: its pins still
count as ours, so the next run can adopt what it attached, then it is removed).
Importable without ansible.
"""
import errno
import json
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils import bpf_syscall as bs

STATE_DIR = os.environ.get("HYPERMESH_EBPF_STATE_DIR", "/var/lib/hypermesh-ebpf")
STAGE_PREFIX = "stage_"  # bpffs refuses names with a dot


def record_path(name, state_dir=None):
    return os.path.join(state_dir or STATE_DIR, "programs", name + ".json")


def read_record(name, state_dir=None):
    try:
        with open(record_path(name, state_dir)) as f:
            return json.load(f)
    except (IOError, OSError, ValueError):
        return None


def write_record(name, record, state_dir=None):
    """Write the record atomically (temp file in the same dir, rename); None deletes it.

    No fsync: the record describes pins on bpffs, which do not outlive the kernel, so a power cut loses both
    alike; a record lost or left empty by one reads as missing (read_record) and the next run converges from
    what the kernel shows. The rename keeps a reader from ever seeing half a record, and the page cache keeps
    it across a killed process (the kill -9 tests)."""
    path = record_path(name, state_dir)
    if record is None:
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        return
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d, 0o755)
    atomic_file.write(path, (json.dumps(record, indent=1, sort_keys=True)).encode("utf-8"))


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


def pins_under(path):
    """Every file (pin) below path, deepest first: for removal."""
    out = []
    for root, dirs, files in os.walk(path, topdown=False):
        out.extend(os.path.join(root, f) for f in files)
    return out


class Live(object):
    """What the kernel holds for program `name` under pin_root (read-only snapshot)."""

    def __init__(self, pin_root, name):
        self.dir = os.path.join(pin_root, name)
        self.prog_id, self.prog = _pin_info(os.path.join(self.dir, "prog"), "prog")
        self.link_id, self.link = _pin_info(os.path.join(self.dir, "link"), "link")
        self.maps = {}
        mdir = os.path.join(self.dir, "maps")
        if os.path.isdir(mdir):
            for m in sorted(os.listdir(mdir)):
                mid, _ = _pin_info(os.path.join(mdir, m), "map")
                self.maps[m] = mid
        self.stages = []
        self.owned_prog_ids = set([self.prog_id]) if self.prog_id else set()
        if os.path.isdir(self.dir):
            for entry in os.listdir(self.dir):
                if entry.startswith(STAGE_PREFIX):
                    sdir = os.path.join(self.dir, entry)
                    self.stages.append(sdir)
                    pid, _ = _pin_info(os.path.join(sdir, "prog"), "prog")
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


def remove_tree(path):
    """Unpin everything below path and remove its directories (bpffs: unlink drops the pin)."""
    if not os.path.isdir(path):
        return
    for p in pins_under(path):
        try:
            os.unlink(p)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    for root, dirs, files in os.walk(path, topdown=False):
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


def managed_names(pin_root):
    """Names of every program managed under pin_root (directories other than _shared)."""
    if not os.path.isdir(pin_root):
        return []
    return sorted(e for e in os.listdir(pin_root) if e != "_shared" and os.path.isdir(os.path.join(pin_root, e)))
