"""Does KVM really run a guest here? Run a one-instruction VM (`hlt`) and check it exits with HLT.

/dev/kvm may open and even create a VM on a machine where vCPUs never run (nested virtualisation
half-enabled): only a vCPU that executes code proves KVM works. Run as `python3 -m harness.kvmprobe`
in a child process with a timeout (exit 0: works), since a broken KVM_RUN may hang.
"""
import ctypes
import fcntl
import mmap
import os
import struct
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_SET_REGS = 0x4090AE82
KVM_EXIT_HLT = 5
SREGS_SIZE = 312


def probe(dev="/dev/kvm"):
    kvm = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(kvm, KVM_GET_API_VERSION) != 12:
        return False
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, 0x1000)
    mem.write(b"\xf4")  # hlt
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("IIQQQ", 0, 0, 0, 0x1000, addr)
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(SREGS_SIZE)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    struct.pack_into("Q", sregs, 0, 0)  # cs.base = 0
    struct.pack_into("H", sregs, 12, 0)  # cs.selector = 0
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = [0] * 18
    regs[17] = 2  # rflags; rip (regs[16]) = 0
    fcntl.ioctl(vcpu, KVM_SET_REGS, struct.pack("18Q", *regs))
    fcntl.ioctl(vcpu, KVM_RUN, 0)
    return struct.unpack_from("I", run, 8)[0] == KVM_EXIT_HLT


if __name__ == "__main__":
    try:
        ok = probe()
    except OSError as e:
        sys.stderr.write("kvm: %s\n" % e)
        ok = False
    sys.exit(0 if ok else 1)
