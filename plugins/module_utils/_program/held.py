# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attachments held by the holder (holder.py): ask for one, drop one, and read in the kernel whether it is held.

A request is `<held_dir>/<key>.json` (root's, 0600, written atomically); the key is the program's name and a
digest of its pin_root, so two programs of one name under two pin roots never share a request. hold() and
release() write or remove it and wait (up to `timeout`) until the holder's status shows the change; held_prog_id()
believes the status only as far as the kernel confirms it: BPF_TASK_FD_QUERY on the holder's descriptor must
name the program and the kind of attach point. HoldError, with the holder's own message, when it does not.
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
import time

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs

TIMEOUT = 10.0  # seconds to wait for the holder to take or drop an attachment
_POLL = 0.02


class HoldError(Exception):
    pass


class Held(object):
    """The held attachment of program `name` under `pin_root`, through the holder's files."""

    def __init__(self, pin_root, name, held_dir=layout.HELD_DIR, status_path=layout.HOLDER_STATUS):
        digest = hashlib.sha256(os.path.normpath(pin_root).encode("utf-8")).hexdigest()[:8]
        self.key = "%s.%s" % (name, digest)
        self.name = name
        self.pin_root = pin_root
        self.held_dir = held_dir
        self.status_path = status_path
        self.path = os.path.join(held_dir, self.key + ".json")

    # ---- read ---------------------------------------------------------------------------------------------
    def request(self):
        """The request as written ({"name", "pin_root", "prog_id", "attach"}), or None."""
        return _read_json(self.path)

    def status(self):
        """The holder's status, or None when there is none (the holder never ran this boot)."""
        return _read_json(self.status_path)

    def held_prog_id(self, spec=None):
        """The id of the program the holder keeps attached for us, as the kernel confirms it (its descriptor runs
        that program, on the kind of attach point of `spec` when given), else None."""
        status = self.status() or {}
        entry = (status.get("held") or {}).get(self.key)
        if not entry or not status.get("pid"):
            return None
        try:
            info = bs.task_fd_query(status["pid"], entry["fd"])
        except OSError:
            return None  # the holder is gone (its descriptors with it), or the fd is another file now
        if info["prog_id"] != entry.get("prog_id"):
            return None
        if spec is not None and (info["fd_type"] != spec["type"] or entry.get("attach") != spec):
            return None
        return info["prog_id"]

    # ---- change -------------------------------------------------------------------------------------------
    def hold(self, prog_id, spec, timeout=TIMEOUT):
        """Ask the holder to keep program prog_id attached at spec; return once the kernel shows it held."""
        host_paths.private_dir(os.path.dirname(self.held_dir))
        host_paths.private_dir(self.held_dir)
        req = {"name": self.name, "pin_root": self.pin_root, "prog_id": prog_id, "attach": spec}
        atomic_file.write(self.path, json.dumps(req, sort_keys=True).encode("utf-8"), 0o600)
        self._wait(lambda: self.held_prog_id(spec) == prog_id, "attach program id %d at %s" % (
            prog_id, _describe(spec)), timeout, prog_id)

    def release(self, timeout=TIMEOUT):
        """Withdraw the request; return once the holder no longer keeps it (at once when no holder runs)."""
        try:
            os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        if not self._holder_alive():
            return
        self._wait(lambda: self.key not in ((self.status() or {}).get("held") or {}), "let go of %s" % self.name,
                   timeout)

    def restore(self, request, timeout=TIMEOUT):
        """Put back a request read earlier by request() (None: none), as in a rollback."""
        if request:
            self.hold(request["prog_id"], request["attach"], timeout)
        else:
            self.release(timeout)

    def _holder_alive(self):
        pid = (self.status() or {}).get("pid")
        return bool(pid) and os.path.isdir("/proc/%d" % pid)

    def _wait(self, done, what, timeout, prog_id=None):
        """Until done(); a holder's error about this very request (its program id) ends it at once."""
        deadline = time.time() + timeout
        while True:
            if done():
                return
            error = ((self.status() or {}).get("errors") or {}).get(self.key) or {}
            if prog_id is not None and error.get("prog_id") == prog_id:
                raise HoldError("the holder (%s) could not %s: %s" % (layout.HOLDER_UNIT, what, error.get("message")))
            if time.time() >= deadline:
                raise HoldError("the holder (%s) did not %s within %d s (is it running? systemctl status %s)"
                                % (layout.HOLDER_UNIT, what, timeout, layout.HOLDER_UNIT))
            time.sleep(_POLL)


def _read_json(path):
    """The JSON document in root's file `path` (host_paths.open_trusted_file), None when missing or not JSON."""
    try:
        fd = host_paths.open_trusted_file(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            return json.loads(f.read().decode("utf-8"))
        except ValueError:
            return None


def held_attachments(status_path=layout.HOLDER_STATUS):
    """Every attachment the holder keeps, as the kernel confirms it (BPF_TASK_FD_QUERY on its descriptors):
    [{"name", "pin_root", "prog_id", "attach", "holder_pid", "fd", "fd_type"}], sorted by name. [] without a
    holder (or a status of another process)."""
    probe = Held("/", "", status_path=status_path)
    status = probe.status() or {}
    pid = status.get("pid")
    out = []
    for _key, entry in sorted((status.get("held") or {}).items()):
        try:
            info = bs.task_fd_query(pid, entry["fd"]) if pid else None
        except OSError:
            info = None
        if info and info["prog_id"] == entry.get("prog_id"):
            out.append({"name": entry.get("name"), "pin_root": entry.get("pin_root"), "prog_id": info["prog_id"],
                        "attach": entry.get("attach"), "holder_pid": pid, "fd": entry["fd"],
                        "fd_type": info["fd_type"]})
    return sorted(out, key=lambda e: (e["name"] or "", e["pin_root"] or ""))


def _describe(spec):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach
    return program_attach.describe(spec)
