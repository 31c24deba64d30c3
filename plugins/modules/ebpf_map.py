#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ebpf_map
short_description: Declare the entries of a pinned eBPF map
description:
  - Makes a pinned BPF map hold (or not hold) the given entries, read from and written to the kernel through
    bpf(2) (C(BPF_MAP_LOOKUP_ELEM), C(BPF_MAP_UPDATE_BATCH) or C(BPF_MAP_UPDATE_ELEM), C(BPF_MAP_DELETE_ELEM)).
  - The map is found by O(path), or by O(name) (a program managed by M(hypermesh.ebpf.ebpf_program)) and O(map).
  - Key and value sizes come from the map's info; with O(key_format=auto) / O(value_format=auto) the map's BTF
    types are used (integers, enums, structs as dicts by field name, arrays as lists, char arrays as strings).
    A key or value that does not fit is an error.
  - All or nothing. Every key and value is encoded and checked before the first write; when the kernel refuses a
    write mid-way (map full, ...) the keys already written get their previous values back and the keys added are
    deleted, so the map is left as it was, and the module fails.
  - Per-CPU maps (C(percpu_hash), C(percpu_array), C(lru_percpu_hash)) get the given value on B(every) CPU; an
    entry matches only when every CPU holds that value.
  - Array maps cannot remove entries; for them O(state=absent) and O(exact=true) set the value to all zeros, and
    an all-zero array entry counts as absent.
  - Takes the host-wide lock C(/run/hypermesh-ebpf/lock) while it reads and writes.
