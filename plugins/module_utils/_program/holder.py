# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The holder: the process (hypermesh-ebpf-holder.service) that keeps the attachments a kernel cannot pin.

Before 5.15 a tracepoint, kprobe or uprobe attachment is a perf event with the program set on it
(PERF_EVENT_IOC_SET_BPF), and before 5.7 a raw tracepoint attachment is the descriptor BPF_RAW_TRACEPOINT_OPEN
returns: neither can be pinned, so each lasts exactly as long as some process keeps it open. The holder is that
process. It never loads anything: the programs stay pinned by ebpf_program, which asks for an attachment by
writing `<held_dir>/<key>.json` = {"name", "pin_root", "prog_id", "attach": spec} (held.py) and reads back
`<status>` = {"pid", "held": {key: {"name", "prog_id", "attach", "fd"}}, "errors": {key: {"prog_id", "message"}}}
(errors[DIR_ERROR]: the held directory itself is unsafe, so nothing in it is acted on; what is held stays held).

One loop: whenever the held directory changes (its entries, looked at four times a second) and every few seconds
(to retry what failed), the held descriptors are made to match the files: a new key is attached; a key whose
program or spec changed gets its new attachment before the old one is closed (the hook is never empty, for a
moment both run); a key whose file is gone is closed. Killed, it loses every attachment with its descriptors;
systemd restarts it and it attaches everything again from the files, the programs being pinned. The files live
in /run (gone at reboot, with the program ids they name); the boot-time re-apply writes them anew.
Run as `python -m <this module>` (see holder_service.py). Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import signal
import stat
import sys
import time

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf

HELD_KINDS = ("tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe", "raw_tracepoint")
POLL = 0.25  # seconds between looks at the held directory
RETRY = 5.0  # seconds between full passes (what failed is tried again)
DIR_ERROR = ".held_dir"  # the status errors' key for the held directory itself (no request file is named so)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_attachment(prog_fd, spec):
    """The descriptor that attaches prog_fd at spec while it is open (a perf event with the program set on it,
    or a raw tracepoint's). OSError (PerfError, BpfError) when the kernel refuses."""
    kind = spec["type"]
    if kind == "raw_tracepoint":
        return bs.raw_tracepoint_open(spec["target"], prog_fd)
    if kind == "tracepoint":
        pfd = perf.open_tracepoint(spec["target"])
    elif kind in ("uprobe", "uretprobe"):
        pfd = perf.open_uprobe(spec["path"], spec["offset"], retprobe=(kind == "uretprobe"), pid=spec.get("pid") or -1)
    elif kind in ("kprobe", "kretprobe"):
        pfd = perf.open_kprobe(spec["target"], retprobe=(kind == "kretprobe"))
    else:
        raise perf.PerfError(22, "the holder cannot hold %s attachments" % kind)
    try:
        perf.set_bpf(pfd, prog_fd)
    except BaseException:
        os.close(pfd)
        raise
    return pfd


def _error(message, prog_id=None):
    return {"prog_id": prog_id, "message": message}


def read_wanted(held_dir):
    """{key: request} of the held directory's files. The directory must be root's, private, its chain safe;
    a file that is not a regular file of ours (or not readable JSON of the expected form) is skipped with an
    error {key: {"prog_id": None, "message"}}. Returns (wanted, errors)."""
    wanted, errors = {}, {}
    host_paths.check_dir_chain(os.path.dirname(held_dir))
    if not host_paths.check_own_dir(held_dir, private=True):
        return wanted, errors
    for entry in sorted(os.listdir(held_dir)):
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        key = entry[:-5]
        try:
            fd = os.open(os.path.join(held_dir, entry), _READ_FLAGS)
        except OSError as e:
            errors[key] = _error("cannot open %s: %s" % (entry, e))
            continue
        try:
            st = os.fstat(fd)
            problem = host_paths.file_problem(st) or (
                "is readable by group or others" if stat.S_IMODE(st.st_mode) & 0o077 else None)
            if problem:
                errors[key] = _error("%s %s" % (entry, problem))
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                req = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError) as e:
            errors[key] = _error("cannot read %s: %s" % (entry, e))
            continue
        finally:
            os.close(fd)
        spec = req.get("attach") if isinstance(req, dict) else None
        if not isinstance(spec, dict) or spec.get("type") not in HELD_KINDS or not isinstance(req.get("prog_id"), int):
            errors[key] = _error("%s is not a request for a held attachment" % entry)
            continue
        wanted[key] = req
    return wanted, errors


