# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pinned BPF map: open it, read every entry, apply a set of changes all-or-nothing.

- `map_path(path=None, name=None, map_name=None, pin_root=...)`: where a map is pinned; a managed program
  NAME's maps live at `<pin_root>/<NAME>/maps/<map>`, maps pinned by name (LIBBPF_PIN_BY_NAME) at
  `<pin_root>/_shared/<map>`.
- `PinnedMap(path, write=False)`: the open map (fd, info, BTF, per-CPU layout, frozen flag) with
  `read_all()` / `read_columns()` (BPF_MAP_LOOKUP_BATCH where the kernel and map type have it, 5.6+, else
  GET_NEXT_KEY + LOOKUP; `read_method` says which), `lookup()` and `apply()`.
- `plan(pm, entries, state, exact)`: what must be deleted and written, with before/after for the diff.
- `PinnedMap.apply()` writes in order (deletes first, then updates, batched where possible) and keeps an undo
  log; when the kernel refuses one write (map full, ...) it puts every key already touched back the way it
  was and raises MapError.
- `read_entries(pm, key_format, value_format, keys=None, as_dict=False)`: decoded entries for ebpf_map_info
  (a list of {key, value}, or one {key label: value} dict); `read_decoded()` the same as columns.
Keys and values here are bytes; map_codec turns user input into them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_codec

BATCH_BYTES = 32 * 1024 * 1024  # at most this much key+value buffer per BPF_MAP_LOOKUP_BATCH
ARRAY_TYPES = ("array", "percpu_array", "prog_array", "perf_event_array", "cgroup_array", "array_of_maps")


class MapError(Exception):
    """A map that cannot be opened, read or written; the message says which and why."""


def _is_pin_name(value):
    """One path component of printable ASCII (what ebpf_program pins: program names, map names)."""
    return bool(value) and all(0x21 <= ord(c) <= 0x7e for c in value) and "/" not in value \
        and value not in (".", "..")


def map_path(path=None, name=None, map_name=None, pin_root=layout.PIN_ROOT):
    """The pinned path of a map: `path` as given, else the program NAME's map (or the shared one).

    Raises MapError naming what is there when the program or its map cannot be found."""
    if path:
        return path
    if not (name and map_name):
        raise MapError("give either path, or name (an ebpf_program's name) and map")
    for option, value in (("name", name), ("map", map_name)):
        if not _is_pin_name(value):
            raise MapError("%s %r is not valid: a name of printable ASCII without '/', and not '.' or '..'"
                           % (option, value))
    own = os.path.join(pin_root, name, layout.PIN_MAPS, map_name)
    shared = os.path.join(pin_root, layout.SHARED, map_name)
    if os.path.exists(own):
        return own
    if os.path.exists(shared):
        return shared
    if not os.path.isdir(os.path.join(pin_root, name)):
        raise MapError("no program named %s is managed under %s (no pinned map at %s)" % (name, pin_root, own))
    maps_dir = os.path.join(pin_root, name, layout.PIN_MAPS)
    have = sorted(os.listdir(maps_dir)) if os.path.isdir(maps_dir) else []
    raise MapError("program %s has no map %s (no pinned map at %s); its maps: %s"
                   % (name, map_name, own, ", ".join(have) or "none"))


def _fdinfo(fd):
    out = {}
    try:
        with open("/proc/self/fdinfo/%d" % fd) as f:
            for line in f:
                key, _sep, value = line.partition(":")
                out[key.strip()] = value.strip()
    except (IOError, OSError):
        pass
    return out


