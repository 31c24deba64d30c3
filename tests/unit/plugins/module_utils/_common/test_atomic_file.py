"""atomic_file: the new content replaces the old whole; a failed write leaves the old file and no temporary."""
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file


def test_write_replaces_the_content_with_the_mode(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    atomic_file.write(str(path), b"new", 0o640)
    assert path.read_bytes() == b"new" and (os.stat(str(path)).st_mode & 0o777) == 0o640
    assert os.listdir(str(tmp_path)) == ["f.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_file.write(str(path), u"not bytes")
    assert path.read_text() == "old" and os.listdir(str(tmp_path)) == ["f.json"]
