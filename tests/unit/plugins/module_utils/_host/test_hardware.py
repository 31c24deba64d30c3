"""hardware.py against fake /proc and /sys trees (tests/unit/fixtures/fakehost.py)."""
import pytest

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host import hardware as hw
from tests.unit.fixtures import fakehost


@pytest.fixture
def debian11(tmp_path):
    return fakehost.build(tmp_path, fakehost.DEBIAN11)


def test_cpus(debian11):
    cpus = hw.cpus(debian11)
    assert cpus["online"] == "0-3" and cpus["online_count"] == 4
    assert cpus["possible"] == "0-7" and cpus["possible_count"] == 8
    assert cpus["model"] == "AMD EPYC 7B13"
    assert cpus["arch"]


def test_memory(debian11):
    assert hw.memory(debian11) == {"total_bytes": 2014436 * 1024, "available_bytes": 1500000 * 1024}


def test_block_devices_skip_empty_loop_and_ram(debian11):
    devices = hw.block_devices(debian11)
    assert sorted(devices) == ["loop1", "sr0", "vda"]
    assert devices["vda"] == {"size_bytes": 20971520 * 512, "rotational": False, "removable": False, "model": None}
    assert devices["sr0"]["removable"] is True and devices["sr0"]["model"] == "QEMU DVD-ROM"
    assert devices["loop1"]["size_bytes"] == 4096


@pytest.mark.parametrize("name, driver, source", [
    ("ens5", "ena", "sysfs"),          # /sys/class/net/X/device/driver link
    ("enp1s0", "r8169", "sysfs"),      # device/uevent DRIVER=
    ("br0", "bridge", "sysfs"),        # uevent DEVTYPE=
    ("lo", "loopback", "sysfs"),
])
def test_interface_driver(debian11, name, driver, source):
    assert hw.interface_driver(name, debian11) == (driver, source)


def test_interfaces(debian11):
    ifaces = hw.interfaces(debian11)
    assert sorted(ifaces) == ["br0", "enp1s0", "ens5", "lo", "nfp0"]
    lo = ifaces["lo"]
    assert lo["mtu"] == 65536 and lo["ifindex"] == 1 and lo["rx_queues"] == 1 and lo["tx_queues"] == 1
    assert lo["xdp_modes"] == ["generic"]
    ens5 = ifaces["ens5"]
    assert ens5["driver"] == "ena" and ens5["mtu"] == 9001 and ens5["rx_queues"] == 2 and ens5["tx_queues"] == 2
    assert ens5["xdp_modes"] == ["generic", "native"] and ens5["xdp_source"] == "driver table"
    assert ens5["xdp_features"] is None       # no netlink on a fixture tree
    assert ifaces["enp1s0"]["xdp_modes"] == ["generic"]           # r8169: no native XDP
    assert ifaces["nfp0"]["xdp_modes"] == ["generic", "native", "offload"]


@pytest.mark.parametrize("driver, features, modes, source", [
    ("virtio_net", None, ["generic", "native"], "driver table"),
    ("veth", None, ["generic", "native"], "driver table"),
    ("mlx5_core", None, ["generic", "native"], "driver table"),
    ("nfp", None, ["generic", "native", "offload"], "driver table"),
    ("e1000", None, ["generic"], "driver table"),
    (None, None, ["generic"], "driver table"),
    # the kernel's own answer (6.3+) wins over the table both ways
    ("e1000", ["basic", "redirect"], ["generic", "native"], "xdp_features"),
    ("virtio_net", [], ["generic"], "xdp_features"),
    ("netdevsim", ["basic", "hw_offload"], ["generic", "native", "offload"], "xdp_features"),
])
def test_xdp_modes(driver, features, modes, source):
    assert hw.xdp_modes(driver, features) == (modes, source)


def test_native_table_documents_the_usual_drivers():
    for driver in ("virtio_net", "veth", "mlx5_core", "mlx4_en", "i40e", "ice", "ixgbe", "igb", "igc", "bnxt_en",
                   "ena", "nfp", "qede", "tun", "thunder-nicvf", "stmmaceth"):
        assert driver in hw.NATIVE_XDP_DRIVERS, driver
    assert hw.OFFLOAD_XDP_DRIVERS <= hw.NATIVE_XDP_DRIVERS


def test_facts_shape(debian11):
    facts = hw.facts(debian11)
    assert sorted(facts) == ["block_devices", "cpus", "interfaces", "memory"]
