#!/usr/bin/env bash
# Static checks, each ending in one line "sanity: CHECK: passed|FAILED ...":
#   py39              plugins/ parse as Python 3.9 (the oldest managed-host Python we support)
#   ansible-doc       every module's docs render
#   examples          the example objects are the ones their sources build (SHA256SUMS)
#   build             the collection builds
#   ansible-test      ansible-test sanity, every test that applies, each in its --venv (ansible_test_sanity.sh)
#   ansible-lint      production profile on the roles, the playbooks and the Molecule scenarios (.ansible-lint)
#   antsibull-docs    lint-collection-docs, the plugins' and roles' docs included
#   changelog         antsibull-changelog lint: every fragment in changelogs/fragments is valid
# Every check runs; the script fails when one failed. Run by `make test` / `scripts/test.sh sanity`, which set
# PATH to the venv and ANSIBLE_COLLECTIONS_PATH to the collection.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

py39() {
  python - <<'PY'
import ast, pathlib, sys
bad = []
for p in sorted(pathlib.Path("plugins").rglob("*.py")):
    try:
        ast.parse(p.read_text(), filename=str(p), feature_version=(3, 9))
    except SyntaxError as e:
        bad.append("%s:%s: %s" % (p, e.lineno, e.msg))
if bad:
    sys.exit("not Python 3.9 syntax:\n" + "\n".join(bad))
PY
}

ansible_doc() {  # (set -e does not hold inside check's `||`: every step's status is kept by hand)
  local m rc=0
  for m in plugins/modules/*.py; do
    ansible-doc -t module "hypermesh.ebpf.$(basename "$m" .py)" >/dev/null || rc=1
  done
  return "$rc"
}

build() {
  local out rc=0
  out=$(mktemp -d)
  ansible-galaxy collection build --force --output-path "$out" . >/dev/null || rc=$?
  rm -rf "$out"
  return "$rc"
}

ansible_lint() {
  ansible-lint --nocolor roles playbooks extensions/molecule
}

antsibull_docs() {
  antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs dependent .
}

modules=(plugins/modules/*.py)
failed=()
checks=0
check() {  # check NAME WHAT COMMAND...: run COMMAND, print the line of NAME
  local name=$1 what=$2 start rc=0
  shift 2
  start=$(date +%s)
  checks=$((checks + 1))
  echo "--- sanity: $name"
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "sanity: $name: passed: $what ($(( $(date +%s) - start )) s)"
  else
    echo "sanity: $name: FAILED (rc $rc): $what ($(( $(date +%s) - start )) s)"
    failed+=("$name")
  fi
}

check py39 "plugins/ parse as Python 3.9" py39
check ansible-doc "ansible-doc renders ${#modules[@]} modules" ansible_doc
check examples "example objects match SHA256SUMS" sh -c 'cd examples && sha256sum --quiet -c SHA256SUMS'
check build "the collection builds" build
check ansible-test "ansible-test sanity --venv" scripts/ansible_test_sanity.sh
check ansible-lint "ansible-lint --profile production: roles, playbooks, Molecule scenarios" ansible_lint
check antsibull-docs "antsibull-docs lint-collection-docs --plugin-docs" antsibull_docs
check changelog "antsibull-changelog lint" antsibull-changelog lint

if [ ${#failed[@]} -gt 0 ]; then
  echo "sanity: FAILED: ${failed[*]}"
  exit 1
fi
echo "sanity: all $checks checks passed"