class Holder(object):
    """The held descriptors, made to match the held directory by reconcile()."""

    def __init__(self, held_dir=layout.HELD_DIR, status_path=layout.HOLDER_STATUS):
        self.held_dir = held_dir
        self.status_path = status_path
        self.held = {}  # key -> {"name", "pin_root", "prog_id", "attach", "fd"}
        self.errors = {}
        self._written = None

    def reconcile(self):
        try:
            wanted, self.errors = read_wanted(self.held_dir)
        except OSError as e:  # an unsafe held directory: nothing in it is acted on; the status says why
            self.errors = {DIR_ERROR: _error(str(e))}
            self.write_status()
            raise
        for key in sorted(wanted):
            req, cur = wanted[key], self.held.get(key)
            if cur and cur["prog_id"] == req["prog_id"] and cur["attach"] == req["attach"]:
                continue
            try:
                fd = self._attach(req)
            except OSError as e:
                self.errors[key] = {"prog_id": req["prog_id"], "message": str(e)}
                continue
            except (KeyError, TypeError, ValueError) as e:  # a spec without what its kind needs: not a crash
                self.errors[key] = {"prog_id": req["prog_id"], "message": "%s.json has no usable attach spec "
                                    "(%s: %s)" % (key, type(e).__name__, e)}
                continue
            self.held[key] = {"name": req.get("name"), "pin_root": req.get("pin_root"), "prog_id": req["prog_id"],
                              "attach": req["attach"], "fd": fd}
            if cur:
                os.close(cur["fd"])  # after its successor runs
        for key in sorted(set(self.held) - set(wanted)):
            os.close(self.held.pop(key)["fd"])
        self.write_status()

    def _attach(self, req):
        prog_fd = bs.get_fd_by_id("prog", req["prog_id"])
        try:
            return open_attachment(prog_fd, req["attach"])
        finally:
            os.close(prog_fd)

    def write_status(self):
        status = {"pid": os.getpid(), "held": self.held, "errors": self.errors}
        data = json.dumps(status, sort_keys=True).encode("utf-8")
        if data != self._written:
            atomic_file.write(self.status_path, data, 0o600)
            self._written = data

    def close(self):
        for key in sorted(self.held):
            os.close(self.held.pop(key)["fd"])


def _dir_stamp(path):
    """What changes whenever a request is written, replaced or removed: the directory's entries with their inode
    numbers (a request is written through a new file renamed over the old one). Its mtime alone would not do:
    before 5.15 kernels stamp it with a timer tick, so two changes within one tick look the same."""
    try:
        st = os.lstat(path)
        return (st.st_ino, sorted((e.name, e.inode()) for e in os.scandir(path)))
    except OSError:
        return None


def run(held_dir, status_path, stop=None):
    """Hold until SIGTERM (or stop() says so): reconcile at start, on every change of held_dir, every RETRY s."""
    host_paths.private_dir(os.path.dirname(held_dir))
    host_paths.private_dir(held_dir)
    holder = Holder(held_dir, status_path)
    stamp, last = None, 0.0
    try:
        while not (stop and stop()):
            now_stamp = _dir_stamp(held_dir)
            if now_stamp != stamp or time.time() - last >= RETRY:
                stamp, last = now_stamp, time.time()
                try:
                    holder.reconcile()
                except OSError as e:  # an unsafe directory: hold what is held, say why, look again later
                    sys.stderr.write("hypermesh-ebpf-holder: %s\n" % e)
            time.sleep(POLL)
    finally:
        holder.close()


USAGE = "usage: holder [--held-dir DIR] [--status FILE]"


def main(argv=None):
    """Options by hand (argparse would add a tenth of a second to every restart on a slow host)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = {"--held-dir": layout.HELD_DIR, "--status": layout.HOLDER_STATUS}
    while argv:
        flag = argv.pop(0)
        if flag not in opts or not argv:
            sys.stderr.write(USAGE + "\n")
            return 2
        opts[flag] = argv.pop(0)

    def terminate(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, terminate)
    run(opts["--held-dir"], opts["--status"])
    return 0


if __name__ == "__main__":
    sys.exit(main())  # pylint: disable=ansible-bad-function
