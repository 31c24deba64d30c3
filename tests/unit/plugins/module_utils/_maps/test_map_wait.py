"""map_wait: the number compared, and the poll loop against a fake clock (no real sleeping)."""
import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._maps import map_wait


class Clock(object):
    """time.monotonic and time.sleep stand-ins: sleeping advances the clock."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(round(s, 6))
        self.now += s


def reader(values):
    """read() returning the given values one by one (the last one for ever after)."""
    values = list(values)
    calls = []

    def read():
        calls.append(1)
        return values.pop(0) if len(values) > 1 else values[0]
    read.calls = calls
    return read


@pytest.mark.parametrize("value, field, expected", [
    (7, None, 7),
    ({"packets": 3, "bytes": 90}, "packets", 3),
    (0, None, 0),
])
def test_number(value, field, expected):
    assert map_wait.number(value, field) == expected


@pytest.mark.parametrize("value, field, message", [
    ({"packets": 3, "bytes": 90}, "octets", "no such member (members: bytes, packets)"),
    (5, "packets", "no such member (members: none: the value is not a struct)"),
    ({"packets": 3}, None, "wait_for compares integers"),
    ("0a 00", None, "value_format=int"),
    (True, None, "wait_for compares integers"),
])
def test_number_refuses(value, field, message):
    with pytest.raises(map_wait.WaitError) as e:
        map_wait.number(value, field)
    assert message in str(e.value)


def test_returns_at_once_when_already_above():
    clock = Clock()
    read = reader([12])
    assert map_wait.wait_above(read, 11, timeout=5, clock=clock, sleep=clock.sleep) == (True, 12, 0.0)
    assert len(read.calls) == 1 and clock.sleeps == []


def test_polls_until_the_value_passes():
    clock = Clock()
    read = reader([None, 5, 5, 6])          # a key not there yet, then not above 5 twice
    reached, value, seconds = map_wait.wait_above(read, 5, timeout=5, clock=clock, sleep=clock.sleep)
    assert reached and value == 6 and seconds == pytest.approx(0.3)
    assert clock.sleeps == [0.1, 0.1, 0.1]


def test_struct_member():
    clock = Clock()
    read = reader([{"packets": 1, "bytes": 60}, {"packets": 2, "bytes": 120}])
    reached, value, _unused = map_wait.wait_above(read, 1, field="packets", timeout=5, clock=clock, sleep=clock.sleep)
    assert reached and value == {"packets": 2, "bytes": 120}


def test_times_out_with_the_last_value_and_never_oversleeps():
    clock = Clock()
    read = reader([3])
    reached, value, seconds = map_wait.wait_above(read, 3, timeout=0.25, clock=clock, sleep=clock.sleep)
    assert (reached, value) == (False, 3) and seconds == pytest.approx(0.25)
    assert clock.sleeps == [0.1, 0.1, 0.05]     # the last sleep ends at the deadline, not past it
    assert len(read.calls) == 4                 # and the value is read once more there


def test_zero_timeout_reads_once():
    clock = Clock()
    read = reader([None])
    assert map_wait.wait_above(read, 0, timeout=0, clock=clock, sleep=clock.sleep) == (False, None, 0.0)
    assert len(read.calls) == 1


def test_timeout_message():
    assert map_wait.timeout_message("xdp_stats[0].packets", 0, 0, 4.02) == \
        "xdp_stats[0].packets stayed at 0, not above 0, for 4.0 s"
    assert map_wait.timeout_message("seen[10.0.0.1]", None, 0, 2) == "seen[10.0.0.1]: the key was not in the map for 2.0 s"
