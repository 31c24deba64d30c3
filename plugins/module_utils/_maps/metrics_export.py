# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One job: render the managed programs and their pinned maps as Prometheus text for node_exporter's textfile
collector, and write it whole into the textfile directory.

Run by hypermesh-ebpf-metrics.service (role ebpf_metrics) on a timer:

    PYTHONPATH=/usr/lib/hypermesh-ebpf \
    python3 -m ansible_collections.hypermesh.ebpf.plugins.module_utils._maps.metrics_export \
        --out /var/lib/prometheus/node-exporter [--pin-root DIR] [--host NAME] [--key-format PROG/MAP=FMT] ...

What it reads, with the collection's own readers (no second map reader, no second bpf() binding):
- the managed programs: program_state.managed_names() (a directory under the pin root AND a state record of
  ours), each checked with program_state.check_dirs() before anything under it is read; program_state.Live()
  for the pinned program (its bpf_prog_info: run_cnt, run_time_ns, recursion_misses) and maps;
- every pinned map of a program: pinned_map.PinnedMap (read-only) and pinned_map.read_decoded(labels=True),
  keys labelled as ebpf_map_info entries_as=dict labels them (BTF, or --key-format), per-CPU values summed.

Series (each with the labels host and program; map series add map, key and, for struct members, field):
    hypermesh_ebpf_program_info{...,prog_id,prog_name,prog_type,tag} 1
    hypermesh_ebpf_program_runs_total, hypermesh_ebpf_program_run_time_seconds_total,
    hypermesh_ebpf_program_recursion_misses_total   (as the kernel reports them: 0 while BPF stats are off)
    hypermesh_ebpf_stats_enabled                    (kernel.bpf_stats_enabled)
    hypermesh_ebpf_map_entries, hypermesh_ebpf_map_value, hypermesh_ebpf_map_values_exported
    hypermesh_ebpf_export_errors, hypermesh_ebpf_export_timestamp_seconds
Only numbers are exported: a value that is not one (a string, raw bytes shown as hex) is left out. A map with
more entries than --max-entries exports its entry count only (values_exported 0), so a big blocklist cannot
flood Prometheus with series.

The file is written through atomic_file (temporary file in the same directory, rename; mode 0644), inside
the textfile directory opened component by component with O_NOFOLLOW: a symbolic link anywhere in the path is
refused, and the directory must be root's and writable by no one else (Debian's /var/lib/prometheus above it
belongs to the prometheus user, who could swap the directory for a link; the open descriptor makes that moot).
Exit status: 0 written, 1 written but something could not be read (see the errors series and stderr), 2 not
written. Importable without ansible; runs on Python 3.9+.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import errno
import os
import socket
import stat
import sys
import time

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import host_paths
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_codec
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state

DEFAULT_OUT_NAME = "hypermesh_ebpf.prom"
DEFAULT_MAX_ENTRIES = 1024
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

# name -> (type, help)
METRICS = (
    ("hypermesh_ebpf_program_info", "gauge", "A program managed by hypermesh.ebpf and pinned under the pin root."),
    ("hypermesh_ebpf_program_runs_total", "counter",
     "Times the program ran (bpf_prog_info run_cnt; counts only while BPF statistics are on)."),
    ("hypermesh_ebpf_program_run_time_seconds_total", "counter",
     "Time the program ran, in seconds (bpf_prog_info run_time_ns; counts only while BPF statistics are on)."),
    ("hypermesh_ebpf_program_recursion_misses_total", "counter",
     "Runs the kernel skipped because the program was already running on that CPU (recursion_misses)."),
    ("hypermesh_ebpf_stats_enabled", "gauge", "1 when the sysctl kernel.bpf_stats_enabled is on."),
    ("hypermesh_ebpf_map_entries", "gauge", "Entries in the pinned map."),
    ("hypermesh_ebpf_map_values_exported", "gauge",
     "1 when the map's values are exported, 0 when it has more entries than the exporter's limit."),
    ("hypermesh_ebpf_map_value", "gauge",
     "A numeric value of a map entry (per-CPU maps: the sum over CPUs; struct members: the field label)."),
    ("hypermesh_ebpf_export_errors", "gauge", "Programs or maps the exporter could not read in its last run."),
    ("hypermesh_ebpf_export_timestamp_seconds", "gauge", "When the exporter last wrote this file (Unix time)."),
)


class ExportError(Exception):
    """The textfile directory cannot be used, or an argument is wrong; the message says which and why."""


# ---------------------------------------------------------------- text format

