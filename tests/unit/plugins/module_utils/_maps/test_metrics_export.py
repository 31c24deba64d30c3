"""metrics_export: the Prometheus text of fake programs and maps (HELP/TYPE, labels escaped, struct members as
`field`, non-numbers left out, big maps as a count), the textfile directory checks, the atomic write."""
import io
import os

import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import metrics_export as me

PROG = {"id": 42, "name": "xdp_count", "type_name": "xdp", "tag": "0a1b2c3d4e5f6a7b", "run_cnt": 7,
        "run_time_ns": 1500000000, "recursion_misses": 0}


def _counter(values=None, error=None):
    maps = [{"name": "xdp_stats", "entries": 1,
             "values": values if values is not None else [("0", {"packets": 12, "bytes": 3400})]}]
    if error:
        maps.append({"name": "broken", "error": error})
    return {"name": "counter", "info": dict(PROG), "maps": maps}


def _samples(text):
    """{series (name and labels as written): value text} of the non-comment lines."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = value
    return out


def test_render_programs_and_struct_fields():
    text = me.render([_counter()], "edge-1", True, 1700000000.5)
    s = _samples(text)
    assert s['hypermesh_ebpf_program_runs_total{host="edge-1",program="counter"}'] == "7"
    assert s['hypermesh_ebpf_program_run_time_seconds_total{host="edge-1",program="counter"}'] == "1.5"
    assert s['hypermesh_ebpf_program_info{host="edge-1",program="counter",prog_id="42",prog_name="xdp_count",'
             'prog_type="xdp",tag="0a1b2c3d4e5f6a7b"}'] == "1"
    assert s['hypermesh_ebpf_map_value{host="edge-1",program="counter",map="xdp_stats",key="0",field="packets"}'] \
        == "12"
    assert s['hypermesh_ebpf_map_value{host="edge-1",program="counter",map="xdp_stats",key="0",field="bytes"}'] \
        == "3400"
    assert s['hypermesh_ebpf_map_entries{host="edge-1",program="counter",map="xdp_stats"}'] == "1"
    assert s['hypermesh_ebpf_stats_enabled{host="edge-1"}'] == "1"
    assert s['hypermesh_ebpf_export_errors{host="edge-1"}'] == "0"
    assert s['hypermesh_ebpf_export_timestamp_seconds{host="edge-1"}'] == "1700000000.5"
    assert text.endswith("\n")


def test_every_metric_has_one_help_and_type_before_its_samples():
    text = me.render([_counter(), dict(_counter(), name="other")], "h", False, 0)
    lines = text.splitlines()
    seen = []
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[i + 1].startswith("# TYPE %s " % name)
            assert name not in seen
            seen.append(name)
        elif not line.startswith("#"):
            assert line.split("{")[0] == seen[-1], line      # samples follow their own HELP/TYPE block
    assert "# TYPE hypermesh_ebpf_program_runs_total counter" in lines
    assert "# TYPE hypermesh_ebpf_map_value gauge" in lines


def test_plain_values_have_no_field_label_and_non_numbers_are_left_out():
    prog = _counter(values=[("1", 5), ("2", "a string"), ("3", None), ("4", True), ("5", [1, {"x": 2}])])
    s = _samples(me.render([prog], "h", False, 0))
    base = 'hypermesh_ebpf_map_value{host="h",program="counter",map="xdp_stats",'
    assert s[base + 'key="1"}'] == "5"
    assert s[base + 'key="4"}'] == "1"
    assert s[base + 'key="5",field="[0]"}'] == "1"
    assert s[base + 'key="5",field="[1].x"}'] == "2"
    assert not [k for k in s if 'key="2"' in k or 'key="3"' in k]


def test_nested_struct_fields():
    assert me.flatten({"a": {"b": 1, "c": [2, 3]}, "d": "x"}) == [("a.b", 1), ("a.c[0]", 2), ("a.c[1]", 3)]
    assert me.flatten(2.5) == [("", 2.5)]


def test_label_values_are_escaped():
    assert me.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    prog = _counter(values=[('we"ird\\key\n', 1)])
    text = me.render([prog], 'ho"st', False, 0)
    assert 'host="ho\\"st"' in text
    assert 'key="we\\"ird\\\\key\\n"' in text
    assert len([ln for ln in text.splitlines() if "hypermesh_ebpf_map_value{" in ln]) == 1


def test_a_map_over_the_limit_exports_its_count_only():
    prog = {"name": "bl", "info": dict(PROG), "maps": [{"name": "blocklist", "entries": 5000, "values": None}]}
    s = _samples(me.render([prog], "h", False, 0))
    assert s['hypermesh_ebpf_map_entries{host="h",program="bl",map="blocklist"}'] == "5000"
    assert s['hypermesh_ebpf_map_values_exported{host="h",program="bl",map="blocklist"}'] == "0"
    assert not [k for k in s if k.startswith("hypermesh_ebpf_map_value{")]


def test_errors_are_counted_and_the_rest_still_rendered():
    bad_prog = {"name": "gone", "info": None, "maps": [], "error": "UnsafePath: ..."}
    s = _samples(me.render([_counter(error="MapError: no"), bad_prog], "h", False, 0))
    assert s['hypermesh_ebpf_export_errors{host="h"}'] == "2"
    assert s['hypermesh_ebpf_program_runs_total{host="h",program="counter"}'] == "7"
    assert not [k for k in s if 'map="broken"' in k or 'program="gone"' in k]


def test_read_program_reads_maps_with_their_key_format(monkeypatch, tmp_path):
    class Live(object):
        def __init__(self, pin_root, name):
            self.dir = os.path.join(pin_root, name)
            self.prog = dict(PROG)
            self.maps = {"verdicts": 3, "blocklist": 4}
    calls = []

    def read_map(path, fmt, limit):
        calls.append((path, fmt, limit))
        if path.endswith("verdicts"):
            raise me.pinned_map.MapError("cannot open it")
        return {"entries": 1, "values": [("10.0.0.1", 3)]}
    monkeypatch.setattr(me.program_state, "check_dirs", lambda root, name: None)
    monkeypatch.setattr(me.program_state, "Live", Live)
    monkeypatch.setattr(me, "read_map", read_map)
    rec = me.read_program("/pins", "bl", {"bl/blocklist": "ipv4"}, 10)
    assert calls == [("/pins/bl/maps/blocklist", "ipv4", 10), ("/pins/bl/maps/verdicts", "auto", 10)]
    assert rec["maps"][0] == {"name": "blocklist", "entries": 1, "values": [("10.0.0.1", 3)]}
    assert rec["maps"][1]["error"] == "MapError: cannot open it"


def test_read_program_records_an_unsafe_directory(monkeypatch):
    def refuse(root, name):
        raise me.host_paths.UnsafePath("/pins/x", "is a symbolic link")
    monkeypatch.setattr(me.program_state, "check_dirs", refuse)
    rec = me.read_program("/pins", "x")
    assert rec["info"] is None and "symbolic link" in rec["error"]


def test_write_text_is_atomic_and_0644(tmp_path):
    out = tmp_path / "textfile"
    out.mkdir(mode=0o755)
    me.write_text(str(out), "hypermesh_ebpf.prom", "a 1\n")
    me.write_text(str(out), "hypermesh_ebpf.prom", "a 2\n")
    assert os.listdir(str(out)) == ["hypermesh_ebpf.prom"]         # no temporary left behind
    assert (out / "hypermesh_ebpf.prom").read_text() == "a 2\n"
    assert os.stat(str(out / "hypermesh_ebpf.prom")).st_mode & 0o777 == 0o644


def test_a_link_at_the_file_is_replaced_not_followed(tmp_path):
    out = tmp_path / "textfile"
    out.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    os.symlink(str(victim), str(out / "hypermesh_ebpf.prom"))
    me.write_text(str(out), "hypermesh_ebpf.prom", "a 1\n")
    assert victim.read_text() == "keep\n"
    assert not os.path.islink(str(out / "hypermesh_ebpf.prom"))


def test_out_dir_refusals(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    link = tmp_path / "link"
    os.symlink(str(real), str(link))
    with pytest.raises(me.ExportError, match="symbolic link"):
        me.write_text(str(link), "x.prom", "a 1\n")
    with pytest.raises(me.ExportError, match="symbolic link"):
        me.write_text(str(link) + "/", "x.prom", "a 1\n")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(str(open_dir), 0o777)
    with pytest.raises(me.ExportError, match="writable by group or others"):
        me.write_text(str(open_dir), "x.prom", "a 1\n")
    with pytest.raises(me.ExportError, match="absolute"):
        me.write_text("relative/dir", "x.prom", "a 1\n")
    with pytest.raises(me.ExportError, match="cannot open"):
        me.write_text(str(tmp_path / "missing"), "x.prom", "a 1\n")
    for bad in ("x.txt", "../x.prom", ".x.prom"):
        with pytest.raises(me.ExportError, match=".prom"):
            me.write_text(str(real), bad, "a 1\n")
    assert os.listdir(str(real)) == [] and os.listdir(str(open_dir)) == []


def test_main_writes_and_reports_read_errors(monkeypatch, tmp_path):
    out = tmp_path / "textfile"
    out.mkdir(mode=0o755)
    got = {}

    def read_all(pin_root, state_dir, key_formats, limit):
        got.update(pin_root=pin_root, key_formats=key_formats, limit=limit)
        return [_counter(error="MapError: no")]
    monkeypatch.setattr(me, "read_all", read_all)
    err = io.StringIO()
    rc = me.main(["--out", str(out), "--pin-root", "/pins", "--host", "h1", "--key-format", "bl/blocklist=ipv4",
                  "--max-entries", "5"], out=err)
    assert rc == 1 and "counter/broken: MapError: no" in err.getvalue()
    assert got == {"pin_root": "/pins", "key_formats": {"bl/blocklist": "ipv4"}, "limit": 5}
    assert 'program="counter"' in (out / "hypermesh_ebpf.prom").read_text()


def test_main_refuses_bad_arguments_and_writes_nothing(monkeypatch, tmp_path):
    out = tmp_path / "textfile"
    out.mkdir(mode=0o755)
    monkeypatch.setattr(me, "read_all", lambda *a: [])
    err = io.StringIO()
    assert me.main(["--out", str(out), "--key-format", "blocklist=ipv4"], out=err) == 2
    assert "PROGRAM/MAP=FORMAT" in err.getvalue()
    assert me.main(["--out", str(out), "--key-format", "a/b=dotted"], out=err) == 2
    assert os.listdir(str(out)) == []
    assert me.main(["--out", str(out)], out=err) == 0
    assert os.listdir(str(out)) == ["hypermesh_ebpf.prom"]


def test_stats_enabled_reads_the_sysctl(tmp_path):
    f = tmp_path / "bpf_stats_enabled"
    f.write_text("1\n")
    assert me.stats_enabled(str(f)) is True
    f.write_text("0\n")
    assert me.stats_enabled(str(f)) is False
    assert me.stats_enabled(str(tmp_path / "missing")) is False
