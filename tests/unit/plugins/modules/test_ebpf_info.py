"""ebpf_info's error path: the host's state (an errno from bpf(2) or netlink, the host lock held) is reported as a
failed read; anything else is a bug and raises with its traceback."""
import errno

import pytest

from ansible_collections.hypermesh.ebpf.plugins.modules import ebpf_info
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import inventory


class Done(Exception):
    def __init__(self, kind, result):
        super(Done, self).__init__(kind)
        self.kind, self.result = kind, result


class FakeModule(object):
    """What main() needs of AnsibleModule: the parameters with their defaults, fail_json and exit_json."""

    def __init__(self, argument_spec, supports_check_mode):
        self.params = dict((k, v.get("default")) for k, v in argument_spec.items())
        self.check_mode = False

    def fail_json(self, **result):
        raise Done("fail", result)

    def exit_json(self, **result):
        raise Done("exit", result)


def run(monkeypatch, collect):
    monkeypatch.setattr(ebpf_info, "AnsibleModule", FakeModule)
    monkeypatch.setattr(inventory, "collect", collect)
    with pytest.raises(Done) as done:
        ebpf_info.main()
    return done.value


def test_a_read_is_returned(monkeypatch):
    done = run(monkeypatch, lambda *a, **kw: {"programs": [], "managed_names": []})
    assert done.kind == "exit" and done.result == {"changed": False, "programs": [], "managed_names": []}


@pytest.mark.parametrize("error, text", [
    (bs.BpfError(errno.EPERM, "BPF_PROG_GET_NEXT_ID"), "BPF_PROG_GET_NEXT_ID"),
    (OSError(errno.EACCES, "Permission denied"), "Permission denied"),
    (netlink.NetlinkError("network namespace blue does not exist (/run/netns/blue)", errno.ENOENT), "blue"),
    (lock.LockTimeout("the host lock is held by another run"), "host lock"),
])
def test_host_state_is_reported(monkeypatch, error, text):
    def collect(*a, **kw):
        raise error
    done = run(monkeypatch, collect)
    assert done.kind == "fail"
    assert done.result["msg"].startswith("reading the host's BPF objects failed: ") and text in done.result["msg"]


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), KeyError("run_cnt"), AttributeError("x")])
def test_a_bug_is_not_relabelled_as_host_state(monkeypatch, bug):
    def collect(*a, **kw):
        raise bug
    monkeypatch.setattr(ebpf_info, "AnsibleModule", FakeModule)
    monkeypatch.setattr(inventory, "collect", collect)
    with pytest.raises(type(bug)):
        ebpf_info.main()
