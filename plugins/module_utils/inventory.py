# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-wide inventory for ebpf_info: every BPF program, link and map the kernel holds (what
`bpftool prog/link/map show` lists), which of them this collection manages (pinned under the pin root) and
under which name, and the XDP / tc / tcx programs of every interface in the given network namespaces.

- `managed_index(pin_root)`: {(kind, id): {"name", "pin"}} from the pins under `<pin_root>/<NAME>/...`
  (kind read from the pinned fd itself) and `<pin_root>/_shared/<map>` (name "_shared").
- `programs()`, `maps()`, `links()`: info dicts from bpf_syscall, objects that vanish while listed are skipped.
- `run_stats(seconds)`: context manager that turns program run-time stats on while it is open
  (BPF_ENABLE_STATS, 5.8+, else the kernel.bpf_stats_enabled sysctl, put back after) and says which.
- `wait_for_runs(names, pin_root, timeout)`: with stats on, poll the named managed programs until each has run
  (its run count grew) or the timeout passed; the health check of roles/ebpf_programs.
- `interfaces(netns)`: [{"ifname", "ifindex", "netns", "xdp", "tc": {"ingress", "egress"}, "tcx": {...}}].
Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket
import time
from contextlib import contextmanager

from ansible_collections.hypermesh.ebpf.plugins.module_utils import bpf_syscall as bs

DEFAULT_PIN_ROOT = "/sys/fs/bpf/hypermesh"
SHARED = "_shared"
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
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


def managed_index(pin_root=DEFAULT_PIN_ROOT):
    """{(kind, id): {"name": managed name, "pin": path}} for every object pinned under pin_root."""
    index = {}
    if not os.path.isdir(pin_root):
        return index
    for root, _dirs, files in os.walk(pin_root):
        rel = os.path.relpath(root, pin_root)
        if rel == ".":
            continue
        name = rel.split(os.sep)[0]
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


@contextmanager
def run_stats(seconds=0):
    """Program run counters on while the block runs (after `seconds` of counting). Yields how:
    {"method": "bpf_enable_stats" | "sysctl" | "already_enabled", "seconds": seconds}."""
    how = {"seconds": seconds}
    fd = None
    restore = None
    try:
        if _read_sysctl() != "0":
            how["method"] = "already_enabled"
    except (IOError, OSError):
        pass
    if "method" not in how:
        try:
            fd = bs.enable_stats()
            how["method"] = "bpf_enable_stats"
        except OSError:
            _write_sysctl("1")  # kernels before 5.8: the sysctl, put back in `finally`
            restore = "0"
            how["method"] = "sysctl"
    try:
        if seconds:
            time.sleep(seconds)
        yield how
    finally:
        if fd is not None:
            bs.close(fd)
        if restore is not None:
            _write_sysctl(restore)


def _open_managed_progs(names, pin_root):
    """{name: fd of <pin_root>/<name>/prog}; names without a pinned program are left out."""
    fds = {}
    for name in names:
        try:
            fds[name] = bs.obj_get(os.path.join(pin_root, name, "prog"))
        except OSError:
            pass
    return fds


def wait_for_runs(names, pin_root=DEFAULT_PIN_ROOT, timeout=0, interval=0.1):
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
    from ansible_collections.hypermesh.ebpf.plugins.module_utils import netlink
    with netlink.in_netns(netns):
        return socket.if_nameindex()


def interfaces(netns=None):
    """XDP, tc and tcx programs of every interface in `netns` (None: this process's namespace)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils import netlink
    out = []
    for ifindex, ifname in _interface_names(netns):
        item = {"ifname": ifname, "ifindex": ifindex, "netns": netns, "xdp": None,
                "tc": {"ingress": [], "egress": []}, "tcx": {"ingress": [], "egress": []}}
        try:
            item["xdp"] = netlink.xdp_query(ifname, netns)
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


def collect(pin_root=DEFAULT_PIN_ROOT, netns=None, stats=False, stats_seconds=0, wait_for=None):
    """Everything ebpf_info returns. netns: list of namespace names (the current one is always included).
    wait_for: managed program names to wait for (stats on, at most stats_seconds), see wait_for_runs."""
    index = managed_index(pin_root)
    result = {}
    if wait_for:
        with run_stats(0) as how:
            how.update(wait_for_runs(wait_for, pin_root, stats_seconds))
            progs = programs()
        result["stats"] = how
    elif stats:
        with run_stats(stats_seconds) as how:
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
    result["interfaces"] = ifaces
    result["managed_names"] = sorted(set(v["name"] for v in index.values()))
    return result
