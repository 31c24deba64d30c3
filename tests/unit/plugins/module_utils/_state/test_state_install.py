"""state_install on temporary directories: the content-addressed objects (present, missing, damaged, refused
contents, other users' or writable files, links), the re-apply code (digest, current or not, replaced whole,
missing), the re-apply unit (its text, written only when it differs, enabled when it is not; systemctl replaced
by a runner given as an argument), and a run that lacks something changing nothing. Also: ebpf_state's
documentation agrees with the new options."""
import base64
import hashlib
import os
import stat

import pytest
import yaml

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_install as si
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params

needs_chown = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
OBJ = b"\x7fELF an object"
OBJ2 = b"\x7fELF another object"
CODE = {"_state/reapply.py": b"print('reapply')\n", "_state/state_engine.py": b"ENGINE = 1\n",
        "_common/lock.py": b"LOCK = 1\n"}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def b64(data):
    return base64.b64encode(data).decode("ascii")


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


class Runner(object):
    """systemctl: records the calls, answers is-enabled with `state`."""

    def __init__(self, state="disabled", fail=()):
        self.state = state
        self.fail = fail
        self.calls = []

    def __call__(self, args):
        self.calls.append(list(args))
        if args[0] in self.fail:
            return 1, "", "Failed to %s: boom" % args[0]
        if args[0] == "is-enabled":
            return (0 if self.state == "enabled" else 1), self.state + "\n", ""
        if args[0] == "enable":
            self.state = "enabled"
        return 0, "", ""


@pytest.fixture
def host(tmp_path):
    d = {"objects_dir": str(tmp_path / "state" / "objects"), "lib_dir": str(tmp_path / "lib"),
         "desired": str(tmp_path / "etc" / "desired.json"), "systemd": str(tmp_path / "run-systemd"),
         "unit": str(tmp_path / "systemd" / layout.REAPPLY_UNIT), "state": str(tmp_path / "state")}
    return d


def params(host, objects=(), code=None, persist=True, reapply_unit=True):
    return {"objects_dir": host["objects_dir"], "objects": list(objects), "reapply_code": code,
            "lib_dir": host["lib_dir"], "reapply_unit": reapply_unit, "persist": persist, "desired": host["desired"]}


def run(host, check_mode=False, runner=None, **kw):
    """What ebpf_state does with an Install, in its order: objects, then (after its commit) the code and unit."""
    inst = si.Install(params(host, **kw), state_dir=host["state"], runner=runner or Runner(),
                      python="/usr/bin/python3", systemd_dir=host["systemd"], unit_path=host["unit"])
    if inst.missing:
        return {"missing": inst.missing}
    installed = {"objects": inst.objects()}
    installed.update(inst.rest(check_mode))
    return {"installed": installed}


def code_option(files=None, with_files=True):
    files = CODE if files is None else files
    opt = {"digest": si.code_digest(files), "files": None}
    if with_files:
        opt["files"] = [{"name": n, "content": b64(c)} for n, c in sorted(files.items())]
    return opt


