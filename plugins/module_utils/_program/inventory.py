# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-wide inventory for ebpf_info: every BPF program, link and map the kernel holds (what
`bpftool prog/link/map show` lists), which of them this collection manages (pinned under the pin root) and
under which name, and the XDP / tc / tcx programs of every interface in the given network namespaces.

- `managed_index(pin_root)`: {(kind, id): {"name", "pin"}} from the pins under `<pin_root>/<NAME>/...`
  (kind read from the pinned fd itself) and `<pin_root>/_shared/<map>` (name "_shared").
- `programs()`, `maps()`, `links()`: info dicts from bpf_syscall, objects that vanish while listed are skipped.
- `run_stats(seconds, check_mode)`: context manager that turns program run-time stats on while it is open
  (BPF_ENABLE_STATS, 5.8+; else, outside check mode only, the kernel.bpf_stats_enabled sysctl under the host
  lock, put back after, even after a kill) and says which.
- `wait_for_runs(names, pin_root, timeout)`: with stats on, poll the named managed programs until each has run
  (its run count grew) or the timeout passed; the health check of roles/ebpf_programs.
- `interfaces(netns)`: [{"ifname", "ifindex", "netns", "xdp", "tc": {"ingress", "egress"}, "tcx": {...}}]; where
  the XDP program is libxdp's dispatcher, "xdp" also has "dispatcher": its programs in run order.
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket
import time
from contextlib import contextmanager

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs

STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
STATS_MARKER = None  # None: bpf_stats_enabled.ours next to the host lock (a test points it elsewhere)
_INFO = {"prog": bs.prog_info, "map": bs.map_info, "link": bs.link_info}
_FDINFO_KIND = (("prog_type", "prog"), ("map_type", "map"), ("link_type", "link"))


def _pinned_kind(fd):
    """'prog', 'map' or 'link' for an fd, from /proc/self/fdinfo (the pin itself does not say)."""
    try:
        with open("/proc/self/fdinfo/%d" % fd) as f:
            text = f.read()
    except (IOError, OSError):
        return None
    for field, kind in _FDINFO_KIND:
        if "\n%s:" % field in "\n" + text:
            return kind
    return None


def managed_index(pin_root=layout.PIN_ROOT, names=None):
    """{(kind, id): {"name": managed name, "pin": path}} for every object pinned under pin_root (only under the
    directories in `names` and `_shared` when names is given)."""
    index = {}
    if not os.path.isdir(pin_root):
        return index
    for root, _dirs, files in os.walk(pin_root):
        rel = os.path.relpath(root, pin_root)
        if rel == ".":
            continue
        name = rel.split(os.sep, 1)[0]
        if names is not None and name != layout.SHARED and name not in names:
            continue
        for fname in files:
            path = os.path.join(root, fname)
            try:
                fd = bs.obj_get(path)
            except OSError:
                continue
            try:
                kind = _pinned_kind(fd)
                if kind is None:
                    continue
                info = _INFO[kind](fd)
            except OSError:
                continue
            finally:
                bs.close(fd)
            # the first pin found wins (a program pinned twice, e.g. in a leftover stage dir, keeps its home)
            index.setdefault((kind, info["id"]), {"name": name, "pin": path})
    return index


def _objects(kind):
    out = []
    for obj_id in bs.iter_ids(kind):
        try:
            fd = bs.get_fd_by_id(kind, obj_id)
        except OSError as e:
            if e.errno == errno.ENOENT:  # went away while we listed
                continue
            raise
        try:
            out.append(_INFO[kind](fd))
        except OSError:
            continue
        finally:
            bs.close(fd)
    return out


def programs():
    return _objects("prog")


def maps():
    return _objects("map")


def links():
    return _objects("link")


def flag_managed(objects, kind, index):
    """Add `managed`, `managed_name` and `pin` to each object dict (in place); returns the list."""
    for obj in objects:
        hit = index.get((kind, obj["id"]))
        obj["managed"] = hit is not None
        obj["managed_name"] = hit["name"] if hit else None
        obj["pin"] = hit["pin"] if hit else None
    return objects


def _read_sysctl():
    with open(STATS_SYSCTL) as f:
        return f.read().strip()


