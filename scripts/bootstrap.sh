#!/usr/bin/env bash
# Install what the demo and the tests need on a fresh Debian machine: Debian packages and a venv.
# Idempotent: a second run only checks.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

APT_PACKAGES=(
  # loading and inspecting eBPF on this machine
  libbpf1 bpftool iproute2 iputils-ping kmod
  # several XDP programs per interface (libxdp's dispatcher) and xdp-loader, which the tests share an interface with
  libxdp1 xdp-tools
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

# The collection's one dependency (galaxy.yml), ansible.posix (the role ebpf_host uses its sysctl and mount
# modules), next to it. Galaxy is not reachable from here, PyPI is: the `ansible` package bundles ansible.posix.
# Its wheel, pinned by version and hash, is downloaded (not installed) once and only ansible_collections/ansible/
# posix/ is taken out of it; the wheel is not kept. A second run only reads the installed MANIFEST.json.
POSIX_VERSION=2.2.2
POSIX_FROM="ansible==14.5.0 --hash=sha256:245623ccc2d31d0f6f4bdb63168d550cad305fb032cc43d96e8f61ce8ab0ba84"
posix=.cache/collections/ansible_collections/ansible/posix
posix_version() {
  .venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["collection_info"]["version"])' \
    "$posix/MANIFEST.json" 2>/dev/null || true
}
if [ "$(posix_version)" != "$POSIX_VERSION" ]; then
  echo "bootstrap: ansible.posix $POSIX_VERSION into $posix (from PyPI's ${POSIX_FROM%% *})"
  dl=$(mktemp -d .cache/posix-download.XXXXXX)
  trap 'rm -rf "$top/$dl"' EXIT
  echo "$POSIX_FROM" > "$dl/requirements.txt"
  # the `ansible` release wants a newer Python than the venv's: it is only unpacked here, never installed
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --ignore-requires-python --only-binary=:all: \
    --require-hashes -r "$dl/requirements.txt" -d "$dl"
  .venv/bin/python - "$dl"/ansible-*.whl "$dl/posix" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "ansible_collections/ansible/posix/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not names:
        sys.exit("%s holds no %s" % (wheel, prefix))
    for n in names:
        z.extract(n, dest)
PY
  rm -rf "$posix"
  mkdir -p "$(dirname "$posix")"
  mv "$dl/posix/ansible_collections/ansible/posix" "$posix"
  rm -rf "$dl"
  trap - EXIT
  [ "$(posix_version)" = "$POSIX_VERSION" ] || { echo "bootstrap: $posix is not ansible.posix $POSIX_VERSION" >&2; exit 1; }
fi
echo "bootstrap: ready (ansible-core $(.venv/bin/python -c 'import ansible; print(ansible.__version__)'), ansible.posix $(posix_version))"