def tree(path):
    """{relative path: (mode, uid, content or None)} of everything below path (links not followed)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            content = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, path)] = (stat.S_IMODE(st.st_mode), st.st_uid, content)
    return out


# ---- objects ------------------------------------------------------------------------------------------------
def test_missing_object_without_content_is_listed_and_nothing_is_made(host):
    out = run(host, objects=[{"sha256": sha(OBJ)}])
    assert out == {"missing": {"objects": [sha(OBJ)], "code": False}}
    assert not os.path.exists(os.path.dirname(host["objects_dir"]))


def test_missing_object_is_written_root_0644_under_its_digest(host):
    out = run(host, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}])
    assert out == {"installed": {"objects": [sha(OBJ)], "code": False, "unit": False}}
    path = os.path.join(host["objects_dir"], sha(OBJ) + ".bpf.o")
    assert open(path, "rb").read() == OBJ and mode(path) == 0o644 and os.lstat(path).st_uid == os.geteuid()
    assert mode(host["objects_dir"]) == 0o755 and mode(os.path.dirname(host["objects_dir"])) == 0o755
    assert os.listdir(host["objects_dir"]) == [sha(OBJ) + ".bpf.o"]  # no temporary left


def test_intact_object_is_left_alone_and_needs_no_content(host):
    run(host, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}])
    path = os.path.join(host["objects_dir"], sha(OBJ) + ".bpf.o")
    before = os.lstat(path)
    out = run(host, objects=[{"sha256": sha(OBJ)}, {"sha256": sha(OBJ), "content": b64(OBJ)}])
    assert out["installed"]["objects"] == []
    assert os.path.samestat(os.lstat(path), before) and os.lstat(path).st_mtime_ns == before.st_mtime_ns


def test_objects_are_written_in_check_mode_too(host):
    out = run(host, check_mode=True, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}])
    assert out["installed"]["objects"] == [sha(OBJ)]
    assert si.object_problem(host["objects_dir"], sha(OBJ)) is None


def _damage(host, how):
    run(host, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}])
    path = os.path.join(host["objects_dir"], sha(OBJ) + ".bpf.o")
    if how == "content":
        with open(path, "wb") as f:
            f.write(b"truncated")
    elif how == "group-writable":
        os.chmod(path, 0o664)
    elif how == "other-writable":
        os.chmod(path, 0o646)
    elif how == "other-user":
        os.chown(path, 65534, 65534)
    elif how == "symlink":
        target = os.path.join(os.path.dirname(host["objects_dir"]), "planted")
        with open(target, "wb") as f:
            f.write(OBJ)
        os.unlink(path)
        os.symlink(target, path)
    elif how == "directory":
        os.unlink(path)
        os.mkdir(path)
    return path


@pytest.mark.parametrize("how", ["content", "group-writable", "other-writable",
                                 pytest.param("other-user", marks=needs_chown), "symlink", "directory"])
def test_damaged_object_is_missing_without_content_and_rewritten_with_it(host, how):
    path = _damage(host, how)
    assert si.object_problem(host["objects_dir"], sha(OBJ)) is not None
    before = tree(os.path.dirname(host["objects_dir"]))
    out = run(host, objects=[{"sha256": sha(OBJ)}])
    assert out == {"missing": {"objects": [sha(OBJ)], "code": False}}
    assert tree(os.path.dirname(host["objects_dir"])) == before  # left exactly as it was
    out = run(host, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}])
    assert out["installed"]["objects"] == [sha(OBJ)]
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and mode(path) == 0o644
    assert open(path, "rb").read() == OBJ and si.object_problem(host["objects_dir"], sha(OBJ)) is None
    if how == "symlink":  # the link was replaced, its target never written through
        planted = os.path.join(os.path.dirname(host["objects_dir"]), "planted")
        assert open(planted, "rb").read() == OBJ and not os.path.islink(path)


def test_content_with_another_digest_is_refused_and_nothing_changes(host):
    path = _damage(host, "content")
    before = tree(os.path.dirname(host["objects_dir"]))
    with pytest.raises(si.InstallError) as e:
        run(host, objects=[{"sha256": sha(OBJ2), "content": b64(OBJ2)},
                           {"sha256": sha(OBJ), "content": b64(OBJ2)}])
    assert sha(OBJ) in str(e.value) and sha(OBJ2) in str(e.value)
    assert tree(os.path.dirname(host["objects_dir"])) == before
    assert open(path, "rb").read() == b"truncated"


@pytest.mark.parametrize("obj", [{"sha256": "abc"}, {"sha256": sha(OBJ), "content": "not base64!"}])
def test_bad_object_input_is_refused(host, obj):
    with pytest.raises(si.InstallError):
        run(host, objects=[obj])
    assert not os.path.exists(os.path.dirname(host["objects_dir"]))


def test_objects_dir_that_is_a_link_or_writable_by_others_is_refused(host, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(os.path.dirname(host["objects_dir"]))
    os.symlink(str(elsewhere), host["objects_dir"])
    with pytest.raises(host_paths.UnsafePath):
        run(host, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}])
    assert os.listdir(str(elsewhere)) == []
    os.unlink(host["objects_dir"])
    os.mkdir(host["objects_dir"], 0o755)
    os.chmod(host["objects_dir"], 0o777)
    with pytest.raises(host_paths.UnsafePath):
        run(host, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}])
    assert os.listdir(host["objects_dir"]) == []


# ---- the re-apply code --------------------------------------------------------------------------------------
def test_code_digest_is_the_documented_one():
    text = "".join("%s %s\n" % (n, sha(CODE[n])) for n in sorted(CODE))
    assert si.code_digest(CODE) == sha(text.encode())
    assert si.code_digest({}) == sha(b"")


def code_path(host):
    return si.code_dir(host["lib_dir"])


def test_code_missing_without_files_changes_nothing(host):
    out = run(host, code=code_option(with_files=False))
    assert out == {"missing": {"objects": [], "code": True}}
    assert not os.path.exists(host["lib_dir"])


def test_code_installed_whole_then_current(host):
    out = run(host, code=code_option())
    assert out == {"installed": {"objects": [], "code": True, "unit": False}}
    top = code_path(host)
    assert si.code_names(top) == sorted(CODE) and sorted(os.listdir(top)) == ["_common", "_state"]
    for n, c in CODE.items():
        p = os.path.join(top, n)
        assert open(p, "rb").read() == c and mode(p) == 0o644 and os.lstat(p).st_uid == os.geteuid()
    d = top
    while d != os.path.dirname(host["lib_dir"]):
        assert mode(d) == 0o755 and os.lstat(d).st_uid == os.geteuid(), d
        d = os.path.dirname(d)
    assert si.installed_code(host["lib_dir"]) == (si.code_digest(CODE), None)
    assert os.listdir(os.path.dirname(top)) == ["module_utils"]  # nothing left beside it
    inode = os.lstat(top).st_ino
    out = run(host, code=code_option(with_files=False))
    assert out["installed"]["code"] is False and os.lstat(top).st_ino == inode
    out = run(host, code=code_option())
    assert out["installed"]["code"] is False and os.lstat(top).st_ino == inode


def _spoil(host, how, tmp_path):
    top = code_path(host)
    if how == "changed file":
        with open(os.path.join(top, "_state", "reapply.py"), "ab") as f:
            f.write(b"# more\n")
    elif how == "extra file":
        with open(os.path.join(top, "_state", "planted.py"), "wb") as f:
            f.write(b"import os\n")
    elif how == "pycache":
        os.mkdir(os.path.join(top, "_state", "__pycache__"))
    elif how == "flat file":  # the layout before the packages
        with open(os.path.join(top, "reapply.py"), "wb") as f:
            f.write(b"print('old')\n")
    elif how == "package of another user":
        os.chown(os.path.join(top, "_common"), 65534, 65534)
    elif how == "package writable by others":
        os.chmod(os.path.join(top, "_common"), 0o757)
    elif how == "package is a link":
        elsewhere = str(tmp_path / "common")
        os.rename(os.path.join(top, "_common"), elsewhere)
        os.symlink(elsewhere, os.path.join(top, "_common"))
    elif how == "file writable by others":
        os.chmod(os.path.join(top, "_state", "reapply.py"), 0o646)
    elif how == "dir writable by group":
        os.chmod(os.path.join(host["lib_dir"], "ansible_collections"), 0o775)
    elif how == "dir of another user":
        os.chown(os.path.dirname(top), 65534, 65534)
    elif how == "file of another user":
        os.chown(os.path.join(top, "_state", "state_engine.py"), 65534, 65534)
    elif how == "file is a link":
        target = str(tmp_path / "engine.py")
        with open(target, "wb") as f:
            f.write(CODE["_state/state_engine.py"])
        os.unlink(os.path.join(top, "_state", "state_engine.py"))
        os.symlink(target, os.path.join(top, "_state", "state_engine.py"))
    elif how == "lib_dir is a link":
        elsewhere = str(tmp_path / "elsewhere")
        os.rename(host["lib_dir"], elsewhere)
        os.symlink(elsewhere, host["lib_dir"])


@pytest.mark.parametrize("how", ["changed file", "extra file", "pycache", "flat file", "file writable by others",
                                 pytest.param("package of another user", marks=needs_chown),
                                 "package writable by others", "package is a link",
                                 "dir writable by group", pytest.param("dir of another user", marks=needs_chown),
                                 pytest.param("file of another user", marks=needs_chown), "file is a link",
                                 "lib_dir is a link"])
def test_code_not_current_is_missing_without_files_and_replaced_whole_with_them(host, how, tmp_path):
    run(host, code=code_option())
    _spoil(host, how, tmp_path)
    digest, why = si.installed_code(host["lib_dir"])
    assert digest != si.code_digest(CODE) and (digest is None) == (why is not None)
    out = run(host, code=code_option(with_files=False))
    assert out == {"missing": {"objects": [], "code": True}}
    out = run(host, code=code_option())
    assert out["installed"]["code"] is True
    assert si.installed_code(host["lib_dir"]) == (si.code_digest(CODE), None)
    assert si.code_names(code_path(host)) == sorted(CODE)
    assert not os.path.islink(host["lib_dir"])
    if how == "lib_dir is a link":  # set aside, never written through
        assert os.path.isdir(str(tmp_path / "elsewhere" / "ansible_collections"))
    if how == "file is a link":
        assert open(str(tmp_path / "engine.py"), "rb").read() == CODE["_state/state_engine.py"]
    if how == "package is a link":  # set aside with the old directory, never written through
        assert sorted(os.listdir(str(tmp_path / "common"))) == ["lock.py"]


def test_code_replaced_without_rename_exchange(host, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is not available: the old directory set aside, the new one renamed in."""
    run(host, code=code_option())
    monkeypatch.setattr(si, "_exchange", lambda a, b: False)
    files = {"_state/reapply.py": b"print('v2')\n"}
    assert run(host, code=code_option(files))["installed"]["code"] is True
    assert si.installed_code(host["lib_dir"]) == (si.code_digest(files), None)
    assert os.listdir(os.path.dirname(code_path(host))) == ["module_utils"]


