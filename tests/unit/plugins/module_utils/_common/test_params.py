"""params.with_defaults fills an argument spec's defaults the way AnsibleModule does; params.validate refuses
what AnsibleModule refuses: each bad input below goes through ansible's own validator (ArgumentSpecValidator, the
one AnsibleModule runs) and through params.validate with the same spec constants, and both must refuse it with
the same message; each good input must come out of both the same."""
import re

import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import params
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.params import with_defaults
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_runner
from ansible_collections.hypermesh.ebpf.plugins.module_utils._state import state_params

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


# ---- validate: the same refusals as AnsibleModule --------------------------------------------------------------
PROGRAM = (program_runner.ARGUMENT_SPEC, dict(required_if=program_runner.REQUIRED_IF))  # ebpf_program's module
STATE = (state_params.ARGUMENT_SPEC, {})  # ebpf_state's module
OK = {"name": "a", "object": "/x.o"}

BAD = [
    (PROGRAM, {}),
    (PROGRAM, {"name": "a"}),
    (PROGRAM, {"name": "a", "state": "loaded"}),
    (PROGRAM, dict(OK, state="bogus")),
    (PROGRAM, dict(OK, force="maybe")),
    (PROGRAM, dict(OK, force=[True])),
    (PROGRAM, dict(OK, colour=1)),
    (PROGRAM, dict(OK, attach="not a dict")),
    (PROGRAM, dict(OK, attach={"xdp": {"interface": "e"}, "tc": {"interface": "e"}})),
    (PROGRAM, dict(OK, attach={"xdp": {"interface": "e"}, "tc": None})),
    (PROGRAM, dict(OK, attach={"xdp": {}})),
    (PROGRAM, dict(OK, attach={"xdp": {"interface": "e", "mode": "fast"}})),
    (PROGRAM, dict(OK, attach={"xdp": {"interface": "e", "bad": 1}})),
    (PROGRAM, dict(OK, attach={"tc": {"interface": "e", "priority": "1.5"}})),
    (PROGRAM, dict(OK, attach={"tc": {"interface": "e", "priority": [1]}})),
    (PROGRAM, dict(OK, attach={"tc": {"interface": "e", "direction": "sideways"}})),
    (PROGRAM, dict(OK, attach={"tcx": {"interface": "e", "order": {"first": True, "last": True}}})),
    (PROGRAM, dict(OK, attach={"tcx": {"interface": "e", "order": {"first": "perhaps"}}})),
    (PROGRAM, dict(OK, attach={"cgroup": {"type": "ingress"}})),
    (PROGRAM, dict(OK, attach={"cgroup": {"path": "/sys/fs/cgroup", "type": "sideways"}})),
    (STATE, {"programs": ["x"]}),
    (STATE, {"programs": "x"}),
    (STATE, {"programs": [{"name": "a", "maps": [{"entries": []}]}]}),
    (STATE, {"programs": [{"name": "a", "maps": "x"}]}),
    (STATE, {"programs": [{"name": "a", "maps": [{"map": "m", "entries": ["a"]}]}]}),
    (STATE, {"programs": [{"name": "a", "maps": [{"map": "m", "state": "gone"}]}]}),
    (STATE, {"programs": [{"name": "a", "health": {"check": "ping"}}]}),
    (STATE, {"programs": [{"name": "a", "health": {"timeout": "soon"}}]}),
    (STATE, {"programs": [{"name": "a", "attach": {"xdp": {"interface": "e"}, "lsm": "x"}}]}),
    (STATE, {"health_timeout": "x"}),
    (STATE, {"prune": "sometimes"}),
    (STATE, {"objects": [{"content": "x"}]}),
]

GOOD = [
    (PROGRAM, OK),
    (PROGRAM, dict(OK, force="yes", state="loaded")),
    (PROGRAM, {"name": 5, "state": "absent"}),
    (PROGRAM, dict(OK, attach={"tc": {"interface": "e", "priority": "2"}})),
    (PROGRAM, dict(OK, attach={"tc": {"interface": "e", "priority": 3.0}})),
    (PROGRAM, dict(OK, attach={"tcx": {"interface": "e", "order": {"before": "other"}}})),
    (PROGRAM, dict(OK, attach={"xdp": None})),
    (PROGRAM, dict(OK, attach='{"xdp": {"interface": "e", "mode": "native"}}')),
    (PROGRAM, dict(OK, object="~/x.o", pin_root="$HOME/bpf")),
    (STATE, {"programs": [{"name": "a", "object": "/x.o", "maps": [{"map": "m", "entries": [{"key": 1}]}],
                           "health": {"check": "counter", "map": "m", "timeout": "2.5"}}],
             "prune": "true", "health_timeout": 3}),
]


def _ansible(case, given):
    spec, rules = case
    return ArgumentSpecValidator(spec, **rules).validate(given)


def _same(message):
    """A message without the part that only describes a conversion (ansible's lists the booleans, unordered)."""
    message = re.sub(r"(unable to convert to \w+):.*", r"\1", message)
    return re.sub(r"^Unsupported parameters: ", "", message)


@pytest.mark.parametrize("case,given", BAD, ids=[repr(case_given[1])[:60] for case_given in BAD])
def test_validate_refuses_what_ansiblemodule_refuses(case, given):
    theirs = [_same(m) for m in _ansible(case, given).error_messages]
    assert theirs, "ansible accepts %r: not a bad input" % (given,)
    spec, rules = case
    with pytest.raises(params.ParamError) as e:
        params.validate(given, spec, **rules)
    assert _same(str(e.value)) in theirs


@pytest.mark.parametrize("case,given", GOOD, ids=[repr(case_given[1])[:60] for case_given in GOOD])
def test_validate_accepts_and_converts_as_ansiblemodule_does(case, given):
    result = _ansible(case, given)
    assert result.error_messages == []
    spec, rules = case
    assert params.validate(given, spec, **rules) == result.validated_parameters


def test_validate_refuses_its_own_output_and_takes_it_without_none():
    """ansible counts keys: AnsibleModule's output (every attach point present, None) is refused when fed back,
    so saved output goes through without_none first (reapply does)."""
    spec, rules = PROGRAM
    out = params.validate(dict(OK, attach={"xdp": {"interface": "e"}}), spec, **rules)
    with pytest.raises(params.ParamError, match="mutually exclusive"):
        params.validate(out, spec, **rules)
    assert _ansible(PROGRAM, out).error_messages
    assert params.validate(params.without_none(out), spec, **rules) == out


def test_a_spec_key_validate_does_not_implement_fails_loudly():
    with pytest.raises(NotImplementedError, match="aliases"):
        params.validate({"a": 1}, {"a": dict(type="int", aliases=["b"])})
    with pytest.raises(NotImplementedError, match="bits"):
        params.validate({"a": 1}, {"a": dict(type="bits")})
