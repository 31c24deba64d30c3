"""The host lock covers a whole transaction (issue #12, item 5): while a run holds it, the boot-time re-apply and
another ebpf_state run wait, and the re-apply then applies the desired state as it is AFTER that run (read
under the lock), not the one it would have read before waiting.

The test holds the lock itself (lock.HostLock, as ebpf_state does for its whole transaction), commits a new
desired state while holding it, and checks what the waiting processes did once it let go.
"""
import json
import os
import subprocess
import sys
import threading
import time

from tests.conftest import COLLECTIONS, ansible_module, needs_root
from test_ebpf_program_common import pin_root_fixture, private_object, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps

pytestmark = needs_root

pin_root = pin_root_fixture("hm-lockscope")
TAG = "hmls%d" % (os.getpid() % 100000)
OLD, NEW = TAG + "_old", TAG + "_new"
REAPPLY = "ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply"


def _desired(path, generation, name, src, symbols, attach, pin_root):
    entry = {"program": {"name": name, "object": private_object(src, symbols), "state": "attached",
                         "attach": attach, "pin_root": pin_root}, "maps": []}
    with open(path, "w") as f:
        json.dump({"version": 1, "generation": generation, "programs": [entry]}, f)


def _remove(name, pin_root):
    res = run({"name": name, "state": "absent", "pin_root": pin_root})
    assert not res.get("failed"), res


def test_reapply_waits_for_a_transaction_and_applies_what_it_committed(pin_root, tmp_path):
    desired = str(tmp_path / "desired.json")
    _desired(desired, 1, OLD, "tp_openat", ["count_openat", "openat_count"],
             {"tracepoint": "syscalls/sys_enter_openat"}, pin_root)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS, PYTHONDONTWRITEBYTECODE="1")
    try:
        with lock.HostLock():       # a transaction in progress
            proc = subprocess.Popen([sys.executable, "-m", REAPPLY, "--desired", desired, "--retry-seconds", "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
            time.sleep(3)
            assert proc.poll() is None, "the re-apply did not wait for the lock: %s" % (proc.communicate(),)
            assert ps.Live(pin_root, OLD).prog_id is None
            # the transaction commits generation 2, which no longer has OLD, then lets go of the lock
            _desired(desired, 2, NEW, "rawtp_sys_enter", ["count_sys_enter", "sys_enter_count"],
                     {"raw_tracepoint": "sys_enter"}, pin_root)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        assert ps.Live(pin_root, NEW).prog_id, "the re-apply did not apply the committed state: " + out
        assert ps.Live(pin_root, OLD).prog_id is None and not os.path.exists(os.path.join(pin_root, OLD)), \
            "the re-apply applied the desired state it read before the transaction ended: " + out
    finally:
        for name in (OLD, NEW):
            _remove(name, pin_root)


def test_ebpf_state_waits_for_a_transaction(pin_root, tmp_path):
    """A second ebpf_state run does not start (not even its gate) while a transaction holds the lock."""
    done = {}
    args = {"programs": [{"name": NEW, "object": private_object("rawtp_sys_enter",
                                                                ["count_sys_enter", "sys_enter_count"]),
                          "attach": {"raw_tracepoint": "sys_enter"}, "health": {"check": "none"}}],
            "pin_root": pin_root, "desired": str(tmp_path / "desired.json")}
    try:
        with lock.HostLock():
            worker = threading.Thread(target=lambda: done.update(ansible_module("ebpf_state", args)))
            worker.start()
            time.sleep(4)
            assert worker.is_alive() and not done, "ebpf_state ran while another transaction held the lock"
            assert ps.Live(pin_root, NEW).prog_id is None
        worker.join(120)
        assert done.get("changed") and not done.get("failed"), done
        assert ps.Live(pin_root, NEW).prog_id
    finally:
        _remove(NEW, pin_root)
