#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ebpf_map_info
short_description: Read the entries of a pinned eBPF map
description:
  - Reads a pinned BPF map (opened read-only) and returns every entry, or only the O(keys) asked for.
  - Entries are decoded through the map's BTF where it has one (integers, enums, structs as dicts, arrays as
    lists, char arrays as strings), or through O(key_format) / O(value_format) (for example V(ipv4) keys);
    maps without BTF come back as hex.
  - Per-CPU maps return each CPU's value (C(values) in each entry) and their sum (RV(entries[].value); ints add,
    structs add field by field; C(null) when the values are not numbers).
  - The whole map is read with C(BPF_MAP_LOOKUP_BATCH) where the kernel supports it (5.6+ and the map type),
    else with C(BPF_MAP_GET_NEXT_KEY) and one lookup per key; RV(read_method) says which.
  - "Big maps: every dict and value in a result costs time in the module (ansible-core scrubs the result
    for no_log values) and on the controller, tens of microseconds per entry with ansible-core 2.19 on a
    2-core machine, far more than the kernel read. O(entries_as=dict) returns one C({key: value}) dict
    instead of one dict per entry (about a third of that cost); O(dest) writes the entries to a file on
    the managed host and returns none (like C(bpftool -j map dump > FILE)), which
    M(hypermesh.ebpf.ebpf_map) can read back with its O(hypermesh.ebpf.ebpf_map#module:src) option."
  - Reads only, except that O(dest) writes its file (reported as C(changed) when the file's content changed;
    not in check mode).
version_added: "0.1.0"
author: hypermesh engineers (@hypermesh)
notes:
  - The module_utils it runs are copied once per host into C(/var/cache/hypermesh-ebpf/pycache/ebpf_map_info/)
    and compiled there, so later runs do not compile them again.
options:
  path:
    description: Path of the pinned map on bpffs.
    type: path
  name:
    description: Name of the managed program whose map this is.
    type: str
  map:
    description: Name of the map within the program O(name).
    type: str
  pin_root:
    description: The bpffs directory managed programs are pinned under.
    type: path
    default: /sys/fs/bpf/hypermesh
  keys:
    description: Look up only these keys (written in O(key_format)); a key not in the map is left out.
    type: list
    elements: raw
  key_format:
    description: How keys are decoded (and O(keys) read); see M(hypermesh.ebpf.ebpf_map).
    type: str
    choices: [auto, int, hex, ipv4, ipv6, mac, string]
    default: auto
  value_format:
    description: How values are decoded; see M(hypermesh.ebpf.ebpf_map).
    type: str
    choices: [auto, int, hex, ipv4, ipv6, mac, string]
    default: auto
  entries_as:
    description:
      - "Shape of RV(entries) (and of the O(dest) file). V(list) one C({key, value}) dict per entry (per-CPU
        maps add C(values)). V(dict) one dict C({key: value}); keys are strings as ebpf_map reports them in
        RV(hypermesh.ebpf.ebpf_map#module:added) and its diff (struct or array keys as hex), per-CPU values are
        the sums over CPUs."
    type: str
    choices: [list, dict]
    default: list
  dest:
    description:
      - Write the entries as JSON (shaped by O(entries_as)) to this file on the managed host instead of
        returning them. The directory must exist; the file is replaced atomically, and only when its content
        changes (or it is not yet the module user's own file with mode 0644; a file another user prepared there
        is replaced, never reused); a symbolic link or a non-regular file there is refused.
        M(hypermesh.ebpf.ebpf_map) reads such a file with O(hypermesh.ebpf.ebpf_map#module:src).
    type: path
  wait_for:
    description:
      - Wait until a counter moves. The entry of the one key in O(keys) is read again every 0.1 s until its
        value is greater than O(wait_for.above), for at most O(wait_for.timeout) seconds; RV(entries) is the
        last read and RV(wait) says how it went. When the time runs out the task fails, and its message gives
        the last value (a key not in the map counts as not moved yet).
      - One module run for the whole wait, where Ansible's C(until)/C(retries) would run the module again for
        every read (a quarter of a second each on a fast host, seconds on a slow one).
    type: dict
    suboptions:
      above:
        description: The value must become greater than this (typically the value read before).
        type: int
        required: true
      field:
        description: For a struct value, the integer member compared (for example C(packets)).
        type: str
      timeout:
        description: Seconds to wait at most.
        type: float
        default: 30
extends_documentation_fragment:
  - hypermesh.ebpf.attributes.INFO_MODULE
"""

EXAMPLES = r"""
- name: Read the blocklist, keys as IPv4 addresses
  hypermesh.ebpf.ebpf_map_info:
    name: blocklist
    map: blocklist
    key_format: ipv4
  register: blocklist

- name: A big map as one dict (cheap for the controller); look a source up by address
  hypermesh.ebpf.ebpf_map_info:
    name: blocklist
    map: blocklist
    key_format: ipv4
    entries_as: dict
  register: blocked
- ansible.builtin.debug:
    msg: "192.0.2.10 dropped {{ blocked.entries['192.0.2.10'] | default(0) }} packets"

- name: Dump a big map to a file on the host (like bpftool -j map dump > FILE), nothing sent back
  hypermesh.ebpf.ebpf_map_info:
    path: /sys/fs/bpf/hypermesh/blocklist/maps/blocklist
    key_format: ipv4
    dest: /var/tmp/blocklist.json

- name: Packets dropped, summed over CPUs
  hypermesh.ebpf.ebpf_map_info:
    name: blocklist
    map: verdicts
    keys: [1]
  register: verdicts

- name: Wait up to 60 s for a drop more than that (fails when none comes)
  hypermesh.ebpf.ebpf_map_info:
    name: blocklist
    map: verdicts
    keys: [1]
    wait_for:
      above: "{{ verdicts.entries[0].value }}"
      timeout: 60

- name: The same for a member of a struct value
  hypermesh.ebpf.ebpf_map_info:
    name: xdp-counter
    map: xdp_stats
    keys: [0]
    wait_for: {above: 0, field: packets}
"""

RETURN = r"""
map:
  description: The map as the kernel describes it (see M(hypermesh.ebpf.ebpf_map)).
  returned: always
  type: dict
entries:
  description: "The entries, in the kernel's iteration order; with O(entries_as=dict) a dict
    C({key: value}) instead of this list."
  returned: when O(dest) is not set
  type: list
  elements: dict
  contains:
    key:
      description: The decoded key.
      type: raw
    value:
      description:
        - The decoded value; for per-CPU maps the sum over CPUs.
        - Per-CPU maps also give each possible CPU's value, in CPU order, as a list under the key C(values)
          (read it as C(entry['values']), since C(.values) is the dict method in Jinja).
      type: raw
  sample: [{key: 0, values: [3, 4], value: 7}]
count:
  description: Number of entries returned.
  returned: always
  type: int
dest:
  description: The file the entries were written to.
  returned: when O(dest) is set
  type: str
wait:
  description: How O(wait_for) went.
  returned: when O(wait_for) is set
  type: dict
  contains:
    reached:
      description: Whether the value passed O(wait_for.above) in time.
      type: bool
    seconds:
      description: Seconds waited.
      type: float
    value:
      description: The number compared last (the member O(wait_for.field) of a struct value); C(null) when the
        key was not in the map.
      type: int
  sample: {reached: true, seconds: 1.2, value: 57}
read_method:
  description: How the map was read, V(batch) (BPF_MAP_LOOKUP_BATCH), V(next_key) or V(lookup) (O(keys) given).
  returned: always
  type: str
"""

import gc
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import pycache

# the module_utils below: compiled once per host, not on every run
pycache.use_host_copy("ebpf_map_info")

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_codec  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_file  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_wait  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map  # noqa: E402


def wait(pm, p):
    """wait_for: the one key's entry read until its value passes `above`; (last entries, RV wait, failure message
    or None)."""
    w = p["wait_for"]
    as_dict = p["entries_as"] == "dict"
    last = {}

    def read():
        last["entries"] = entries = pinned_map.read_entries(pm, p["key_format"], p["value_format"], p["keys"],
                                                            as_dict)
        if not entries:
            return None
        return next(iter(entries.values())) if as_dict else entries[0]["value"]

    reached, value, seconds = map_wait.wait_above(read, w["above"], w["field"], w["timeout"])
    number = None if value is None else map_wait.number(value, w["field"])
    failure = None
    if not reached:
        what = "%s[%s]%s" % (os.path.basename(pm.path), p["keys"][0], ("." + w["field"]) if w["field"] else "")
        failure = map_wait.timeout_message(what, number, w["above"], seconds)
    return last["entries"], dict(reached=reached, seconds=round(seconds, 3), value=number), failure


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            name=dict(type="str"),
            map=dict(type="str"),
            pin_root=dict(type="path", default=layout.PIN_ROOT),
            keys=dict(type="list", elements="raw", no_log=False),  # map keys, not secrets
            key_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
            value_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
            entries_as=dict(type="str", choices=["list", "dict"], default="list"),
            dest=dict(type="path"),
            wait_for=dict(type="dict", options=dict(above=dict(type="int", required=True), field=dict(type="str"),
                                                    timeout=dict(type="float", default=30))),
        ),
        mutually_exclusive=[("path", "name"), ("path", "map"), ("dest", "wait_for")],
        required_one_of=[("path", "name")],
        required_together=[("name", "map")],
        supports_check_mode=True,
    )
    p = module.params
    if p["wait_for"] and len(p["keys"] or []) != 1:
        module.fail_json(msg="wait_for watches one entry: give exactly one key in keys")
    failure = None
    try:
        path = pinned_map.map_path(p["path"], p["name"], p["map"], p["pin_root"])
        as_dict = p["entries_as"] == "dict"
        entries = columns = waited = None  # what was read: entries (also with wait_for) or, for dest, columns
        with pinned_map.PinnedMap(path) as pm:
            if p["wait_for"]:
                entries, waited, failure = wait(pm, p)
            elif p["dest"] is None:
                entries = pinned_map.read_entries(pm, p["key_format"], p["value_format"], p["keys"], as_dict)
            else:
                columns = pinned_map.read_decoded(pm, p["key_format"], p["value_format"], p["keys"], as_dict)
            count = len(entries) if columns is None else len(columns[0])
            result = dict(changed=False, map=pm.describe(), count=count, read_method=pm.read_method)
        if waited is not None:
            result["wait"] = waited
        if columns is None:
            result["entries"] = entries
        else:
            text = map_file.entries_json(*columns, as_dict=as_dict) + "\n"
            result["changed"] = map_file.write_if_changed(p["dest"], text, module.check_mode)
            result["dest"] = p["dest"]
    except (map_codec.CodecError, pinned_map.MapError, map_file.EntriesFileError, map_wait.WaitError, OSError) as e:
        module.fail_json(msg=str(e))
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    gc.freeze()  # what the imports built lives until exit: no collection walks it (docs/DESIGN.md)
    main()
