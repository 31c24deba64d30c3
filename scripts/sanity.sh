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
#   galaxy-importer   Galaxy's importer accepts the built tarball (offline: its ansible-lint, no ansible-test)
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

# galaxy-importer's findings that come from where it runs, not from the collection: its ansible-lint sees only
# the unpacked tarball, with no collection installed (neither the dependency ansible.posix nor hypermesh.ebpf
# itself, whose playbooks the Molecule scenarios import; the user scenario's are named at run time), and it
# notes every tests/sanity/ignore-*.txt that has entries (each entry there carries its reason).
GALAXY_IMPORTER_EXPECTED=(
  "^WARNING: roles/[a-z_]+/tasks/[a-z_]+\.yml:[0-9:]+ syntax-check\[unknown-module\]: couldn't resolve module/action 'ansible\.posix\.[a-z_]+'"
  "^WARNING: ERROR +Failed to find hypermesh\.ebpf\.[a-z_]+ playbook\.$"
  "^WARNING: ERROR +Failed to find \{\{ lookup\('env', 'HYPERMESH_USER_[A-Z]+'\) \| default\('unset\.yml', true\) \}\} playbook\.$"
  "^WARNING: Ignore files skip ansible-test sanity tests, found ignore-[0-9.]+\.txt with [0-9]+ statement\(s\)$"
)

galaxy_importer() {  # what Galaxy and Automation Hub run on an uploaded tarball, with its own ansible-lint run
  local out rc=0 pattern
  out=$(mktemp -d)
  ansible-galaxy collection build --output-path "$out" . >/dev/null || rc=$?
  if [ "$rc" -eq 0 ]; then
    # offline: ansible-test needs containers, and ansible-lint looks nothing up on Galaxy
    printf '[galaxy-importer]\nrun_ansible_test = False\nrun_ansible_lint = True\noffline_ansible_lint = True\n' \
      > "$out/galaxy-importer.cfg"
    (cd "$out" && GALAXY_IMPORTER_CONFIG="$out/galaxy-importer.cfg" python -m galaxy_importer.main ./*.tar.gz) \
      > "$out/log" 2>&1 || rc=$?
    grep -E '^(WARNING|ERROR): ' "$out/log" > "$out/findings" || true
    cp "$out/findings" "$out/unexpected"
    for pattern in "${GALAXY_IMPORTER_EXPECTED[@]}"; do
      grep -v -E "$pattern" "$out/unexpected" > "$out/rest" || true
      mv "$out/rest" "$out/unexpected"
    done
    if ! grep -q '^Importer processing completed successfully' "$out/log"; then
      grep -v -E '^Loading ' "$out/log" || true
      [ "$rc" -ne 0 ] || rc=1
    elif [ -s "$out/unexpected" ]; then
      echo "galaxy-importer: accepted the tarball, but with these findings:"
      cat "$out/unexpected"
      rc=1
    fi
    echo "galaxy-importer: $(wc -l < "$out/findings") findings, $(( $(wc -l < "$out/findings") - $(wc -l < "$out/unexpected") )) of them from where it runs (GALAXY_IMPORTER_EXPECTED)"
  fi
  rm -rf "$out"
  return "$rc"
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
check galaxy-importer "galaxy-importer accepts the built tarball" galaxy_importer

if [ ${#failed[@]} -gt 0 ]; then
  echo "sanity: FAILED: ${failed[*]}"
  exit 1
fi
echo "sanity: all $checks checks passed"
