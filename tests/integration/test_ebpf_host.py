"""The role ebpf_host through real ansible-playbook on localhost, with the modules of ansible.posix it uses.

Every run is inside a private mount namespace made for the test (`unshare --mount`): bpffs unmounted there
first, /etc/sysctl.d and /etc/security/limits.d bind-mounted from temp directories, the fstab a temp file; the
host's own mount table and /etc are never touched. The sysctls the role sets live (kernel.bpf_stats_enabled)
are the host's: their values are put back after each test. This machine has no systemd, so the role takes the
path of hosts without it (an fstab line).
  check mode: every change reported, none made -> for real: bpffs mounted, sysctl set and written, fstab line,
  memlock file; again: nothing changed (and its module runs counted); check mode again: nothing to change; a
  sysctl dropped from the list is taken out of the file -> refused input (unknown sysctl, bad value, a
  /sys/fs/bpf hidden under another file system): a clear error and nothing changed.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS, TOP, needs_root

pytestmark = needs_root

PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
FILE = "60-hypermesh-ebpf.conf"  # in /etc/sysctl.d and /etc/security/limits.d
SET = "Set the sysctls now and at boot (only what differs; the file holds exactly the keys asked)"
STATS = "/proc/sys/kernel/bpf_stats_enabled"
JIT = "/proc/sys/net/core/bpf_jit_enable"
OPTS = "rw,nosuid,nodev,noexec,relatime,mode=700"

HOST_PLAY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: hypermesh.ebpf.ebpf_host
"""


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module", autouse=True)
def posix_collection():
    """ansible.posix next to the collection (scripts/bootstrap.sh puts it there): without it nothing here runs."""
    manifest = os.path.join(COLLECTIONS, "ansible_collections", "ansible", "posix", "MANIFEST.json")
    assert os.path.exists(manifest), "no ansible.posix in %s: run scripts/bootstrap.sh" % COLLECTIONS


@pytest.fixture
def stats_restored():
    """The host's kernel.bpf_stats_enabled, put back after the test; yields the value the test sets."""
    before = _read(STATS).strip()
    try:
        yield 0 if before == "1" else 1
    finally:
        _write(STATS, before + "\n")


class Namespace(object):
    """Runs of the role, one after another, inside one private mount namespace (see the module docstring)."""

    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.sysctl_d = os.path.join(self.tmp, "sysctl.d")
        self.limits_d = os.path.join(self.tmp, "limits.d")
        os.mkdir(self.sysctl_d)
        os.mkdir(self.limits_d)
        self.fstab = _write(os.path.join(self.tmp, "fstab"), "# test fstab\n")
        self.play = _write(os.path.join(self.tmp, "host.yml"), HOST_PLAY)
        # the managed host's Python, counting the module runs (one process each)
        self.python = _write(os.path.join(self.tmp, "python"),
                             '#!/bin/sh\necho run >> "$HM_MODULE_RUNS"\nexec %s "$@"\n' % sys.executable)
        os.chmod(self.python, 0o755)

    def run(self, runs, setup=()):
        """runs: [(extra vars dict, check mode)]; setup: shell lines run in the namespace first.
        Returns per run {rc, doc (ansible.posix.json), stderr, mounts (/sys/fs/bpf lines after it), sysctl (the
        sysctl.d file after it), module_runs}."""
        lines = ["set -e",
                 # bpffs may be mounted more than once on top of itself (each mount hides the one below)
                 "while grep -q ' /sys/fs/bpf ' /proc/self/mounts; do umount -l /sys/fs/bpf; done",
                 "mount --bind %s /etc/sysctl.d" % self.sysctl_d,
                 "mount --bind %s /etc/security/limits.d" % self.limits_d] + list(setup)
        for i, (extra, check) in enumerate(runs):
            extra = dict(extra, ebpf_host_fstab=self.fstab)
            argv = [PLAYBOOK, "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + self.python,
                    "-e", "'%s'" % json.dumps(extra), self.play] + (["--check"] if check else [])
            p = os.path.join(self.tmp, "run%d" % i)
            lines += [": > %s.runs" % p,
                      "HM_MODULE_RUNS=%s.runs %s > %s.json 2> %s.err && echo 0 > %s.rc || echo $? > %s.rc"
                      % (p, " ".join(argv), p, p, p, p),
                      "grep ' /sys/fs/bpf ' /proc/self/mounts > %s.mounts || true" % p,
                      "cat %s/%s > %s.sysctl 2>/dev/null || true" % (self.sysctl_d, FILE, p)]
        script = _write(os.path.join(self.tmp, "inner.sh"), "\n".join(lines) + "\n")
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1", LANG="C")
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", script],
                              capture_output=True, text=True, env=env, cwd=TOP, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = []
        for i in range(len(runs)):
            p = os.path.join(self.tmp, "run%d" % i)
            text = _read(p + ".json")
            try:
                doc = json.loads(text)
            except ValueError:
                raise AssertionError("no JSON from run %d:\n%s\n%s" % (i, text[-3000:], _read(p + ".err")[-3000:]))
            out.append({"rc": int(_read(p + ".rc")), "doc": doc, "stderr": _read(p + ".err"),
                        "mounts": _read(p + ".mounts"), "sysctl": _read(p + ".sysctl"), "module_runs": len(_read(p + ".runs").splitlines())})
        return out

    def files(self):
        return sorted(os.listdir(self.sysctl_d)), sorted(os.listdir(self.limits_d)), _read(self.fstab)


