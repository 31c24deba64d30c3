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
  - Per-CPU maps return each CPU's value (RV(entries[].values)) and their sum (RV(entries[].value); ints add,
    structs add field by field; C(null) when the values are not numbers).
  - The whole map is read with C(BPF_MAP_LOOKUP_BATCH) where the kernel supports it (5.6+ and the map type),
    else with C(BPF_MAP_GET_NEXT_KEY) and one lookup per key; RV(read_method) says which.
version_added: "0.1.0"
author: hypermesh engineers
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

- name: Packets dropped, summed over CPUs
  hypermesh.ebpf.ebpf_map_info:
    name: blocklist
    map: verdicts
    keys: [1]
  register: verdicts
"""

RETURN = r"""
map:
  description: The map as the kernel describes it (see M(hypermesh.ebpf.ebpf_map)).
  returned: always
  type: dict
entries:
  description: The entries, in the kernel's iteration order.
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The decoded key.
      type: raw
    value:
      description: The decoded value; for per-CPU maps the sum over CPUs.
      type: raw
    values:
      description: Per-CPU maps only, each possible CPU's value in CPU order.
      type: list
  sample: [{key: 0, values: [3, 4], value: 7}]
count:
  description: Number of entries returned.
  returned: always
  type: int
read_method:
  description: How the map was read, V(batch) (BPF_MAP_LOOKUP_BATCH), V(next_key) or V(lookup) (O(keys) given).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils import map_codec
from ansible_collections.hypermesh.ebpf.plugins.module_utils import pinned_map


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            name=dict(type="str"),
            map=dict(type="str"),
            pin_root=dict(type="path", default=pinned_map.DEFAULT_PIN_ROOT),
            keys=dict(type="list", elements="raw"),
            key_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
            value_format=dict(type="str", choices=list(map_codec.FORMATS), default="auto"),
        ),
        mutually_exclusive=[("path", "name"), ("path", "map")],
        required_one_of=[("path", "name")],
        required_together=[("name", "map")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        path = pinned_map.map_path(p["path"], p["name"], p["map"], p["pin_root"])
        with pinned_map.PinnedMap(path) as pm:
            entries = pinned_map.read_entries(pm, p["key_format"], p["value_format"], p["keys"])
            module.exit_json(changed=False, map=pm.describe(), entries=entries, count=len(entries),
                             read_method=pm.read_method)
    except (map_codec.CodecError, pinned_map.MapError, OSError) as e:
        module.fail_json(msg=str(e))


if __name__ == "__main__":
    main()
