"""python3 -m harness COMMAND ...

  build [SUITE...]                 build (or find cached) guest images; default: all four suites
  up --state DIR GUEST...          boot guests (GUEST from guests.py, or `custom`), wait for SSH, write
                                   DIR/instances.json and print it
  down --state DIR [GUEST...]      stop guests, remove their overlays; default: every guest in DIR
  check-clean --state DIR          after down: fail if a qemu, an overlay or a forwarded port is left
  report --run RUN --out DOCS      docs/kernel-matrix.json and .md from a matrix run (scripts/matrix.sh)
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

from harness import guests, images, qemu, report
from harness.accel import VERDICT_FILE, Accel, mode_from_env


def log(msg):
    """Progress on stderr, and appended to $HYPERMESH_PROGRESS (matrix.sh shows it while Ansible runs us)."""
    line = "[%s] %s\n" % (time.strftime("%H:%M:%S"), msg)
    sys.stderr.write(line)
    sys.stderr.flush()
    progress = os.environ.get("HYPERMESH_PROGRESS")
    if progress:
        with open(progress, "a") as f:
            f.write(line)


def cmd_build(args):
    suites = args.suites or guests.SUITES
    cache = images.cache_dir()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {s: pool.submit(images.build, s, cache, log) for s in suites}
        failed = False
        for suite, fut in futures.items():
            try:
                m = fut.result()
                log("image %s: %s, kernel %s, %s" % (suite, "cached" if m["cached"] else "built",
                                                     m["release"], m["path"]))
            except Exception as e:  # noqa: BLE001 - report every suite, then fail
                log("image %s: FAILED: %s" % (suite, e))
                failed = True
    return 1 if failed else 0


def make_key(statedir):
    key = os.path.join(statedir, "id_ed25519")
    if not os.path.exists(key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hypermesh-harness", "-f", key],
                       check=True)
    return key


def boot_one(name, statedir, key, accel, cache):
    spec = guests.lookup(name)
    image = images.image_dir(spec["suite"], cache)
    manifest = images.load_manifest(image)
    if not manifest:
        raise qemu.GuestError("guest %s: image %s not built (run: python3 -m harness build %s)"
                              % (name, image, spec["suite"]))
    g = qemu.Guest(name, statedir)
    started = [0.0]

    def start(kvm):
        started[0] = time.time()
        port = g.start(image, key, spec["cmdline"], spec.get("kernel"), spec.get("initrd"), kvm=kvm)
        log("guest %s: qemu started (%s, port %d, cmdline extra: %s)"
            % (name, "kvm" if kvm else "tcg", port, spec["cmdline"] or "-"))
        return port

    def wait(port):
        try:
            g.wait_ssh(port, key)
        except qemu.GuestError:
            g.stop()
            raise

    kvm = accel.boot(g, start, wait)
    boot = time.time() - started[0]
    log("guest %s: SSH up after %.1f s" % (name, boot))
    return {"instance": name, "address": "127.0.0.1", "user": "root", "port": g.port, "identity_file": key,
            "suite": spec["suite"], "cmdline": spec["cmdline"], "accel": "kvm" if kvm else "tcg",
            "boot_seconds": round(boot, 1), "custom_kernel": spec.get("kernel")}


def cmd_up(args):
    try:
        mode = mode_from_env(force_tcg=args.tcg)
    except ValueError as e:
        log("up: %s" % e)
        return 2
    statedir = os.path.abspath(args.state)
    os.makedirs(statedir, exist_ok=True)
    key = make_key(statedir)
    cache = images.cache_dir()
    accel = Accel(mode, os.path.join(cache, VERDICT_FILE), log)
    # TCG is CPU bound: more boots at once than cores only makes each slower
    jobs = args.jobs or int(os.environ.get("HYPERMESH_BOOT_JOBS", "0")) or max(2, os.cpu_count() or 2)
    results, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [(n, pool.submit(boot_one, n, statedir, key, accel, cache)) for n in args.guests]
        for name, fut in futures:
            try:
                results.append(fut.result())
            except Exception as e:  # noqa: BLE001 - every guest gets its say
                errors.append(name)
                log("guest %s: FAILED at step create: %s" % (name, e))
                console = getattr(e, "console", "")
                if console:
                    sys.stderr.write("----- console of %s (last lines) -----\n%s\n-----\n" % (name, console))
    path = os.path.join(statedir, "instances.json")
    known = {}
    if os.path.exists(path):
        with open(path) as f:
            known = {i["instance"]: i for i in json.load(f)}
    known.update({i["instance"]: i for i in results})
    with open(path, "w") as f:
        json.dump(list(known.values()), f, indent=1)
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 1 if errors else 0


def cmd_down(args):
    statedir = os.path.abspath(args.state)
    names = args.guests
    if not names and os.path.isdir(statedir):
        names = [d for d in sorted(os.listdir(statedir)) if os.path.isdir(os.path.join(statedir, d))]
    for name in names:
        done = qemu.Guest(name, statedir).stop()
        log("guest %s: %s" % (name, ", ".join(done) or "nothing running"))
    path = os.path.join(statedir, "instances.json")
    if os.path.exists(path):
        with open(path) as f:
            left = [i for i in json.load(f) if i["instance"] not in names]
        with open(path, "w") as f:
            json.dump(left, f, indent=1)
    return 0


def cmd_check_clean(args):
    """After destroy: no qemu of ours, no overlay, no port held. Exit 1 and say what is left otherwise."""
    statedir = os.path.abspath(args.state)
    left = []
    instances = {}
    path = os.path.join(args.run or os.path.dirname(statedir), "instances.json")
    if os.path.exists(path):
        with open(path) as f:
            instances = {i["instance"]: i for i in json.load(f)}
    names = sorted(instances)
    if os.path.isdir(statedir):
        dirs = set(d for d in os.listdir(statedir) if os.path.isdir(os.path.join(statedir, d)))
        names = sorted(set(instances) | dirs)
    for name in names:
        g = qemu.Guest(name, statedir)
        pid = qemu.read_pid(g.pidfile)
        if pid and qemu.pid_is_guest(pid, name):
            left.append("%s: qemu %d still running" % (name, pid))
        if os.path.exists(g.overlay):
            left.append("%s: overlay %s left" % (name, g.overlay))
        port = instances.get(name, {}).get("port")
        if port and qemu.port_in_use(port):
            left.append("%s: port %d still held" % (name, port))
    for line in left:
        log("check-clean: " + line)
    if not left:
        log("check-clean: %d guests: no qemu, no overlay, no port left" % len(names))
    return 1 if left else 0


def cmd_report(args):
    results = report.load_run(args.run)
    if not results:
        log("report: no results in %s" % args.run)
        return 1
    report.write(results, args.out)
    log("report: %d guests -> %s/kernel-matrix.json, kernel-matrix.md" % (len(results), args.out))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("suites", nargs="*")
    b.add_argument("--jobs", type=int, default=2)
    u = sub.add_parser("up")
    u.add_argument("--state", required=True)
    u.add_argument("--jobs", type=int, default=0)
    u.add_argument("--tcg", action="store_true", help="never use KVM")
    u.add_argument("guests", nargs="+")
    d = sub.add_parser("down")
    d.add_argument("--state", required=True)
    d.add_argument("guests", nargs="*")
    c = sub.add_parser("check-clean")
    c.add_argument("--state", required=True)
    c.add_argument("--run", help="folder holding instances.json (default: the state's parent)")
    r = sub.add_parser("report")
    r.add_argument("--run", required=True, help="a matrix run folder (scripts/matrix.sh)")
    r.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return {"build": cmd_build, "up": cmd_up, "down": cmd_down, "check-clean": cmd_check_clean,
            "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