def changed_tasks(doc):
    """Names of the tasks that reported a change (a loop's changed items one each, with the item)."""
    out = []
    for play in doc["plays"]:
        for task in play["tasks"]:
            name = task["task"]["name"].split(" : ", 1)[-1]  # without the role's prefix
            res = task["hosts"].get("localhost", {})
            if "results" in res:
                out += ["%s [%s]" % (name, r.get("item")) for r in res["results"] if r.get("changed")]
            elif res.get("changed"):
                out.append(name)
    return out


def failures(doc):
    return "\n".join("%s: %s" % (t["task"]["name"], r.get("msg")) for p in doc["plays"] for t in p["tasks"]
                     for r in t["hosts"].values() if r.get("failed"))


def stats(run):
    return run["doc"]["stats"]["localhost"]


def test_check_mode_reports_every_change_and_makes_none(tmp_path, stats_restored):
    ns = Namespace(tmp_path)
    before = _read(STATS)
    (run,) = ns.run([({"ebpf_host_memlock": "raise",
                       "ebpf_host_sysctls": {"kernel.bpf_stats_enabled": stats_restored}}, True)])
    assert run["rc"] == 0, failures(run["doc"]) + run["stderr"]
    changed = changed_tasks(run["doc"])
    assert any(c.startswith("Mount bpffs now") for c in changed), changed
    assert any(c.startswith("Set the sysctls") and "kernel.bpf_stats_enabled" in c for c in changed), changed
    assert any(c.startswith("Write the persistent configuration") for c in changed), changed
    # nothing happened: bpffs still unmounted in the namespace, the live value, the files
    assert run["mounts"] == ""
    assert _read(STATS) == before
    assert ns.files() == ([], [], "# test fstab\n")


