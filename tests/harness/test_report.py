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
    "rollout1": {"seconds": 300.0, "changed": 9, "changed_tasks": ["Load, pin and attach the programs"],
                 "kernel": {"programs": {"r_tc": {"prog_id": 40}}, "problems": []}},
    "rollout2": {"seconds": 250.0, "changed": 0, "ok": 20, "changed_tasks": []},
    "reboot": {"seconds": 71, "reapply": ["ActiveState=active", "ExecMainStatus=0", "Result=success", "--- journal"],
               "kernel": {"programs": {"r_tc": {"prog_id": 7}, "r_blocklist": {"prog_id": 8}},
                          "blocked": {"before": 0, "after": 20, "key": "10.199.1.1"}, "problems": []}},
    "prune": {"seconds": 200.0, "changed": 3, "changed_tasks": [],
              "kernel": {"absent": {"r_rawtp": {"pins_left": []}},
                         "problems": ["r_rawtp: program 9 still loaded"]}},
}


def test_rollout_record_and_phases(tmp_path):
    write_run(tmp_path)
    (tmp_path / "results" / "bullseye.rollout.json").write_text(json.dumps(ROLLOUT))
    (tmp_path / "results" / "plays-side_effect.json").write_text(json.dumps(
        {"plays": [{"name": "Roll eBPF programs out (canary, then batches)", "seconds": 300.0}]}))
    out = tmp_path / "docs"
    out.mkdir()
    rep = report.write(report.load_run(str(tmp_path)), str(out), generated="2026-11-26T00:00:00Z")
    ro = rep["guests"]["bullseye"]["rollout"]
    assert ro["rollout1"]["changed"] == 9 and ro["rollout2"]["changed"] == 0
    assert ro["reboot"]["programs_back"] == ["r_blocklist", "r_tc"]
    assert ro["reboot"]["reapply"] == "ActiveState=active ExecMainStatus=0"
    assert ro["prune"]["removed"] == ["r_rawtp"]
    assert rep["rollout_phases"] == [["Roll eBPF programs out (canary, then batches) [rollout 1]", 300.0]]
    md = (out / "kernel-matrix.md").read_text()
    assert ("| bullseye | 9 | 0 | 71 | ActiveState=active ExecMainStatus=0 | r_blocklist, r_tc | 0 -> 20 "
            "| r_rawtp | r_rawtp: program 9 still loaded |") in md
    assert "| Roll eBPF programs out (canary, then batches) [rollout 1] | 300.0 |" in md


def test_no_rollout_no_section(tmp_path):
    write_run(tmp_path)
    out = tmp_path / "docs"
    out.mkdir()
    rep = report.write(report.load_run(str(tmp_path)), str(out))
    assert "rollout" not in rep["guests"]["bullseye"]
    assert "## Rollout" not in (out / "kernel-matrix.md").read_text()
