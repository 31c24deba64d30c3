"""Run every benchmark under bench/ and print one table of ratios (ours / baseline, lower is better).

Each bench/bench_*.py defines `run()` returning a list of {"name", "ours_s", "baseline_s", "ratio", "target"}
(seconds; `target` is the highest acceptable ratio, or None), or of counts {"name", "ours_n", "baseline_n",
"max_n"} (e.g. module runs per host; `max_n` is the highest acceptable `ours_n`, or None; shown in the same
columns, the limit as "<=N"). Usage, as root from the repository root:

    .venv/bin/python bench/run.py [substring ...]     # only the bench files whose name contains a substring

Exit status 1 when a ratio misses its target.
"""
import glob
import importlib.util
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def load(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def host_mounts():
    """bpffs and tracefs, mounted as the integration tests mount them (a fresh machine may have neither)."""
    sys.path.insert(0, os.path.dirname(HERE))
    from tests.conftest import mounts
    mounts()


def main(argv):
    host_mounts()
    rows, failed = [], False
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        if argv and not any(a in os.path.basename(path) for a in argv):
            continue
        try:
            rows.extend(load(path).run())
        except Exception:
            traceback.print_exc()
            rows.append({"name": os.path.basename(path) + " (crashed)", "ours_s": None, "baseline_s": None,
                         "ratio": None, "target": None})
            failed = True
    print("%-44s %10s %10s %7s %7s  %s" % ("benchmark", "ours s", "base s", "ratio", "target", "ok"))
    for r in rows:
        if "ours_n" in r:
            ok = r["ours_n"] is not None and (r["max_n"] is None or r["ours_n"] <= r["max_n"])
            failed = failed or not ok
            print("%-44s %10s %10s %7s %7s  %s" % (
                r["name"], r["ours_n"] if r["ours_n"] is not None else "-",
                r["baseline_n"] if r["baseline_n"] is not None else "-", "-",
                "<=%d" % r["max_n"] if r["max_n"] is not None else "-", "yes" if ok else "NO"))
            continue
        ok = r["ratio"] is not None and (r["target"] is None or r["ratio"] <= r["target"])
        failed = failed or not ok
        print("%-44s %10s %10s %7s %7s  %s" % (
            r["name"], "%.3f" % r["ours_s"] if r["ours_s"] is not None else "-",
            "%.3f" % r["baseline_s"] if r["baseline_s"] is not None else "-",
            "%.2f" % r["ratio"] if r["ratio"] is not None else "-",
            "%.2f" % r["target"] if r["target"] is not None else "-", "yes" if ok else "NO"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
