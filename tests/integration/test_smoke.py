"""The short path every supported ansible-core runs (scripts/core_range.sh): facts, one XDP apply, one map read,
removal. Through real `ansible` runs of whichever ansible-core the running Python has; traffic stays inside the
namespaces of the `pair` fixture."""
import glob
import os
import platform
import shutil
import sys

from tests.conftest import ansible_module, needs_root
from test_ebpf_program_common import kernel_ids, obj, pin_root_fixture, ping

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout

pytestmark = needs_root

pin_root = pin_root_fixture("hm-smoke")


NAME = "smoke%d" % os.getpid()


def test_facts_apply_read_remove(pin_root, pair):
    facts = ansible_module("ebpf_facts")
    assert not facts.get("failed"), facts
    assert facts["ansible_facts"]["ebpf"]["kernel"]["release"] == platform.release()

    args = {"name": NAME, "object": obj("xdp_counter"), "pin_root": pin_root,
            "attach": {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}}
    # pycache on this ansible-core: the module's module_utils come out of its AnsiballZ zip into a compiled copy
    # (it returns None, and the module runs slower unseen, if this ansible-core's zip is not what it expects)
    shutil.rmtree(os.path.join(layout.PYCACHE_ROOT, "ebpf_program"), ignore_errors=True)
    applied = ansible_module("ebpf_program", args)
    assert applied.get("changed") and not applied.get("failed"), applied
    compiled = os.path.join(layout.PYCACHE_ROOT, "ebpf_program", "*", "_program", "__pycache__",
                            "program_runner.%s.pyc" % sys.implementation.cache_tag)
    assert glob.glob(compiled), "no compiled host copy: %s" % compiled
    assert applied["prog_id"] in kernel_ids()["prog"]
    assert ansible_module("ebpf_program", args)["changed"] is False

    assert ping(pair.ns_a, pair.addr_b)
    read = ansible_module("ebpf_map_info", {"name": NAME, "map": "xdp_stats", "pin_root": pin_root})
    assert not read.get("failed"), read
    assert read["entries"][0]["value"]["packets"] >= 3, read

    removed = ansible_module("ebpf_program", {"name": NAME, "pin_root": pin_root, "state": "absent"})
    assert removed.get("changed"), removed
    assert applied["prog_id"] not in kernel_ids()["prog"]
    assert not os.path.exists(os.path.join(pin_root, NAME))
