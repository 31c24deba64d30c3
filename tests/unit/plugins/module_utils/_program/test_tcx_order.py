"""tcx_order: the attach.tcx.order option checked and made canonical, its flags, its text; the option as both
modules declare it (program_runner.ARGUMENT_SPEC, ebpf_state's programs suboptions derived from it)."""
import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_spec
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import tcx_order
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params


@pytest.mark.parametrize("value, want", [
    (None, None), ({}, None),
    ({"first": True}, {"first": True}),
    ({"last": True}, {"last": True}),
    ({"before": "tcx-a"}, {"before": "tcx-a"}),
    ({"after": "b_2"}, {"after": "b_2"}),
    ({"first": True, "last": None, "before": None, "after": None}, {"first": True}),  # as AnsibleModule fills it
    ({"first": False, "after": "x"}, {"after": "x"}),
])
def test_good_orders(value, want):
    assert tcx_order.normalize(value) == want


@pytest.mark.parametrize("value, match", [
    ("first", "must be a dict"),
    ({"first": True, "last": True}, "exactly one"),
    ({"before": "a", "after": "b"}, "exactly one"),
    ({"first": False}, "exactly one.*got none"),
    ({"first": None, "last": None, "before": None, "after": None}, "got none"),
    ({"top": True}, "unknown key top"),
    ({"first": "yes"}, "must be true"),
    ({"before": 3}, "name of a managed program"),
    ({"after": "../x"}, "order.after: .*not valid"),
    ({"before": "_shared"}, "order.before: .*not valid"),
    ({"after": "a.b"}, "not valid"),
])
def test_bad_orders(value, match):
    with pytest.raises(tcx_order.OrderError, match=match):
        tcx_order.normalize(value)


def test_an_order_error_is_a_spec_error():
    assert issubclass(tcx_order.OrderError, program_spec.SpecError)  # refused like any bad option


def _tcx(**kw):
    v = {"interface": "eth0"}
    v.update(kw)
    return {"tcx": v}


def test_spec_keeps_the_order_only_when_given():
    plain = program_spec.normalize(_tcx(direction="egress"), "classifier")
    assert plain == {"type": "tcx", "interface": "eth0", "netns": None, "direction": "egress"}
    assert program_spec.normalize(_tcx(direction="egress", order=None), "classifier") == plain
    assert program_spec.normalize(_tcx(order={}), "classifier") == dict(plain, direction="ingress")
    ordered = program_spec.normalize(_tcx(order={"after": "filter"}), "tc/egress")
    assert ordered == {"type": "tcx", "interface": "eth0", "netns": None, "direction": "egress",
                       "order": {"after": "filter"}}


def test_spec_refuses_a_bad_order():
    with pytest.raises(program_spec.SpecError, match="exactly one"):
        program_spec.normalize(_tcx(order={"first": True, "before": "x"}), "classifier")


@pytest.mark.parametrize("order, text", [
    (None, "tcx on eth0 (ingress)"), ({"first": True}, "tcx on eth0 (ingress, first)"),
    ({"last": True}, "tcx on eth0 (ingress, last)"), ({"before": "a"}, "tcx on eth0 (ingress, before a)"),
    ({"after": "b"}, "tcx on eth0 (ingress, after b)"),
])
def test_describe_shows_the_position(order, text):
    spec = program_spec.normalize(_tcx(order=order), "classifier")
    assert pa.describe(spec) == text
    assert tcx_order.describe(order) == (text.split(", ")[1][:-1] if order else "appended")


@pytest.mark.parametrize("position, rel, flags", [
    (None, None, 0),
    ("first", None, bs.BPF_F_BEFORE),
    ("last", None, bs.BPF_F_AFTER),
    ("before", 7, bs.BPF_F_BEFORE | bs.BPF_F_LINK),
    ("after", 7, bs.BPF_F_AFTER | bs.BPF_F_LINK),
])
def test_link_create_flags(position, rel, flags):
    assert netlink._tcx_flags(position, rel) == flags


def test_the_kernel_flag_values():
    # include/uapi/linux/bpf.h (6.6+)
    assert (bs.BPF_F_REPLACE, bs.BPF_F_BEFORE, bs.BPF_F_AFTER, bs.BPF_F_ID, bs.BPF_F_LINK) == (4, 8, 16, 32, 8192)


@pytest.mark.parametrize("position, rel, match", [
    ("before", None, "needs a relative"), ("after", 0, "needs a relative"), ("first", 5, "takes no"),
    ("middle", None, "one of first"),
])
def test_link_create_flags_refused(position, rel, match):
    with pytest.raises(netlink.NetlinkError, match=match):
        netlink._tcx_flags(position, rel)


def test_without_an_order_every_position_is_right():
    spec = program_spec.normalize(_tcx(), "classifier")
    assert tcx_order.in_position(spec, 1, "/nonexistent") is True
    assert tcx_order.in_position(None, 1, "/nonexistent") is True  # loaded only: no attach point
    assert tcx_order.of({"type": "tc", "interface": "eth0", "order": {"first": True}}) is None


def _validate(spec, params):
    return ArgumentSpecValidator(spec).validate(params)


@pytest.mark.parametrize("order, error", [
    ({"first": True}, None),
    ({"before": "tcx-a"}, None),
    ({"first": True, "last": True}, "mutually exclusive"),
    ({"before": "a", "after": "b"}, "mutually exclusive"),
    ({"middle": True}, "middle"),
])
def test_both_modules_declare_the_option(order, error):
    attach = {"tcx": {"interface": "eth0", "order": order}}
    program = _validate(program_runner.ARGUMENT_SPEC, {"name": "p", "object": "/x.o", "attach": attach})
    state = _validate(state_params.ARGUMENT_SPEC, {"programs": [{"name": "p", "object": "x.o", "attach": attach}]})
    for res in (program, state):
        msgs = " ".join(str(e) for e in res.error_messages)
        if error is None:
            assert not res.error_messages, msgs
        else:
            assert error in msgs, msgs
    if error is None:
        got = program.validated_parameters["attach"]["tcx"]["order"]
        assert tcx_order.normalize(got) == dict((k, v) for k, v in order.items())


def test_tc_keeps_priority_and_has_no_order():
    tc = program_runner.ARGUMENT_SPEC["attach"]["options"]["tc"]["options"]
    assert "priority" in tc and "order" not in tc
