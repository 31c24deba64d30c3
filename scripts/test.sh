#!/usr/bin/env bash
# Run every test: sanity, unit, integration on this machine's kernel (as root), the newer ansible-core releases
# (core: sanity and an integration smoke on each), and the kernel matrix in qemu guests.
#   scripts/test.sh            everything
#   scripts/test.sh unit       one stage (sanity | unit | integration | core | matrix)
# A stage that cannot run fails the run; each stage ends with one line "=== stage NAME: passed|FAILED ...".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/bootstrap.sh
export PATH="$top/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$top/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$top/.cache/collections"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(sanity unit integration core matrix)

run_stage() {
  case "$1" in
    sanity) scripts/sanity.sh ;;
    unit) python -m pytest -q tests/unit ;;
    integration) python -m pytest -q --durations=15 tests/integration ;;  # the slowest, for CI time
    core) scripts/core_range.sh ;;
    matrix) scripts/matrix.sh ;;
    *) echo "unknown stage $1 (one of: sanity unit integration core matrix)" >&2; return 2 ;;
  esac
}

for stage in "${stages[@]}"; do
  echo "=== stage $stage: started ($(date +%T))"
  s=$(date +%s)
  set +e
  run_stage "$stage"
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "=== stage $stage: FAILED (rc $rc) after $(( $(date +%s) - s )) s"
    exit "$rc"
  fi
  echo "=== stage $stage: passed in $(( $(date +%s) - s )) s"
done
echo "=== all stages passed: ${stages[*]} ($(date +%T))"
