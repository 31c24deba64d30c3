# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's hardware as eBPF rollouts see it: CPUs, memory, block devices and network interfaces.

Read from /proc and /sys under `root="/"` (unit tests pass a fixture tree). For network interfaces the readers
also ask the kernel directly when root is "/": the ETHTOOL_GDRVINFO ioctl for the driver of virtual devices
(veth, tun, bridge ...), and the netdev generic-netlink family (kernel 6.3+, through netlink.xdp_features and
pyroute2; without pyroute2 the driver table decides, and xdp_source says why) for the XDP features a driver
announces. Everything here only reads; nothing needs privileges.

Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import fcntl
import os
import socket
import struct

from ansible_collections.hypermesh.ebpf.plugins.module_utils._host.kernel_info import host_path, read_text
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs

# Drivers with native (driver-mode) XDP in mainline Linux: the ones implementing ndo_bpf XDP_SETUP_PROG.
# Names as the kernel reports them (the /sys/class/net/X/device/driver link, or ethtool -i for virtual devices).
# Used when the kernel does not announce xdp_features itself (before 6.3).
NATIVE_XDP_DRIVERS = frozenset([
    "virtio_net", "veth", "tun", "bonding", "netdevsim",          # virtual
    "mlx5_core", "mlx4_core", "mlx4_en",                          # NVIDIA/Mellanox
    "i40e", "ice", "ixgbe", "ixgbevf", "igb", "igc", "idpf",      # Intel
    "bnxt_en", "ena", "nfp", "qede", "thunder-nicvf", "gve", "hv_netvsc", "vif",
    "stmmaceth", "netsec", "mvneta", "mvpp2", "sfc", "fsl_dpaa2_eth", "fsl_enetc", "fec", "atlantic",
    "cpsw", "am65-cpsw-nuss", "mtk_soc_eth", "lan966x-switch", "tsnep", "rvu_nicpf", "rvu_nicvf",
])
# Drivers that can run XDP programs on the NIC itself (offload mode).
OFFLOAD_XDP_DRIVERS = frozenset(["nfp", "netdevsim"])

_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 3
_DRVINFO_SIZE = 196  # struct ethtool_drvinfo


# ---------------------------------------------------------------- CPUs and memory

def cpus(root="/"):
    """{"online": "0-1", "online_count": 2, "possible": "0-1", "possible_count": 2, "model": ..., "arch": ...}."""
    online = (read_text(root, "sys/devices/system/cpu/online") or "").strip()
    possible = (read_text(root, "sys/devices/system/cpu/possible") or "").strip()
    model = None
    for line in (read_text(root, "proc/cpuinfo") or "").splitlines():
        key, _sep, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model", "cpu") and value.strip():
            model = value.strip()
            break
    return {
        "online": online, "online_count": bs.cpu_count(online),
        "possible": possible, "possible_count": bs.cpu_count(possible),
        "model": model,
        "arch": os.uname()[4],
    }


def memory(root="/"):
    """{"total_bytes", "available_bytes"} from /proc/meminfo (None where absent)."""
    values = {}
    for line in (read_text(root, "proc/meminfo") or "").splitlines():
        key, _sep, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return {"total_bytes": values.get("MemTotal"), "available_bytes": values.get("MemAvailable")}


# ---------------------------------------------------------------- block devices

def block_devices(root="/"):
    """{name: {"size_bytes", "rotational", "removable", "model"}} from /sys/block; empty loop/ram/zram skipped."""
    result = {}
    base = host_path(root, "sys/block")
    for name in sorted(_listdir(base)):
        sectors = _read_int(root, "sys/block/%s/size" % name)
        size = None if sectors is None else sectors * 512  # sysfs counts 512-byte sectors whatever the device
        if not size and name.startswith(("loop", "ram", "zram")):
            continue
        model = read_text(root, "sys/block/%s/device/model" % name)
        result[name] = {
            "size_bytes": size,
            "rotational": _read_int(root, "sys/block/%s/queue/rotational" % name) == 1,
            "removable": _read_int(root, "sys/block/%s/removable" % name) == 1,
            "model": model.strip() if model else None,
        }
    return result


