#!/usr/bin/env bash
# Follow a launched run on the TPU VM: its log on one worker, or the latest lines of each stage's metrics.jsonl.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
usage: $SCRIPT_NAME --name NAME --run RUN [options]

  --name NAME        TPU VM name (required; or SHINE_TPU_NAME)
  --zone ZONE        default: $ZONE (or SHINE_TPU_ZONE)
  --project PROJECT  default: gcloud's configured project (or SHINE_TPU_PROJECT)
  --run RUN          the run (required; or SHINE_TPU_RUN)
  --workdir PATH     its workdir on the workers, relative to DIR (default: runs/RUN)
  --dir DIR          the repository on the workers (default: $DIR; or SHINE_TPU_DIR)
  --worker N         whose log (default: $WORKER)
  --lines N          how many lines to show first (default: $NLINES)
  --metrics          print the last N lines of each stage's metrics.jsonl instead of following the log
  --dry-run          print every command, one per line, and run none
  -h, --help         this help

Curves: the workdir is copied to gs://BUCKET/RUN/workdir every few minutes (launch.sh --sync-every), so
  tensorboard --logdir gs://BUCKET/RUN/workdir
shows every stage's TensorBoard events from your own machine.
EOF2
}

WORKDIR=""
WORKER=0
NLINES=50
METRICS=0
while (($#)); do
  case $1 in
    --run | --run=*) flag_value "$@" && RUN_NAME=$VALUE ;;
    --workdir | --workdir=*) flag_value "$@" && WORKDIR=$VALUE ;;
    --dir | --dir=*) flag_value "$@" && DIR=$VALUE ;;
    --worker | --worker=*) flag_value "$@" && WORKER=$VALUE ;;
    --lines | --lines=*) flag_value "$@" && NLINES=$VALUE ;;
    --metrics) METRICS=1 SHIFT=1 ;;
    *) common_flag "$@" || unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_vm
check_run_name
check_uint --worker "$WORKER"
check_uint --lines "$NLINES"
[[ -n $DIR && $DIR != /* ]] || die "--dir '$DIR' must be a path relative to the home directory"
WORKDIR=${WORKDIR:-runs/$RUN_NAME}
scope_args

if ((METRICS)); then
  tpu_ssh "$WORKER" "cd $(quote "$DIR") && tail -n $NLINES $(quote "$WORKDIR")/*/metrics.jsonl"
else
  tpu_ssh "$WORKER" "cd $(quote "$DIR") && tail -n $NLINES -F $(quote "$WORKDIR/logs/worker$WORKER.log")"
fi
