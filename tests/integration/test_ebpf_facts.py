"""ebpf_facts on this machine's real kernel, through real `ansible` ad-hoc runs.

Every assertion is checked against a second, independent source: `uname -r`, sysfs, /proc/config.gz,
`bpftool feature probe` (libbpf's probes), bpftool loading the collection's example objects, `ip -j link`.
The machine (see /work/shared/KERNELS.md): kernel 6.18 without kprobes, bpf in the active LSM list.
"""
import glob
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import COLLECTIONS, TOP, needs_root
from tests.integration.netns import make_veth_pair

pytestmark = needs_root

OBJECTS = os.path.join(TOP, "examples", "objects")
ALWAYS_HERE = ["xdp", "tc", "tracepoint", "raw_tracepoint", "tcx", "cgroup", "bpf_link", "perf_link", "ringbuf",
               "btf", "bpf_stats", "global_data", "uprobe"]


def run_facts(args=None, check=False, prefix=None, python=None):
    """Run hypermesh.ebpf.ebpf_facts on localhost; return (result dict, stderr).

    Uses the core `minimal` stdout callback (the `json` one needs ansible.posix) and parses its
    `localhost | STATUS => {...}` line. `prefix` runs ansible under another command (setpriv, ip netns exec,
    unshare); output after the JSON object is returned in result["_trailer"].
    """
    cmd = list(prefix or []) + [
        os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local", "-i", "localhost,",
        "-m", "hypermesh.ebpf.ebpf_facts", "-e", "ansible_python_interpreter=" + (python or sys.executable)]
    if args:
        cmd += ["-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_NOCOLOR="1", LANG="C")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOP, check=False)
    out = proc.stdout
    marker = out.find("localhost | ")
    arrow = out.find(" => ", marker)
    if marker < 0 or arrow < 0:
        raise AssertionError("ansible produced no result (rc=%d)\nstdout:\n%s\nstderr:\n%s"
                             % (proc.returncode, out[-4000:], proc.stderr[-4000:]))
    result, end = json.JSONDecoder().raw_decode(out[arrow + 4:])
    result["_status"] = out[marker + len("localhost | "):arrow]
    result["_trailer"] = out[arrow + 4 + end:]
    return result, proc.stderr


@pytest.fixture(scope="module")
def facts():
    result, _stderr = run_facts()
    assert result["_status"] == "SUCCESS", result
    assert result["changed"] is False
    return result["ansible_facts"]["ebpf"]


def bpftool(*args):
    return json.loads(subprocess.check_output(["bpftool", "-j"] + list(args)))


def read(path):
    with open(path) as handle:
        return handle.read().strip()


# ---------------------------------------------------------------- kernel

def test_release_is_uname_r(facts):
    uname = subprocess.check_output(["uname", "-r"], text=True).strip()
    assert facts["kernel"]["release"] == uname
    major, minor = uname.split(".")[:2]
    assert facts["kernel"]["version"][:2] == [int(major), int(minor.split("-")[0])]


def test_config_matches_proc_config_gz(facts):
    if not os.path.exists("/proc/config.gz"):
        pytest.skip("no /proc/config.gz here")
    text = subprocess.check_output(["zcat", "/proc/config.gz"], text=True)
    assert facts["kernel"]["config_source"] == "/proc/config.gz"
    config = facts["kernel"]["config"]
    for name in ("CONFIG_BPF_SYSCALL", "CONFIG_BPF_LSM", "CONFIG_DEBUG_INFO_BTF", "CONFIG_NET_CLS_BPF"):
        assert ("%s=%s" % (name, config[name])) in text.splitlines(), name
    assert config["CONFIG_KPROBES"] == "n" and "# CONFIG_KPROBES is not set" in text


def test_kernel_state_matches_sysfs_and_proc(facts):
    kernel = facts["kernel"]
    assert kernel["btf"] == {"vmlinux": True, "path": "/sys/kernel/btf/vmlinux",
                             "size": os.stat("/sys/kernel/btf/vmlinux").st_size}
    assert kernel["jit"]["enable"] == int(read("/proc/sys/net/core/bpf_jit_enable"))
    assert kernel["unprivileged_bpf_disabled"] == int(read("/proc/sys/kernel/unprivileged_bpf_disabled"))
    assert "bpf" in kernel["lsm"]["active"]
    if os.path.exists("/sys/kernel/security/lsm"):
        assert kernel["lsm"]["active"] == read("/sys/kernel/security/lsm").split(",")
    assert kernel["memory_accounting"]["mode"] == "memcg"      # 6.18 >= 5.11
    assert "/sys/fs/cgroup/unified" in kernel["mounts"]["cgroup2"]
    caps = kernel["capabilities"]
    assert caps["cap_bpf"] and caps["cap_sys_admin"] and caps["cap_net_admin"] and caps["cap_perfmon"]


# ---------------------------------------------------------------- features

@pytest.mark.parametrize("feature", ALWAYS_HERE)
def test_supported_here(facts, feature):
    result = facts["features"][feature]
    assert result["supported"] is True and result["probed"] is True, result
    assert result["min_kernel"]


def test_kprobe_not_supported_because_no_kprobes(facts):
    result = facts["features"]["kprobe"]
    assert result["supported"] is False and result["probed"] is True
    assert "kprobes" in result["reason"] and "CONFIG_KPROBES" in result["reason"]
    assert not os.path.exists("/sys/bus/event_source/devices/kprobe")
    assert os.path.exists("/sys/bus/event_source/devices/uprobe/type")  # uprobes have a PMU of their own
    assert result["message"].startswith("kprobe programs are not supported on kernel %s: the kernel was built "
                                        "without kprobes" % os.uname().release)
    assert "; kprobe needs kernel >= 4.1 built with CONFIG_KPROBES" in result["message"]
    assert all("message" not in facts["features"][name] for name in ALWAYS_HERE)


def test_holder_not_supported_because_no_systemd(facts):
    """This machine was not booted with systemd, so nothing could keep the holder service running."""
    result = facts["features"]["holder"]
    assert not os.path.isdir("/run/systemd/system")
    assert result["supported"] is False and result["probed"] is True, result
    assert result["reason"] == ("the host was not booted with systemd (no /run/systemd/system), which keeps the "
                                "holder running")
    assert result["min_kernel"] == "4.7"
    assert result["message"].startswith("held attachments (tracepoint, kprobe and uprobe programs kept attached by "
                                        "the holder service, hypermesh-ebpf-holder.service, where the kernel cannot "
                                        "pin them) are not supported on kernel %s: the host was not booted with "
                                        "systemd" % os.uname().release)
    assert "; holder needs kernel >= 4.7 with perf events that run bpf programs" in result["message"]


def test_require_gates_with_the_same_refusal(facts):
    """probes.require(), what the other modules gate with, refuses exactly what the facts call unsupported."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    for name, fact in facts["features"].items():
        if fact["supported"]:
            assert probes.require(name) is None, name
        else:
            with pytest.raises(probes.Unsupported) as info:
                probes.require(name)
            assert str(info.value) == fact["message"], name


def test_program_and_map_types_agree_with_bpftool(facts):
    """libbpf's own probes (bpftool feature probe) must agree with ours, type by type."""
    probe = bpftool("feature", "probe", "kernel")
    progs, maps = probe["program_types"], probe["map_types"]
    features = facts["features"]
    assert features["xdp"]["supported"] == progs["have_xdp_prog_type"]
    assert features["tc"]["supported"] == progs["have_sched_cls_prog_type"]
    assert features["raw_tracepoint"]["supported"] == progs["have_raw_tracepoint_prog_type"]
    assert features["cgroup"]["supported"] == progs["have_cgroup_skb_prog_type"]
    assert features["fentry"]["supported"] == progs["have_tracing_prog_type"]
    lsm_active = "bpf" in facts["kernel"]["lsm"]["active"]
    assert features["lsm"]["supported"] == (progs["have_lsm_prog_type"] and lsm_active)
    assert features["ringbuf"]["supported"] == maps["have_ringbuf_map_type"]


def _bpffs_at_sys_fs_bpf():
    with open("/proc/self/mounts") as f:
        return any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in f)


