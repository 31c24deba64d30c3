#!/usr/bin/env bash
# The kernel matrix: build (or reuse) the Debian guest images, run the Molecule scenario on qemu guests
# (create, prepare, converge, idempotence, verify, rollout = side_effect, destroy, each step timed), write docs/kernel-matrix.*.
#   scripts/matrix.sh            the five Debian guests (scenario default)
#                                then every kernel of $HYPERMESH_CACHE/kernels/<name>/, guest kernel-<name>
#                                (scenario custom, one after the other; none there: nothing more is done)
#   scripts/matrix.sh kernels    only the kernels of $HYPERMESH_CACHE/kernels/ (report in the run folder)
#   scripts/matrix.sh custom     a kernel you bring: HYPERMESH_GUEST_KERNEL=... (see docs/harness.md)
#   scripts/matrix.sh user --programs DIR --playbook PLAY.yml [--verify V.yml] [--guests a,b] --out DIR
#                                your programs and playbook, your report (scripts/matrix_user.sh)
# Environment: HYPERMESH_CACHE (images, default /var/cache/hypermesh-ebpf), HYPERMESH_ACCEL=auto|kvm|tcg,
# HYPERMESH_BOOT_JOBS (guests booted at once, default: number of cores), HYPERMESH_KEEP=1 (leave guests up).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
scenario=${1:-default}
if [ "$scenario" = user ]; then  # its arguments checked (paths from your directory) before anything runs
  shift
  # shellcheck disable=SC1091
  . "$top/scripts/matrix_user.sh"
  user_args "$@"
fi
cd "$top"
export PATH="$top/.venv/bin:$PATH"
export HYPERMESH_CACHE=${HYPERMESH_CACHE:-/var/cache/hypermesh-ebpf}
export PY_COLORS=0 ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1

