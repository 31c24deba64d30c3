#!/usr/bin/env python3
"""Turn a guest reboot into a restart of its qemu, for `ansible.builtin.reboot` in the kernel matrix.

harness/qemu.py starts qemu with -no-reboot (a guest that panics, panic=-1, makes qemu exit instead of looping),
so a guest that reboots makes its qemu exit. This watcher, started on the host before the reboot, reads each
named guest's qemu command line from /proc/<pid>/cmdline (the pid from <state>/<guest>/qemu.pid, checked to be
that guest's qemu), waits for that qemu to exit, and starts the same command again: same kernel, initrd and
command line, same qcow2 overlay (the guest's disk as the shutdown left it), same forwarded SSH port, same
pidfile. The console of the boot before is kept as console.before-reboot.log.

  power_cycle.py --state DIR [--timeout 900] [--ready FILE] GUEST...

Prints one JSON object (per guest: down_after, restarted_after seconds, or error) and exits 1 when a guest did
not go down or could not be started again. It only ever signals nothing: it starts qemu, never stops one.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def guest_argv(state, name):
    pidfile = os.path.join(state, name, "qemu.pid")
    with open(pidfile) as f:
        pid = int(f.read().strip())
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    if "hypermesh-" + name not in argv:
        raise ValueError("pid %d of %s is not that guest's qemu" % (pid, pidfile))
    return pid, argv


def alive(pid, argv):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a] == argv
    except OSError:
        return False


def restart(state, name, argv):
    console = os.path.join(state, name, "console.log")
    if os.path.exists(console):
        shutil.copyfile(console, os.path.join(state, name, "console.before-reboot.log"))
    last = ""
    for _ in range(20):  # the forwarded port is free again once the old qemu's sockets are closed
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if res.returncode == 0:
            return None
        last = res.stdout.strip()
        time.sleep(0.5)
    return "qemu did not start again: " + last


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--ready", help="file written once every guest's command line was read")
    ap.add_argument("guests", nargs="+")
    args = ap.parse_args(argv)
    start = time.time()
    watch, out = {}, {}
    for name in args.guests:
        try:
            watch[name] = guest_argv(args.state, name)
        except (OSError, ValueError) as e:
            out[name] = {"error": "cannot watch: %s" % e}
    if args.ready:
        with open(args.ready, "w") as f:
            f.write("%d\n" % os.getpid())
    while watch and time.time() - start < args.timeout:
        for name, (pid, qargv) in list(watch.items()):
            if alive(pid, qargv):
                continue
            down = round(time.time() - start, 1)
            err = restart(args.state, name, qargv)
            out[name] = {"down_after": down, "restarted_after": round(time.time() - start, 1)}
            if err:
                out[name]["error"] = err
            del watch[name]
        time.sleep(0.2)
    for name in watch:
        out[name] = {"error": "qemu still running after %d s: the guest did not go down" % args.timeout}
    print(json.dumps(out, sort_keys=True))
    return 1 if any("error" in r for r in out.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
