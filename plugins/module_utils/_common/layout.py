# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every default path and reserved name the collection uses on a host, written once.

The other files import these; module DOCUMENTATION (which cannot import) and docstrings name them in words.
tests/unit/plugins/module_utils/_common/test_layout.py fails when one of the literals is written again
elsewhere under plugins/. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# ---- bpffs --------------------------------------------------------------------------------------------------
PIN_ROOT = "/sys/fs/bpf/hypermesh"  # default pin_root: one directory per managed program below it
SHARED = "_shared"  # <pin_root>/_shared/<map>: the LIBBPF_PIN_BY_NAME maps; a name no program may take
PIN_PROG = "prog"  # <pin_root>/<name>/prog: the program
PIN_LINK = "link"  # <pin_root>/<name>/link: its BPF link, when attached through one
PIN_MAPS = "maps"  # <pin_root>/<name>/maps/<map>: its own maps

# ---- kernel interfaces ---------------------------------------------------------------------------------------
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"  # the uprobe perf PMU: its type and format/retprobe bit

# ---- persistent state -----------------------------------------------------------------------------------------
STATE_DIR = "/var/lib/hypermesh-ebpf"  # default state_dir: the modules' records and the rolled-out objects
RECORDS = "programs"  # <state_dir>/programs/<name>.json: the record of each managed program
OBJECTS_DIR = STATE_DIR + "/objects"  # default objects_dir: the objects, named <sha256>.bpf.o
DESIRED = "/etc/hypermesh-ebpf/desired.json"  # default desired: the host's saved desired state (ebpf_state)
LIB_DIR = "/usr/lib/hypermesh-ebpf"  # default lib_dir: the collection's module_utils for the boot unit
PYCACHE_ROOT = "/var/cache/hypermesh-ebpf/pycache"  # the modules' compiled module_utils, one tree per module

# ---- runtime (tmpfs, gone at reboot) ---------------------------------------------------------------------------
RUN_DIR = "/run/hypermesh-ebpf"  # private directory (0700, root) of the host lock and the features memo
LOCK_PATH = RUN_DIR + "/lock"  # the host-wide lock (flock)
FEATURES_MEMO = RUN_DIR + "/features.json"  # kernel features found supported, for this boot
HELD_DIR = RUN_DIR + "/held"  # what the holder is asked to hold: one <key>.json per attachment (program id, spec)
HOLDER_STATUS = RUN_DIR + "/holder.json"  # what the holder holds: its pid, and per key the program id and fd

# ---- systemd ----------------------------------------------------------------------------------------------------
REAPPLY_UNIT = "hypermesh-ebpf-reapply.service"  # the boot-time re-apply unit
UNIT_DIR = "/etc/systemd/system"  # where ebpf_state writes that unit
REAPPLY_UNIT_PATH = UNIT_DIR + "/" + REAPPLY_UNIT  # the unit file itself
HOLDER_UNIT = "hypermesh-ebpf-holder.service"  # the holder: keeps the attachments a kernel cannot pin
HOLDER_UNIT_PATH = UNIT_DIR + "/" + HOLDER_UNIT
HOLDER_LIB_DIR = "/usr/lib/hypermesh-ebpf-holder"  # the holder's code (its PYTHONPATH), written by ebpf_program