# The kernels users bring ($HYPERMESH_CACHE/kernels/<name>/, docs/harness.md "Kernels you bring, in the
# matrix"), each checked (name, owner and mode, the config's options) before anything is built or booted: one
# refused stops the run.
kernels=()
if [ "$scenario" = default ] || [ "$scenario" = kernels ]; then
  if ! found=$(python3 -m harness.kernels list); then
    echo "matrix: a kernel of $HYPERMESH_CACHE/kernels was refused (above): fix it or move it out of there"
    exit 2
  fi
  [ -z "$found" ] || mapfile -t kernels <<< "$found"
  if [ "$scenario" = kernels ] && [ ${#kernels[@]} -eq 0 ]; then
    echo "matrix: no kernel in $HYPERMESH_CACHE/kernels/ (docs/harness.md, \"Kernels you bring, in the matrix\")"
    exit 2
  fi
fi

# Harness-specific tools that scripts/bootstrap.sh may not install everywhere.
need=()
for tool in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mmdebstrap:mmdebstrap mke2fs:e2fsprogs \
            ssh:openssh-client ssh-keygen:openssh-client debugfs:e2fsprogs; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "matrix: apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

run=$(mktemp -d /tmp/hypermesh-matrix.XXXXXX)
# The collection as it is now, copied for this run: every step (and both rollouts of the rollout phase, which
# must change nothing the second time) runs the same code while the tree is being edited.
snap=".cache/matrix-collections.${run##*.}"
mkdir -p "$snap/ansible_collections/hypermesh/ebpf"
tar -C "$top" --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=__pycache__ -cf - . \
  | tar -C "$snap/ansible_collections/hypermesh/ebpf" -xf -
# its dependencies (galaxy.yml: ansible.posix), as scripts/bootstrap.sh installed them, beside it: the scenarios'
# ANSIBLE_COLLECTIONS_PATH is the copy alone
for ns in .cache/collections/ansible_collections/*/; do
  ns=${ns%/}
  [ "${ns##*/}" = hypermesh ] || cp -a "$ns" "$snap/ansible_collections/"
done
export HYPERMESH_COLLECTIONS_DIR=${snap#.cache/} ANSIBLE_COLLECTIONS_PATH="$top/$snap"
echo "matrix: collection copied to $snap ($(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$top" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes'))"
export HYPERMESH_STATE="$run/guests" HYPERMESH_RESULTS="$run/results" HYPERMESH_PROGRESS="$run/progress.log"
mkdir -p "$HYPERMESH_RESULTS"
: > "$HYPERMESH_PROGRESS"
tail -F -n 0 "$HYPERMESH_PROGRESS" 2>/dev/null &
tail_pid=$!
# An http proxy of this host (environment or apt.conf.d) is passed on to the guests' apt, as the guests see it.
guest_proxy=$(python3 -c 'from harness import aptconf; print(aptconf.proxy_for_guest(aptconf.host_proxy()) or "")')
export HYPERMESH_GUEST_PROXY="$guest_proxy"
[ -z "$guest_proxy" ] || echo "matrix: guests use the http proxy $guest_proxy"

t0=$(date +%s)
steps_json="$run/steps.json"
echo "{}" > "$steps_json"
note_step() {  # name seconds
  python3 - "$steps_json" "$1" "$2" <<'PY'
import json, sys
path, name, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
d = json.load(open(path)); d[name] = secs; json.dump(d, open(path, "w"))
PY
}

cleanup() {
  rc=$?
  kill "$tail_pid" 2>/dev/null || true
  rm -rf "${top:?}/$snap"
  if [ "${HYPERMESH_KEEP:-0}" != 1 ]; then
    [ "$scenario" = kernels ] || molecule destroy -s "$scenario" >/dev/null 2>&1 || true
    python3 -m harness down --state "$HYPERMESH_STATE" || true
    for kstate in "$run"/kernel-*/guests; do  # the kernels' guests (each had its own state folder)
      [ ! -d "$kstate" ] || python3 -m harness down --state "$kstate" || true
    done
  fi
  exit $rc
}
trap cleanup EXIT

step() {  # name command...
  local name=$1; shift
  local s
  s=$(date +%s.%N)
  echo "=== matrix: $name ($(date -u +%T))"
  set +e
  "$@" 2>&1 | tee "$run/$name.log"
  local rc=${PIPESTATUS[0]}
  set -e
  local secs
  secs=$(python3 -c "import time; print(round(time.time() - $s, 1))")
  note_step "$name" "$secs"
  echo "=== matrix: $name took ${secs} s (rc $rc)"
  if [ "$rc" -ne 0 ]; then
    echo "=== matrix: FAILED at step $name"
    # The guests named in the failure, with the end of their serial console.
    while read -r g; do
      if [ -f "$HYPERMESH_STATE/$g/console.log" ]; then
        echo "----- guest $g failed at step $name; its console (last 40 lines):"
        tail -n 40 "$HYPERMESH_STATE/$g/console.log"
        echo "-----"
      fi
    done < <(grep -oE '(fatal|failed|UNREACHABLE!?): \[[^]]+\]|guest [a-z0-9-]+: FAILED|^(FAILED|ERROR) .*::[a-z_]+\[[^]]*ansible://[a-z0-9-]+' "$run/$name.log" \
               | grep -oE '\[[^]]+\]|guest [a-z0-9-]+|ansible://[a-z0-9-]+' | sed -e 's/^\[//' -e 's/\]$//' -e 's/^guest //' -e 's#ansible://##' | sort -u)
    return "$rc"
  fi
}

if [ "$scenario" = user ]; then
  user_matrix
  exit $?
fi
if [ "$scenario" = custom ]; then
  read -r -a suites <<< "${HYPERMESH_GUEST_ROOTFS:-bookworm}"
elif [ "$scenario" = kernels ]; then
  read -r -a suites <<< "$(printf '%s\n' "${kernels[@]#* }" | sort -u | tr '\n' ' ')"
else
  suites=(bullseye bookworm trixie sid)
fi
step images python3 -m harness build "${suites[@]}"
# after the images: the harness tests boot one real guest from them
step harness_unit python -m pytest -q tests/harness
scenario_steps() {  # scenario [step name prefix]: the scenario's steps on its guests, then their teardown
  local s=$1 p=${2:-}
  step "${p}destroy" molecule destroy -s "$s"
  step "${p}create" molecule create -s "$s"
  cp "$HYPERMESH_STATE/instances.json" "$(dirname "$HYPERMESH_RESULTS")/instances.json"
  step "${p}prepare" molecule prepare -s "$s"
  step "${p}converge" molecule converge -s "$s"
  step "${p}idempotence" molecule idempotence -s "$s"
  step "${p}verify" molecule verify -s "$s"
  step "${p}rollout" molecule side-effect -s "$s"
  if [ "${HYPERMESH_KEEP:-0}" != 1 ]; then
    step "${p}destroy_end" molecule destroy -s "$s"
    python3 -m harness check-clean --state "$HYPERMESH_STATE"
  fi
}
[ "$scenario" = kernels ] || scenario_steps "$scenario"
# Each kernel brought: the custom scenario with HYPERMESH_KERNEL=<name> (the guest checks its directory again
# when it boots), its records in $run/kernel-<name>/ (the report's column kernel-<name>), its own step times.
for entry in "${kernels[@]}"; do
  name=${entry%% *}
  kdir="$run/kernel-$name"
  mkdir -p "$kdir/results"
  echo "{}" > "$kdir/steps.json"
  ks=$(date +%s)
  (  # a subshell: its variables end with it; a failing step ends it and the run (set -e)
    unset HYPERMESH_GUEST_KERNEL HYPERMESH_GUEST_INITRD HYPERMESH_GUEST_CMDLINE
    export HYPERMESH_KERNEL=$name HYPERMESH_GUEST_ROOTFS=${entry#* } HYPERMESH_STATE="$kdir/guests" \
      HYPERMESH_RESULTS="$kdir/results"
    steps_json="$kdir/steps.json"
    scenario_steps custom "kernel-$name."
    note_step total $(( $(date +%s) - ks ))
  )
done
total=$(( $(date +%s) - t0 ))
note_step total "$total"
out=docs
[ "$scenario" = default ] || out="$run"
python3 -m harness report --run "$run" --out "$out"
echo "=== matrix: all steps passed in ${total} s; report in $out/kernel-matrix.md"
