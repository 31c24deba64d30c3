"""Kernel-matrix harness: Debian guest images, a qemu launcher and the report (runs on the controller)."""
