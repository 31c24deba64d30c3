"""attach.tcx.order on the real kernel (6.6+): several managed tcx programs on one hook, in the declared order.

On the b side of a veth pair (ingress, in its own netns) three managed programs share the tcx hook: two copies
of tc_next (count, then TCX_NEXT: the next program runs) and one tc_counter (count, then TC_ACT_OK: a final
verdict, the programs behind it do not run). Proven for each declared order:
- netlink.tcx_query lists the programs in the declared order;
- they RUN in that order: after a ping, every program in front of tc_counter and tc_counter itself counted the
  pings, every program behind it counted nothing;
- a re-order by a re-apply moves only the program out of place (a new link in its place, the old one gone),
  with the four-run check (check: changed, apply: changed, again: unchanged, check: unchanged) and the position
  in the diff;
- a relative that is unknown, not managed, on another hook, or the program itself is refused (in check mode
  too) with the kernel and the records exactly as they were.
Skips where the kernel has no tcx (the tcx probe says why).
"""
import os
import time

import pytest

from tests.conftest import needs_root
from test_ebpf_program_common import counter, kernel_ids, obj, ping, pin_root_fixture, run, run_with_diff_text

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state

pytestmark = needs_root

pin_root = pin_root_fixture("hm-tcx-order")
PINGS = 5
MAP = {"tc_next": "next_stats", "tc_counter": "tc_stats"}


@pytest.fixture(scope="module", autouse=True)
def tcx_here():
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    try:
        probes.require("tcx")
    except probes.Unsupported as e:
        pytest.skip("this kernel has no tcx: %s" % e)


class Hook(object):
    """The managed programs on pair.if_b's tcx ingress hook: name -> object."""

    def __init__(self, pin_root, pair):
        self.pin_root, self.pair = pin_root, pair
        self.objects = {}
        self.tag = "%d" % os.getpid()

    def name(self, short):
        return "o%s-%s" % (short, self.tag)

    def attach(self, order=None, direction="ingress"):
        a = {"interface": self.pair.if_b, "netns": self.pair.ns_b, "direction": direction}
        if order is not None:
            a["order"] = order
        return {"tcx": a}

    def args(self, short, kind, order=None, direction="ingress"):
        self.objects[short] = kind
        rel = dict((k, self.name(v) if k in ("before", "after") else v) for k, v in (order or {}).items())
        return {"name": self.name(short), "object": obj(kind), "pin_root": self.pin_root,
                "attach": self.attach(rel or None, direction)}

    def apply(self, short, kind, order=None, check=False, diff=False):
        r = run(self.args(short, kind, order), check=check, diff=diff)
        assert not r.get("failed"), r
        return r

    def prog_id(self, short):
        return program_state.Live(self.pin_root, self.name(short)).prog_id

    def order(self):
        """The managed programs on the hook, by short name, in the order the kernel runs them."""
        ids = netlink.tcx_query(self.pair.if_b, "ingress", self.pair.ns_b)
        by_id = dict((self.prog_id(s), s) for s in self.objects)
        return [by_id.get(i, "other:%d" % i) for i in ids]

    def count(self, short):
        return counter(os.path.join(self.pin_root, self.name(short), "maps", MAP[self.objects[short]]))

    def traffic(self):
        """{short: packets counted during PINGS pings}."""
        before = dict((s, self.count(s)) for s in self.objects)
        assert ping(self.pair.ns_a, self.pair.addr_b, count=PINGS)
        return dict((s, self.count(s) - before[s]) for s in self.objects)

    def runs_in(self, order):
        """The hook holds `order` (short names) and runs it: tc_counter ends the run, programs behind it see
        nothing, those in front of it (and it) see every ping."""
        assert self.order() == order
        seen = self.traffic()
        stop = [s for s in order if self.objects[s] == "tc_counter"][0]
        for s in order[:order.index(stop) + 1]:
            assert seen[s] >= PINGS, (order, seen)
        for s in order[order.index(stop) + 1:]:
            assert seen[s] == 0, (order, seen)
        return seen

    def remove(self):
        for s in list(self.objects):
            run({"name": self.name(s), "state": "absent", "pin_root": self.pin_root})
        self.objects.clear()


@pytest.fixture
def hook(pin_root, pair):
    h = Hook(pin_root, pair)
    yield h
    h.remove()


def _gone(link_id, wait=3.0):
    """The kernel frees a detached, unpinned link after an RCU grace period: wait for its id to go."""
    deadline = time.time() + wait
    while link_id in kernel_ids()["link"]:
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def _four_runs(hook, short, kind, order, moved_from):
    """check / apply / apply again / check for a re-order of `short`: only the second and first say changed."""
    before_link = program_state.Live(hook.pin_root, hook.name(short)).link_id
    r1 = run_with_diff_text(hook.args(short, kind, order), check=True)
    assert r1["changed"] and not r1.get("failed"), r1
    want = dict((k, hook.name(v) if k in ("before", "after") else v) for k, v in order.items())
    assert r1["attach"]["order"] == want, r1
    shown = r1["_diff_text"]  # what `ansible --check --diff` printed: the position now, the order wanted
    assert '"position": {' in shown and '"index": %d' % moved_from in shown, shown
    key, value = list(want.items())[0]
    assert ('+            "%s": %s' % (key, '"%s"' % value if isinstance(value, str) else "true")) in shown, shown
    assert program_state.Live(hook.pin_root, hook.name(short)).link_id == before_link  # check mode: untouched
    r2 = hook.apply(short, kind, order)
    assert r2["changed"] and r2["link_id"] != before_link, r2
    assert _gone(before_link), "the old link %d is still in the kernel" % before_link
    r3 = hook.apply(short, kind, order)
    assert not r3["changed"] and r3["link_id"] == r2["link_id"] and r3["prog_id"] == r2["prog_id"], r3
    r4 = hook.apply(short, kind, order, check=True)
    assert not r4["changed"], r4
    return r2


