# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the host ran before an ebpf_state run, held so the run can put it back exactly (rollback).

One job: take the snapshot and restore it. Taken under the host lock, before any change:
- per managed name the run may touch (listed or pruned): its state record, and descriptors of what is pinned
  under <pin_root>/<name>/ (the program, its maps, the shared maps its record names). Holding the descriptors
  keeps those kernel objects alive whatever the run unpins or replaces, so the rollback pins and attaches the
  very same program (same kernel prog id, same maps with their contents) and needs no object file;
- per declared map entry list whose map is pinned now: the raw value of each declared key (or its absence),
  the whole map when the declaration is `exact`.
restore() puts that back: programs the run added are removed (program_runner.apply, state absent), the others
converged to their old record with the held objects (program_lifecycle.Program.converge, the code ebpf_program
runs, fed a HeldObject instead of a libbpf object), then the map values written back and the keys the run
added deleted. close() drops the descriptors (after a commit the replaced objects go away with them).
A link (perf/tracing) cannot be held without keeping it attached, so a restored link-based program gets a new
link (same program); tcx and cgroup links are updated back in place.
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps


class HeldObject(object):
    """Stands in for libbpf.BpfObject in Program.converge: the program and maps are already in the kernel
    (held descriptors), so load() loads nothing and the pins go to the held objects."""

    def __init__(self, prog_fd, map_fds, shared):
        self.prog_fd = prog_fd
        self.map_fds = map_fds      # {pin name: fd}
        self.shared = shared        # [pin path]

    def load(self):
        pass

    def map_defs(self):
        return []  # nothing to reuse: the maps are the held ones

    def program_fd(self, _name):
        return self.prog_fd

    def maps(self):
        out = [{"name": n, "fd": fd, "pinned": False, "pin_path": None} for n, fd in sorted(self.map_fds.items())]
        out += [{"name": os.path.basename(p), "fd": 0, "pinned": True, "pin_path": p} for p in self.shared]
        return out

    def close(self):
        pass


def _get(path):
    try:
        return bs.obj_get(path)
    except OSError:
        return None


class ProgramSnap(object):
    """One name before the run: record (or None) and held descriptors of its pins."""

    def __init__(self, name, pin_root, state_dir=None):
        self.name = name
        self.record = ps.read_record(name, state_dir)
        live = ps.Live(pin_root, name)
        self.prog_id = live.prog_id
        self.link_id = live.link_id
        self.map_ids = dict(live.maps)
        self.prog_fd = _get(os.path.join(pin_root, name, layout.PIN_PROG)) if live.prog_id else None
        self.map_fds = {}
        for pin in sorted(live.maps):
            fd = _get(os.path.join(pin_root, name, layout.PIN_MAPS, pin))
            if fd is not None:
                self.map_fds[pin] = fd
        self.shared_fds = {}
        for path in (self.record or {}).get("shared_maps") or []:
            fd = _get(path)
            if fd is not None:
                self.shared_fds[path] = fd

    def fds(self):
        return [fd for fd in [self.prog_fd] + list(self.map_fds.values()) + list(self.shared_fds.values())
                if fd is not None]

    def summary(self):
        return {"record": bool(self.record), "prog_id": self.prog_id, "link_id": self.link_id,
                "maps": dict(self.map_ids)}


class MapSnap(object):
    """The declared keys of one map before the run: {raw key: raw value buffer or None}; `whole` when the run
    declares the map exact (then every key the map held)."""

    def __init__(self, params, path):
        self.params = params
        self.path = path
        self.whole = bool(params.get("exact"))
        self.values = {}
        with pinned_map.PinnedMap(path) as pm:
            self.is_array = pm.is_array
            if self.whole:
                self.values = dict(pm.read_all())
            keys = [e.get("key") for e in params.get("entries") or [] if e.get("key") is not None]
            if keys:
                kcodec = pm.key_codec(params.get("key_format") or "auto")
                for key in kcodec.encode_many(keys, lambda i: "entries[%d].key" % i):
                    if key not in self.values:
                        self.values[key] = pm.lookup(key)

    def restore(self):
        """Write back every snapshotted value, delete keys that were absent; True when something was written."""
        with pinned_map.PinnedMap(self.path, write=True) as pm:
            current = dict(pm.read_all()) if self.whole else dict((k, pm.lookup(k)) for k in self.values)
            zero = pm.zero_value()
            deletes, updates = [], []
            for key, old in self.values.items():
                now = current.get(key)
                if old is None and now is not None and not (pm.is_array and now == zero):
                    deletes.append(key)
                elif old is not None and now != old:
                    updates.append((key, old))
            if self.whole:
                deletes += [k for k in current if k not in self.values]
            if deletes or updates:
                pm.apply(deletes, updates)
            return bool(deletes or updates)