version_added: "0.1.0"
author: hypermesh engineers (@hypermesh)
options:
  path:
    description: Path of the pinned map on bpffs.
    type: path
  name:
    description: Name of the managed program whose map this is (maps pinned at C(<pin_root>/<name>/maps/<map>),
      or C(<pin_root>/_shared/<map>) for maps pinned by name).
    type: str
  map:
    description: Name of the map within the program O(name) (printable ASCII, no C(/); O(name) likewise).
    type: str
  pin_root:
    description: The bpffs directory managed programs are pinned under.
    type: path
    default: /sys/fs/bpf/hypermesh
  entries:
    description:
      - The entries to add, update or remove, each a dict with C(key) (required, written in O(key_format)) and
        C(value) (written in O(value_format)).
      - A C(value) left out (with O(state=present)) means the key only has to exist; a missing key is added
        with an all-zero value and an existing one keeps its value. Use this for values the BPF program
        changes itself, such as the example blocklist's per-source drop counter, so that a second run does
        not reset them.
      - Each dict is checked by the module (not by a suboption spec, which costs seconds for 10,000 entries).
      - Mutually exclusive with O(src).
    type: list
    elements: dict
    default: []
  src:
    description:
      - Read the entries from this file on the managed host instead of O(entries) (like C(bpftool batch file)).
        For big maps, 10,000 entries passed from the controller cost Ansible seconds of templating and
        argument checking; a file already on the host costs nothing of that (put it there with
        M(ansible.builtin.copy) once, or let M(hypermesh.ebpf.ebpf_map_info)
        O(hypermesh.ebpf.ebpf_map_info#module:dest) write it).
      - "The file holds JSON, either a list of C({key, value}) dicts as in O(entries), or an object
        C({key: value}) (ebpf_map_info's O(hypermesh.ebpf.ebpf_map_info#module:entries_as=dict)), or
        C({entries: ...}) (a saved ebpf_map_info result); or plain lines C(KEY) or C(KEY VALUE) (or
        C(KEY,VALUE)), C(#) starting a comment. Keys and values are read in O(key_format) / O(value_format)."
      - The whole file is read and checked before the map is touched; a file that cannot be read or parsed
        is an error naming the file (and line), with nothing written.
      - It must be a regular file of at most 64 MiB that only its owner (root or the user the module runs as)
        can write; anything else (a device such as C(/dev/zero), a FIFO, a bigger file, a file others can
        write) is refused before a byte of it is used.
    type: path
  report_keys:
    description:
      - List the keys written and removed in RV(added), RV(updated) and RV(removed). With V(false) only
        RV(counts) says how many. For big changes, 10,000 keys cost Ansible 0.05 to 0.2 s to carry back (a
        2-core machine, quiet to loaded), more than the map update itself (about 0.02 s).
    type: bool
    default: true
  state:
    description: Whether the O(entries) must be present (with these values) or absent.
    type: str
    choices: [present, absent]
    default: present
  exact:
    description: Remove every entry of the map that is not in O(entries). Only with O(state=present).
    type: bool
    default: false
  key_format:
    description:
      - How keys are written. V(int) unsigned integer in host byte order, V(hex) raw bytes in order,
        V(ipv4)/V(ipv6) addresses in network byte order, V(mac), V(string) (NUL padded), V(auto) the map's
        BTF type when it has one, else V(hex).
    type: str
    choices: [auto, int, hex, ipv4, ipv6, mac, string]
    default: auto
  value_format:
    description: How values are written; same choices as O(key_format).
    type: str
    choices: [auto, int, hex, ipv4, ipv6, mac, string]
    default: auto
extends_documentation_fragment:
  - hypermesh.ebpf.attributes
notes:
  - A map frozen with C(BPF_MAP_FREEZE) is read-only from user space; changing it is refused before anything
    is written (also in check mode).
  - The module_utils it runs are copied once per host into C(/var/cache/hypermesh-ebpf/pycache/ebpf_map/) and
    compiled there, so later runs do not compile them again.
"""

EXAMPLES = r"""
- name: Block two IPv4 sources with the example XDP blocklist (its values are drop counters, left as they are)
  hypermesh.ebpf.ebpf_map:
    name: blocklist
    map: blocklist
    key_format: ipv4
    entries:
      - key: 192.0.2.10
      - key: 192.0.2.11

- name: Exactly these sources, nothing else
  hypermesh.ebpf.ebpf_map:
    path: /sys/fs/bpf/hypermesh/blocklist/maps/blocklist
    key_format: ipv4
    exact: true
    entries:
      - {key: 192.0.2.10, value: 0}

- name: Exactly the 10,000 sources listed in a file on the host, one address per line
  hypermesh.ebpf.ebpf_map:
    name: blocklist
    map: blocklist
    key_format: ipv4
    src: /etc/hypermesh/blocklist.txt
    exact: true

- name: Unblock one source
  hypermesh.ebpf.ebpf_map:
    name: blocklist
    map: blocklist
    key_format: ipv4
    state: absent
    entries:
      - key: 192.0.2.11

- name: Reset a per-CPU struct counter on every CPU
  hypermesh.ebpf.ebpf_map:
    name: counter
    map: xdp_stats
    entries:
      - {key: 0, value: {packets: 0, bytes: 0}}
"""

RETURN = r"""
map:
  description: The map as the kernel describes it.
  returned: always
  type: dict
  sample: {path: /sys/fs/bpf/hypermesh/blocklist/maps/blocklist, id: 42, name: blocklist, type: hash,
           key_size: 4, value_size: 8, max_entries: 65536, map_flags: 0, btf_id: 7, frozen: false, percpu: false,
           possible_cpus: null}
counts:
  description: How many keys were (or, in check mode, would be) added, updated and removed.
  returned: always
  type: dict
  sample: {added: 1, updated: 0, removed: 0}
added:
  description: Keys written that were not in the map (or, in arrays, were all zeros).
  returned: when O(report_keys=true)
  type: list
  elements: str
  sample: ["192.0.2.10"]
updated:
  description: Keys whose value was changed.
  returned: when O(report_keys=true)
  type: list
  elements: str
removed:
  description: Keys deleted (array maps, zeroed).
  returned: when O(report_keys=true)
  type: list
  elements: str
src_entries:
  description: Number of entries read from O(src).
  returned: when O(src) is set
  type: int
diff:
  description: The changed keys before and after (C(null) = absent); per-CPU values that differ between CPUs
    are shown as a list, one item per CPU.
  returned: when diff mode is on
  type: dict
  sample: {before: {entries: {"192.0.2.10": null}}, after: {entries: {"192.0.2.10": 0}}}
"""

import gc

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import pycache

# the module_utils below: compiled once per host, not on every run
pycache.use_host_copy("ebpf_map")

from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps.map_runner import (  # noqa: E402
    ARGUMENT_SPEC, ERRORS, MUTUALLY_EXCLUSIVE, apply_entries)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        required_one_of=[("path", "name")],
        required_together=[("name", "map")],
        supports_check_mode=True,
    )
    try:
        result = apply_entries(module.params, module.check_mode, module._diff)
    except ERRORS as e:
        module.fail_json(msg=str(e))
    module.exit_json(**result)


if __name__ == "__main__":
    gc.freeze()  # what the imports built lives until exit: no collection walks it (docs/DESIGN.md)
    main()
