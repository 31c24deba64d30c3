"""Fixtures of the _program unit tests."""
import os
import shutil

import pytest


@pytest.fixture
def pin_root(request):
    """A fresh directory of this test module's own in bpffs (0700), removed with what is pinned in it."""
    path = "/sys/fs/bpf/hm-unit-%s-%d" % (request.module.__name__.rsplit(".", 1)[-1], os.getpid())
    os.mkdir(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)
