# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The holder as a systemd service: its code, its unit, running. ensure() before an attachment is held.

- code: the few module_utils the holder runs (CODE, read from this very collection as it is loaded, so the
  holder is always the code of the run that asked it) under `<lib_dir>/ansible_collections/.../module_utils/`,
  root's, 0644 in 0755 directories, each directory from / checked (host_paths). A file that differs, or is not
  a regular file of ours that nobody else can write, is written again (atomically).
- unit: hypermesh-ebpf-holder.service (Restart=always after 200 ms, without a start limit: killed, it is back within
  about a second), written when it differs (then daemon-reload), enabled when it is not, so it runs at boot.
- running: restarted when its code or unit changed, started when it is not active. Its Python starts without
  site-packages (-S: the holder needs only the standard library and its own code) and keeps its compiled code
  beside it (root's __pycache__), so a restart costs the interpreter's start and little more.
Without systemd (no /run/systemd/system) nothing can keep the holder running: HolderUnavailable.
`runner` replaces systemctl (unit tests). Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import pkgutil
import re
import sys

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import host_command
# imported so that Ansible ships it in the module's payload: code_files() reads it from there (the holder's own
# files, CODE, are all imported by this module or by what it imports)
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import holder  # noqa: F401  # pylint: disable=unused-import

PACKAGE = "ansible_collections.hypermesh.ebpf.plugins.module_utils"
CODE = ("_common/__init__.py", "_common/atomic_file.py", "_common/host_paths.py", "_common/layout.py",
        "_kernel/__init__.py", "_kernel/libc.py", "_kernel/bpf_syscall.py", "_kernel/perf.py",
        "_program/__init__.py", "_program/holder.py")
SYSTEMD_RUN_DIR = "/run/systemd/system"
_UNIT_VALUE_OK = re.compile(r"^/[A-Za-z0-9_@+,./-]*$")  # nothing a unit file would split, quote or expand

UNIT = """\
# Managed by hypermesh.ebpf (ebpf_program)
[Unit]
Description=Hold the eBPF attachments this kernel cannot pin (hypermesh.ebpf)
After=sys-fs-bpf.mount
StartLimitIntervalSec=0

[Service]
Type=simple
Environment=PYTHONPATH=%(lib_dir)s
Environment=LANG=C
ExecStart=%(python)s -S -m %(package)s._program.holder
Restart=always
RestartSec=200ms

[Install]
WantedBy=multi-user.target
"""


class HolderUnavailable(Exception):
    pass


def code_files():
    """{relative name: bytes} of the holder's code, from the collection this process runs."""
    out = {}
    for name in CODE:
        pkg, fname = name.split("/")
        data = pkgutil.get_data(PACKAGE + "." + pkg, fname)
        if data is None:
            raise HolderUnavailable("cannot read the holder's code (%s) from this collection" % name)
        out[name] = data
    return out


def unit_text(python, lib_dir):
    for value in (python, lib_dir):
        if not _UNIT_VALUE_OK.match(value or ""):
            raise HolderUnavailable("%r cannot be written into the holder's unit (an absolute path without spaces, "
                                    "quotes, backslashes, %%, colons or control characters)" % value)
    return UNIT % {"python": python, "lib_dir": os.path.normpath(lib_dir), "package": PACKAGE}


def _current(path, data):
    """True when `path` is a regular file of ours that nobody else can write, holding exactly `data`."""
    try:
        fd = host_paths.open_trusted_file(path)
    except OSError:
        return False  # missing, or unfit (a link, another owner, writable by others): written again
    with os.fdopen(fd, "rb") as f:
        return f.read() == data


def _make_dirs(path):
    """Every directory down to `path`, made 0755 where missing; each must be safe for root (UnsafePath)."""
    if host_paths.check_dir_chain(path):
        return
    _make_dirs(os.path.dirname(path))
    host_paths.make_own_dir(path, 0o755)


def install_code(lib_dir):
    """Write the holder's code files that are not current. True when one was written."""
    base = os.path.join(lib_dir, *PACKAGE.split("."))
    changed = False
    for name, data in sorted(code_files().items()):
        path = os.path.join(base, name)
        if _current(path, data):
            continue
        _make_dirs(os.path.dirname(path))
        atomic_file.write(path, data, 0o644)
        changed = True
    return changed


_systemctl = host_command.systemctl_checked


def ensure(python=None, lib_dir=layout.HOLDER_LIB_DIR, unit_path=layout.HOLDER_UNIT_PATH, runner=None,
           systemd_dir=SYSTEMD_RUN_DIR):
    """The holder installed, enabled and running. Returns True when anything had to change."""
    if not os.path.isdir(systemd_dir):
        raise HolderUnavailable("this host was not booted with systemd (no %s), which keeps the holder running"
                                % systemd_dir)
    runner = runner or host_command.systemctl
    unit = os.path.basename(unit_path)
    text = unit_text(python or sys.executable, lib_dir).encode("utf-8")
    code_changed = install_code(lib_dir)
    unit_changed = not _current(unit_path, text)
    if unit_changed:
        _make_dirs(os.path.dirname(unit_path))
        atomic_file.write(unit_path, text, 0o644)
        _systemctl(runner, ["daemon-reload"])
    changed = code_changed or unit_changed
    state = runner(["is-enabled", unit])[1].strip()
    if state != "enabled" and not state.startswith("masked"):
        _systemctl(runner, ["enable", unit])
        changed = True
    if code_changed or unit_changed:
        _systemctl(runner, ["restart", unit])
    elif runner(["is-active", unit])[1].strip() != "active":
        _systemctl(runner, ["start", unit])
        changed = True
    return changed
