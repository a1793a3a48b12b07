#!/usr/bin/env bash
# Launch and look after a glm-jax run on a Cloud TPU VM (single host or pod slice) with gcloud.
#
#   ./launch_tpu.sh SUBCOMMAND --name NAME --zone ZONE [--project P] [--dry_run] [FLAGS]
#   ./launch_tpu.sh --name glm-large --zone us-central2-b --accelerator v4-32 \
#       --gin_file gin/pretrain/large.gin --model_dir gs://BUCKET/glm-large [--gin.BINDING=VALUE ...]
#
# Subcommands (docs/tpu.md walks through them):
#   create   create the TPU VM (gcloud compute tpus tpu-vm create), or with --queued a queued resource
#            (gcloud compute tpus queued-resources create NAME --node-id NAME) and wait until it is ACTIVE
#   run      copy this checkout to every worker, install glm-jax with the TPU build of jax into a Python 3.11
#            virtualenv made by uv (TPU VM images ship Python 3.10, which pyproject.toml does not accept; uv
#            fetches 3.11 where the image has none), then start `python -m glm_jax.main train` on all workers at
#            once (jax.distributed picks up the TPU topology by itself, so no coordinator flags are needed);
#            the training command's output goes to ~/glm_jax_train.log on each worker
#   status   the VM's state (`state: READY`; with --queued the queued resource's too) and, when it is READY,
#            worker 0's last logged step line and whether training is running, finished or not running
#   logs     follow worker 0's ~/glm_jax_train.log from its first line (with --lines N, its last N lines)
#   stop     send SIGTERM to the training processes on every worker: the run saves a checkpoint at the next
#            step and exits (a later `run` resumes from it)
#   delete   delete the VM, or with --queued the queued resource and its VM
#   babysit  keep a spot or preemptible run alive: check the VM every --poll_seconds; when it is missing,
#            PREEMPTED or TERMINATED (or the queued resource FAILED or SUSPENDED), delete it, create it again
#            and run the same command, which resumes from --model_dir's latest checkpoint; when training is not
#            running on worker 0, stop what is left of it on the others and run it again; exit 0 once the run
#            has finished (worker 0's log ends with `trained to step N`), 1 after --max_retries recoveries
#   (none)   create (skipped with --reuse), then run
#
# Flags (every subcommand needs --name and --zone; run, babysit and the form without one need --gin_file and
# --model_dir; a flag a subcommand does not use is an error):
#   --name NAME               the TPU VM's name (and the queued resource's)
#   --zone ZONE               its zone
#   --project PROJECT         the Google Cloud project (default: gcloud's configured one)
#   --dry_run                 print every command (gcloud's, the archive's, the workers' setup) instead of running
#                             it; babysit prints one check cycle and the commands of a recovery
#   --accelerator TYPE        create, babysit: the accelerator type (default v4-8)
#   --version VERSION         create, babysit: the TPU software version (default tpu-ubuntu2204-base)
#   --spot                    create, babysit: a spot VM (or queued resource)
#   --queued                  create, status, delete, babysit: through a queued resource named NAME
#   --queued_timeout SECONDS  create --queued: give up when it is not ACTIVE after SECONDS (default 3600)
#   --gin_file FILE           run, babysit: the experiment's gin file, relative to this checkout
#   --model_dir DIR           run, babysit: the run's directory (a gs:// path: workers come and go)
#   --gin.BINDING=VALUE       run, babysit: gin bindings passed on to the training command
#   --reuse                   (no subcommand) the VM exists: skip create
#   --lines N                 logs: start from the log's last N lines
#   --poll_seconds SECONDS    babysit: seconds between checks (default 300); create --queued polls its state every
#                             min(SECONDS, 30) s
#   --max_retries N           babysit: recoveries (recreating the VM, or running the command again) before it gives
#                             up (default 10); its own first start is not one; five gcloud errors in a row also
#                             stop it
#   -h, --help                print this text
set -euo pipefail

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  exit "${1:-0}"
}

usage_error() {
  echo "launch_tpu.sh: $* (see --help)" >&2
  exit 2
}