@pytest.mark.parametrize("feature, obj", [("fentry", "fentry_unlinkat.bpf.o"), ("lsm", "lsm_file_open.bpf.o"),
                                          ("xdp", "xdp_counter.bpf.o"), ("tracepoint", "tp_openat.bpf.o")])
def test_features_agree_with_loading_the_example_objects(facts, feature, obj):
    """What bpftool (libbpf) can load from the collection's own objects is what the facts call supported."""
    if not _bpffs_at_sys_fs_bpf():  # the machine's mount table, not the facts under test
        pytest.skip("bpffs is not mounted at /sys/fs/bpf (/proc/self/mounts)")
    pin = "/sys/fs/bpf/hm_facts_check_%d" % os.getpid()
    proc = subprocess.run(["bpftool", "prog", "load", os.path.join(OBJECTS, obj), pin], capture_output=True,
                          text=True, check=False)
    if os.path.exists(pin):
        os.unlink(pin)
    loaded = proc.returncode == 0
    if feature == "lsm":
        loaded = loaded and "bpf" in facts["kernel"]["lsm"]["active"]
    assert facts["features"][feature]["supported"] == loaded, (facts["features"][feature], proc.stderr[-500:])
    if not loaded:
        # the reason must say what the kernel answered, not guess
        assert "EPERM" in facts["features"][feature]["reason"] or "not" in facts["features"][feature]["reason"]