class PinnedMap(object):

    def __init__(self, path, write=False):
        self.path = path
        if not os.path.exists(path):
            raise MapError("no pinned map at %s" % path)
        try:
            self.fd = bs.obj_get(path, 0 if write else bs.BPF_F_RDONLY)
        except OSError as e:
            raise MapError("cannot open the pinned object %s: %s" % (path, os.strerror(e.errno or 0)))
        fdinfo = _fdinfo(self.fd)
        if "map_type" not in fdinfo:
            bs.close(self.fd)
            raise MapError("%s is pinned but is not a map" % path)
        self.frozen = fdinfo.get("frozen", "0") not in ("0", "")
        self.info = bs.map_info(self.fd)
        self.type_name = self.info.get("type_name") or str(self.info.get("type"))
        self.key_size = self.info["key_size"]
        self.value_size = self.info["value_size"]
        self.max_entries = self.info["max_entries"]
        self.percpu = "percpu" in self.type_name
        self.ncpus = bs.possible_cpus() if self.percpu else 1
        if self.percpu:
            self.buf_size = map_codec.percpu_stride(self.value_size) * self.ncpus
        else:
            self.buf_size = self.value_size
        self.is_array = self.type_name in ARRAY_TYPES
        # frozen is the only read-only state a map keeps: BPF_F_RDONLY belongs to the fd that asked for it, and
        # the kernel does not report it in map_flags
        self.read_only = self.frozen
        self.btf = None
        if self.info.get("btf_id"):
            self.btf = self._load_btf(self.info["btf_id"])
        self.read_method = None

    @staticmethod
    def _load_btf(btf_id):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import btf as btfmod
        try:
            fd = bs.get_fd_by_id("btf", btf_id)
        except OSError:
            return None
        try:
            return btfmod.Btf(bs.btf_data(fd))
        except OSError:  # the kernel would not hand the blob over: no BTF, raw bytes
            return None
        except (btfmod.BtfError, struct.error):  # a blob the reader does not know (a newer kind, cut short): raw bytes
            return None
        finally:
            bs.close(fd)

    def close(self):
        if self.fd is not None:
            bs.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ description and codecs
    def describe(self):
        return {
            "path": self.path, "id": self.info.get("id"), "name": self.info.get("name"),
            "type": self.type_name, "key_size": self.key_size, "value_size": self.value_size,
            "max_entries": self.max_entries, "map_flags": self.info.get("map_flags", 0),
            "btf_id": self.info.get("btf_id", 0), "frozen": self.frozen, "percpu": self.percpu,
            "possible_cpus": self.ncpus if self.percpu else None,
        }

    def key_codec(self, fmt="auto"):
        return map_codec.Codec(fmt, self.key_size, self.btf if self.btf else None,
                               self.info.get("btf_key_type_id", 0), what="key")

    def value_codec(self, fmt="auto"):
        return map_codec.Codec(fmt, self.value_size, self.btf if self.btf else None,
                               self.info.get("btf_value_type_id", 0), what="value")

    def full_value(self, value):
        """The buffer BPF_MAP_UPDATE_ELEM wants for one value: per-CPU maps get it on every CPU."""
        if self.percpu:
            return map_codec.join_percpu(value, self.value_size, self.ncpus)
        return value

    def cpu_values(self, buf):
        if self.percpu:
            return map_codec.split_percpu(buf, self.value_size, self.ncpus)
        return [buf]

    def check_key(self, key, label):
        """Errors the kernel would give mid-way, caught before anything is written."""
        if self.is_array:
            index = int.from_bytes(key, map_codec.BYTEORDER)
            if index >= self.max_entries:
                raise MapError("key %s: index %d is out of range, the array has %d entries"
                               % (label, index, self.max_entries))

    # ------------------------------------------------------------ reads
    def lookup(self, key):
        return bs.map_lookup(self.fd, key, self.buf_size)

    def read_all(self):
        """Every (key bytes, value buffer bytes) in the map."""
        keys, values, count = self.read_columns()
        ks, vs = self.key_size, self.buf_size
        return [(keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]) for i in range(count)]

    def read_columns(self):
        """The whole map as (all keys back to back, all value buffers back to back, entry count)."""
        try:
            columns = self._read_batch()
            self.read_method = "batch"
            return columns
        except bs.BpfError as e:
            if e.errno not in (errno.EINVAL, bs.ENOTSUPP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM):
                raise
        self.read_method = "next_key"
        items = self._read_next_key()
        return b"".join(k for k, _v in items), b"".join(v for _k, v in items), len(items)

    def _read_batch(self):
        count = max(1, min(self.max_entries, BATCH_BYTES // (self.key_size + self.buf_size)))
        keys, values, total = [], [], 0
        in_batch = None
        while True:
            try:
                kblob, vblob, got, out_batch, done = bs.map_lookup_batch(
                    self.fd, self.key_size, self.buf_size, count, in_batch)
            except bs.BpfError as e:
                if e.errno == errno.ENOSPC and count < self.max_entries * 2:
                    count *= 2  # a hash bucket bigger than the batch: the kernel wants more room
                    continue
                raise
            keys.append(kblob)
            values.append(vblob)
            total += got
            if done:
                return b"".join(keys), b"".join(values), total
            in_batch = out_batch

    def _read_next_key(self):
        items = []
        key = None
        while True:
            key = bs.map_next_key(self.fd, key, self.key_size)
            if key is None:
                return items
            value = self.lookup(key)
            if value is not None:  # deleted between next_key and lookup
                items.append((key, value))

    # ------------------------------------------------------------ writes
    def zero_value(self):
        return b"\0" * self.buf_size

    def apply(self, deletes, updates, previous=None):
        """Delete `deletes` (keys) then write `updates` ([(key, full value buffer)]), all or nothing.

        On a kernel error every key touched so far is restored (previous value written back, added keys
        deleted) and MapError is raised. Array maps cannot delete: their "deleted" entries are zeroed.
        `previous` ({key: buffer or None}, from plan()) saves looking each updated key up again."""
        if self.read_only:
            raise MapError("map %s is read-only from user space (frozen with BPF_MAP_FREEZE)" % self.path)
        undo = []  # (key, previous buffer or None)
        try:
            for key in deletes:
                old = self.lookup(key)
                if old is None:
                    continue
                undo.append((key, old))
                if self.is_array:
                    bs.map_update(self.fd, key, self.zero_value(), bs.BPF_ANY)
                else:
                    bs.map_delete(self.fd, key)
            previous = previous or {}
            olds = [(k, previous[k] if k in previous else self.lookup(k)) for k, _v in updates]
            undo.extend(olds)
            self._update_many(updates)
        except OSError as e:
            failure = self._rollback(undo)
            msg = "map %s: the kernel refused a write (%s: %s)" % (
                self.path, getattr(e, "cmd", "bpf"), _explain(e.errno))
            if failure:
                msg += "; restoring the previous entries ALSO failed: %s" % failure
            else:
                msg += "; every entry of this run was restored, the map is as it was"
            raise MapError(msg)

    def _update_many(self, updates):
        if not updates:
            return
        if len(updates) > 1:
            try:
                bs.map_update_batch(self.fd, [k for k, _v in updates], [v for _k, v in updates], bs.BPF_ANY)
                return
            except bs.BpfError as e:
                if e.errno not in (errno.EINVAL, bs.ENOTSUPP, errno.EOPNOTSUPP):
                    raise
                # no batch ops on this kernel/map type: one by one below (rollback covers a partial batch)
        for key, value in updates:
            bs.map_update(self.fd, key, value, bs.BPF_ANY)

    def _rollback(self, undo):
        problems = []
        for key, old in reversed(undo):
            try:
                if old is None:
                    bs.map_delete(self.fd, key)
                else:
                    bs.map_update(self.fd, key, old, bs.BPF_ANY)
            except OSError as e:
                problems.append("%s: %s" % (key.hex(), os.strerror(e.errno or 0)))
        return ", ".join(problems)


def plan(pm, entries, state="present", exact=False):
    """What must change so the map holds `entries` ([(key, full value buffer or None)]).

    With state=present a value of None means "the key must exist, whatever its value": a missing key is
    added with an all-zero value, an existing one is left alone (e.g. a counter the BPF program updates).
    Returns {"deletes": [key], "updates": [(key, value)], "before": {key: buffer or None},
    "after": {key: buffer or None}, "previous": {key: buffer or None}} covering only the keys that change
    ("previous" is the raw value of each updated key, for apply()'s undo). In array maps an entry is
    "absent" when its value is all zeros (their entries cannot be removed, only zeroed). Many keys (an
    eighth of max_entries or more) are compared against one batched read of the whole map."""
    zero = pm.zero_value()

    def present(buf):
        return buf is not None and not (pm.is_array and buf == zero)

    seen = {}
    for key, value in entries:
        if key in seen and seen[key] != value:
            raise MapError("key %s is given twice with different values" % key.hex())
        seen[key] = value
    if exact or len(seen) >= max(64, pm.max_entries // 8):
        current = dict(pm.read_all())
    else:
        current = dict((k, pm.lookup(k)) for k in seen)
    deletes, updates, before, after, previous = [], [], {}, {}, {}
    for key, value in seen.items():
        cur = current.get(key)
        if state == "present":
            if value is None:
                if present(cur):
                    continue
                value = zero
            if cur != value:
                updates.append((key, value))
                before[key] = cur if present(cur) else None
                after[key] = value
                previous[key] = cur
        elif present(cur):
            deletes.append(key)
            before[key] = cur
            after[key] = None
    if exact and state == "present":
        for key, cur in current.items():
            if key not in seen and present(cur):
                deletes.append(key)
                before[key] = cur
                after[key] = None
    return {"deletes": deletes, "updates": updates, "before": before, "after": after, "previous": previous}


def read_decoded(pm, key_format="auto", value_format="auto", keys=None, labels=False):
    """The map's entries (or only `keys`, user-written) decoded, as columns: (keys, values, per_cpu) where
    per_cpu is None, or for per-CPU maps each entry's list of CPU values (`values` then holds their sums).
    With labels, keys are strings as map_codec.Codec.label() makes them."""
    kcodec = pm.key_codec(key_format)
    vcodec = pm.value_codec(value_format)
    if keys is None:
        kblob, vblob, count = pm.read_columns()
    else:
        found = []
        for i, key in enumerate(keys):
            raw = kcodec.encode(key, "keys[%d]" % i)
            buf = pm.lookup(raw)
            if buf is not None:
                found.append((raw, buf))
        pm.read_method = "lookup"
        kblob, vblob, count = b"".join(k for k, _v in found), b"".join(v for _k, v in found), len(found)
    decoded_keys = kcodec.labels_many(kblob, count) if labels else kcodec.decode_many(kblob, count)
    if not pm.percpu:
        return decoded_keys, vcodec.decode_many(vblob, count), None
    n = pm.ncpus
    flat = vcodec.decode_many(vblob, count * n, map_codec.percpu_stride(pm.value_size))
    per_cpu = [flat[i * n:(i + 1) * n] for i in range(count)]
    return decoded_keys, [map_codec.sum_values(values) for values in per_cpu], per_cpu


def read_entries(pm, key_format="auto", value_format="auto", keys=None, as_dict=False):
    """Decoded entries of an open PinnedMap for ebpf_map_info: [{key, value}], per-CPU maps add
    `values` (one per CPU) and `value` is their sum. With as_dict, {key label: value} instead (one dict of
    scalars: far cheaper for Ansible to carry than one dict per entry); key labels are strings
    (map_codec.Codec.label), per-CPU values are the sums."""
    dkeys, values, per_cpu = read_decoded(pm, key_format, value_format, keys, labels=as_dict)
    if as_dict:
        return dict(zip(dkeys, values))
    if per_cpu is None:
        return [{"key": k, "value": v} for k, v in zip(dkeys, values)]
    return [{"key": k, "values": c, "value": v} for k, c, v in zip(dkeys, per_cpu, values)]


def _explain(err):
    text = os.strerror(err or 0)
    if err == errno.E2BIG:
        return text + ": the map is full (max_entries reached) or the key is out of range"
    if err == errno.EPERM:
        return text + ": the map is read-only from user space"
    return text