SUBCOMMANDS=(create run status logs stop delete babysit)
SUB=""
NAME=""
ZONE=""
ACCELERATOR="v4-8"
VERSION="tpu-ubuntu2204-base"
PROJECT=""
GIN_FILE=""
MODEL_DIR=""
REUSE=0
DRY_RUN=0
SPOT=0
QUEUED=0
QUEUED_TIMEOUT=3600
LINES=""
POLL_SECONDS=300
MAX_RETRIES=10
EXTRA=()
SEEN=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name|--zone|--accelerator|--version|--project|--gin_file|--model_dir|--lines|--poll_seconds|--max_retries|--queued_timeout)
      [[ $# -ge 2 ]] || usage_error "$1 needs a value"
      case "$1" in
        --name) NAME="$2" ;;
        --zone) ZONE="$2" ;;
        --accelerator) ACCELERATOR="$2" ;;
        --version) VERSION="$2" ;;
        --project) PROJECT="$2" ;;
        --gin_file) GIN_FILE="$2" ;;
        --model_dir) MODEL_DIR="$2" ;;
        *)
          [[ "$2" =~ ^[0-9]+$ ]] || usage_error "$1 needs a whole number, got '$2'"
          case "$1" in
            --lines) LINES="$2" ;;
            --poll_seconds) POLL_SECONDS="$2" ;;
            --max_retries) MAX_RETRIES="$2" ;;
            --queued_timeout) QUEUED_TIMEOUT="$2" ;;
          esac
          ;;
      esac
      SEEN+=("$1"); shift 2 ;;
    --reuse) REUSE=1; SEEN+=("$1"); shift ;;
    --spot) SPOT=1; SEEN+=("$1"); shift ;;
    --queued) QUEUED=1; SEEN+=("$1"); shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    --gin.*) EXTRA+=("$1"); SEEN+=("--gin.BINDING"); shift ;;
    -h|--help) usage 0 ;;
    -*) usage_error "unknown argument '$1'" ;;
    *)
      if [[ -n "$SUB" ]]; then
        usage_error "unknown argument '$1'"
      elif [[ " ${SUBCOMMANDS[*]} " != *" $1 "* ]]; then
        usage_error "unknown subcommand '$1' (one of: ${SUBCOMMANDS[*]})"
      fi
      SUB="$1"; shift ;;
  esac
done

# The flags each subcommand takes (besides --name, --zone, --project, --dry_run).
CREATE_FLAGS="--accelerator --version --spot --queued --queued_timeout --poll_seconds"
RUN_FLAGS="--gin_file --model_dir --gin.BINDING"
case "$SUB" in
  "") TAKES="$CREATE_FLAGS $RUN_FLAGS --reuse" ;;
  create) TAKES="$CREATE_FLAGS" ;;
  run) TAKES="$RUN_FLAGS" ;;
  status|delete) TAKES="--queued" ;;
  logs) TAKES="--lines" ;;
  stop) TAKES="" ;;
  babysit) TAKES="$CREATE_FLAGS $RUN_FLAGS --max_retries" ;;
esac
for flag in "${SEEN[@]+"${SEEN[@]}"}"; do
  if [[ " --name --zone --project $TAKES " != *" $flag "* ]]; then
    usage_error "${SUB:-the form without a subcommand} takes no $flag"
  fi
done

NEEDS_RUN=0
[[ "$SUB" == "" || "$SUB" == run || "$SUB" == babysit ]] && NEEDS_RUN=1
missing=()
[[ -z "$NAME" ]] && missing+=(--name)
[[ -z "$ZONE" ]] && missing+=(--zone)
if [[ "$NEEDS_RUN" == 1 ]]; then
  [[ -z "$GIN_FILE" ]] && missing+=(--gin_file)
  [[ -z "$MODEL_DIR" ]] && missing+=(--model_dir)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "launch_tpu.sh: missing required ${missing[*]} (see --help)" >&2
  exit 2
fi
REPO_ROOT="$(cd "$(dirname "$0")" && pwd)"
# The Python the workers run: the lowest one pyproject.toml accepts (requires-python = ">=3.11,<3.12", or a wider
# upper bound such as ">=3.11,<3.13").
PYTHON_VERSION="3.11"
if [[ "$NEEDS_RUN" == 1 ]]; then
  if [[ ! -f "$REPO_ROOT/$GIN_FILE" ]]; then
    echo "launch_tpu.sh: gin file '$GIN_FILE' not found under $REPO_ROOT" >&2
    exit 2
  fi
  if ! grep -Eq "^requires-python = \">=${PYTHON_VERSION//./\\.}(, ?<[0-9.]+)?\"" "$REPO_ROOT/pyproject.toml"; then
    echo "launch_tpu.sh: pyproject.toml's requires-python no longer starts at $PYTHON_VERSION; update PYTHON_VERSION here" >&2
    exit 2
  fi
