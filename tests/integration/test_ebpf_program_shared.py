"""ebpf_program with objects holding several programs, and LIBBPF_PIN_BY_NAME maps shared between programs.

- xdp_multi: `program` chooses one of two programs; omitting it is an error that lists both.
- xdp_pinned_shared: two managed programs (one per side of a veth pair) share `<pin_root>/_shared/shared_counter`
  (one map id), traffic on both sides moves it; removing one keeps the pin, removing the last removes it.
"""
import os


from tests.conftest import needs_root
from test_ebpf_program_common import pin_root_fixture, counter, kernel_ids, leaked, obj, ping, run

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink

pytestmark = needs_root


pin_root = pin_root_fixture("hm-prog-shared")


def test_choose_program_in_multi_program_object(pin_root, pair):
    name = "m-multi-%d" % os.getpid()
    attach = {"xdp": {"interface": pair.if_b, "netns": pair.ns_b, "mode": "generic"}}
    r = run({"name": name, "object": obj("xdp_multi"), "pin_root": pin_root, "attach": attach})
    assert r.get("failed") and "xdp_pass_a" in r["msg"] and "xdp_pass_b" in r["msg"] and "program" in r["msg"]
    r = run({"name": name, "object": obj("xdp_multi"), "program": "xdp_pass_b", "pin_root": pin_root,
             "attach": attach})
    assert r["changed"], r
    c0 = counter(os.path.join(pin_root, name, "maps", "count_b"))
    assert ping(pair.ns_a, pair.addr_b)
    assert counter(os.path.join(pin_root, name, "maps", "count_b")) > c0
    assert counter(os.path.join(pin_root, name, "maps", "count_a")) == 0
    # switching to the other program of the same object replaces it
    r2 = run({"name": name, "object": obj("xdp_multi"), "program": "xdp_pass_a", "pin_root": pin_root,
              "attach": attach})
    assert r2["changed"] and netlink.xdp_query(pair.if_b, pair.ns_b)["prog_id"] == r2["prog_id"] != r["prog_id"]
    assert run({"name": name, "state": "absent", "pin_root": pin_root})["changed"]


def test_shared_pinned_map(pin_root, pair):
    before = kernel_ids()
    shared = os.path.join(pin_root, "_shared", "shared_counter")
    names = ["m-sh-a-%d" % os.getpid(), "m-sh-b-%d" % os.getpid()]
    sides = [(pair.if_a, pair.ns_a), (pair.if_b, pair.ns_b)]
    results = []
    for name, (ifname, ns) in zip(names, sides):
        r = run({"name": name, "object": obj("xdp_pinned_shared"), "pin_root": pin_root,
                 "attach": {"xdp": {"interface": ifname, "netns": ns, "mode": "generic"}}})
        assert r["changed"], r
        results.append(r)
    assert os.path.exists(shared)
    assert "shared_counter" not in results[0]["maps"]  # pinned by libbpf under _shared, not per program
    c0 = counter(shared)
    assert ping(pair.ns_a, pair.addr_b, count=3)
    assert counter(shared) >= c0 + 6  # requests counted on b, replies on a: one map for both programs
    assert run({"name": names[0], "state": "absent", "pin_root": pin_root})["changed"]
    assert os.path.exists(shared)
    assert run({"name": names[1], "state": "absent", "pin_root": pin_root})["changed"]
    assert not os.path.exists(shared)
    assert not any(leaked(before, ["xdp_shared"], ["shared_counter"]).values())
