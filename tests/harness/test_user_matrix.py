"""The user matrix (scripts/matrix.sh user, extensions/molecule/user/): its arguments are checked before
anything runs, its report carries the user's playbook, kernel state and hm_report, and the hm_failures
callback records a failed task's message. The real run on guests is documented in docs/harness.md."""
import json
import os
import subprocess
import sys

from harness import report

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MATRIX = os.path.join(TOP, "scripts", "matrix.sh")
SAMPLE = os.path.join(TOP, "tests", "user_matrix", "sample")


def matrix_user(*args, path_first=None):
    env = dict(os.environ)
    if path_first:
        env["PATH"] = path_first + os.pathsep + env["PATH"]
    return subprocess.run([MATRIX, "user"] + list(args), env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def tripwires(tmp_path):
    """A directory of stand-ins for what a run starts with (mktemp, tar, apt-get, molecule, git): each writes
    its name to ran.log, so the log says whether anything past the argument check ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ran.log"
    for tool in ("mktemp", "tar", "apt-get", "molecule", "git"):
        (bin_dir / tool).write_text("#!/bin/sh\necho %s >> %s\nexit 1\n" % (tool, log))
        (bin_dir / tool).chmod(0o755)
    return str(bin_dir), log


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    out = tmp_path / "report"
    cases = [
        (["--programs", str(tmp_path / "none"), "--playbook", "x.yml", "--out", str(out)], "not a directory"),
        (["--programs", str(tmp_path), "--playbook", str(tmp_path / "none.yml"), "--out", str(out)],
         "no such file"),
        (["--programs", str(tmp_path), "--playbook", os.path.join(SAMPLE, "playbook.yml")], "--out DIR"),
        (["--programs", str(tmp_path), "--playbook", os.path.join(SAMPLE, "playbook.yml"), "--out", str(out),
          "--guests", "bookworm,jessie"], "unknown guest 'jessie'"),
        (["--programs", str(tmp_path), "--playbook", os.path.join(SAMPLE, "playbook.yml"), "--out", str(out),
          "--guests", "sid,sid"], "a guest named twice"),
        (["--programs", str(tmp_path), "--playbook", os.path.join(SAMPLE, "playbook.yml"), "--out", str(out),
          "--verify", str(tmp_path / "v.yml")], "--verify"),
        (["--programs"], "--programs needs a value"),
        (["--bogus"], "unknown argument: --bogus"),
    ]
    bin_dir, log = tripwires(tmp_path)
    for args, message in cases:
        p = matrix_user(*args, path_first=bin_dir)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert message in p.stderr and "usage: scripts/matrix.sh user" in p.stderr, (args, p.stderr)
        assert not out.exists()
    assert not log.exists(), log.read_text()


def test_good_arguments_get_past_the_check(tmp_path):
    """The tripwires do fire: with good arguments the run starts (and the first stand-in stops it)."""
    bin_dir, log = tripwires(tmp_path)
    out = tmp_path / "report"
    p = matrix_user("--programs", SAMPLE, "--playbook", os.path.join(SAMPLE, "playbook.yml"), "--guests",
                    "bookworm,bullseye-lsm", "--out", str(out), path_first=bin_dir)
    assert p.returncode != 0 and log.exists(), p.stdout + p.stderr
    assert out.is_dir()


def write_user_run(tmp_path):
    """A run of scripts/matrix.sh user on two guests: bookworm passed, bullseye's playbook failed."""
    res = tmp_path / "results"
    res.mkdir()
    (tmp_path / "user.json").write_text(json.dumps({
        "programs": "/home/me/objs", "playbook": "/home/me/getpid.yml", "verify": None,
        "guests": ["bullseye", "bookworm"]}))
    features = {"tracepoint": {"supported": True, "probed": True}, "perf_link": {"supported": False}}
    for guest, release in (("bullseye", "5.10.0-32-cloud-amd64"), ("bookworm", "6.1.0-50-cloud-amd64")):
        (res / ("%s.converge.json" % guest)).write_text(json.dumps({
            "guest": guest, "suite": guest, "release": release, "lsm": ["lockdown"], "features": features,
            "programs": {}}))
    (res / "bookworm.state.json").write_text(json.dumps({
        "programs": [{"id": 31, "name": "count_getpid", "type_name": "tracepoint", "managed": True,
                      "managed_name": "getpid_count"},
                     {"id": 32, "name": "xdp_pass", "type_name": "xdp", "managed": True, "managed_name": "edge"},
                     {"id": 33, "name": "spare", "type_name": "xdp", "managed": True, "managed_name": "spare"}],
        "links": [{"id": 4, "prog_id": 31, "managed": True, "managed_name": "getpid_count"}],
        "interfaces": [{"ifname": "hm-a", "netns": "hm0", "xdp": {"prog_id": 32, "mode": "generic"},
                        "tc": {"ingress": [], "egress": []}, "tcx": None}]}))
    (res / "bullseye.state.json").write_text(json.dumps({"programs": [], "links": [], "interfaces": []}))
    (res / "bookworm.hm_report.json").write_text(json.dumps({"getpid_count": 104, "note": "a|b"}))
    ours = {"name": "Hypermesh user matrix: copy your objects into the guest and probe the kernel",
            "hosts": {"bookworm": {"ok": 3, "changed": 1, "failed": 0, "changed_tasks": ["Copy"],
                                   "failed_tasks": []}}}

    def play(host_recs):
        return {"plays": [ours, {"name": "getpid counter", "hosts": host_recs}]}
    (res / "plays-converge-1.json").write_text(json.dumps(play({
        "bookworm": {"ok": 5, "changed": 1, "failed": 0, "changed_tasks": ["Load, pin and attach getpid_count"],
                     "failed_tasks": []},
        "bullseye": {"ok": 0, "changed": 0, "failed": 1, "changed_tasks": [],
                     "failed_tasks": ["Load, pin and attach getpid_count"]}})))
    (res / "plays-converge.json").write_text(json.dumps(play({
        "bookworm": {"ok": 5, "changed": 0, "failed": 0, "changed_tasks": [], "failed_tasks": []}})))
    (res / "failures-converge-1.json").write_text(json.dumps([
        {"play": "getpid counter", "task": "Load, pin and attach getpid_count", "host": "bullseye",
         "msg": "tracepoint programs are not supported on kernel 5.10:\nneeds perf_link"}]))
    (res / "failures-converge.json").write_text("[]")
    (tmp_path / "instances.json").write_text(json.dumps([
        {"instance": "bookworm", "boot_seconds": 9.5, "accel": "tcg", "cmdline": ""},
        {"instance": "bullseye", "boot_seconds": 7.0, "accel": "tcg", "cmdline": ""}]))
    (tmp_path / "steps.json").write_text(json.dumps({"create": 20.0, "converge": 90.0, "total": 400}))


def test_user_report(tmp_path):
    write_user_run(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    rep = report.write(report.load_run(str(tmp_path)), str(out), generated="2026-12-02T00:00:00Z")
    assert list(rep["guests"]) == ["bullseye", "bookworm"]
    bw, bu = rep["guests"]["bookworm"], rep["guests"]["bullseye"]
    assert bw["attached"] == ["edge", "getpid_count"] and bw["loaded"] == ["edge", "getpid_count", "spare"]
    assert bw["counters"] == {"getpid_count": 104}
    assert bw["user"]["plays"]["converge"]["changed"] == 1  # ours (the copy) left out
    assert bw["user"]["plays"]["idempotence"]["changed"] == 0
    assert bw["user"]["plays"]["verify"] is None
    assert bu["programs"] == {} and bu["user"]["hm_report"] is None
    assert bu["user"]["failures"][0]["step"] == "converge"
    assert rep["user"]["playbook"] == "/home/me/getpid.yml"
    assert json.loads((out / "kernel-matrix.json").read_text()) == rep
    md = (out / "kernel-matrix.md").read_text()
    assert md.startswith("# Kernel matrix: getpid.yml\n")
    assert "| kernel | 5.10.0-32-cloud-amd64 | 6.1.0-50-cloud-amd64 |" in md
    assert "| getpid_count | - | attached (104) |" in md and "| spare | - | loaded |" in md
    assert ("- bullseye, converge, task Load, pin and attach getpid_count FAILED: tracepoint programs are not "
            "supported on kernel 5.10: needs perf_link") in md
    assert "| bookworm | 5 / 1 / 0 | 5 / 0 / 0 | - | Load, pin and attach getpid_count | none |" in md
    assert "| bullseye | 0 / 0 / 1 | - | - | - | converge: Load, pin and attach getpid_count |" in md
    assert "| getpid_count | - | 104 |" in md and "| note | - | a/b |" in md
    assert "| bookworm | - | tcg | 9.5 | lockdown |" in md


def test_a_guest_without_any_record_is_still_listed(tmp_path):
    write_user_run(tmp_path)
    os.remove(str(tmp_path / "results" / "bullseye.converge.json"))
    rep = report.to_json(report.load_run(str(tmp_path)))
    assert rep["guests"]["bullseye"]["release"] is None
    assert "kernel | ? | 6.1" in report.to_markdown(rep)


def test_default_report_has_no_user_sections(tmp_path):
    write_user_run(tmp_path)
    os.remove(str(tmp_path / "user.json"))
    rep = report.to_json(report.load_run(str(tmp_path)))
    assert "user" not in rep and "user" not in rep["guests"]["bookworm"]
    md = report.to_markdown(rep)
    assert md.startswith("# Kernel matrix\n") and "## Your playbook" not in md


def test_failures_callback_records_messages(tmp_path):
    """hm_failures under a real ansible-playbook run on localhost: a failed task and a failed loop item."""
    play = tmp_path / "converge.yml"
    play.write_text("""
- name: p
  hosts: localhost
  gather_facts: false
  tasks:
    - name: passes
      ansible.builtin.debug: {msg: fine}
    - name: loop
      ansible.builtin.fail: {msg: "item {{ item }} is bad"}
      loop: [1, 2]
      when: item == 2
""")
    env = dict(os.environ, HYPERMESH_RESULTS=str(tmp_path / "results"), ANSIBLE_CALLBACKS_ENABLED="hm_failures",
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(TOP, "extensions", "molecule", "user", "callback_plugins"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    p = subprocess.run([playbook, "-i", "localhost,", "-c", "local", str(play)], env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    failures = json.loads((tmp_path / "results" / "failures-converge.json").read_text())
    assert failures == [{"play": "p", "task": "loop", "host": "localhost", "msg": "item 2 is bad"}]


def test_converge_failed_so_no_idempotence_and_a_prepare_failure(tmp_path):
    """matrix.sh skips idempotence when converge failed (only *-converge-1.json then); prepare's failures show."""
    write_user_run(tmp_path)
    for name in ("plays-converge.json", "failures-converge.json"):
        os.remove(str(tmp_path / "results" / name))
    (tmp_path / "results" / "failures-prepare.json").write_text(json.dumps([
        {"play": "Prepare", "task": "Install from the copied .debs", "host": "bullseye", "msg": "E: broken"}]))
    rep = report.to_json(report.load_run(str(tmp_path)))
    assert rep["guests"]["bookworm"]["user"]["plays"]["idempotence"] is None
    assert [f["step"] for f in rep["guests"]["bullseye"]["user"]["failures"]] == ["converge", "prepare"]
    md = report.to_markdown(rep)
    assert "| bookworm | 5 / 1 / 0 | - | - |" in md
    assert "- bullseye, prepare, task Install from the copied .debs FAILED: E: broken" in md