fi

GCLOUD=(gcloud compute tpus tpu-vm)
QUEUED_GCLOUD=(gcloud compute tpus queued-resources)
COMMON=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project "$PROJECT")
VM_DESCRIBE=("${GCLOUD[@]}" describe "$NAME" "${COMMON[@]}" --format='value(state)')
QUEUED_DESCRIBE=("${QUEUED_GCLOUD[@]}" describe "$NAME" "${COMMON[@]}" --format='value(state.state)')

# The checkout's archive, in a private temporary directory removed on exit (whatever happens); gcloud's error
# messages are kept there too.
STAGING="$(mktemp -d "${TMPDIR:-/tmp}/glm_jax_launch.XXXXXXXX")"
trap 'rm -rf "$STAGING"' EXIT
ARCHIVE="$STAGING/glm_jax.tar.gz"

# On each worker: unpack, get uv (unless the image has it), make a Python $PYTHON_VERSION virtualenv, check it,
# install glm-jax with the TPU build of jax into it, remove the archive.
SETUP="set -euo pipefail; mkdir -p ~/glm_jax && tar -xzf ~/glm_jax.tar.gz -C ~/glm_jax && rm -f ~/glm_jax.tar.gz"
SETUP+=" && cd ~/glm_jax && export PATH=\"\$HOME/.local/bin:\$PATH\""
SETUP+=" && { command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; }"
SETUP+=" && uv venv --allow-existing --python $PYTHON_VERSION .venv"
SETUP+=" && .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (${PYTHON_VERSION/./, }), sys.version'"
SETUP+=" && uv pip install --python .venv/bin/python -q -e . 'jax[tpu]>=0.10.2,<0.11'"

TRAIN="cd ~/glm_jax && nohup .venv/bin/python -m glm_jax.main train --gin_file=$(printf '%q' "$GIN_FILE") --model_dir=$(printf '%q' "$MODEL_DIR")"
for binding in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  TRAIN+=" $(printf '%q' "$binding")"
done
TRAIN+=" > ~/glm_jax_train.log 2>&1 &"

# The training processes, as pgrep/pkill -f see them. The brackets keep the pattern from matching the remote shell
# that runs pgrep or pkill (its command line holds the pattern's text, not what the pattern matches).
TRAINING='[g]lm_jax\.main train'
# On worker 0: the log's last step line (`step N/M: loss ...` at evaluations and checkpoints, `step N: eval ...`,
# `preempted at step N: ...`, and at the end `trained to step N in S s: ...`, which `train` prints once it is done),
# then whether training is running, finished (not running, and the log has that last line) or not running.
PROBE="last=\$(grep -E 'step [0-9]+' ~/glm_jax_train.log 2>/dev/null | tail -n 1); echo \"last step: \${last:-(none)}\""
PROBE+="; if pgrep -f '$TRAINING' >/dev/null; then echo 'training: running'"
PROBE+="; elif grep -Eq '^trained to step [0-9]+ in ' ~/glm_jax_train.log 2>/dev/null; then echo 'training: finished'"
PROBE+="; else echo 'training: not running'; fi"
LOGS="tail -n ${LINES:-+1} -F ~/glm_jax_train.log"
STOP="pkill -TERM -f '$TRAINING' || true"

invoke() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

error() {
  echo "launch_tpu.sh: $*" >&2
}

# The state `describe` (given as the arguments) reports, NOT_FOUND when there is no such resource; on another
# gcloud error, its message on stderr and status 1.
state_of() {
  local out
  if out="$("$@" 2>"$STAGING/describe.err")"; then
    out="${out//[[:space:]]/}"
    echo "${out:-UNKNOWN}"
  elif grep -Eqi 'NOT_FOUND|not found' "$STAGING/describe.err"; then
    echo NOT_FOUND
  else
    cat "$STAGING/describe.err" >&2
    return 1
  fi
}

