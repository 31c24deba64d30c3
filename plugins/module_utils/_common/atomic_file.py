# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One job: replace a file's content atomically (a temporary file in the same directory, then rename), so a
reader never sees half of it and a failure leaves the old file and no temporary behind. No fsync (see the
callers for why). Importable without ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import tempfile


def write(path, data, mode=0o600):
    """Write `data` (bytes) to `path` through a temporary file and rename. The file gets `mode` (set on the open
    descriptor: never the mode of the file it replaces) and is ours: a link at `path` is replaced, not followed."""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