def test_mounts_sets_writes_then_changes_nothing(tmp_path, stats_restored):
    ns = Namespace(tmp_path)
    want = stats_restored
    jit = int(_read(JIT))  # asked at its live value: written to the file, the JIT left as it is
    both = {"ebpf_host_packages": False, "ebpf_host_memlock": "raise",
            "ebpf_host_sysctls": {"kernel.bpf_stats_enabled": want, "net.core.bpf_jit_enable": jit}}
    one = dict(both, ebpf_host_sysctls={"kernel.bpf_stats_enabled": want})
    first, second, check, dropped = ns.run([(both, False), (both, False), (both, True), (one, False)])
    for i, run in enumerate((first, second, check, dropped)):
        assert run["rc"] == 0 and stats(run)["failures"] == 0, \
            "run %d: %s%s" % (i, failures(run["doc"]), run["stderr"])
    # first run: bpffs mounted with the fstab line, the sysctl set now and both written, the memlock file
    changed = changed_tasks(first["doc"])
    assert len(changed) == 4 and stats(first)["changed"] == 3, changed  # 3 tasks, the sysctl one with 2 items
    assert [c for c in changed if c.startswith("Set the sysctls")] == [
        SET + " [net.core.bpf_jit_enable]", SET + " [kernel.bpf_stats_enabled]"], changed
    assert first["sysctl"] == "net.core.bpf_jit_enable=%d\nkernel.bpf_stats_enabled=%d\n" % (jit, want)
    assert first["mounts"].split()[:3] == ["bpf", "/sys/fs/bpf", "bpf"], first["mounts"]
    assert "mode=700" in first["mounts"]
    assert _read(STATS).strip() == str(want)
    lines = [line.split() for line in _read(ns.fstab).splitlines() if " /sys/fs/bpf " in line]
    assert lines == [["bpf", "/sys/fs/bpf", "bpf", OPTS, "0", "0"]], _read(ns.fstab)
    assert _read(ns.fstab).startswith("# test fstab\n")
    assert _read(os.path.join(ns.limits_d, FILE)).endswith("root - memlock unlimited\n* - memlock unlimited\n")
    # second run and check mode: nothing to change; the steady state's module runs: facts, the mount table,
    # the two directories, the memlock file (copy: stat, file), the fstab line (no systemd here), 3 sysctls
    assert stats(second)["changed"] == 0, changed_tasks(second["doc"])
    assert second["module_runs"] == 10, second["module_runs"]
    assert stats(check)["changed"] == 0, changed_tasks(check["doc"])
    assert second["mounts"] == check["mounts"] == first["mounts"]
    # the key left out is taken out of the file; the other stays
    assert changed_tasks(dropped["doc"]) == [SET + " [net.core.bpf_jit_enable]"]
    assert dropped["sysctl"] == "kernel.bpf_stats_enabled=%d\n" % want
    assert int(_read(JIT)) == jit
    # the host itself: its /etc/sysctl.d and its bpffs
    assert not os.path.exists("/etc/sysctl.d/" + FILE)
    assert any(line.split()[1] == "/sys/fs/bpf" for line in open("/proc/self/mounts"))


@pytest.mark.parametrize("sysctls,message", [
    ({"kernel.panic": 1}, "kernel.panic"),
    ({"kernel.bpf_stats_enabled": 2}, "kernel.bpf_stats_enabled must be one of: 0, 1"),
])
def test_bad_sysctl_refused_before_anything_changes(tmp_path, stats_restored, sysctls, message):
    ns = Namespace(tmp_path)
    before = _read(STATS)
    (run,) = ns.run([({"ebpf_host_memlock": "raise", "ebpf_host_sysctls": sysctls}, False)])
    assert run["rc"] != 0
    assert message in failures(run["doc"]), failures(run["doc"])
    assert stats(run)["changed"] == 0
    assert run["mounts"] == "" and _read(STATS) == before
    assert ns.files() == ([], [], "# test fstab\n")


def test_bpffs_hidden_under_another_file_system_refused(tmp_path):
    ns = Namespace(tmp_path)
    (run,) = ns.run([({"ebpf_host_memlock": "raise"}, False)], setup=["mount -t tmpfs -o size=1m hm-test /sys/fs/bpf"])
    assert run["rc"] != 0
    assert "/sys/fs/bpf is a tmpfs mount, not bpffs" in failures(run["doc"]), failures(run["doc"])
    assert stats(run)["changed"] == 0
    assert run["mounts"].split()[:3] == ["hm-test", "/sys/fs/bpf", "tmpfs"]
    assert ns.files() == ([], [], "# test fstab\n")
