# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Poll one entry of a pinned map until its value grows past a threshold (ebpf_map_info's `wait_for`).

A counter that moves is how a program shows it works: the ebpf_programs role's health check reads a baseline,
then waits here for the counter to pass it. Waiting inside one module run reads the map every `interval`
seconds (a lookup costs microseconds); the same wait as Ansible retries costs a whole module run per read
(about 0.25 s on a fast host, 10 s on an emulated one) and sees a move only that often.

    reached, value, seconds = wait_above(read, above=41, field="packets", timeout=30)

`read()` returns the entry's decoded value, or None while the key is not in the map (a hash map's entry may
appear only with the first event). The compared number is the value itself, or its member `field` when the
value is a struct (decoded to a dict); per-CPU values arrive summed. Importable without ansible.
"""
import time


class WaitError(ValueError):
    """The value cannot be compared (not an integer, no such member)."""


def number(value, field=None):
    """The integer that `wait_for` compares: `value`, or `value[field]`."""
    if field:
        if not isinstance(value, dict) or field not in value:
            members = ", ".join(sorted(value)) if isinstance(value, dict) else "none: the value is not a struct"
            raise WaitError("wait_for.field %r: the value has no such member (members: %s)" % (field, members))
        value = value[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise WaitError("wait_for compares integers, and the value is %r: read it with value_format=int, or name "
                        "an integer member of a struct value with wait_for.field" % (value,))
    return value


def wait_above(read, above, field=None, timeout=30.0, interval=0.1, clock=time.monotonic, sleep=time.sleep):
    """Call read() until number(value, field) > above, or until `timeout` seconds have passed (at least one
    read either way). Returns (reached, last value or None, seconds waited)."""
    start = clock()
    while True:
        value = read()
        if value is not None and number(value, field) > above:
            return True, value, clock() - start
        waited = clock() - start
        if waited >= timeout:
            return False, value, waited
        sleep(min(interval, timeout - waited))


def timeout_message(what, number, above, seconds):
    """Why a wait failed, for the task's message: `what` names the entry (map[key].field)."""
    if number is None:
        return "%s: the key was not in the map for %.1f s" % (what, seconds)
    return "%s stayed at %d, not above %d, for %.1f s" % (what, number, above, seconds)