wait_until_active() {
  if [[ "$DRY_RUN" == 1 ]]; then
    invoke "${QUEUED_DESCRIBE[@]}"
    return 0
  fi
  local state last="" start=$SECONDS interval=$((POLL_SECONDS < 30 ? POLL_SECONDS : 30))
  local remove="remove it with: $0 delete --queued --name $NAME --zone $ZONE"
  while true; do
    if ! state="$(state_of "${QUEUED_DESCRIBE[@]}")"; then
      error "could not read the state of queued resource $NAME"
      return 1
    fi
    case "$state" in
      ACTIVE) echo "queued resource $NAME: ACTIVE"; return 0 ;;
      FAILED|SUSPENDED|NOT_FOUND)
        error "queued resource $NAME is $state (see ${QUEUED_GCLOUD[*]} describe $NAME --zone $ZONE; $remove)"
        return 1 ;;
    esac
    if ((SECONDS - start >= QUEUED_TIMEOUT)); then
      error "queued resource $NAME is still $state after ${QUEUED_TIMEOUT}s (--queued_timeout); $remove"
      return 1
    fi
    if [[ "$state" != "$last" ]]; then
      echo "queued resource $NAME: $state; waiting until it is ACTIVE (at most ${QUEUED_TIMEOUT}s)"
      last="$state"
    fi
    sleep "$interval"
  done
}