def test_code_check_mode_predicts_and_writes_nothing(host):
    out = run(host, check_mode=True, code=code_option())
    assert out["installed"]["code"] is True and not os.path.exists(host["lib_dir"])


def test_code_only_with_persist(host):
    out = run(host, persist=False, code=code_option(with_files=False))
    assert out == {"installed": {"objects": [], "code": False, "unit": False}}


@pytest.mark.parametrize("code", [
    {"digest": si.code_digest(CODE), "files": [{"name": "_state/reapply.py", "content": b64(b"other")}]},
    {"digest": si.code_digest({"reapply.py": b""}), "files": [{"name": "reapply.py", "content": ""}]},
    {"digest": si.code_digest({"_a/../x.py": b""}), "files": [{"name": "_a/../x.py", "content": ""}]},
    {"digest": si.code_digest({"_a/b/x.py": b""}), "files": [{"name": "_a/b/x.py", "content": ""}]},
    {"digest": "12", "files": None},
    {"digest": si.code_digest({"../x.py": b""}), "files": [{"name": "../x.py", "content": ""}]},
    {"digest": si.code_digest({"a/x.py": b""}), "files": [{"name": "a/x.py", "content": ""}]},
    {"digest": si.code_digest({"_a/x.pyc": b""}), "files": [{"name": "_a/x.pyc", "content": ""}]},
])
def test_bad_code_input_is_refused(host, code):
    with pytest.raises(si.InstallError):
        run(host, code=code)
    assert not os.path.exists(host["lib_dir"])