# ---------------------------------------------------------------- network interfaces

def ethtool_driver(ifname):
    """The driver name ETHTOOL_GDRVINFO reports for `ifname` ("veth", "tun", "bridge" ...), or None."""
    info = ctypes.create_string_buffer(struct.pack("I", _ETHTOOL_GDRVINFO), _DRVINFO_SIZE)
    ifreq = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(info))
    ifreq += b"\0" * (40 - len(ifreq))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    except (IOError, OSError):
        return None
    finally:
        sock.close()
    driver = info.raw[4:36].split(b"\0", 1)[0].decode("ascii", "replace")
    return driver or None


def interface_driver(name, root="/"):
    """(driver, source) of interface `name`: sysfs device link, device uevent, ethtool, or uevent DEVTYPE."""
    base = "sys/class/net/%s" % name
    link = host_path(root, base + "/device/driver")
    if os.path.islink(link):
        return os.path.basename(os.readlink(link)), "sysfs"
    for line in (read_text(root, base + "/device/uevent") or "").splitlines():
        if line.startswith("DRIVER="):
            return line[len("DRIVER="):], "sysfs"
    if root == "/":
        driver = ethtool_driver(name)
        if driver:
            return driver, "ethtool"
    for line in (read_text(root, base + "/uevent") or "").splitlines():
        if line.startswith("DEVTYPE="):
            return line[len("DEVTYPE="):], "sysfs"
    if name == "lo" or _read_int(root, base + "/type") == 772:  # ARPHRD_LOOPBACK
        return "loopback", "sysfs"
    return None, "unknown"


def xdp_modes(driver, features=None):
    """(modes, source): generic always, native and offload from the kernel's xdp_features or the driver table."""
    modes = ["generic"]
    if features is not None:
        if "basic" in features:
            modes.append("native")
        if "hw_offload" in features:
            modes.append("offload")
        return modes, "xdp_features"
    if driver in NATIVE_XDP_DRIVERS:
        modes.append("native")
    if driver in OFFLOAD_XDP_DRIVERS:
        modes.append("offload")
    return modes, "driver table"


def interfaces(root="/"):
    """{name: {ifindex, driver, driver_source, mtu, rx_queues, tx_queues, xdp_features, xdp_modes, xdp_source}}.

    Interfaces of the network namespace this process runs in.
    """
    announced, announced_error = None, ""
    if root == "/":
        from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import netlink  # pyroute2: only here
        try:
            announced = netlink.xdp_features()
        except (OSError, netlink.NetlinkError) as exc:
            announced_error = getattr(exc, "strerror", None) or str(exc)
    result = {}
    for name in sorted(_listdir(host_path(root, "sys/class/net"))):
        base = "sys/class/net/%s" % name
        ifindex = _read_int(root, base + "/ifindex")
        driver, driver_source = interface_driver(name, root)
        queues = _listdir(host_path(root, base + "/queues"))
        features = None if announced is None else announced.get(ifindex)
        modes, modes_source = xdp_modes(driver, features)
        result[name] = {
            "ifindex": ifindex,
            "driver": driver,
            "driver_source": driver_source,
            "mtu": _read_int(root, base + "/mtu"),
            "rx_queues": len([q for q in queues if q.startswith("rx-")]),
            "tx_queues": len([q for q in queues if q.startswith("tx-")]),
            "xdp_features": features,
            "xdp_modes": modes,
            "xdp_source": modes_source if features is not None or not announced_error
            else "%s (%s)" % (modes_source, announced_error),
        }
    return result


def facts(root="/"):
    """ansible_facts.ebpf.hardware."""
    return {
        "cpus": cpus(root),
        "memory": memory(root),
        "block_devices": block_devices(root),
        "interfaces": interfaces(root),
    }


# ---------------------------------------------------------------- helpers

def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read_int(root, rel):
    text = read_text(root, rel)
    try:
        return int(text.split()[0])
    except (AttributeError, ValueError, IndexError):
        return None
