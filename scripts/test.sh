#!/usr/bin/env bash
# Run every test: unit, integration on this machine's kernel (as root), and the kernel matrix in qemu guests.
#   scripts/test.sh            everything
#   scripts/test.sh unit       one stage (unit | integration | sanity | matrix)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/bootstrap.sh
export PATH="$top/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$top/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$top/.cache/collections"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(sanity unit integration matrix)

for stage in "${stages[@]}"; do
  echo "=== stage: $stage ($(date +%T))"
  case "$stage" in
    sanity) scripts/sanity.sh ;;
    unit) python -m pytest -q -p no:cacheprovider tests/unit ;;
    integration) python -m pytest -q -p no:cacheprovider tests/integration ;;
    matrix)
      if [ -x scripts/matrix.sh ]; then scripts/matrix.sh; else echo "matrix: not yet present"; fi ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "=== all stages passed ($(date +%T))"