# ---- the unit -----------------------------------------------------------------------------------------------
def test_unit_text():
    text = si.unit_text("/usr/bin/python3", "/usr/lib/hypermesh-ebpf", "/srv/hm-state",
                        "/etc/hypermesh-ebpf/desired.json")
    lines = text.splitlines()
    for line in ["ExecStart=/usr/bin/python3 -m ansible_collections.hypermesh.ebpf.plugins.module_utils._state.reapply "
                 "--desired /etc/hypermesh-ebpf/desired.json --state-dir /srv/hm-state",
                 "Environment=PYTHONPATH=/usr/lib/hypermesh-ebpf", "Environment=PYTHONDONTWRITEBYTECODE=1",
                 "Environment=LANG=C",
                 "LimitMEMLOCK=infinity", "After=sys-fs-bpf.mount network-online.target",
                 "Wants=sys-fs-bpf.mount network-online.target",
                 "ConditionPathExists=/etc/hypermesh-ebpf/desired.json", "Type=oneshot",
                 "WantedBy=multi-user.target"]:
        assert line in lines, line
    assert lines.index("[Unit]") < lines.index("[Service]") < lines.index("[Install]")
    assert not [line for line in lines if "HYPERMESH" in line]  # the state dir is an argument, not the environment


@pytest.mark.parametrize("bad", ["/a b", "/a\nExecStartPre=/bin/sh", "/a%n", "relative", "/a:b", '/a"b'])
def test_unit_text_refuses_paths_a_unit_cannot_hold(bad):
    with pytest.raises(si.InstallError):
        si.unit_text("/usr/bin/python3", bad, "/var/lib/hypermesh-ebpf", "/etc/desired.json")


def test_unit_written_when_it_differs_and_enabled_when_it_is_not(host):
    os.mkdir(host["systemd"])
    runner = Runner("disabled")
    out = run(host, runner=runner)
    assert out == {"installed": {"objects": [], "code": False, "unit": True}}
    assert runner.calls == [["is-enabled", layout.REAPPLY_UNIT], ["daemon-reload"], ["enable", layout.REAPPLY_UNIT]]
    text = si.unit_text("/usr/bin/python3", host["lib_dir"], host["state"], host["desired"])
    assert open(host["unit"]).read() == text and mode(host["unit"]) == 0o644
    # the same again: only asked
    before = os.lstat(host["unit"])
    runner.calls = []
    assert run(host, runner=runner)["installed"]["unit"] is False
    assert runner.calls == [["is-enabled", layout.REAPPLY_UNIT]]
    assert os.lstat(host["unit"]).st_mtime_ns == before.st_mtime_ns
    # another content (another lib_dir): written and reloaded, not enabled again
    runner.calls = []
    host["lib_dir"] = host["lib_dir"] + "2"
    assert run(host, runner=runner)["installed"]["unit"] is True
    assert runner.calls == [["is-enabled", layout.REAPPLY_UNIT], ["daemon-reload"]]
    assert "Environment=PYTHONPATH=%s\n" % host["lib_dir"] in open(host["unit"]).read()