def _probe_objects():
    """Ids of the programs and maps named hm_probe (the probes' name) the kernel holds right now."""
    return set([("prog", p["id"]) for p in bpftool("prog", "show") if p.get("name") == "hm_probe"] +
               [("map", m["id"]) for m in bpftool("map", "show") if m.get("name") == "hm_probe"])


def test_probes_leave_nothing_behind_in_process():
    """Other modules probe inside their own process (probes.require): every fd must be closed again."""
    from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import probes
    before = sorted(os.listdir("/proc/self/fd"))
    found = probes.probe_all(refresh=True)
    assert found["xdp"]["supported"]
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_probes_leave_nothing_behind_after_the_module():
    result, _unused = run_facts({"gather": ["features"]})
    assert result["_status"] == "SUCCESS"
    left = _probe_objects()  # ours, or another engineer's probe running right now
    deadline = time.time() + 5  # the kernel frees closed programs from a work queue
    while left and time.time() < deadline:
        time.sleep(0.2)
        left &= _probe_objects()
    assert left == set(), "probe objects still held by the kernel: %s" % sorted(left)


def test_runs_on_the_oldest_guest_python(facts):
    """Debian 11 guests run modules with Python 3.9: same facts from a 3.9 interpreter when one is at hand."""
    found = sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9")) + \
        [p for p in ("/usr/bin/python3.9",) if os.path.exists(p)]
    if not found:
        pytest.skip("no Python 3.9 interpreter on this machine")
    result, _unused = run_facts({"gather": ["kernel", "features"]}, python=found[0])
    assert result["_status"] == "SUCCESS", result
    ebpf = result["ansible_facts"]["ebpf"]
    assert ebpf["kernel"]["release"] == facts["kernel"]["release"]
    assert dict((k, v["supported"]) for k, v in ebpf["features"].items()) == \
        dict((k, v["supported"]) for k, v in facts["features"].items())


def test_check_mode_reports_the_same(facts):
    result, _unused = run_facts({"gather": ["features"]}, check=True)
    assert result["_status"] == "SUCCESS" and result["changed"] is False
    got = result["ansible_facts"]["ebpf"]["features"]
    assert dict((k, v["supported"]) for k, v in got.items()) == \
        dict((k, v["supported"]) for k, v in facts["features"].items())


