"""kernel_info.py against fake /proc, /sys and /boot trees (tests/unit/fixtures/fakehost.py)."""
import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import kernel_info as ki
from tests.unit.fixtures import fakehost


@pytest.mark.parametrize("release, version", [
    ("6.16.2-arch1-1", [6, 16, 2]),
    ("5.15.0-105-generic", [5, 15, 0]),
    ("4.18.0-513.el8.x86_64", [4, 18, 0]),
    ("6.1.0-50-cloud-amd64", [6, 1, 0]),
    ("7.2.13+deb14-amd64", [7, 2, 13]),
    ("6.18.44-fc-v657", [6, 18, 44]),
    ("5.10.0-30-cloud-amd64", [5, 10, 0]),
    ("6.8.0-rc1", [6, 8, 0]),
    ("6.9-rc7", [6, 9, 0]),
    ("5.4", [5, 4, 0]),
    ("6.6.30+rpt-rpi-v8", [6, 6, 30]),
    ("  6.1.0-13-amd64\n", [6, 1, 0]),
])
def test_parse_release(release, version):
    assert ki.parse_release(release) == version


@pytest.mark.parametrize("release", ["", None, "linux", "v6.1.0", "6", "6-rc1", "6.x.1", "6.1.2.3.4x", "abc-6.1"])
def test_parse_release_refuses_garbage(release):
    with pytest.raises(ki.KernelInfoError, match="cannot parse kernel release"):
        ki.parse_release(release)


@pytest.mark.parametrize("version, minimum, expected", [
    ([5, 10, 0], "5.11", False), ([5, 11, 0], "5.11", True), ([6, 1, 0], "5.11", True),
    ([4, 18, 0], "4.18", True), ([4, 17, 99], "4.18", False), ([5, 15, 3], "5.15.4", False),
])
def test_version_at_least(version, minimum, expected):
    assert ki.version_at_least(version, minimum) is expected


def test_release_from_tree(tmp_path):
    root = fakehost.build(tmp_path, fakehost.DEBIAN11)
    assert ki.release(root) == "5.10.0-30-cloud-amd64"


def test_release_missing_is_an_error(tmp_path):
    root = fakehost.build(tmp_path, {"proc/self/status": ""})
    with pytest.raises(ki.KernelInfoError):
        ki.release(root)


def test_config_from_boot(tmp_path):
    root = fakehost.build(tmp_path, fakehost.DEBIAN11)
    config = ki.kernel_config("5.10.0-30-cloud-amd64", root)
    assert config["source"] == "/boot/config-5.10.0-30-cloud-amd64"
    opts = config["options"]
    assert opts["CONFIG_BPF_LSM"] == "y"
    assert opts["CONFIG_NET_CLS_BPF"] == "m"
    assert opts["CONFIG_BPF_STREAM_PARSER"] == "n"      # "is not set"
    assert opts["CONFIG_NET_XGRESS"] == "n"             # absent
    assert opts["CONFIG_LSM"].startswith("lockdown,yama")  # quotes stripped
    assert set(opts) == set(ki.BPF_CONFIG_OPTIONS)


def test_config_gz_wins_over_boot(tmp_path):
    root = fakehost.build(tmp_path, fakehost.DEBIAN11, {"proc/config.gz": "# CONFIG_BPF_LSM is not set\n"})
    config = ki.kernel_config("5.10.0-30-cloud-amd64", root)
    assert config["source"] == "/proc/config.gz"
    assert config["options"]["CONFIG_BPF_LSM"] == "n"


def test_config_unreadable_says_why(tmp_path):
    root = fakehost.build(tmp_path, fakehost.KERNEL_6_18_BARE)
    config = ki.kernel_config("6.18.44-fc-v657", root)
    assert config["source"] is None and config["options"] == {}
    assert "not readable" in config["reason"]
    assert "/proc/config.gz" in config["reason"] and "/boot/config-6.18.44-fc-v657" in config["reason"]


def test_corrupt_config_gz_is_not_readable(tmp_path):
    root = fakehost.build(tmp_path, fakehost.KERNEL_6_18_BARE)
    with open(str(tmp_path / "proc" / "config.gz"), "wb") as handle:
        handle.write(b"not gzip at all")
    config = ki.kernel_config("6.18.44-fc-v657", root)
    assert config["source"] is None and "/proc/config.gz" in config["reason"]


def test_mounts_and_escapes(tmp_path):
    root = fakehost.build(tmp_path, fakehost.DEBIAN11)
    points = ki.mount_points(root)
    assert points["bpffs"] == ["/sys/fs/bpf", "/srv/bpf pins"]
    assert points["tracefs"] == ["/sys/kernel/tracing"]
    assert points["debugfs"] == ["/sys/kernel/debug"]
    assert points["cgroup2"] == ["/sys/fs/cgroup"]
    assert points["securityfs"] == ["/sys/kernel/security"]