def test_unit_check_mode_predicts_and_writes_nothing(host):
    os.mkdir(host["systemd"])
    runner = Runner("disabled")
    assert run(host, check_mode=True, runner=runner)["installed"]["unit"] is True
    assert runner.calls == [["is-enabled", layout.REAPPLY_UNIT]] and not os.path.exists(host["unit"])


def test_unit_a_damaged_file_is_written_again(host):
    os.mkdir(host["systemd"])
    run(host)
    os.chmod(host["unit"], 0o666)
    runner = Runner("enabled")
    assert run(host, runner=runner)["installed"]["unit"] is True
    assert mode(host["unit"]) == 0o644 and runner.calls[1:] == [["daemon-reload"]]


def test_unit_masked_is_left_masked(host):
    os.mkdir(host["systemd"])
    runner = Runner("masked")
    run(host, runner=runner)
    assert ["enable", layout.REAPPLY_UNIT] not in runner.calls


def test_unit_not_without_systemd_persist_or_reapply_unit(host):
    for kw, make in (({}, False), ({"persist": False}, True), ({"reapply_unit": False}, True)):
        if make and not os.path.isdir(host["systemd"]):
            os.mkdir(host["systemd"])
        runner = Runner()
        assert run(host, runner=runner, **kw)["installed"]["unit"] is False
        assert runner.calls == [] and not os.path.exists(host["unit"])


def test_unit_systemctl_failure_is_an_error(host):
    os.mkdir(host["systemd"])
    with pytest.raises(OSError) as e:
        run(host, runner=Runner("disabled", fail=("daemon-reload",)))
    assert "daemon-reload" in str(e.value) and "boom" in str(e.value)


# ---- the whole run ------------------------------------------------------------------------------------------
def test_anything_missing_means_nothing_is_done(host):
    os.mkdir(host["systemd"])
    runner = Runner()
    out = run(host, runner=runner, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}, {"sha256": sha(OBJ2)}],
              code=code_option())
    assert out == {"missing": {"objects": [sha(OBJ2)], "code": False}}
    out = run(host, runner=runner, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}],
              code=code_option(with_files=False))
    assert out == {"missing": {"objects": [], "code": True}}
    assert not os.path.exists(os.path.dirname(host["objects_dir"])) and not os.path.exists(host["lib_dir"])
    assert not os.path.exists(host["unit"]) and runner.calls == []
    out = run(host, runner=runner, objects=[{"sha256": sha(OBJ), "content": b64(OBJ)}, {"sha256": sha(OBJ2),
                                            "content": b64(OBJ2)}], code=code_option())
    assert out == {"installed": {"objects": sorted([sha(OBJ), sha(OBJ2)]), "code": True, "unit": True}}


# ---- ebpf_state's documentation -----------------------------------------------------------------------------
def _doc_options():
    from ansible_collections.hypermesh.ebpf.plugins.modules import ebpf_state
    return yaml.safe_load(ebpf_state.DOCUMENTATION)["options"]


def _same(doc, spec, where):
    assert set(doc) == set(spec), where
    for key, s in spec.items():
        d = doc[key]
        assert d["type"] == s["type"], (where, key)
        assert d.get("default") == s.get("default"), (where, key)
        assert bool(d.get("required")) == bool(s.get("required")), (where, key)
        assert d.get("elements") == s.get("elements"), (where, key)
        if s.get("options"):
            _same(d["suboptions"], s["options"], where + "." + key)


def test_documentation_of_the_new_options_matches_the_spec():
    doc = _doc_options()
    spec = state_params.ARGUMENT_SPEC
    assert set(doc) == set(spec)
    for key in ("objects_dir", "objects", "reapply_code", "lib_dir", "reapply_unit"):
        _same({key: doc[key]}, {key: spec[key]}, key)
    assert spec["objects_dir"]["default"] == layout.OBJECTS_DIR and spec["lib_dir"]["default"] == layout.LIB_DIR
    assert spec["objects"]["options"]["content"]["no_log"] is True
    assert spec["reapply_code"]["options"]["files"]["options"]["content"]["no_log"] is True
