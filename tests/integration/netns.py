"""Test helper: two network namespaces joined by a veth pair, and ping between them.

    from tests.integration.netns import make_veth_pair, ping

    with make_veth_pair() as pair:
        assert ping(pair.ns_a, pair.addr_b)
        ...  # attach something to pair.if_b in pair.ns_b and watch traffic change

`make_veth_pair(prefix=None, subnet=None)` creates namespaces `<prefix>a` and `<prefix>b` (prefix defaults to a
unique "hmtNNNN"), a veth pair `<prefix>-a` (in ns_a, 10.199.X.1/24) and `<prefix>-b` (in ns_b, 10.199.X.2/24),
brings everything up (loopback too; no IPv6 and no ARP on the pair, so nothing but a test's own traffic
crosses it) and, on exit, deletes both namespaces, which removes the veth pair and every
qdisc, filter and XDP program on it. X is picked so that no other pair of this process uses it.

The pytest fixture `veth_pair` yields the same object (register it from a conftest with
`from tests.integration.netns import veth_pair  # noqa: F401`).

Test-only code: it runs the `ip` and `ping` binaries (plugins/ never do). Traffic stays inside the namespaces.
"""
import contextlib
import json
import itertools
import os
import subprocess

try:
    import pytest
except ImportError:     # usable from plain scripts too (e.g. under the system python3)
    pytest = None

_counter = itertools.count(os.getpid() % 200)


class VethPair(object):
    """Names and addresses of one pair: ns_a/ns_b, if_a/if_b, addr_a/addr_b (no prefix length), subnet."""

    def __init__(self, prefix, subnet):
        self.prefix = prefix
        self.ns_a = prefix + "a"
        self.ns_b = prefix + "b"
        self.if_a = prefix + "-a"
        self.if_b = prefix + "-b"
        self.subnet = subnet                          # e.g. "10.199.7.0/24"
        base = subnet.split("/")[0].rsplit(".", 1)[0]
        self.addr_a = base + ".1"
        self.addr_b = base + ".2"

    def __repr__(self):
        return "VethPair(%s %s/%s <-> %s %s/%s)" % (self.ns_a, self.if_a, self.addr_a, self.ns_b, self.if_b,
                                                    self.addr_b)


def _ip(*args):
    proc = subprocess.run(["ip"] + list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("ip %s failed: %s" % (" ".join(args), proc.stderr.strip()))
    return proc.stdout


def netns_exists(name):
    return os.path.exists(os.path.join("/run/netns", name))


def _next_free():
    for _unused in range(400):
        n = next(_counter) % 250 + 1
        prefix = "hmt%dx%d" % (os.getpid() % 1000, n)
        if not netns_exists(prefix + "a") and not netns_exists(prefix + "b"):
            return prefix, "10.199.%d.0/24" % n
    raise RuntimeError("no free 10.199.X.0/24 test subnet")


@contextlib.contextmanager
def make_veth_pair(prefix=None, subnet=None):
    """Create the pair (see module doc); yields a VethPair; removes everything on exit."""
    if prefix is None or subnet is None:
        free_prefix, free_subnet = _next_free()
        prefix = prefix or free_prefix
        subnet = subnet or free_subnet
    if len(prefix) > 13:
        raise ValueError("prefix %r too long: interface names are limited to 15 characters" % prefix)
    pair = VethPair(prefix, subnet)
    created = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("-n", pair.ns_a, "link", "add", pair.if_a, "type", "veth", "peer", "name", pair.if_b,
            "netns", pair.ns_b)
        for ns, ifname, addr in ((pair.ns_a, pair.if_a, pair.addr_a), (pair.ns_b, pair.if_b, pair.addr_b)):
            _ip("-n", ns, "addr", "add", addr + "/24", "dev", ifname)
            # no IPv6 on the pair: the kernel would send router solicitations and MLD reports by itself, seconds
            # after the link is up, and a test counting packets would count them too
            subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                            "echo 1 > /proc/sys/net/ipv6/conf/%s/disable_ipv6" % ifname], check=True)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", ifname, "up")
        # and no ARP: each side's neighbour entry for the other is permanent. A dynamic one is probed by unicast
        # ARP seconds after traffic stops, and a test that wants one side silent would count that probe
        for ns, ifname, peer_ns, peer_if, peer_addr in ((pair.ns_a, pair.if_a, pair.ns_b, pair.if_b, pair.addr_b),
                                                        (pair.ns_b, pair.if_b, pair.ns_a, pair.if_a, pair.addr_a)):
            mac = _ip("-n", peer_ns, "-j", "link", "show", peer_if)
            _ip("-n", ns, "neigh", "replace", peer_addr, "lladdr", json.loads(mac)[0]["address"], "dev", ifname,
                "nud", "permanent")
        yield pair
    finally:
        for ns in reversed(created):
            try:
                _ip("netns", "del", ns)
            except RuntimeError:
                pass


def ping(from_ns, addr, count=3, timeout=1):
    """True when at least one of `count` pings from namespace `from_ns` to `addr` is answered."""
    proc = subprocess.run(["ip", "netns", "exec", from_ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
                           "-W", str(timeout), addr], capture_output=True, text=True, check=False)
    return proc.returncode == 0


if pytest is not None:
    @pytest.fixture
    def veth_pair():
        """A fresh VethPair for one test, removed afterwards (needs root)."""
        if os.geteuid() != 0:
            pytest.skip("needs root (network namespaces)")
        with make_veth_pair() as pair:
            yield pair
