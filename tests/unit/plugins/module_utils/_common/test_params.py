"""params.with_defaults fills an argument spec's defaults the way AnsibleModule does."""
import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.params import with_defaults

SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="attached"),
    attach=dict(type="dict", options=dict(
        xdp=dict(type="dict", options=dict(interface=dict(type="str"), mode=dict(type="str", default="auto"))),
        tracepoint=dict(type="str"))),
)


@pytest.mark.parametrize("given,want", [
    ({"name": "a"}, {"name": "a", "state": "attached", "attach": None}),
    ({"name": "a", "state": "absent"}, {"name": "a", "state": "absent", "attach": None}),
    ({"name": "a", "attach": {"xdp": {"interface": "eth0"}}},
     {"name": "a", "state": "attached",
      "attach": {"xdp": {"interface": "eth0", "mode": "auto"}, "tracepoint": None}}),
    ({"name": "a", "attach": {"tracepoint": "syscalls/sys_enter_openat"}},
     {"name": "a", "state": "attached", "attach": {"xdp": None, "tracepoint": "syscalls/sys_enter_openat"}}),
])
def test_defaults(given, want):
    assert with_defaults(given, SPEC) == want


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="unsupported parameters: colour"):
        with_defaults({"name": "a", "colour": "red"}, SPEC)