def test_declared_orders_run_in_that_order(hook):
    hook.apply("a", "tc_next", {"first": True})
    hook.apply("c", "tc_counter", {"last": True})
    hook.apply("b", "tc_next", {"after": "a"})
    hook.runs_in(["a", "b", "c"])

    # b behind the counter: it no longer sees a packet; its map is kept across the move
    kept = hook.count("b")
    _four_runs(hook, "b", "tc_next", {"after": "c"}, moved_from=1)
    assert hook.count("b") == kept
    hook.runs_in(["a", "c", "b"])

    # the counter first: neither tc_next runs
    hook.apply("c", "tc_counter", {"first": True})
    hook.runs_in(["c", "a", "b"])

    # b before the counter: b and c count, a (now last) does not
    hook.apply("b", "tc_next", {"before": "c"})
    hook.runs_in(["b", "c", "a"])

    # a new order that the position already satisfies: a says "after c", which it already is; the record
    # changes, the link stays where it is (no move), and the next run has nothing to do
    link = program_state.Live(hook.pin_root, hook.name("a")).link_id
    r = hook.apply("a", "tc_next", {"after": "c"})
    assert r["changed"] and r["link_id"] == link, r
    hook.runs_in(["b", "c", "a"])
    assert not hook.apply("a", "tc_next", {"after": "c"})["changed"]


def test_an_unordered_program_is_appended_and_left_there(hook):
    hook.apply("a", "tc_counter", {"first": True})
    hook.apply("n", "tc_next")              # no order: appended, behind the counter
    hook.runs_in(["a", "n"])
    assert "order" not in program_state.read_record(hook.name("n"))["attach"]
    r = hook.apply("n", "tc_next")
    assert not r["changed"], r


def _snapshot(hook):
    names = [hook.name(s) for s in hook.objects] + [hook.name(s) for s in ("x", "z")]
    return {"hook": netlink.tcx_query(hook.pair.if_b, "ingress", hook.pair.ns_b),
            "egress": netlink.tcx_query(hook.pair.if_b, "egress", hook.pair.ns_b),
            "records": dict((n, program_state.read_record(n)) for n in names),
            "pins": sorted(os.listdir(hook.pin_root)) if os.path.isdir(hook.pin_root) else None}


@pytest.mark.parametrize("short, order, needle", [
    ("z", {"before": "nosuch"}, "is not a program managed under"),
    ("z", {"after": "e"}, "not on tcx ingress"),           # e: managed, tcx, but egress
    ("z", {"after": "t"}, "not on tcx ingress"),           # t: managed, tc (cls_bpf) on the same interface
    ("a", {"before": "a"}, "is this program itself"),
    ("a", {"after": "nosuch"}, "is not a program managed under"),  # an existing program, re-applied
])
def test_bad_relatives_are_refused_with_nothing_changed(hook, short, order, needle):
    hook.apply("a", "tc_next", {"first": True})
    hook.objects["e"] = "tc_next"
    r = run(hook.args("e", "tc_next", direction="egress"))
    assert not r.get("failed"), r
    hook.objects["t"] = "tc_counter"
    r = run({"name": hook.name("t"), "object": obj("tc_counter"), "pin_root": hook.pin_root,
             "attach": {"tc": {"interface": hook.pair.if_b, "netns": hook.pair.ns_b, "direction": "ingress",
                               "priority": 7}}})
    assert not r.get("failed"), r
    kind = hook.objects.get(short, "tc_next")
    args = hook.args(short, kind, order)
    if short == "z":
        del hook.objects["z"]   # never created: nothing to remove afterwards
    before = _snapshot(hook)
    for check in (True, False):
        r = run(args, check=check)
        assert r.get("failed") and needle in r.get("msg", ""), r
        assert _snapshot(hook) == before


def _state(hook, tmp_path, programs, check=False):
    from tests.conftest import ansible_module
    programs = [dict((k, v) for k, v in p.items() if k != "pin_root") for p in programs]  # one for the run
    # no health checks: nothing sends on the pair during the run, so a run count would move only with whatever
    # the kernel itself sends there (IPv6 router solicitations), and these tests are about the order
    return ansible_module("ebpf_state", {"programs": programs, "pin_root": hook.pin_root, "health_checks": "none",
                                         "desired": str(tmp_path / "desired.json")}, check=check)


def test_ebpf_state_places_a_program_next_to_one_listed_before_it(hook, tmp_path):
    """One ebpf_state run on an empty hook: the relative (listed first) is attached, then the program naming it
    in its place; listed the other way round, the run is refused with nothing changed (check mode too)."""
    counter_args, next_args = hook.args("c", "tc_counter"), hook.args("n", "tc_next", {"before": "c"})
    before = _snapshot(hook)
    for check in (True, False):
        r = _state(hook, tmp_path, [next_args, counter_args], check=check)
        assert r.get("failed") and "is not a program managed under" in r.get("msg", ""), r
        assert _snapshot(hook) == before
    r = _state(hook, tmp_path, [counter_args, next_args], check=True)
    assert r["changed"] and not r.get("failed"), r
    assert _snapshot(hook) == before  # check mode: nothing attached
    r = _state(hook, tmp_path, [counter_args, next_args])
    assert r["changed"] and not r.get("failed"), r
    hook.runs_in(["n", "c"])
    r = _state(hook, tmp_path, [counter_args, next_args])
    assert not r["changed"] and not r.get("failed"), r
