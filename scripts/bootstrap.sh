#!/usr/bin/env bash
# Install what the demo and the tests need on a fresh Debian machine: Debian packages and a venv.
# Idempotent: a second run only checks.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

APT_PACKAGES=(
  # loading and inspecting eBPF on this machine
  libbpf1 bpftool iproute2 iputils-ping kmod
  # the tests: build renamed copies of the examples (clang, libbpf headers); the system python3's pyroute2
  clang libbpf-dev python3-pyroute2
  # the metrics tests scrape a real node_exporter on 127.0.0.1
  prometheus-node-exporter
  # the kernel-matrix harness: guest images and qemu
  qemu-system-x86 qemu-utils mmdebstrap e2fsprogs openssh-client
  # python venv
  python3-venv
  # ansible-test sanity's shellcheck test (scripts/sanity.sh)
  shellcheck
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: pip install -r requirements-dev.txt"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# Debian 11's pyroute2, so tests can run the module code against the oldest netlink library we support.
if [ ! -d .cache/pyroute2-0.5.14/pyroute2 ]; then
  echo "bootstrap: pyroute2 0.5.14 into .cache/pyroute2-0.5.14"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --target .cache/pyroute2-0.5.14 pyroute2==0.5.14
fi

# Make the working tree importable as the collection hypermesh.ebpf.
mkdir -p .cache/collections/ansible_collections/hypermesh
ln -sfn "$top" .cache/collections/ansible_collections/hypermesh/ebpf
echo "bootstrap: ready (ansible-core $(.venv/bin/python -c 'import ansible; print(ansible.__version__)'))"
