#!/usr/bin/env bash
# The main job: the demo rollout of the example programs.
#   make demo                          boots a local Debian 12 guest in qemu (the harness' bookworm image) and
#                                      rolls the example programs out there: facts, what changed, live counters
#   DEMO_INVENTORY=hosts.ini make demo  the same rollout against real hosts of an inventory (group `ebpf_hosts`)
#   DEMO_GUEST=trixie make demo         another guest of the harness (bullseye, bookworm, trixie, sid)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/bootstrap.sh
export PATH="$top/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$top/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$top/.cache/collections"

inventory=${DEMO_INVENTORY:-}
if [ -z "$inventory" ]; then
  guest=${DEMO_GUEST:-bookworm}
  suite=${guest%%-*}
  state="$top/.cache/demo"
  mkdir -p "$state"
  python -m harness build "$suite"
  trap 'python -m harness down --state "$state" >/dev/null 2>&1 || true' EXIT
  python -m harness up --state "$state" "$guest" >/dev/null
  inventory="$state/inventory.ini"
  python - "$state/instances.json" "$inventory" <<'PY'
import json, sys
instances = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    f.write("[ebpf_hosts]\n")
    for i in instances:
        f.write("%s ansible_host=%s ansible_port=%s ansible_user=%s ansible_ssh_private_key_file=%s "
                "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' "
                "ansible_python_interpreter=/usr/bin/python3\n"
                % (i["instance"], i["address"], i["port"], i["user"], i["identity_file"]))
PY
fi
echo "demo: inventory $inventory"
ansible-playbook -i "$inventory" playbooks/demo.yml "$@"