def test_subsets():
    result, _unused = run_facts({"gather": ["features"], "features": ["xdp", "kprobe"]})
    ebpf = result["ansible_facts"]["ebpf"]
    assert list(ebpf) == ["features"] and sorted(ebpf["features"]) == ["kprobe", "xdp"]
    result, _unused = run_facts({"gather": ["kernel", "hardware"]})
    assert sorted(result["ansible_facts"]["ebpf"]) == ["hardware", "kernel"]


def test_bad_feature_name_is_a_clear_error():
    result, _unused = run_facts({"features": ["usdt"]})
    assert result["_status"].startswith("FAILED")
    assert "usdt" in result["msg"] and "features" in result["msg"]


# ---------------------------------------------------------------- hardware

def test_cpus_match_sysfs(facts):
    cpus = facts["hardware"]["cpus"]
    assert cpus["possible"] == read("/sys/devices/system/cpu/possible")
    assert cpus["online"] == read("/sys/devices/system/cpu/online")
    assert cpus["online_count"] == os.sysconf("SC_NPROCESSORS_ONLN")
    assert cpus["possible_count"] >= cpus["online_count"]
    assert cpus["arch"] == os.uname().machine


def test_memory_matches_meminfo(facts):
    total_kb = [int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:")][0]
    assert facts["hardware"]["memory"]["total_bytes"] == total_kb * 1024


def test_block_devices_match_sysfs(facts):
    devices = facts["hardware"]["block_devices"]
    for name in os.listdir("/sys/block"):
        size = int(read("/sys/block/%s/size" % name)) * 512
        if size == 0 and name.startswith(("loop", "ram", "zram")):
            assert name not in devices
        else:
            assert devices[name]["size_bytes"] == size


def test_interfaces_match_ip_link(facts):
    ifaces = facts["hardware"]["interfaces"]
    links = dict((link["ifname"], link) for link in json.loads(subprocess.check_output(["ip", "-j", "link"])))
    assert sorted(ifaces) == sorted(links)
    lo = ifaces["lo"]
    assert lo["mtu"] == 65536 and lo["driver"] == "loopback" and lo["xdp_modes"] == ["generic"]
    nics = [name for name in ifaces if os.path.islink("/sys/class/net/%s/device/driver" % name)]
    assert nics, "no physical/virtio NIC found"
    for name in nics:
        driver = os.path.basename(os.readlink("/sys/class/net/%s/device/driver" % name))
        assert ifaces[name]["driver"] == driver
        assert ifaces[name]["mtu"] == links[name]["mtu"]
        assert ifaces[name]["ifindex"] == links[name]["ifindex"]
        assert ifaces[name]["rx_queues"] == len([q for q in os.listdir("/sys/class/net/%s/queues" % name)
                                                 if q.startswith("rx-")])
        if driver == "virtio_net":
            assert "native" in ifaces[name]["xdp_modes"]


def test_veth_in_a_test_namespace():
    """The module reads the interfaces of the network namespace it runs in."""
    with make_veth_pair() as pair:
        subprocess.check_call(["ip", "-n", pair.ns_a, "link", "set", pair.if_a, "mtu", "1400"])
        result, _unused = run_facts({"gather": ["hardware"]}, prefix=["ip", "netns", "exec", pair.ns_a])
        ifaces = result["ansible_facts"]["ebpf"]["hardware"]["interfaces"]
        assert sorted(ifaces) == sorted(["lo", pair.if_a])
        veth = ifaces[pair.if_a]
        assert veth["driver"] == "veth" and veth["driver_source"] == "ethtool"
        assert veth["mtu"] == 1400
        assert veth["xdp_modes"][:2] == ["generic", "native"]
        assert veth["xdp_source"] == "xdp_features" and "basic" in veth["xdp_features"]
        assert ifaces["lo"]["mtu"] == 65536


# ---------------------------------------------------------------- mounts: read privately, host unchanged

_SHOW_MOUNTS = ('umount /sys/kernel/security 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; "$@"; '
                'echo; echo MOUNTS-AFTER; grep -E " - (securityfs|tracefs) " /proc/self/mountinfo; true')


def test_unmounted_securityfs_and_tracefs_are_read_privately():
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SHOW_MOUNTS, "sh"]
    result, _unused = run_facts({"gather": ["kernel", "features"], "features": ["tracepoint", "lsm"]}, prefix=prefix)
    kernel = result["ansible_facts"]["ebpf"]["kernel"]
    assert kernel["mounts"]["securityfs"] == [] and kernel["mounts"]["tracefs"] == []
    assert "bpf" in kernel["lsm"]["active"] and kernel["lsm"]["source"] != "unknown"
    assert kernel["lockdown"] in ("none", "integrity", "confidentiality")
    assert result["ansible_facts"]["ebpf"]["features"]["tracepoint"]["supported"] is True
    after = result["_trailer"].split("MOUNTS-AFTER", 1)[1]
    assert after.strip() == "", "the module left a mount behind: %s" % after