def _write_sysctl(value):
    with open(STATS_SYSCTL, "w") as f:
        f.write(value)


def _sysctl_on():
    try:
        return _read_sysctl() != "0"
    except (IOError, OSError):
        return False


def _host_lock():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
    return lock.HostLock()


def _marker_path():
    """Where the sysctl fallback notes that it turned statistics on (next to the host lock, root only)."""
    if STATS_MARKER:
        return STATS_MARKER
    return os.path.join(layout.RUN_DIR, "bpf_stats_enabled.ours")


def _put_back_left_on():
    """A run killed while the sysctl fallback had statistics on left its marker: put the sysctl back to 0."""
    marker = _marker_path()
    if os.path.lexists(marker):
        _write_sysctl("0")
        os.unlink(marker)


def _sleep(seconds):
    if seconds:
        time.sleep(seconds)


@contextmanager
def run_stats(seconds=0, check_mode=False):
    """Program run counters on while the block runs (after `seconds` of counting). Yields how:
    {"method": ..., "seconds": seconds}. Methods:
      bpf_enable_stats   BPF_ENABLE_STATS (5.8+): on while our fd is open, off when the process ends, even killed
      sysctl             kernels before 5.8: kernel.bpf_stats_enabled set to 1 under the host lock and put back
                         to 0 afterwards; a marker next to the lock lets the next run put it back after a kill
      already_enabled    the sysctl was on already (someone else's): nothing touched
      not_enabled_check_mode  check mode on a kernel without BPF_ENABLE_STATS: the sysctl is not written, so the
                         counts are whatever the kernel has"""
    how = {"seconds": seconds}
    try:
        fd = bs.enable_stats()
    except OSError:
        fd = None
    if fd is not None:
        how["method"] = "bpf_enable_stats"
        try:
            _sleep(seconds)
            yield how
        finally:
            bs.close(fd)
    elif check_mode:
        how["method"] = "already_enabled" if _sysctl_on() else "not_enabled_check_mode"
        _sleep(seconds)
        yield how
    elif not os.path.exists(STATS_SYSCTL):
        raise OSError(errno.ENOENT, "run counts need BPF statistics, and this kernel has neither BPF_ENABLE_STATS "
                      "(5.8) nor the sysctl kernel.bpf_stats_enabled (5.1, %s): check a counter of the program's "
                      "maps instead (health.check: counter)" % STATS_SYSCTL)
    else:
        with _host_lock():
            _put_back_left_on()
            if _sysctl_on():
                how["method"] = "already_enabled"
                _sleep(seconds)
                yield how
                return
            from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import atomic_file
            atomic_file.write(_marker_path(), b"kernel.bpf_stats_enabled=1 by hypermesh.ebpf ebpf_info\n", 0o600)
            _write_sysctl("1")
            how["method"] = "sysctl"
            try:
                _sleep(seconds)
                yield how
            finally:
                _put_back_left_on()


def _open_managed_progs(names, pin_root):
    """{name: fd of <pin_root>/<name>/prog}; names without a pinned program are left out."""
    fds = {}
    for name in names:
        try:
            fds[name] = bs.obj_get(os.path.join(pin_root, name, layout.PIN_PROG))
        except OSError:
            pass
    return fds


def wait_for_runs(names, pin_root=layout.PIN_ROOT, timeout=0, interval=0.1):
    """Poll (statistics must be on) until every managed program in `names` has run since this call began, or
    `timeout` seconds passed. Returns {"ran": {name: runs counted}, "stalled": [names], "missing": [names not
    pinned], "waited": seconds}. Only bpf(2) calls while polling: the wait itself runs no program."""
    fds = _open_managed_progs(names, pin_root)
    try:
        start = time.time()
        base = dict((n, bs.prog_info(fd)["run_cnt"]) for n, fd in fds.items())
        ran = dict((n, 0) for n in fds)
        while True:
            for n, fd in fds.items():
                ran[n] = bs.prog_info(fd)["run_cnt"] - base[n]
            stalled = sorted(n for n in fds if ran[n] <= 0)
            waited = time.time() - start
            if not stalled or waited >= timeout:
                break
            time.sleep(min(interval, max(0.0, timeout - waited)))
    finally:
        for fd in fds.values():
            bs.close(fd)
    missing = sorted(n for n in names if n not in fds)
    return {"ran": ran, "stalled": sorted(stalled + missing), "missing": missing, "waited": round(waited, 3)}


