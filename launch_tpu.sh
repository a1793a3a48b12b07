#!/usr/bin/env bash
# Launch a glm-jax run on a Cloud TPU VM (single host or pod slice) with gcloud.
#
#   ./launch_tpu.sh --name glm-large --zone us-central2-b --accelerator v4-32 \
#       --gin_file gin/pretrain/large.gin --model_dir gs://BUCKET/glm-large [--gin.BINDING=VALUE ...]
#
# Steps: create the TPU VM (skipped with --reuse), copy this checkout to every worker, install glm-jax with the
# TPU build of jax, then start `python -m glm_jax.main train` on all workers at once (jax.distributed picks up
# the TPU topology by itself, so no coordinator flags are needed). `--dry_run` prints the gcloud commands
# instead of running them. Logs of the training command go to ~/glm_jax_train.log on each worker.
set -euo pipefail

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

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
EXTRA=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --gin_file) GIN_FILE="$2"; shift 2 ;;
    --model_dir) MODEL_DIR="$2"; shift 2 ;;
    --reuse) REUSE=1; shift ;;
    --spot) SPOT=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    --gin.*) EXTRA+=("$1"); shift ;;
    -h|--help) usage 0 ;;
    *) echo "launch_tpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

missing=()
[[ -z "$NAME" ]] && missing+=(--name)
[[ -z "$ZONE" ]] && missing+=(--zone)
[[ -z "$GIN_FILE" ]] && missing+=(--gin_file)
[[ -z "$MODEL_DIR" ]] && missing+=(--model_dir)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "launch_tpu.sh: missing required ${missing[*]} (see --help)" >&2
  exit 2
fi
REPO_ROOT="$(cd "$(dirname "$0")" && pwd)"
if [[ ! -f "$REPO_ROOT/$GIN_FILE" ]]; then
  echo "launch_tpu.sh: gin file '$GIN_FILE' not found under $REPO_ROOT" >&2
  exit 2
fi

GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project "$PROJECT")

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

if [[ "$REUSE" == 0 ]]; then
  create=("${GCLOUD[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type "$ACCELERATOR" --version "$VERSION")
  [[ "$SPOT" == 1 ]] && create+=(--spot)
  run "${create[@]}"
fi

ARCHIVE="/tmp/glm_jax_$NAME.tar.gz"
run tar -czf "$ARCHIVE" -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude='*.egg-info' .
run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:~/glm_jax.tar.gz" "${COMMON[@]}" --worker=all

SETUP='mkdir -p ~/glm_jax && tar -xzf ~/glm_jax.tar.gz -C ~/glm_jax && cd ~/glm_jax && python3 -m pip install -q -e . "jax[tpu]>=0.10.2,<0.11"'
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$SETUP"

TRAIN="cd ~/glm_jax && nohup python3 -m glm_jax.main train --gin_file=$(printf '%q' "$GIN_FILE") --model_dir=$(printf '%q' "$MODEL_DIR")"
for binding in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  TRAIN+=" $(printf '%q' "$binding")"
done
TRAIN+=" > ~/glm_jax_train.log 2>&1 &"
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$TRAIN"

if [[ "$DRY_RUN" == 0 ]]; then
  echo "Started. Follow worker 0 with:"
  echo "  ${GCLOUD[*]} ssh $NAME ${COMMON[*]} --worker=0 --command 'tail -f ~/glm_jax_train.log'"
fi
