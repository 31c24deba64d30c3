#!/usr/bin/env bash
# ansible-test sanity (every test that applies, each in its own --venv) on a copy of the working tree's files
# (tracked and new, as git lists them) laid out as ansible_collections/hypermesh/ebpf, which ansible-test needs.
# Extra arguments go to ansible-test (e.g. --test pylint). Prints one last line "ansible-test sanity: ...".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# ansible-test skips its shellcheck test, with a mere warning, when shellcheck is missing
command -v shellcheck >/dev/null || { echo "ansible-test sanity: FAILED: no shellcheck (scripts/bootstrap.sh installs it)"; exit 1; }

# ansible-test bootstraps pip in each venv with a get-pip.py it downloads from a host this project's machines
# cannot reach; it uses ~/.ansible/test/cache/get_pip_<version>.py when present: ours (ensurepip, then PyPI).
pip_version=$(python - <<'PY'
from types import SimpleNamespace
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(SimpleNamespace(version="3.11"))["pip"])
PY
)
cache=~/.ansible/test/cache
mkdir -p "$cache"
install -m 0644 scripts/ansible_test_pip.py "$cache/get_pip_${pip_version//./_}.py"

work=$(mktemp -d /tmp/hm-ansible-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/hypermesh/ebpf"
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$dest"

py=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
log="$work/sanity.log"
start=$(date +%s)
set +e
(cd "$dest" && ansible-test sanity --venv --python "$py" --color no --truncate 0 "$@") >"$log" 2>&1
rc=$?
set -e
# pip's chatter while ansible-test fills its venvs is left out; everything else is shown.
grep -v -E '^(WARNING: Location |Looking in |Collecting |Downloading |  Downloading |Processing |Installing collected |Successfully installed | +━|Requirement already )' "$log" || true
secs=$(( $(date +%s) - start ))
if [ "$rc" -ne 0 ]; then
  echo "ansible-test sanity: FAILED (rc $rc) after $secs s, Python $py"
  exit "$rc"
fi
echo "ansible-test sanity: $(grep -c '^Running sanity test' "$log") tests passed in $secs s, Python $py"