# Explicit `|| return 1`s: babysit calls these in conditions, where `set -e` does not stop at a failed command.
create_vm() {
  local command
  if [[ "$QUEUED" == 1 ]]; then
    command=("${QUEUED_GCLOUD[@]}" create "$NAME" --node-id "$NAME" "${COMMON[@]}" --accelerator-type "$ACCELERATOR"
             --runtime-version "$VERSION")
  else
    command=("${GCLOUD[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type "$ACCELERATOR" --version "$VERSION")
  fi
  if [[ "$SPOT" == 1 ]]; then
    command+=(--spot)
  fi
  invoke "${command[@]}" || return 1
  if [[ "$QUEUED" == 1 ]]; then
    wait_until_active || return 1
  fi
}

delete_vm() {
  if [[ "$QUEUED" == 1 ]]; then
    invoke "${QUEUED_GCLOUD[@]}" delete "$NAME" "${COMMON[@]}" --quiet --force
  else
    invoke "${GCLOUD[@]}" delete "$NAME" "${COMMON[@]}" --quiet
  fi
}

start_run() {
  # (.deviceless: the deviceless compilers of `compile`, over a GiB, which a TPU VM does not need.)
  invoke tar -czf "$ARCHIVE" -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude=.venv --exclude='*.egg-info' \
    --exclude=.deviceless --exclude=.hypothesis --exclude=.pytest_cache --exclude=__pycache__ . || return 1
  invoke "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:~/glm_jax.tar.gz" "${COMMON[@]}" --worker=all || return 1
  invoke "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$SETUP" || return 1
  invoke "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$TRAIN" || return 1
}

started() {
  if [[ "$DRY_RUN" == 0 ]]; then
    echo "Started. Follow worker 0 with:"
    echo "  $0 logs --name $NAME ${COMMON[*]}"
  fi
}

stop_training() {
  invoke "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$STOP"
}

probe() {
  invoke "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=0 --command "$PROBE"
}

status() {
  if [[ "$DRY_RUN" == 1 ]]; then
    if [[ "$QUEUED" == 1 ]]; then
      invoke "${QUEUED_DESCRIBE[@]}"
    fi
    invoke "${VM_DESCRIBE[@]}"
    probe
    return 0
  fi
  local state
  if [[ "$QUEUED" == 1 ]]; then
    state="$(state_of "${QUEUED_DESCRIBE[@]}")"
    echo "queued resource: $state"
  fi
  state="$(state_of "${VM_DESCRIBE[@]}")"
  echo "state: $state"
  if [[ "$state" == READY ]]; then
    probe || { error "could not reach worker 0 of $NAME"; return 1; }
  fi
}

babysit_dry_run() {
  echo "# babysit: one check (repeated every ${POLL_SECONDS}s, at most ${MAX_RETRIES} recoveries)"
  if [[ "$QUEUED" == 1 ]]; then
    invoke "${QUEUED_DESCRIBE[@]}"
  fi
  invoke "${VM_DESCRIBE[@]}"
  echo "# when READY: is training running, finished (exit 0) or not running (run again) on worker 0"
  probe
  echo "# when READY and training is not running: end what is left of it on every worker, then run again"
  stop_training
  echo "# when missing, PREEMPTED or TERMINATED (or the queued resource FAILED or SUSPENDED): delete, create, run"
  delete_vm
  create_vm
  start_run
}

babysit() {
  if [[ "$DRY_RUN" == 1 ]]; then
    babysit_dry_run
    return 0
  fi
  local fresh=1 retries=0 errors=0 state report action why last
  say() { echo "babysit: $*"; }
  gcloud_failed() {  # after a gcloud error: status 1 when it was the fifth in a row, else wait for the next check
    errors=$((errors + 1))
    if ((errors >= 5)); then
      error "babysit gave up: gcloud failed $errors times in a row (see its messages above)"
      return 1
    fi
    say "gcloud failed; checking again in ${POLL_SECONDS}s"
    sleep "$POLL_SECONDS"
  }
  while true; do
    action=""
    if [[ "$QUEUED" == 1 ]]; then
      state="$(state_of "${QUEUED_DESCRIBE[@]}")" || { gcloud_failed || return 1; continue; }
      case "$state" in
        NOT_FOUND) action=create; why="there is no queued resource $NAME" ;;
        FAILED|SUSPENDED) action=recreate; why="queued resource $NAME is $state" ;;
        ACTIVE) ;;
        *)
          errors=0; say "queued resource $NAME is $state; checking again in ${POLL_SECONDS}s"; sleep "$POLL_SECONDS"
          continue ;;
      esac
    fi
    if [[ -z "$action" ]]; then
      state="$(state_of "${VM_DESCRIBE[@]}")" || { gcloud_failed || return 1; continue; }
      case "$state" in
        NOT_FOUND)
          if [[ "$QUEUED" == 1 ]]; then
            action=recreate; why="queued resource $NAME is ACTIVE but has no VM"
          else
            action=create; why="there is no VM $NAME"
          fi ;;
        PREEMPTED|TERMINATED) action=recreate; why="$NAME is $state" ;;
        READY)
          report="$(probe)" || { gcloud_failed || return 1; continue; }
          last="$(sed -n 's/^last step: //p' <<<"$report")"
          case "$report" in
            *"training: running"*)
              errors=0; fresh=0; say "training is running ($last); checking again in ${POLL_SECONDS}s"; sleep "$POLL_SECONDS"
              continue ;;
            *"training: finished"*)
              say "the run has finished: $last"
              say "delete the VM with: $0 delete --name $NAME ${COMMON[*]}$([[ "$QUEUED" == 0 ]] || echo " --queued")"
              return 0 ;;
            *"training: not running"*) action=restart; why="training is not running on worker 0 (last step: $last)" ;;
            *) gcloud_failed || return 1; continue ;;
          esac ;;
        *) errors=0; say "$NAME is $state; checking again in ${POLL_SECONDS}s"; sleep "$POLL_SECONDS"; continue ;;
      esac
    fi
    errors=0
    # Babysit's own first start (no VM yet, or one that does not train yet) is not a recovery.
    if ((fresh == 0)) || [[ "$action" == recreate ]]; then
      if ((retries >= MAX_RETRIES)); then
        error "babysit gave up after $retries recoveries (--max_retries $MAX_RETRIES): $why"
        return 1
      fi
      retries=$((retries + 1))
      say "$why: recovery $retries of $MAX_RETRIES"
    else
      say "$why: starting it"
    fi
    fresh=0
    if [[ "$action" == recreate ]] && ! delete_vm; then
      say "deleting $NAME failed; checking again in ${POLL_SECONDS}s"; sleep "$POLL_SECONDS"; continue
    fi
    if [[ "$action" == restart ]]; then  # what is left of the run on the other workers holds their TPUs
      stop_training || true
    elif ! create_vm; then
      say "creating $NAME failed; checking again in ${POLL_SECONDS}s"; sleep "$POLL_SECONDS"; continue
    fi
    if start_run; then
      say "started the run (it resumes from $MODEL_DIR); checking again in ${POLL_SECONDS}s"
    else
      say "starting the run failed; checking again in ${POLL_SECONDS}s"
    fi
    sleep "$POLL_SECONDS"
  done
}

case "$SUB" in
  "")
    if [[ "$REUSE" == 0 ]]; then
      create_vm
    fi
    start_run
    started ;;
  create) create_vm ;;
  run) start_run; started ;;
  status) status ;;
  logs) invoke "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=0 --command "$LOGS" ;;
  stop) stop_training ;;
  delete) delete_vm ;;
  babysit) babysit ;;
esac
