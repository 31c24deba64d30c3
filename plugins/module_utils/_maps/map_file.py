# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Map entries in a file on the managed host: read them (ebpf_map `src`), write a dump (ebpf_map_info `dest`).

One job: files <-> the entries lists the modules use; no kernel calls, no codecs (keys and values stay as the
file writes them, in the map's key_format / value_format). Importable without ansible.

File forms read by `load_entries(path)`:
  JSON list      [{"key": K, "value": V}, ...] (value may be left out), as in ebpf_map's `entries`
  JSON object    {"K": V, ...}, as ebpf_map_info writes with entries_as=dict; or {"entries": <list or object>},
                 ebpf_map_info's own result (a registered result saved with `copy: content=...`)
  lines          one entry a line, `KEY` or `KEY VALUE` (or `KEY,VALUE`); blank lines and `#` comments skipped
A file whose first non-blank character is `[` or `{` is JSON, anything else is lines. A src must be a regular
file of at most SRC_MAX_BYTES (64 MiB) that only its owner (root or the module's user) can write.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import stat

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file

try:
    from json.encoder import encode_basestring_ascii as _quote  # the C function json.dumps uses for str
except ImportError:  # pragma: no cover
    _quote = json.dumps


SRC_MAX_BYTES = 64 << 20  # a src file bigger than this is refused (1M entries of a few dozen bytes fit)


class EntriesFileError(ValueError):
    """A src file that cannot be read or parsed; the message names the file (and the line)."""


def _entries_from_json(data, path):
    if isinstance(data, dict) and isinstance(data.get("entries"), (list, dict)):
        data = data["entries"]  # a saved ebpf_map_info result
    if isinstance(data, dict):
        return [{"key": k, "value": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise EntriesFileError("%s: JSON must be a list of {key, value} or an object {key: value}, got %s"
                               % (path, type(data).__name__))
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise EntriesFileError("%s: entry %d is %r, not an object with key and value" % (path, i, entry))
    return data


def _entries_from_lines(text, path):
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) > 2:
            raise EntriesFileError("%s line %d: %r has %d fields; a line is KEY or KEY VALUE"
                                   % (path, number, line, len(parts)))
        entries.append({"key": parts[0]} if len(parts) == 1 else {"key": parts[0], "value": parts[1]})
    return entries


def _read_src(path):
    """The bytes of src: a regular file of at most SRC_MAX_BYTES that nobody but its owner (root or us) can
    write; read with that bound, so a device (/dev/zero), a FIFO or a huge file is refused, not read whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (IOError, OSError) as e:
        raise EntriesFileError("cannot read src %s: %s" % (path, os.strerror(e.errno or 0)))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EntriesFileError("src %s is not a regular file" % path)
        if st.st_mode & 0o022 or st.st_uid not in (0, os.geteuid()):
            raise EntriesFileError("src %s can be written by other users (owner uid %d, mode %04o): refusing to "
                                   "read it" % (path, st.st_uid, st.st_mode & 0o7777))
        if st.st_size > SRC_MAX_BYTES:
            raise EntriesFileError("src %s is %d bytes, more than the limit of %d" % (path, st.st_size,
                                                                                      SRC_MAX_BYTES))
        raw = f.read(SRC_MAX_BYTES + 1)
    if len(raw) > SRC_MAX_BYTES:
        raise EntriesFileError("src %s grew past the limit of %d bytes while read" % (path, SRC_MAX_BYTES))
    return raw


def load_entries(path):
    """The entries a src file holds, as [{key, value}] (see the module docstring for the forms)."""
    raw = _read_src(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EntriesFileError("%s is not UTF-8 text (byte %d)" % (path, e.start))
    head = text.lstrip()[:1]
    if head in ("[", "{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise EntriesFileError("%s is not valid JSON: %s" % (path, e))
        return _entries_from_json(data, path)
    return _entries_from_lines(text, path)


def _json_scalars(items):
    """Each item as JSON text, as json.dumps writes it; str and int columns (the common case: addresses,
    hex, counters) without one json.dumps call per item."""
    kinds = set(map(type, items))
    if kinds == set((str,)):
        return list(map(_quote, items))
    if kinds == set((int,)):
        return list(map(str, items))
    return [json.dumps(i) for i in items]


def entries_json(keys, values, per_cpu=None, as_dict=False):
    """JSON text of decoded columns (pinned_map.read_decoded()) in ebpf_map_info's result shapes:
    [{"key": K, "value": V}] (per-CPU maps add "values"), or {"K": V} with as_dict (keys must be strings).
    The same text json.dumps gives for those shapes, made from whole columns at once (65,536 entries)."""
    if per_cpu is not None and not as_dict:
        return json.dumps([{"key": k, "values": c, "value": v} for k, c, v in zip(keys, per_cpu, values)])
    ks, vs = _json_scalars(keys), _json_scalars(values)
    if as_dict:
        return "{" + ", ".join([k + ": " + v for k, v in zip(ks, vs)]) + "}"
    return "[" + ", ".join(['{"key": %s, "value": %s}' % kv for kv in zip(ks, vs)]) + "]"


DEST_MODE = 0o644  # a dump is root's file with this mode, whatever the file it replaces had


def _dest_content(path):
    """What dest holds now (bytes), or None when there is no file or the file is not root's own with DEST_MODE
    (so it is written again). Opened with O_NOFOLLOW|O_NONBLOCK: a link or a non-regular file is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        if e.errno == errno.ELOOP:
            raise EntriesFileError("dest %s is a symbolic link: refusing to write through it (nothing written)"
                                   % path)
        raise EntriesFileError("cannot read dest %s: %s" % (path, os.strerror(e.errno or 0)))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise EntriesFileError("dest %s is a directory" % path)
        raise EntriesFileError("dest %s is not a regular file (a FIFO, socket or device): not replaced" % path)
    with os.fdopen(fd, "rb") as f:
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != DEST_MODE:
            return None
        return f.read()


def write_if_changed(path, text, check_mode=False):
    """Write `text` to `path` (atomically: a temporary file in the same directory, then rename) unless the file
    already holds exactly that and is ours with DEST_MODE. Returns True when the file was (or, in check mode,
    would be) changed. The new file is always ours with DEST_MODE (a file another user prepared there is
    replaced, not reused)."""
    data = text.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise EntriesFileError("dest %s: directory %s does not exist" % (path, directory))
    if _dest_content(path) == data:
        return False
    if check_mode:
        return True
    atomic_file.write(path, data, DEST_MODE)
    return True
