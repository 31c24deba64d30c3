"""holder_service.ensure(): the holder's code and unit written under temporary directories, systemctl replaced by a
fake that records its arguments and answers is-enabled / is-active like systemd would. What is checked: the files
on disk (bytes, modes) and the exact systemctl calls, first run, a second run, a changed or unsafe code file."""
import os
import stat

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import holder_service as hs

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5))
REPO_MODULE_UTILS = os.path.join(TOP, "plugins", "module_utils")
UNIT = "hypermesh-ebpf-holder.service"
PYTHON = "/usr/bin/python3"


class FakeSystemctl(object):
    """systemctl as a list of calls; `enabled`/`active` are what systemd would answer, changed by enable/start."""

    def __init__(self, enabled="disabled", active="inactive", fail=None):
        self.calls = []
        self.enabled = enabled
        self.active = active
        self.fail = fail  # a verb that answers rc 1

    def __call__(self, args):
        args = list(args)
        self.calls.append(args)
        verb = args[0]
        if verb == self.fail:
            return 1, "", "Failed to %s %s: Unit not found.\n" % (verb, args[-1])
        if verb == "is-enabled":
            return (0 if self.enabled == "enabled" else 1), self.enabled + "\n", ""
        if verb == "is-active":
            return (0 if self.active == "active" else 3), self.active + "\n", ""
        if verb == "enable":
            self.enabled = "enabled"
        if verb in ("start", "restart"):
            self.active = "active"
        return 0, "", ""

    def changes(self):
        """The calls that change something (the queries left out)."""
        return [c for c in self.calls if c[0] not in ("is-enabled", "is-active")]


@pytest.fixture
def where(tmp_path):
    systemd_dir = tmp_path / "run-systemd-system"
    systemd_dir.mkdir()
    return {"python": PYTHON, "lib_dir": str(tmp_path / "lib"), "unit_path": str(tmp_path / "units" / UNIT),
            "systemd_dir": str(systemd_dir)}


def installed(lib_dir, name):
    return os.path.join(lib_dir, "ansible_collections", "hypermesh", "ebpf", "plugins", "module_utils", name)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_first_run_installs_code_and_unit_then_enables_and_restarts(where):
    runner = FakeSystemctl()
    assert hs.ensure(runner=runner, **where) is True
    for name in hs.CODE:
        path = installed(where["lib_dir"], name)
        assert read(path) == read(os.path.join(REPO_MODULE_UTILS, name)), name
        assert mode(path) == 0o644 and os.lstat(path).st_uid == os.geteuid()
    directory = os.path.dirname(installed(where["lib_dir"], "_program/holder.py"))
    while directory != os.path.dirname(where["lib_dir"]):
        assert mode(directory) == 0o755, directory
        directory = os.path.dirname(directory)
    unit = read(where["unit_path"]).decode("utf-8")
    assert mode(where["unit_path"]) == 0o644
    assert "ExecStart=%s -S -m ansible_collections.hypermesh.ebpf.plugins.module_utils._program.holder\n" % PYTHON in unit
    assert "Environment=PYTHONPATH=%s\n" % where["lib_dir"] in unit
    assert "Restart=always\n" in unit and "StartLimitIntervalSec=0\n" in unit
    assert "WantedBy=multi-user.target\n" in unit
    assert runner.changes() == [["daemon-reload"], ["enable", UNIT], ["restart", UNIT]]


def test_second_run_changes_nothing(where):
    hs.ensure(runner=FakeSystemctl(), **where)
    stamps = dict((n, os.lstat(installed(where["lib_dir"], n))) for n in hs.CODE)
    unit_stamp = os.lstat(where["unit_path"])
    runner = FakeSystemctl(enabled="enabled", active="active")
    assert hs.ensure(runner=runner, **where) is False
    assert runner.calls == [["is-enabled", UNIT], ["is-active", UNIT]]
    for name, st in stamps.items():
        assert os.lstat(installed(where["lib_dir"], name)).st_ino == st.st_ino, name  # not rewritten
    assert os.lstat(where["unit_path"]).st_ino == unit_stamp.st_ino


def test_a_changed_code_file_is_rewritten_and_the_service_restarted(where):
    hs.ensure(runner=FakeSystemctl(), **where)
    path = installed(where["lib_dir"], "_program/holder.py")
    with open(path, "ab") as f:
        f.write(b"\nimport os; os.system('id')\n")
    runner = FakeSystemctl(enabled="enabled", active="active")
    assert hs.ensure(runner=runner, **where) is True
    assert read(path) == read(os.path.join(REPO_MODULE_UTILS, "_program/holder.py"))
    assert runner.changes() == [["restart", UNIT]]  # the unit did not change: no daemon-reload


def test_a_code_file_others_can_write_is_rewritten(where):
    hs.ensure(runner=FakeSystemctl(), **where)
    path = installed(where["lib_dir"], "_kernel/perf.py")
    os.chmod(path, 0o666)  # same bytes, but anyone could have changed them before the next start
    runner = FakeSystemctl(enabled="enabled", active="active")
    assert hs.ensure(runner=runner, **where) is True
    assert mode(path) == 0o644
    assert read(path) == read(os.path.join(REPO_MODULE_UTILS, "_kernel/perf.py"))
    assert runner.changes() == [["restart", UNIT]]


