"""Test-side fault injection for ebpf_program: run the module's code (program_runner.apply, what the module's main
calls) in this process, with faults put in from here, so product code carries no test switch.

    python tests/integration/kill_runner.py '<ebpf_program args as JSON>' [options]

  --kill-after DOTTED[@PREFIX]:N
                          SIGKILL this process right after the N-th call of DOTTED returns or raises (for example
                          bpf_syscall.obj_pin:2, program_state.write_record:1, libbpf.BpfObject.load:1);
                          with @PREFIX only calls whose first argument starts with PREFIX count
                          (os.rename@/sys/fs/bpf:1: the first rename on bpffs, not a record's); several may be
                          given, the first reached kills
  --before-attach PIN     "another agent": right before the first program_attach.attach_netlink call, attach
                          the program pinned at PIN to the same XDP or tc slot (after our run read the slot)

Protocol on stdout: "GO <monotonic time>" once every import is done (the caller's random kill delays count
from there), then one line of JSON: the result, or {"failed": true, "msg": ...} for a clear refusal (exit 1).
Any other exception is a traceback (exit 2). A --kill-after point never reached exits 3, so a test cannot pass
because its kill did not happen.
"""
import importlib
import json
import os
import signal
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, ".cache", "collections"))

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs  # noqa: E402
# the modules --kill-after may name are imported before GO (see above), used or not here
# pylint: disable=unused-import
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import libbpf  # noqa: E402,F401
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach  # noqa: E402
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_gate  # noqa: E402,F401
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state  # noqa: E402,F401
from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes  # noqa: E402,F401
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import perf  # noqa: E402,F401
# pylint: enable=unused-import

PKG = "ansible_collections.hypermesh.ebpf.plugins.module_utils."
MODULE_UTILS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "plugins", "module_utils")
# module_utils file name -> its package (_kernel, _program, ...), from the tree
PACKAGES = dict((f[:-3], pkg) for pkg in os.listdir(MODULE_UTILS) if pkg.startswith("_")
                for f in os.listdir(os.path.join(MODULE_UTILS, pkg)) if f.endswith(".py"))


def _owner(dotted):
    """(object holding the attribute, attribute name) for 'os.rename', 'bpf_syscall.obj_pin',
    'libbpf.BpfObject.load'."""
    parts = dotted.split(".")
    if parts[0] == "os":
        return os, parts[1]
    holder = importlib.import_module(PKG + PACKAGES[parts[0]] + "." + parts[0])
    for p in parts[1:-1]:
        holder = getattr(holder, p)
    return holder, parts[-1]


def kill_after(dotted, nth):
    dotted, _unused, prefix = dotted.partition("@")
    holder, attr = _owner(dotted)
    real = getattr(holder, attr)
    calls = [0]

    def wrapper(*args, **kwargs):
        try:
            return real(*args, **kwargs)
        finally:  # returned or raised: the call is over
            if not prefix or (args and str(args[0]).startswith(prefix)):
                calls[0] += 1
                if calls[0] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
    setattr(holder, attr, wrapper)


def before_attach(pin):
    """Another agent takes the slot between our read of it and our attach."""
    real = program_attach.attach_netlink
    done = []

    def wrapper(spec, prog_fd, expected_prog_id, name):
        if not done:
            done.append(True)
            fd = bs.obj_get(pin)
            try:
                if spec["type"] == "xdp":
                    netlink.xdp_attach(spec["interface"], fd, mode=spec.get("mode", "auto"), netns=spec.get("netns"))
                else:
                    netlink.tc_attach(spec["interface"], spec["direction"], fd, priority=spec["priority"],
                                      handle=program_attach.TC_HANDLE, name="foreign", netns=spec.get("netns"))
            finally:
                bs.close(fd)
        return real(spec, prog_fd, expected_prog_id, name)
    program_attach.attach_netlink = wrapper


def main(argv):
    params = json.loads(argv[1])
    rest = argv[2:]
    kills = 0
    while rest:
        opt, value = rest[0], rest[1]
        rest = rest[2:]
        if opt == "--kill-after":
            dotted, nth = value.rsplit(":", 1)
            kill_after(dotted, int(nth))
            kills += 1
        elif opt == "--before-attach":
            before_attach(value)
        else:
            raise SystemExit("unknown option %s" % opt)
    sys.stdout.write("GO %.6f\n" % time.monotonic())
    sys.stdout.flush()
    try:
        result = program_runner.apply(params)
    except program_runner.errors() as e:
        sys.stdout.write(json.dumps({"failed": True, "msg": str(e)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 3 if kills else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
