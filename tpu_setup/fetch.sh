#!/usr/bin/env bash
# Copy a run's results (metrics, TensorBoard events, summaries, final/ models, logs) from the bucket to here.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
usage: $SCRIPT_NAME --run RUN --bucket gs://B[/P] [options]

Runs 'gcloud storage rsync --recursive gs://B[/P]/RUN/workdir DEST' (the Orbax checkpoints stay in
gs://B[/P]/RUN/checkpoints). DEST then works like any local workdir:
  .venv/bin/shine-jax eval --workdir DEST --data test.jsonl --methods none,icl,shine
  .venv/bin/python experiments/plot_training.py DEST

  --run RUN            the run (required; or SHINE_TPU_RUN)
  --bucket gs://B[/P]  (required; or SHINE_TPU_BUCKET)
  --to DEST            local destination (default: workdirs/RUN)
  --project PROJECT    default: gcloud's configured project (or SHINE_TPU_PROJECT)
  --dry-run            print every command, one per line, and run none
  -h, --help           this help
EOF2
}

DEST=""
while (($#)); do
  case $1 in
    --run | --run=*) flag_value "$@" && RUN_NAME=$VALUE ;;
    --bucket | --bucket=*) flag_value "$@" && BUCKET=$VALUE ;;
    --to | --to=*) flag_value "$@" && DEST=$VALUE ;;
    --name | --name=* | --zone | --zone=*) unknown_flag "$1" ;;
    *) common_flag "$@" || unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_run_name
require BUCKET --bucket
check_bucket
DEST=${DEST:-workdirs/$RUN_NAME}
scope_args

run mkdir -p "$DEST"
run gcloud storage rsync --recursive "$BUCKET/$RUN_NAME/workdir" "$DEST" "${PROJECT_ARGS[@]}"
