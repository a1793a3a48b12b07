#!/usr/bin/env bash
# Launch a glm-jax run on a Cloud TPU VM (single host or pod slice) with gcloud.
#
#   ./launch_tpu.sh --name glm-large --zone us-central2-b --accelerator v4-32 \
#       --gin_file gin/pretrain/large.gin --model_dir gs://BUCKET/glm-large [--gin.BINDING=VALUE ...]
#
# Steps: create the TPU VM (skipped with --reuse), copy this checkout to every worker, install glm-jax with the
# TPU build of jax into a Python 3.11 virtualenv made by uv (TPU VM images ship Python 3.10, which pyproject.toml
# does not accept; uv fetches 3.11 where the image has none), then start `python -m glm_jax.main train` on all
# workers at once (jax.distributed picks up the TPU topology by itself, so no coordinator flags are needed).
# `--dry_run` prints every command (gcloud's, the archive's, the workers' setup) instead of running them. Logs
# of the training command go to ~/glm_jax_train.log on each worker.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
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
# The Python the workers run: the one pyproject.toml accepts (requires-python = ">=3.11,<3.12").
PYTHON_VERSION="3.11"
if ! grep -Eq "^requires-python = \">=${PYTHON_VERSION}(,<[0-9.]+)?\"" "$REPO_ROOT/pyproject.toml"; then
  echo "launch_tpu.sh: pyproject.toml's requires-python no longer starts at $PYTHON_VERSION; update PYTHON_VERSION here" >&2
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

# The checkout's archive, in a private temporary directory removed on exit (whatever happens).
STAGING="$(mktemp -d "${TMPDIR:-/tmp}/glm_jax_launch.XXXXXXXX")"
trap 'rm -rf "$STAGING"' EXIT
ARCHIVE="$STAGING/glm_jax.tar.gz"
run tar -czf "$ARCHIVE" -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude=.venv --exclude='*.egg-info' .
run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:~/glm_jax.tar.gz" "${COMMON[@]}" --worker=all

# On each worker: unpack, get uv (unless the image has it), make a Python $PYTHON_VERSION virtualenv, check it,
# install glm-jax with the TPU build of jax into it, remove the archive.
SETUP="set -euo pipefail; mkdir -p ~/glm_jax && tar -xzf ~/glm_jax.tar.gz -C ~/glm_jax && rm -f ~/glm_jax.tar.gz"
SETUP+=" && cd ~/glm_jax && export PATH=\"\$HOME/.local/bin:\$PATH\""
SETUP+=" && { command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; }"
SETUP+=" && uv venv --allow-existing --python $PYTHON_VERSION .venv"
SETUP+=" && .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (${PYTHON_VERSION/./, }), sys.version'"
SETUP+=" && uv pip install --python .venv/bin/python -q -e . 'jax[tpu]>=0.10.2,<0.11'"
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$SETUP"

TRAIN="cd ~/glm_jax && nohup .venv/bin/python -m glm_jax.main train --gin_file=$(printf '%q' "$GIN_FILE") --model_dir=$(printf '%q' "$MODEL_DIR")"
for binding in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  TRAIN+=" $(printf '%q' "$binding")"
done
TRAIN+=" > ~/glm_jax_train.log 2>&1 &"
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$TRAIN"

if [[ "$DRY_RUN" == 0 ]]; then
  echo "Started. Follow worker 0 with:"
  echo "  ${GCLOUD[*]} ssh $NAME ${COMMON[*]} --worker=0 --command 'tail -f ~/glm_jax_train.log'"
fi
