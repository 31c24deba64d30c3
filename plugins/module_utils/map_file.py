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
A file whose first non-blank character is `[` or `{` is JSON, anything else is lines.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils import atomic_file

try:
    from json.encoder import encode_basestring_ascii as _quote  # the C function json.dumps uses for str
except ImportError:  # pragma: no cover
    _quote = json.dumps


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


def load_entries(path):
    """The entries a src file holds, as [{key, value}] (see the module docstring for the forms)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except (IOError, OSError) as e:
        raise EntriesFileError("cannot read src %s: %s" % (path, os.strerror(e.errno or 0)))
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


def write_if_changed(path, text, check_mode=False):
    """Write `text` to `path` (atomically: a temporary file in the same directory, then rename) unless the file
    already holds exactly that. Returns True when the file was (or, in check mode, would be) changed."""
    data = text.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise EntriesFileError("dest %s: directory %s does not exist" % (path, directory))
    if os.path.isdir(path):
        raise EntriesFileError("dest %s is a directory" % path)
    mode = 0o644
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
            mode = os.fstat(f.fileno()).st_mode & 0o7777
    except (IOError, OSError):
        pass
    if check_mode:
        return True
    atomic_file.write(path, data, mode)
    return True
