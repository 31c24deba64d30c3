# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's saved desired state (/etc/hypermesh-ebpf/desired.json): read it, and commit a new one atomically
with the next generation number.

One job. The format is reapply.py's (version 1: {"version", "programs": [{"program", "maps"}]}) plus
`generation` (0 for a file written before generations, 1 for the first commit) and each program's `health`.
Read and written by ebpf_state under the host lock, so the generation counts commits on this host in order
and a commit never overwrites one it did not read. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import reapply

EMPTY = {"version": reapply.VERSION, "generation": 0, "programs": []}


def read(path):
    """The saved desired state, or EMPTY when there is none. A file that is there but unreadable or of another
    version raises reapply.DesiredError (a commit must not silently replace what it cannot read)."""
    if not os.path.lexists(path):
        return dict(EMPTY)
    doc = reapply.load_desired(path)
    gen = doc.get("generation", 0)
    if isinstance(gen, bool) or not isinstance(gen, int) or gen < 0:
        raise reapply.DesiredError("%s: generation %r is not a number" % (path, gen))
    doc["generation"] = gen
    return doc


def same_programs(doc, programs):
    """True when `doc` already holds `programs` (a list of Wanted.saved() dicts)."""
    return json.dumps(doc.get("programs"), sort_keys=True) == json.dumps(programs, sort_keys=True)


def commit(path, previous, programs):
    """Write `programs` as the desired state with generation previous+1 (temp file + rename). Returns the new
    generation."""
    gen = previous.get("generation", 0) + 1
    doc = {"version": reapply.VERSION, "generation": gen, "programs": programs}
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        os.makedirs(d, 0o755)
    atomic_file.write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"), mode=0o644)
    return gen
