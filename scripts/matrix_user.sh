# shellcheck shell=bash disable=SC2154  # top, run, t0, step and note_step come from scripts/matrix.sh
# Sourced by scripts/matrix.sh for `scripts/matrix.sh user ...`: your programs and playbook across the guests
# (scenario extensions/molecule/user/, docs/harness.md "Your own programs across kernels").
#   scripts/matrix.sh user --programs DIR --playbook PLAY.yml [--verify VERIFY.yml] [--guests a,b,...] --out DIR

user_usage() {  # message
  echo "matrix user: $1" >&2
  echo "usage: scripts/matrix.sh user --programs DIR --playbook PLAY.yml [--verify VERIFY.yml] [--guests a,b,...] --out DIR" >&2
  echo "  guests: bullseye, bullseye-lsm, bookworm, trixie, sid (default: all five), custom (HYPERMESH_GUEST_KERNEL)" >&2
  exit 2
}

user_args() {  # the arguments after `user`; checked before anything runs, paths made absolute (caller's cwd)
  local programs="" playbook="" verify="" guests="bullseye,bullseye-lsm,bookworm,trixie,sid" out=""
  while [ $# -gt 0 ]; do
    case $1 in
      --programs|--playbook|--verify|--guests|--out)
        if [ $# -lt 2 ] || [ -z "$2" ]; then user_usage "$1 needs a value"; fi
        case $1 in
          --programs) programs=$2 ;; --playbook) playbook=$2 ;; --verify) verify=$2 ;;
          --guests) guests=$2 ;; --out) out=$2 ;;
        esac
        shift 2 ;;
      *) user_usage "unknown argument: $1" ;;
    esac
  done
  if [ -z "$programs" ] || [ ! -d "$programs" ]; then user_usage "--programs ${programs:-?}: not a directory"; fi
  if [ -z "$playbook" ] || [ ! -f "$playbook" ]; then user_usage "--playbook ${playbook:-?}: no such file"; fi
  [ -z "$verify" ] || [ -f "$verify" ] || user_usage "--verify $verify: no such file"
  [ -n "$out" ] || user_usage "--out DIR: where your report goes"
  # each guest known to the harness (harness/guests.py), and the images they boot
  user_suites_line=$(PYTHONPATH=$top python3 -c '
import sys
from harness import guests
names = sys.argv[1].split(",")
try:
    if len(set(names)) != len(names):
        raise ValueError("a guest named twice")
    print(" ".join(sorted({guests.lookup(g)["suite"] for g in names})))
except ValueError as e:
    sys.exit(str(e))' "$guests") || user_usage "--guests $guests"
  read -r -a user_suites <<< "$user_suites_line"
  mkdir -p "$out" || user_usage "--out $out: cannot create it"
  export HYPERMESH_USER_PROGRAMS HYPERMESH_USER_PLAYBOOK HYPERMESH_USER_VERIFY HYPERMESH_USER_GUESTS
  HYPERMESH_USER_PROGRAMS=$(realpath "$programs")
  HYPERMESH_USER_PLAYBOOK=$(realpath "$playbook")
  HYPERMESH_USER_VERIFY=$([ -z "$verify" ] || realpath "$verify")
  HYPERMESH_USER_GUESTS=${guests//,/$'\n'  - name: }  # one platform per guest (molecule.yml's platforms)
  user_guests=$guests
  user_out=$(realpath "$out")
}

user_matrix() {  # the steps; the report is written even when a step failed (then the exit code is 1)
  local s=user failed=()
  python3 - "$run/user.json" "$user_guests" <<'PY'
import json, os, sys
json.dump({"programs": os.environ["HYPERMESH_USER_PROGRAMS"], "playbook": os.environ["HYPERMESH_USER_PLAYBOOK"],
           "verify": os.environ.get("HYPERMESH_USER_VERIFY") or None, "guests": sys.argv[2].split(",")},
          open(sys.argv[1], "w"), indent=1)
PY
  step images python3 -m harness build "${user_suites[@]}" || return 1
  step destroy molecule destroy -s $s || return 1
  step create molecule create -s $s || failed+=(create)
  cp "$HYPERMESH_STATE/instances.json" "$run/instances.json" 2>/dev/null || true
  [ ${#failed[@]} -gt 0 ] || step prepare molecule prepare -s $s || failed+=(prepare)
  if [ ${#failed[@]} -eq 0 ]; then
    step converge molecule converge -s $s || failed+=(converge)
    # the second run (idempotence) writes the same files: the first one's become *-converge-1.json
    for f in plays failures; do
      [ ! -f "$HYPERMESH_RESULTS/$f-converge.json" ] || mv "$HYPERMESH_RESULTS/$f-converge.json" "$HYPERMESH_RESULTS/$f-converge-1.json"
    done
    [ ${#failed[@]} -gt 0 ] || step idempotence molecule idempotence -s $s || failed+=(idempotence)
    [ -z "$HYPERMESH_USER_VERIFY" ] || step verify molecule verify -s $s || failed+=(verify)
    step record molecule side-effect -s $s || failed+=(record)
  fi
  if [ "${HYPERMESH_KEEP:-0}" != 1 ]; then
    step destroy_end molecule destroy -s $s || failed+=(destroy_end)
    python3 -m harness check-clean --state "$HYPERMESH_STATE" || failed+=(check-clean)
  fi
  note_step total $(( $(date +%s) - t0 ))
  python3 -m harness report --run "$run" --out "$user_out" || failed+=(report)
  if [ ${#failed[@]} -gt 0 ]; then
    echo "=== matrix user: FAILED steps: ${failed[*]}; report in $user_out/kernel-matrix.md"
    return 1
  fi
  echo "=== matrix user: all steps passed in $(( $(date +%s) - t0 )) s; report in $user_out/kernel-matrix.md"
}
