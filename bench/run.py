"""Run every benchmark under bench/ and print one table of ratios (ours / baseline, lower is better).

Each bench/bench_*.py defines `run()` returning a list of {"name", "ours_s", "baseline_s", "ratio", "target"}
(seconds; `target` is the highest acceptable ratio, or None). Usage, as root from the repository root:

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


def main(argv):
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
