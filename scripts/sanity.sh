#!/usr/bin/env bash
# Static checks: module code compiles for the oldest guest Python we support (3.9 syntax), every module's docs
# render, the example objects are the ones their sources build (digests), and the collection builds.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
python - <<'PY'
import ast, pathlib, sys
bad = []
for p in sorted(pathlib.Path("plugins").rglob("*.py")):
    try:
        ast.parse(p.read_text(), filename=str(p), feature_version=(3, 9))
    except SyntaxError as e:
        bad.append("%s:%s: %s" % (p, e.lineno, e.msg))
if bad:
    sys.exit("sanity: not Python 3.9 syntax:\n" + "\n".join(bad))
print("sanity: plugins/ parse as Python 3.9")
PY
for m in plugins/modules/*.py; do
  name=$(basename "$m" .py)
  ansible-doc -t module "hypermesh.ebpf.$name" >/dev/null
done
echo "sanity: ansible-doc renders $(ls plugins/modules/*.py | wc -l) modules"
(cd examples && sha256sum --quiet -c SHA256SUMS) && echo "sanity: example objects match SHA256SUMS"
out=$(mktemp -d)
ansible-galaxy collection build --force --output-path "$out" . >/dev/null
echo "sanity: collection builds ($(ls "$out"))"
rm -rf "$out"