def test_a_changed_unit_is_reloaded_and_restarted(where):
    hs.ensure(runner=FakeSystemctl(), **where)
    with open(where["unit_path"], "w") as f:
        f.write("[Service]\nExecStart=/bin/true\n")
    runner = FakeSystemctl(enabled="enabled", active="active")
    assert hs.ensure(runner=runner, **where) is True
    assert read(where["unit_path"]) == hs.unit_text(PYTHON, where["lib_dir"]).encode("utf-8")
    assert runner.changes() == [["daemon-reload"], ["restart", UNIT]]


def test_a_stopped_holder_is_started_not_restarted(where):
    hs.ensure(runner=FakeSystemctl(), **where)
    runner = FakeSystemctl(enabled="enabled", active="failed")
    assert hs.ensure(runner=runner, **where) is True
    assert runner.changes() == [["start", UNIT]]


def test_a_masked_unit_is_not_enabled(where):
    hs.ensure(runner=FakeSystemctl(), **where)
    runner = FakeSystemctl(enabled="masked", active="active")
    assert hs.ensure(runner=runner, **where) is False
    assert runner.changes() == []


def test_a_failing_systemctl_is_an_error_with_its_message(where):
    with pytest.raises(OSError, match="systemctl restart %s: Failed to restart" % UNIT):
        hs.ensure(runner=FakeSystemctl(fail="restart"), **where)


def test_without_systemd_nothing_is_written(where, tmp_path):
    runner = FakeSystemctl()
    where["systemd_dir"] = str(tmp_path / "no-such-dir")
    with pytest.raises(hs.HolderUnavailable, match="not booted with systemd"):
        hs.ensure(runner=runner, **where)
    assert runner.calls == []
    assert not os.path.exists(where["lib_dir"]) and not os.path.exists(where["unit_path"])


@pytest.mark.parametrize("python, lib_dir", [
    ("/opt/my python/bin/python3", "/usr/lib/hypermesh-ebpf-holder"),
    ("python3", "/usr/lib/hypermesh-ebpf-holder"),
    ("/usr/bin/python3", "/usr/lib/hm%holder"),
    ("/usr/bin/python3", "/usr/lib/hm\nExecStartPre=/bin/sh"),
])
def test_unit_text_refuses_what_a_unit_file_would_split(python, lib_dir):
    with pytest.raises(hs.HolderUnavailable, match="cannot be written into the holder's unit"):
        hs.unit_text(python, lib_dir)


def test_a_refused_python_writes_nothing(where):
    runner = FakeSystemctl()
    where["python"] = "/opt/my python/bin/python3"
    with pytest.raises(hs.HolderUnavailable):
        hs.ensure(runner=runner, **where)
    assert runner.calls == [] and not os.path.exists(where["lib_dir"])


def test_code_files_are_this_collections(where):
    files = hs.code_files()
    assert sorted(files) == sorted(hs.CODE)
    for name, data in files.items():
        assert data == read(os.path.join(REPO_MODULE_UTILS, name)), name


def test_the_installed_code_alone_runs_the_holder(where, tmp_path):
    """The holder starts from lib_dir only (its unit's PYTHONPATH): CODE lists every module it imports."""
    import subprocess
    import sys
    hs.ensure(runner=FakeSystemctl(), **where)
    script = ("import sys\n"
              "from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import holder\n"
              "mods = [m.__file__ for n, m in sorted(sys.modules.items()) if n.startswith('ansible_collections.')\n"
              "        and getattr(m, '__file__', None)]\n"
              "print('\\n'.join(mods))\n")
    env = {"PYTHONPATH": where["lib_dir"], "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C", "PATH": os.environ["PATH"]}
    proc = subprocess.run([sys.executable, "-S", "-c", script], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    assert installed(where["lib_dir"], "_program/holder.py") in loaded
    assert all(path.startswith(where["lib_dir"] + os.sep) for path in loaded), loaded
    usage = subprocess.run([sys.executable, "-S", "-m", hs.PACKAGE + "._program.holder", "--no-such-option"],
                           env=env, cwd=str(tmp_path), capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "--held-dir" in usage.stderr, usage.stderr  # started, refused the option


def test_every_file_of_the_holder_is_shipped_with_the_module():
    """Ansible ships a module with the module_utils its imports reach (AnsiballZ's finder reads the imports);
    code_files() reads the holder's files from that payload, so each of CODE must be reachable from
    holder_service's imports (a file missing there failed every held attachment in the guests)."""
    import ast
    base = os.path.join(os.path.dirname(hs.__file__), "..")
    prefix = hs.PACKAGE + "."
    seen, todo = set(), ["_program.holder_service"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        with open(os.path.join(base, *name.split(".")) + ".py") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
                mod = node.module[len(prefix):]
                todo.extend(mod + "." + a.name if "." not in mod else mod for a in node.names)
    shipped = set(n.replace(".", "/") + ".py" for n in seen)
    missing = [c for c in hs.CODE if not c.endswith("__init__.py") and c not in shipped]
    assert not missing, missing
