# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a tcx program runs among the programs on its hook (kernel 6.6+ multi-attach): `attach.tcx.order`.

One job: the order option, from validation to the kernel call. `order` is one of `{first: true}`,
`{last: true}`, `{before: NAME}`, `{after: NAME}`, NAME another program this collection manages, tcx-attached on
the same interface, network namespace and direction; without `order` a program is appended (the kernel's default).

- normalize(): the option checked and made canonical ({"first": True} ... {"before": "name"}); the spec keeps it
  only when given, so an unordered program's record is the same as before.
- check(): before any change (and in check mode): the kernel has tcx (the requirements table's refusal), and a
  relative is a managed tcx program on the same hook, not the program itself.
- in_position(): the hook's run order (BPF_PROG_QUERY) satisfies the order: first = runs first, last = runs
  last, before X = runs somewhere before X, after X = somewhere after X. Only a program out of its position
  is moved, so two programs that both say `after: X` are both satisfied.
- attach(): BPF_LINK_CREATE with BPF_F_BEFORE/BPF_F_AFTER, relative to X's pinned link (BPF_F_LINK with its fd);
  first/last are BPF_F_BEFORE/BPF_F_AFTER with no relative.
A program moves by a NEW link created in its place (a new load of the object: the kernel refuses one program
twice on one hook), then the old link's pin replaced by the new one, which detaches the old link; the hook is
never without the program (for that moment both run, sharing their maps). Importable without ansible.
"""
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps

POSITIONS = ("first", "last", "before", "after")
RELATIVE = ("before", "after")


class OrderError(program_spec.SpecError):
    """A bad or unsatisfiable order: a SpecError, so every caller refuses it with the host unchanged."""


def normalize(value):
    """attach.tcx.order -> {"first": True} | {"last": True} | {"before": name} | {"after": name}, or None when
    not given. Raises OrderError for anything else."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise OrderError("attach.tcx.order must be a dict: one of first: true, last: true, before: NAME, "
                         "after: NAME")
    given = dict((k, v) for k, v in value.items() if v not in (None, False, ""))
    unknown = sorted(k for k in value if k not in POSITIONS)
    if unknown:
        raise OrderError("attach.tcx.order: unknown key %s (one of: %s)" % (", ".join(unknown), ", ".join(POSITIONS)))
    if len(given) != 1:
        raise OrderError("attach.tcx.order takes exactly one of first: true, last: true, before: NAME, after: NAME"
                         "; got %s" % (", ".join(sorted(given)) or "none"))
    key, v = list(given.items())[0]
    if key in RELATIVE:
        if not isinstance(v, str):
            raise OrderError("attach.tcx.order.%s must be the name of a managed program" % key)
        try:
            program_spec.check_name(v)
        except program_spec.SpecError as e:
            raise OrderError("attach.tcx.order.%s: %s" % (key, e))
        return {key: v}
    if v is not True:
        raise OrderError("attach.tcx.order.%s must be true" % key)
    return {key: True}


def of(spec):
    """The order of an attach spec, or None (not tcx, or no order)."""
    if not spec or spec.get("type") != "tcx":
        return None
    return spec.get("order")


def describe(order):
    """"first", "last", "before NAME", "after NAME" (or "appended" when there is no order)."""
    if not order:
        return "appended"
    key, v = list(order.items())[0]
    return key if key not in RELATIVE else "%s %s" % (key, v)


def same_point(old_spec, new_spec):
    """The same attach point, whatever the tcx order says (the order is checked against the hook instead)."""
    if not old_spec or not new_spec:
        return old_spec == new_spec
    strip = dict((k, v) for k, v in old_spec.items() if k != "order"), dict((k, v) for k, v in new_spec.items()
                                                                            if k != "order")
    return strip[0] == strip[1]


def _same_hook(a, b):
    return all(a.get(k) == b.get(k) for k in ("type", "interface", "netns", "direction"))


def _hook_text(spec):
    return "tcx %s on %s%s" % (spec["direction"], spec["interface"],
                               " in netns %s" % spec["netns"] if spec.get("netns") else "")


def _relative_live(spec, pin_root, state_dir=None, me=None):
    """(name, Live) of the relative named by spec's order, checked: managed under pin_root (a record for that
    pin root and its pins), tcx on the same hook, its link pinned and attached there. OrderError otherwise."""
    order = of(spec)
    key = [k for k in RELATIVE if k in order][0]
    name = order[key]
    where = "attach.tcx.order.%s: %r" % (key, name)
    if name == me:
        raise OrderError("%s is this program itself: name another program on %s" % (where, _hook_text(spec)))
    if name not in ps.managed_names(pin_root, state_dir):
        raise OrderError("%s is not a program managed under %s (ebpf_program/ebpf_state attach it first)"
                         % (where, pin_root))
    ps.check_dirs(pin_root, name)  # nothing under it read before: no link, nothing another user can write
    rec = ps.read_record(name, state_dir) or {}
    other = rec.get("attach") or {}
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
    if not _same_hook(other, spec):
        raise OrderError("%s is %s, not on %s: a relative must be tcx on the same hook"
                         % (where, pa.describe(other) if other else "not attached", _hook_text(spec)))
    live = ps.Live(pin_root, name)
    if not live.link or not live.link.get("prog_id") or not pa.link_matches(other, live.link):
        raise OrderError("%s has no tcx link pinned on %s (its last run did not finish: apply it again first)"
                         % (where, _hook_text(spec)))
    return name, live


def _relative_planned(spec, planned, me):
    """True when the relative is a program this run attaches before `me` (ebpf_state: listed earlier), on the
    same hook: it is managed by the time `me` is applied, and checked live again then. OrderError when it is
    planned on another hook."""
    order = of(spec)
    key = [k for k in RELATIVE if k in order][0]
    name = order[key]
    if name == me or name not in (planned or {}):
        return False
    other = planned[name] or {}
    if not _same_hook(other, spec):
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
        raise OrderError("attach.tcx.order.%s: %r is declared in this run on %s, not on %s: a relative must be "
                         "tcx on the same hook" % (key, name, pa.describe(other), _hook_text(spec)))
    return True


def check(spec, pin_root, me, state_dir=None, planned=None):
    """Refuse an order this host cannot honour, before any change. Changes nothing. planned: {name: attach
    spec} of the programs the same run applies before this one (ebpf_state), which may be named before they
    are managed."""
    if not of(spec):
        return
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_gate
    program_gate.require(program_spec.FEATURES["tcx"])  # older kernels: the requirements table's refusal
    if any(k in of(spec) for k in RELATIVE) and not _relative_planned(spec, planned, me):
        _relative_live(spec, pin_root, state_dir, me)


def hook(spec):
    """Program ids on spec's tcx hook, in the order they run."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
    return netlink.tcx_query(spec["interface"], spec["direction"], spec.get("netns"))


def position(spec, prog_id):
    """{"index": i, "of": n, "order": [prog ids]} of prog_id on spec's hook, for diffs; None if not there."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.netlink import NetlinkError
    try:
        ids = hook(spec)
    except (OSError, NetlinkError):  # the interface or namespace is gone: no position to show
        return None
    if prog_id not in ids:
        return None
    return {"index": ids.index(prog_id), "of": len(ids), "order": ids}


def in_position(spec, prog_id, pin_root, state_dir=None):
    """True when prog_id runs where spec's order says (always True without an order)."""
    order = of(spec)
    if not order:
        return True
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel.netlink import NetlinkError
    try:
        ids = hook(spec)
    except (OSError, NetlinkError):  # the interface or namespace is gone: not in position
        return False
    if prog_id not in ids:
        return False
    i = ids.index(prog_id)
    if order.get("first"):
        return i == 0
    if order.get("last"):
        return i == len(ids) - 1
    try:
        _name, live = _relative_live(spec, pin_root, state_dir)
    except (OrderError, OSError):
        return False
    rel = live.link["prog_id"]
    if rel not in ids:
        return False
    return i < ids.index(rel) if "before" in order else i > ids.index(rel)


def attach(spec, prog_fd, pin_root, state_dir=None):
    """Create the tcx link of prog_fd at spec's order; returns the link fd (the caller pins it)."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
    order = of(spec) or {}
    key = list(order)[0] if order else None
    if key not in RELATIVE:
        return netlink.tcx_attach(spec["interface"], spec["direction"], prog_fd, netns=spec.get("netns"),
                                  position=key)
    name, _live = _relative_live(spec, pin_root, state_dir)
    rel_fd = bs.obj_get(os.path.join(pin_root, name, layout.PIN_LINK))
    try:
        return netlink.tcx_attach(spec["interface"], spec["direction"], prog_fd, netns=spec.get("netns"),
                                  position=key, relative_link_fd=rel_fd)
    finally:
        bs.close(rel_fd)


def open_replaced(spec, pin):
    """An fd of the tcx link pinned at `pin` that a new link is about to replace (None: not tcx, or none). The
    caller renames the new pin over it, then detach()es it, so the move is new link first, old link gone right
    after (the kernel frees an unpinned link only later, and it would keep running until then)."""
    if not spec or spec.get("type") != "tcx":
        return None
    try:
        return bs.obj_get(pin)
    except OSError:
        return None


def detach(fd):
    """BPF_LINK_DETACH the link fd from open_replaced (its program leaves the hook now), then close it."""
    if fd is None:
        return
    try:
        bs.link_detach(fd)
    except OSError:
        pass  # already detached (its interface went away): nothing runs from it
    finally:
        bs.close(fd)
