# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a system tool from module_utils: the one place that starts a process.

module_utils are importable without ansible (the boot-time re-apply runs them), so AnsibleModule.run_command is
not there. The tool gets a fixed environment (LANG=C, the system PATH only): root never runs a binary found
through a directory a user could have put first on PATH. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import subprocess

ENV = {"LANG": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def run(argv):
    """(returncode, stdout, stderr) of `argv`, decoded; OSError "cannot run <tool>: ..." when it cannot start."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                                env=dict(ENV))
    except OSError as exc:
        raise OSError(exc.errno, "cannot run %s: %s" % (argv[0], exc.strerror))
    out, err = proc.communicate()
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def systemctl(args):
    """(returncode, stdout, stderr) of systemctl `args` (the default runner of the callers that take one)."""
    return run(["systemctl"] + list(args))


def systemctl_checked(runner, args):
    """stdout of runner(args) (systemctl's, or a test's stand-in); OSError with systemctl's message if it failed."""
    rc, out, err = runner(args)
    if rc != 0:
        raise OSError(errno.EIO, "systemctl %s: %s" % (" ".join(args), (err or out).strip() or "exit %d" % rc))
    return out
