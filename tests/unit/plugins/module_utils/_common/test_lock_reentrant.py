"""lock.HostLock is re-entrant within one process (ebpf_state holds it for a whole transaction while the
single-object functions it calls take it again) and still excludes every other process."""
import os
import subprocess
import sys

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock

PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except OSError:
    print("held")
"""


def held_elsewhere(path):
    """What another process sees: the lock held or free."""
    out = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "held"


def test_nested_hold_in_one_process_and_release_by_the_outermost(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    path = str(d / "lock")
    with lock.HostLock(path, timeout=1):
        assert held_elsewhere(path)
        with lock.HostLock(path, timeout=1):   # would wait (and time out) on a second flock of this process
            with lock.HostLock(path, timeout=1):
                assert held_elsewhere(path)
        assert held_elsewhere(path)            # the inner exits did not release it
    assert not held_elsewhere(path)
    with lock.HostLock(path, timeout=1):       # and it can be taken again
        assert held_elsewhere(path)
    assert not held_elsewhere(path)


def test_an_error_inside_still_releases(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    path = str(d / "lock")
    try:
        with lock.HostLock(path, timeout=1):
            with lock.HostLock(path, timeout=1):
                raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not held_elsewhere(path)
    assert os.path.exists(path)