def escape_label(value):
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def flatten(value, field=""):
    """[(field, number)] of a decoded value: a number as is, struct members as `a`, nested ones as `a.b`,
    array items as `a[0]`; anything that is not a number is left out."""
    if isinstance(value, bool):
        return [(field, int(value))]
    if isinstance(value, (int, float)):
        return [(field, value)]
    out = []
    if isinstance(value, dict):
        for key in value:
            out.extend(flatten(value[key], "%s.%s" % (field, key) if field else str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(flatten(item, "%s[%d]" % (field, i)))
    return out


def _labels(pairs):
    return "{" + ",".join('%s="%s"' % (k, escape_label(v)) for k, v in pairs if v is not None and v != "") + "}"


def _program_samples(host, prog):
    """(metric, labels, value) of one program record (see read_program)."""
    base = [("host", host), ("program", prog["name"])]
    out = []
    info = prog.get("info")
    if info:
        out.append(("hypermesh_ebpf_program_info",
                    base + [("prog_id", info.get("id")), ("prog_name", info.get("name")),
                            ("prog_type", info.get("type_name")), ("tag", info.get("tag"))], 1))
        out.append(("hypermesh_ebpf_program_runs_total", base, info.get("run_cnt", 0)))
        out.append(("hypermesh_ebpf_program_run_time_seconds_total", base, info.get("run_time_ns", 0) / 1e9))
        if "recursion_misses" in info:
            out.append(("hypermesh_ebpf_program_recursion_misses_total", base, info["recursion_misses"]))
    for m in prog.get("maps", []):
        mbase = base + [("map", m["name"])]
        if m.get("error"):
            continue
        out.append(("hypermesh_ebpf_map_entries", mbase, m["entries"]))
        out.append(("hypermesh_ebpf_map_values_exported", mbase, 0 if m.get("values") is None else 1))
        for key, value in m.get("values") or []:
            for field, number in flatten(value):
                out.append(("hypermesh_ebpf_map_value", mbase + [("key", key), ("field", field)], number))
    return out


def render(programs, host, stats_enabled, now):
    """The Prometheus text of `programs` (records as read_program makes them), one HELP/TYPE block per metric."""
    samples = [("hypermesh_ebpf_stats_enabled", [("host", host)], 1 if stats_enabled else 0)]
    errors = 0
    for prog in programs:
        samples.extend(_program_samples(host, prog))
        errors += (1 if prog.get("error") else 0) + sum(1 for m in prog.get("maps", []) if m.get("error"))
    samples.append(("hypermesh_ebpf_export_errors", [("host", host)], errors))
    samples.append(("hypermesh_ebpf_export_timestamp_seconds", [("host", host)], round(now, 3)))
    by_name = {}
    for name, labels, value in samples:
        by_name.setdefault(name, []).append("%s%s %s" % (name, _labels(labels), format_number(value)))
    lines = []
    for name, kind, text in METRICS:
        if name not in by_name:
            continue
        lines.append("# HELP %s %s" % (name, escape_help(text)))
        lines.append("# TYPE %s %s" % (name, kind))
        lines.extend(by_name[name])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- reading the kernel

def read_map(path, key_format="auto", max_entries=DEFAULT_MAX_ENTRIES):
    """{"entries": n, "values": [(key label, decoded value)] or None when over max_entries} of a pinned map."""
    with pinned_map.PinnedMap(path) as pm:
        keys, values, _per_cpu = pinned_map.read_decoded(pm, key_format, "auto", labels=True)
    if len(keys) > max_entries:
        return {"entries": len(keys), "values": None}
    return {"entries": len(keys), "values": sorted(zip(keys, values), key=lambda kv: kv[0])}


def read_program(pin_root, name, key_formats=None, max_entries=DEFAULT_MAX_ENTRIES):
    """{"name", "info" (bpf_prog_info of the pinned program or None), "maps": [{"name", ...read_map, "error"}],
    "error"} of one managed program; a failure is recorded in "error" rather than raised."""
    record = {"name": name, "info": None, "maps": []}
    try:
        program_state.check_dirs(pin_root, name)
        live = program_state.Live(pin_root, name)
    except (OSError, ValueError) as e:
        record["error"] = str(e)
        return record
    record["info"] = live.prog
    for map_name in sorted(live.maps):
        item = {"name": map_name}
        fmt = (key_formats or {}).get("%s/%s" % (name, map_name), "auto")
        try:
            item.update(read_map(os.path.join(live.dir, layout.PIN_MAPS, map_name), fmt, max_entries))
        except Exception as e:  # one odd map must not hide the others (MapError, CodecError, OSError)
            item["error"] = "%s: %s" % (type(e).__name__, e)
        record["maps"].append(item)
    return record


def read_all(pin_root, state_dir=None, key_formats=None, max_entries=DEFAULT_MAX_ENTRIES):
    """read_program() of every managed program under pin_root (program_state.managed_names)."""
    host_paths.check_dir_chain(pin_root)
    return [read_program(pin_root, name, key_formats, max_entries)
            for name in program_state.managed_names(pin_root, state_dir)]


def stats_enabled(path=STATS_SYSCTL):
    try:
        with open(path) as f:
            return f.read().strip() not in ("", "0")
    except (IOError, OSError):
        return False


# ---------------------------------------------------------------- writing

def open_out_dir(path):
    """A descriptor of directory `path`, opened from / one component at a time with O_NOFOLLOW (a symbolic link
    anywhere is refused); the directory must be ours and writable by no one else."""
    if not os.path.isabs(path):
        raise ExportError("--out %s: give an absolute path" % path)
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in [p for p in path.split("/") if p]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ExportError("--out %s: %s is a symbolic link or not a directory; refusing it"
                                      % (path, part))
                raise ExportError("--out %s: cannot open %s: %s" % (path, part, os.strerror(e.errno or 0)))
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()):
            raise ExportError("--out %s is owned by uid %d, not by root: refusing to write there" % (path, st.st_uid))
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise ExportError("--out %s is writable by group or others (mode %04o): refusing to write there"
                              % (path, stat.S_IMODE(st.st_mode)))
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_text(out_dir, name, text):
    """Replace <out_dir>/<name> with `text` (mode 0644) through atomic_file, inside the directory held open by
    open_out_dir (through /proc/self/fd: the path cannot be redirected once the descriptor is held)."""
    if not name.endswith(".prom") or "/" in name or name.startswith("."):
        raise ExportError("--name %s: a file name ending in .prom (node_exporter reads only those), no '/'" % name)
    fd = open_out_dir(out_dir)
    try:
        atomic_file.write("/proc/self/fd/%d/%s" % (fd, name), text.encode("utf-8"), 0o644)
    finally:
        os.close(fd)


def _key_formats(items):
    fmts = map_codec.FORMATS
    out = {}
    for item in items or []:
        target, sep, fmt = item.partition("=")
        if not sep or target.count("/") != 1 or fmt not in fmts:
            raise ExportError("--key-format %s: write PROGRAM/MAP=FORMAT, FORMAT one of %s" % (item, ", ".join(fmts)))
        out[target] = fmt
    return out


def _parser():
    p = argparse.ArgumentParser(prog="hypermesh-ebpf-metrics",
                                description="Write the counters of the eBPF programs managed by hypermesh.ebpf "
                                            "for node_exporter's textfile collector.")
    p.add_argument("--out", required=True, help="the textfile directory (node_exporter's "
                                                "--collector.textfile.directory)")
    p.add_argument("--name", default=DEFAULT_OUT_NAME, help="file name in it (default %(default)s)")
    p.add_argument("--pin-root", default=layout.PIN_ROOT, help="bpffs directory of the programs (%(default)s)")
    p.add_argument("--state-dir", default=layout.STATE_DIR, help="state records' directory (%(default)s)")
    p.add_argument("--host", default=None, help="value of the host label (default: this host's name)")
    p.add_argument("--key-format", action="append", default=[], metavar="PROGRAM/MAP=FORMAT",
                   help="label the keys of one map in this format (e.g. blocklist/blocklist=ipv4)")
    p.add_argument("--max-entries", type=int, default=DEFAULT_MAX_ENTRIES,
                   help="export the values of maps with at most this many entries (default %(default)s)")
    return p


def main(argv=None, out=sys.stderr):
    args = _parser().parse_args(argv)
    try:
        key_formats = _key_formats(args.key_format)
        programs = read_all(args.pin_root, args.state_dir, key_formats, args.max_entries)
        text = render(programs, args.host or socket.gethostname(), stats_enabled(), time.time())
        write_text(args.out, args.name, text)
    except (ExportError, OSError) as e:
        out.write("hypermesh-ebpf-metrics: %s\n" % e)
        return 2
    failed = 0
    for prog in programs:
        for what, error in [(prog["name"], prog.get("error"))] + [
                ("%s/%s" % (prog["name"], m["name"]), m.get("error")) for m in prog["maps"]]:
            if error:
                failed += 1
                out.write("hypermesh-ebpf-metrics: %s: %s\n" % (what, error))
    return 1 if failed else 0


if __name__ == "__main__":
    # the command of hypermesh-ebpf-metrics.service, not a module: its exit status is the unit's result
    sys.exit(main())  # pylint: disable=ansible-bad-function