@pytest.mark.parametrize("capeff, expected", [
    ("000001ffffffffff", {"cap_bpf": True, "cap_perfmon": True, "cap_net_admin": True, "cap_sys_admin": True}),
    ("0000000000000000", {"cap_bpf": False, "cap_perfmon": False, "cap_net_admin": False, "cap_sys_admin": False}),
    ("000000c000001000", {"cap_bpf": True, "cap_perfmon": True, "cap_net_admin": True, "cap_sys_admin": False}),
    ("0000000000200000", {"cap_bpf": False, "cap_perfmon": False, "cap_net_admin": False, "cap_sys_admin": True}),
])
def test_capabilities(tmp_path, capeff, expected):
    root = fakehost.build(tmp_path, {"proc/self/status": "Name:\tx\nCapEff:\t%s\n" % capeff})
    caps = ki.capabilities(root)
    assert caps["effective"] == capeff
    for name, value in expected.items():
        assert caps[name] is value, name


def test_lsm_list_from_securityfs(tmp_path):
    root = fakehost.build(tmp_path, fakehost.DEBIAN11)
    lsm = ki.active_lsms(root)
    assert lsm == {"active": ["lockdown", "capability", "yama", "apparmor", "tomoyo"],
                   "source": "/sys/kernel/security/lsm", "reason": ""}


def test_lsm_unknown_when_securityfs_not_mounted(tmp_path):
    root = fakehost.build(tmp_path, fakehost.KERNEL_6_18_BARE)
    lsm = ki.active_lsms(root)
    assert lsm["active"] is None and lsm["source"] == "unknown"
    assert "securityfs is not mounted" in lsm["reason"]


@pytest.mark.parametrize("text, mode", [
    ("[none] integrity confidentiality\n", "none"),
    ("none [integrity] confidentiality\n", "integrity"),
    ("none integrity [confidentiality]\n", "confidentiality"),
])
def test_lockdown(tmp_path, text, mode):
    root = fakehost.build(tmp_path, {"sys/kernel/security/lockdown": text})
    assert ki.lockdown(root) == mode


def test_lockdown_unknown(tmp_path):
    root = fakehost.build(tmp_path, fakehost.KERNEL_6_18_BARE)
    assert ki.lockdown(root) is None


@pytest.mark.parametrize("version, mode", [([5, 10, 0], "memlock"), ([5, 11, 0], "memcg"), ([6, 1, 0], "memcg"),
                                           ([4, 18, 0], "memlock")])
def test_memory_accounting(version, mode):
    acc = ki.memory_accounting(version, limits=(65536, -1))
    assert acc["mode"] == mode
    assert acc["memlock_soft"] == 65536 and acc["memlock_hard"] == "unlimited"


def test_facts_on_debian11_tree(tmp_path):
    root = fakehost.build(tmp_path, fakehost.DEBIAN11)
    facts = ki.facts(root)
    assert facts["release"] == "5.10.0-30-cloud-amd64" and facts["version"] == [5, 10, 0]
    assert facts["config_source"] == "/boot/config-5.10.0-30-cloud-amd64"
    assert facts["btf"]["vmlinux"] is True and facts["btf"]["size"] > 24
    assert facts["jit"] == {"enable": 1, "harden": 0, "kallsyms": None}
    assert facts["unprivileged_bpf_disabled"] == 2
    assert facts["memory_accounting"]["mode"] == "memlock"
    assert facts["lockdown"] == "none"
    assert facts["capabilities"]["cap_bpf"] is True


def test_facts_on_bare_tree(tmp_path):
    root = fakehost.build(tmp_path, fakehost.KERNEL_6_18_BARE)
    facts = ki.facts(root)
    assert facts["version"] == [6, 18, 44]
    assert facts["config_source"].startswith("not readable")
    assert facts["jit"]["enable"] is None and facts["unprivileged_bpf_disabled"] is None
    assert facts["lsm"]["active"] is None
    assert facts["memory_accounting"]["mode"] == "memcg"
    assert facts["mounts"]["cgroup2"] == ["/sys/fs/cgroup/unified"] and facts["mounts"]["bpffs"] == []


def test_facts_refuse_unparseable_release(tmp_path):
    root = fakehost.build(tmp_path, fakehost.DEBIAN11, {"proc/sys/kernel/osrelease": "weird-kernel\n"})
    with pytest.raises(ki.KernelInfoError, match="weird-kernel"):
        ki.facts(root)