class Snapshot(object):
    """Everything restore() needs, for `names` under pin_root and the declared maps (map_runner parameters)."""

    def __init__(self, names, map_params, pin_root, state_dir=None):
        self.pin_root = pin_root
        self.state_dir = state_dir
        self.programs = {}
        self.maps = []
        try:
            for name in names:
                self.programs[name] = ProgramSnap(name, pin_root, state_dir)
            for params in map_params:
                try:
                    path = pinned_map.map_path(None, params["name"], params["map"], pin_root)
                except pinned_map.MapError:
                    continue  # not pinned before the run: whatever the run creates, the rollback removes
                self.maps.append(MapSnap(params, path))
        except BaseException:
            self.close()
            raise

    def close(self):
        for snap in self.programs.values():
            for fd in snap.fds():
                try:
                    bs.close(fd)
                except OSError:
                    pass
            snap.prog_fd, snap.map_fds, snap.shared_fds = None, {}, {}

    # ---- restore ----------------------------------------------------------------------------------------
    def unchanged(self, name):
        """True when the kernel and the record of `name` are as snapshotted (nothing to put back)."""
        snap = self.programs[name]
        live = ps.Live(self.pin_root, name)
        return (ps.read_record(name, self.state_dir) == snap.record and live.prog_id == snap.prog_id
                and dict(live.maps) == snap.map_ids and not live.stages)

    def restore(self, remove_program):
        """Put back the snapshot. remove_program(name): the run's removal (program_runner.apply, state absent).
        Returns {"removed": [names], "restored": [names], "maps": [paths], "errors": [text]}; every step is
        tried even when one fails."""
        out = {"removed": [], "restored": [], "maps": [], "errors": []}
        names = sorted(self.programs, key=lambda n: self.programs[n].record is not None)  # removals first
        for name in names:
            if self.unchanged(name):
                continue
            try:
                if self._restore_program(name, remove_program):
                    out["restored" if self.programs[name].record else "removed"].append(name)
            except Exception as e:  # one failure must not keep the others from coming back
                out["errors"].append("program %s: %s: %s" % (name, type(e).__name__, e))
        for m in self.maps:
            try:
                if m.restore():
                    out["maps"].append(m.path)
            except Exception as e:
                out["errors"].append("map %s: %s: %s" % (m.path, type(e).__name__, e))
        return out

    def _restore_program(self, name, remove_program):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_lifecycle import Program
        snap = self.programs[name]
        if snap.record is None or snap.prog_fd is None:
            remove_program(name)
            if snap.record is not None:  # a record without a pinned program (a killed run): put it back as is
                ps.write_record(name, snap.record, self.state_dir)
            return True
        for path, fd in snap.shared_fds.items():
            if not os.path.exists(path):
                bs.obj_pin(fd, path)
        rec = snap.record
        want = {"state": "attached" if rec.get("attach") else "loaded", "sha256": rec.get("sha256"),
                "program": rec.get("program"), "attach": rec.get("attach"), "programs": rec.get("programs"),
                "globals": rec.get("globals")}
        prog = Program(name, self.pin_root, self.state_dir)
        prog.converge(want, rec.get("object"), HeldObject(snap.prog_fd, snap.map_fds, sorted(snap.shared_fds)),
                      force=True)
        now = ps.read_record(name, self.state_dir) or {}
        if now != rec and now.get("prog_id") == rec.get("prog_id") and now.get("maps") == rec.get("maps"):
            ps.write_record(name, rec, self.state_dir)  # same objects: the snapshot's record word for word
        return True