def _interface_names(netns):
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
    with netlink.in_netns(netns):
        return socket.if_nameindex()


def interfaces(netns=None):
    """XDP, tc and tcx programs of every interface in `netns` (None: this process's namespace)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
    out = []
    for ifindex, ifname in _interface_names(netns):
        item = {"ifname": ifname, "ifindex": ifindex, "netns": netns, "xdp": None,
                "tc": {"ingress": [], "egress": []}, "tcx": {"ingress": [], "egress": []}}
        try:
            item["xdp"] = netlink.xdp_query(ifname, netns)
            if item["xdp"].get("prog_id"):
                chain = _dispatcher_chain(ifname, netns, item["xdp"]["prog_id"])
                if chain is not None:
                    item["xdp"]["dispatcher"] = chain
        except Exception as e:  # one odd interface must not hide the others
            item["xdp_error"] = str(e)
        for direction in ("ingress", "egress"):
            try:
                item["tc"][direction] = netlink.tc_query(ifname, direction, netns)
            except Exception as e:
                item.setdefault("errors", []).append("tc %s: %s" % (direction, e))
            try:
                item["tcx"][direction] = netlink.tcx_query(ifname, direction, netns)
            except Exception:
                item["tcx"][direction] = None  # no tcx on this kernel (before 6.6)
        out.append(item)
    return out


def _dispatcher_chain(ifname, netns, prog_id):
    """The programs of libxdp's dispatcher on the interface, in run order ([{"id", "name", "priority",
    "proceed_on"}]); None where the interface holds a plain XDP program or libxdp is not installed."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import xdp_dispatcher
    return xdp_dispatcher.programs_of({"interface": ifname, "netns": netns}, prog_id)


def _name_dispatched(ifaces, progs):
    """Each dispatcher program entry gets "managed_name" (None for another tool's), as its program has."""
    names = dict((p["id"], p.get("managed_name")) for p in progs)
    for item in ifaces:
        for entry in (item.get("xdp") or {}).get("dispatcher", []):
            entry["managed_name"] = names.get(entry["id"])


def collect(pin_root=layout.PIN_ROOT, netns=None, stats=False, stats_seconds=0, wait_for=None, check_mode=False,
            state_dir=layout.STATE_DIR):
    """Everything ebpf_info returns. netns: list of namespace names (the current one is always included).
    wait_for: managed program names to wait for (stats on, at most stats_seconds), see wait_for_runs.
    Managed means: a directory under pin_root with a state record of ours in state_dir (program_state.managed_names)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state
    names = program_state.managed_names(pin_root, state_dir)
    index = managed_index(pin_root, names)
    result = {}
    if wait_for:
        with run_stats(0, check_mode) as how:
            how.update(wait_for_runs(wait_for, pin_root, stats_seconds))
            progs = programs()
        result["stats"] = how
    elif stats:
        with run_stats(stats_seconds, check_mode) as how:
            progs = programs()
        result["stats"] = how
    else:
        progs = programs()
    result["programs"] = flag_managed(progs, "prog", index)
    result["maps"] = flag_managed(maps(), "map", index)
    result["links"] = flag_managed(links(), "link", index)
    ifaces = []
    for ns in [None] + list(netns or []):
        ifaces.extend(interfaces(ns))
    _name_dispatched(ifaces, result["programs"])
    result["interfaces"] = ifaces
    result["managed_names"] = names
    result["held"] = held_with_runs(result["programs"])
    return result


def held_with_runs(progs):
    """The holder's attachments (held.held_attachments), each with its program's run_cnt and run_time_ns."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import held
    by_id = dict((p["id"], p) for p in progs)
    out = []
    for entry in held.held_attachments():
        prog = by_id.get(entry["prog_id"]) or {}
        entry.update(run_cnt=prog.get("run_cnt"), run_time_ns=prog.get("run_time_ns"),
                     managed=prog.get("managed", False))
        out.append(entry)
    return out