def test_private_mounts_false_mounts_nothing():
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SHOW_MOUNTS, "sh"]
    result, _unused = run_facts({"gather": ["kernel", "features"], "features": ["tracepoint"], "private_mounts": False},
                                prefix=prefix)
    ebpf = result["ansible_facts"]["ebpf"]
    assert ebpf["kernel"]["lockdown"] is None
    tracepoint = ebpf["features"]["tracepoint"]
    assert tracepoint["probed"] is False and "tracefs is not mounted" in tracepoint["reason"]
    assert result["_trailer"].split("MOUNTS-AFTER", 1)[1].strip() == ""


# ---------------------------------------------------------------- without privileges

def _check_unprivileged(ebpf):
    caps = ebpf["kernel"]["capabilities"]
    assert not (caps["cap_bpf"] or caps["cap_sys_admin"] or caps["cap_net_admin"] or caps["cap_perfmon"])
    features = ebpf["features"]
    assert features["xdp"]["probed"] is False
    assert features["xdp"]["reason"] == "could not probe: needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN (EPERM)"
    assert features["bpf_stats"]["reason"] == "could not probe: needs CAP_SYS_ADMIN (EPERM)"
    for name, result in features.items():
        if not result["probed"]:
            assert result["supported"] is False and result["reason"].startswith("could not probe: "), name
    # decided without privileges: the kernel has no kprobes at all, and BTF is a readable file
    assert features["kprobe"]["probed"] is True and features["kprobe"]["supported"] is False
    assert features["btf"]["supported"] is True
    assert ebpf["hardware"]["interfaces"]["lo"]["mtu"] == 65536


def test_without_capabilities_through_ansible():
    """uid 0 with an empty capability bounding set: what an unprivileged container gets."""
    result, stderr = run_facts(prefix=["setpriv", "--bounding-set=-all", "--inh-caps=-all"])
    assert result["_status"] == "SUCCESS", result
    _check_unprivileged(result["ansible_facts"]["ebpf"])
    assert "eBPF feature xdp: could not probe" in stderr


def test_as_nobody():
    """uid/gid 65534 with the system python3 running the module file (the venv's python lives under /root)."""
    site = os.path.join(TOP, ".venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=False).stdout.strip()
    if version != "%d.%d" % sys.version_info[:2]:
        pytest.skip("system python3 %s cannot use the venv's ansible (%d.%d)" % ((version,) + sys.version_info[:2]))
    work = "/tmp/hm_facts_nobody_%d" % os.getpid()
    os.mkdir(work)
    try:
        os.chmod(work, 0o777)
        args = os.path.join(work, "args.json")
        with open(args, "w") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": {}}, handle)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "HOME=" + work,
             "PYTHONPATH=%s:%s" % (site, COLLECTIONS), "/usr/bin/python3",
             os.path.join(TOP, "plugins", "modules", "ebpf_facts.py"), args],
            capture_output=True, text=True, cwd=work, check=False)
    finally:
        subprocess.call(["rm", "-rf", work])
    result = json.loads(proc.stdout)
    assert not result.get("failed"), result
    ebpf = result["ansible_facts"]["ebpf"]
    _check_unprivileged(ebpf)
    assert ebpf["kernel"]["release"] == os.uname().release
    assert any("could not probe" in json.dumps(w) for w in result["warnings"])
