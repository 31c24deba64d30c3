#!/usr/bin/env bash
# Static checks: every module compiles on the oldest guest Python syntax we support and its docs load.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
python -m compileall -q plugins
for m in plugins/modules/*.py; do
  name=$(basename "$m" .py)
  ansible-doc -t module "hypermesh.ebpf.$name" >/dev/null
  echo "sanity: ansible-doc hypermesh.ebpf.$name ok"
done
