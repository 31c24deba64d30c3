# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health checks of an ebpf_state run: after the apply, something each checked program does must move
within its timeout, all timed from one start.

One job, composed of the waits the single-object modules use:
- `counter`: the entry `health.key` of the program's map `health.map` (its member `health.field`; per-CPU
  values summed) is read once right after the apply (the baseline), then polled with map_wait.wait_above until
  it passes the baseline (what ebpf_map_info's `wait_for` does);
- `run_count`: the program's kernel run count must grow, BPF statistics on for the whole window
  (inventory.run_stats and inventory.wait_for_runs, what ebpf_info's `wait_for_runs` does).
check(items, pin_root) -> {name: None when healthy, else why}. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time
from contextlib import contextmanager

from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import inventory
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_wait
from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import pinned_map


def _reader(name, health, pin_root):
    """read() -> the decoded value at health.key (None while the key is absent) and the open map to close."""
    path = pinned_map.map_path(None, name, health["map"], pin_root)
    pm = pinned_map.PinnedMap(path)

    def read():
        entries = pinned_map.read_entries(pm, health["key_format"], health["value_format"], [health["key"]])
        return entries[0]["value"] if entries else None
    return read, pm


def _what(name, health):
    return "%s[%s]%s" % (health["map"], health["key"], ("." + health["field"]) if health["field"] else "")


def check(items, pin_root, clock=time.monotonic):
    """items: [(name, health)] (health.check is counter or run_count). Returns {name: None or failure text}."""
    out = {}
    counters = [(n, h) for n, h in items if h["check"] == "counter"]
    runs = [(n, h) for n, h in items if h["check"] == "run_count"]
    opened, baselines = [], []
    try:
        for name, health in counters:
            read, pm = _reader(name, health, pin_root)
            opened.append(pm)
            value = read()
            baselines.append((read, 0 if value is None else map_wait.number(value, health["field"])))
        with (inventory.run_stats(0) if runs else _no_stats()):  # counters alone need no BPF statistics
            start = clock()
            for (name, health), (read, base) in zip(counters, baselines):
                left = max(0.0, health["timeout"] - (clock() - start))
                reached, value, _seconds = map_wait.wait_above(read, base, health["field"], left)
                if reached:
                    out[name] = None
                else:
                    number = None if value is None else map_wait.number(value, health["field"])
                    waited = clock() - start
                    out[name] = "counter " + map_wait.timeout_message(_what(name, health), number, base, waited)
            out.update(_runs(runs, pin_root, start, clock))
    finally:
        for pm in opened:
            pm.close()
    return out


@contextmanager
def _no_stats():
    yield None


def _runs(runs, pin_root, start, clock):
    """Run counts, grouped by timeout (shortest first), each group waiting what is left of its window."""
    out = {}
    for timeout in sorted(set(h["timeout"] for _n, h in runs)):
        names = [n for n, h in runs if h["timeout"] == timeout]
        left = max(0.0, timeout - (clock() - start))
        res = inventory.wait_for_runs(names, pin_root, left)
        for name in names:
            if name in res["missing"]:
                out[name] = "run count: no program pinned at %s/%s/prog" % (pin_root, name)
            elif name in res["stalled"]:
                out[name] = "did not run in %.1f s (run count, BPF statistics on)" % timeout
            else:
                out[name] = None
    return out
