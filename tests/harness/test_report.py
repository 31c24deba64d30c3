"""The report: per kernel its release, the probed features, what loaded, attached, was refused."""
import json

from harness import report

CONVERGE = {
    "guest": "bullseye", "suite": "bullseye", "release": "5.10.0-32-cloud-amd64",
    "lsm": ["lockdown", "capability", "yama", "apparmor", "tomoyo"],
    "features": {"lsm": {"supported": False, "probed": True, "reason": "bpf not active", "min_kernel": "5.7"},
                 "xdp": {"supported": True, "probed": True, "reason": "loads", "min_kernel": "4.8"}},
    "programs": {
        "xdp_counter": {"feature": "xdp", "outcome": "attached", "message": "", "prog_id": 5},
        "lsm_file_open": {"feature": "lsm", "outcome": "refused",
                          "message": "lsm programs are not supported on kernel 5.10.0-32-cloud-amd64: ..."},
    },
}


def write_run(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bullseye.converge.json").write_text(json.dumps(CONVERGE))
    (tmp_path / "results" / "bullseye.verify.json").write_text(
        json.dumps({"xdp_counter": {"before": 0, "after": 21}}))
    (tmp_path / "instances.json").write_text(json.dumps(
        [{"instance": "bullseye", "boot_seconds": 14.2, "accel": "tcg", "cmdline": ""}]))
    (tmp_path / "steps.json").write_text(json.dumps({"create": 30.0, "total": 600}))


def test_load_run_merges_converge_verify_and_boot(tmp_path):
    write_run(tmp_path)
    [r] = report.load_run(str(tmp_path))
    assert r["boot_seconds"] == 14.2 and r["accel"] == "tcg"
    assert r["programs"]["xdp_counter"]["counter"] == 21
    assert r["steps"]["total"] == 600


def test_json_and_markdown(tmp_path):
    write_run(tmp_path)
    out = tmp_path / "docs"
    out.mkdir()
    rep = report.write(report.load_run(str(tmp_path)), str(out), generated="2026-11-26T00:00:00Z")
    g = rep["guests"]["bullseye"]
    assert g["release"] == "5.10.0-32-cloud-amd64"
    assert g["loaded"] == ["xdp_counter"] and g["attached"] == ["xdp_counter"]
    assert list(g["refused"]) == ["lsm_file_open"]
    assert g["features"]["lsm"]["supported"] is False
    assert json.loads((out / "kernel-matrix.json").read_text()) == rep
    md = (out / "kernel-matrix.md").read_text()
    assert "| lsm | no |" in md and "| xdp | yes |" in md
    assert "| xdp_counter | attached (21) |" in md
    assert "| lsm_file_open | refused |" in md


def test_guest_order():
    rows = [{"guest": g} for g in ("sid", "custom", "bullseye-lsm", "bullseye")]
    ordered = sorted(rows, key=lambda r: report._rank(r["guest"]))
    assert [r["guest"] for r in ordered] == ["bullseye", "bullseye-lsm", "sid", "custom"]


ROLLOUT = {
    "guest": "bullseye",
    "rollout1": {"seconds": 300.0, "changed": 1, "module_runs": 2,
                 "changed_tasks": ["Apply the desired state on the host (one transaction)"],
                 "kernel": {"programs": {"r_tc": {"prog_id": 40}}, "problems": []}},
    "rollout2": {"seconds": 250.0, "changed": 0, "ok": 2, "module_runs": 1, "changed_tasks": []},
    "reboot": {"seconds": 71, "reapply": ["ActiveState=active", "ExecMainStatus=0", "Result=success", "--- journal"],
               "kernel": {"programs": {"r_tc": {"prog_id": 7}, "r_blocklist": {"prog_id": 8}},
                          "blocked": {"before": 0, "after": 20, "key": "10.199.1.1"}, "problems": []}},
    "prune": {"seconds": 200.0, "changed": 1, "module_runs": 1, "changed_tasks": [],
              "kernel": {"absent": {"r_rawtp": {"pins_left": []}},
                         "problems": ["r_rawtp: program 9 still loaded"]}},
}


def test_rollout_record_and_phases(tmp_path):
    write_run(tmp_path)
    (tmp_path / "results" / "bullseye.rollout.json").write_text(json.dumps(ROLLOUT))
    (tmp_path / "results" / "plays-side_effect.json").write_text(json.dumps(
        {"plays": [{"name": "Roll eBPF programs out (canary, then batches)", "seconds": 300.0},
                   {"name": "Rollout 1 - it changed the guests", "seconds": 8.5}]}))
    out = tmp_path / "docs"
    out.mkdir()
    rep = report.write(report.load_run(str(tmp_path)), str(out), generated="2026-11-26T00:00:00Z")
    ro = rep["guests"]["bullseye"]["rollout"]
    assert ro["rollout1"]["changed"] == 1 and ro["rollout2"]["changed"] == 0
    assert [ro[k]["module_runs"] for k in ("rollout1", "rollout2", "prune")] == [2, 1, 1]
    assert ro["reboot"]["programs_back"] == ["r_blocklist", "r_tc"]
    assert ro["reboot"]["reapply"] == "ActiveState=active ExecMainStatus=0"
    assert ro["prune"]["removed"] == ["r_rawtp"]
    assert rep["rollout_phases"] == [["Roll eBPF programs out (canary, then batches) [rollout 1]", 300.0],
                                     ["Rollout 1 - it changed the guests", 8.5]]
    md = (out / "kernel-matrix.md").read_text()
    assert ("| guest | rollout 1 changed | rollout 1 module runs | rollout 2 changed | rollout 2 module runs "
            "| reboot (s) |") in md
    assert ("| bullseye | 1 | 2 | 0 | 1 | 71 | ActiveState=active ExecMainStatus=0 | r_blocklist, r_tc | 0 -> 20 "
            "| 1 | r_rawtp | r_rawtp: program 9 still loaded |") in md
    assert "| Roll eBPF programs out (canary, then batches) [rollout 1] | 300.0 |" in md
    assert "| all plays | 308.5 |" in md


def test_rollout_record_without_module_runs(tmp_path):
    """A record of a run before module runs were counted: "-" in those columns."""
    write_run(tmp_path)
    old = {k: dict(v) for k, v in ROLLOUT.items() if isinstance(v, dict)}
    for k in ("rollout1", "rollout2", "prune"):
        old[k].pop("module_runs")
    (tmp_path / "results" / "bullseye.rollout.json").write_text(json.dumps(old))
    md = report.to_markdown(report.to_json(report.load_run(str(tmp_path))))
    assert "| bullseye | 1 | - | 0 | - | 71 |" in md


def test_no_rollout_no_section(tmp_path):
    write_run(tmp_path)
    out = tmp_path / "docs"
    out.mkdir()
    rep = report.write(report.load_run(str(tmp_path)), str(out))
    assert "rollout" not in rep["guests"]["bullseye"]
    assert "## Rollout" not in (out / "kernel-matrix.md").read_text()
