#!/usr/bin/env bash
# The tested ansible-core range: for every ansible-core this machine's Pythons can run beyond the venv's own
# (2.19 on 3.11, tested by every other stage), a venv in .cache/core-<version> with that ansible-core and the
# ansible-lint of requirements-dev.txt, then `ansible-test sanity`, `ansible-lint` (production profile, as the
# sanity stage runs it) and the integration smoke (tests/integration/test_smoke.py: facts, one XDP apply, one
# map read) with it. meta/runtime.yml's requires_ansible names exactly this range.
#   scripts/core_range.sh            every pair below
#   scripts/core_range.sh 2.21       one
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

# ansible-core series: the Python it runs on here
declare -A PYTHON_FOR=([2.20]=3.12 [2.21]=3.13)
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.20 2.21)

find_python() {  # X.Y -> a pythonX.Y on this machine (system or pyenv), or nothing
  local v=$1 p
  for p in "/usr/bin/python$v" "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/"$v".*/bin/python"$v"; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}

for core in "${versions[@]}"; do
  py_version=${PYTHON_FOR[$core]:-}
  [ -n "$py_version" ] || { echo "core_range: ansible-core $core is not in the tested range" >&2; exit 2; }
  py=$(find_python "$py_version") || { echo "core_range: no Python $py_version here for ansible-core $core" >&2; exit 1; }
  venv=".cache/core-$core"
  lint=$(grep -E '^ansible-lint' requirements-dev.txt)
  if [ ! -x "$venv/bin/ansible-lint" ] || ! "$venv/bin/python" -c "import ansible, sys; sys.exit(not ansible.__version__.startswith('$core.'))"; then
    echo "core_range: $venv (ansible-core $core on $("$py" --version))"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$core.*" "$lint" "pytest>=8" "pyroute2>=0.7"
  fi
  echo "=== ansible-core $("$venv/bin/python" -c 'import ansible; print(ansible.__version__)') on $("$venv/bin/python" --version)"
  PATH="$top/$venv/bin:$PATH" scripts/ansible_test_sanity.sh
  echo "--- ansible-lint on ansible-core $core: roles, playbooks, Molecule scenarios (production profile)"
  PATH="$top/$venv/bin:$PATH" "$venv/bin/ansible-lint" --nocolor roles playbooks extensions/molecule
  PATH="$top/$venv/bin:$PATH" "$venv/bin/python" -m pytest -q tests/integration/test_smoke.py
done
