#!/usr/bin/env bash
# Runs on each worker of the TPU VM, in the repository directory (launch.sh starts it there through gcloud ssh):
# brings the run's workdir back from the bucket (a relaunch after preemption, or the next stage), runs
# `shine-jax train|sweep` with the Orbax checkpoints in the bucket, and copies the workdir to the bucket from
# worker 0, every --sync-every seconds and once more at the end.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: $SCRIPT_NAME --run RUN --bucket gs://B[/P] [options] -- (train|sweep) [shine-jax arguments...]

Layout in the bucket:  gs://B[/P]/RUN/checkpoints/<stage>   Orbax checkpoints (train: --config.checkpoint_dir)
                       gs://B[/P]/RUN/workdir/              copy of the workdir (metrics, TensorBoard, final/, logs/)
train gets --distributed-auto --no-progress --workdir WORKDIR --config.checkpoint_dir=gs://B[/P]/RUN/checkpoints;
sweep gets --workdir WORKDIR (its points' checkpoints stay in the workdir and are copied with it).

  --run RUN            the run's name (required; or SHINE_TPU_RUN)
  --bucket gs://B[/P]  (required; or SHINE_TPU_BUCKET)
  --workdir PATH       local workdir (default: runs/RUN)
  --sync-every S       worker 0 copies the workdir to the bucket every S seconds (default: $SYNC_EVERY; 0: at the end)
  --env KEY=VALUE      export this variable for shine-jax (repeatable), e.g. SHINE_JAX_QWEN3_8B_DIR=models/Qwen3-8B
  --no-distributed     train without --distributed-auto (one host, or a single-host GPU)
  --detach             run in the background (nohup), logging to WORKDIR/logs/worker<ID>.log, and return
  --worker-id N        this worker's index (default: \$TPU_WORKER_ID, else the VM metadata, else 0)
  --venv DIR           the virtual environment (default: $VENV)
  --dry-run            print every command, one per line, and run none
  -h, --help           this help
EOF
}

ORIGINAL_ARGS=("$@")
WORKDIR=""
SYNC_EVERY=600
ENVS=()
DISTRIBUTED=1
DETACH=0
WORKER_ID=${TPU_WORKER_ID:-}
VENV=.venv
JOB=()
while (($#)); do
  case $1 in
    --run | --run=*) flag_value "$@" && RUN_NAME=$VALUE ;;
    --bucket | --bucket=*) flag_value "$@" && BUCKET=$VALUE ;;
    --workdir | --workdir=*) flag_value "$@" && WORKDIR=$VALUE ;;
    --sync-every | --sync-every=*) flag_value "$@" && SYNC_EVERY=$VALUE ;;
    --env | --env=*) flag_value "$@" && ENVS+=("$VALUE") ;;
    --worker-id | --worker-id=*) flag_value "$@" && WORKER_ID=$VALUE ;;
    --venv | --venv=*) flag_value "$@" && VENV=$VALUE ;;
    --no-distributed) DISTRIBUTED=0 SHIFT=1 ;;
    --detach) DETACH=1 SHIFT=1 ;;
    --)
      shift
      JOB=("$@")
      break
      ;;
    -h | --help | --dry-run) common_flag "$@" ;;
    *) unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_run_name
require BUCKET --bucket
check_bucket
check_uint --sync-every "$SYNC_EVERY"
WORKDIR=${WORKDIR:-runs/$RUN_NAME}
for kv in "${ENVS[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv' must look like KEY=VALUE"
done
check_job "${JOB[@]}"

REMOTE=$BUCKET/$RUN_NAME
if [[ -z $WORKER_ID ]]; then
  if ((DRY_RUN)); then
    WORKER_ID=0
  else
    WORKER_ID=$(curl -sf -H 'Metadata-Flavor: Google' --max-time 5 \
      http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)
  fi
fi
check_uint --worker-id "$WORKER_ID"
LOG=$WORKDIR/logs/worker$WORKER_ID.log
PIDFILE=$WORKDIR/logs/worker$WORKER_ID.pid

if ((DETACH)) && [[ -z ${SHINE_TPU_DETACHED:-} ]]; then
  if ((DRY_RUN)); then
    note "(--detach: the commands below run in the background, logging to $LOG)"
  else
    mkdir -p "$WORKDIR/logs"
    SHINE_TPU_DETACHED=1 nohup "$0" "${ORIGINAL_ARGS[@]}" >>"$LOG" 2>&1 </dev/null &
    note "worker $WORKER_ID: started in the background (pid $!), log: $LOG (in $PWD)"
    exit 0
  fi
fi

cmd=("$VENV/bin/shine-jax" "${JOB[0]}")
if [[ ${JOB[0]} == train ]]; then
  ((!DISTRIBUTED)) || cmd+=(--distributed-auto)
  cmd+=(--no-progress --workdir "$WORKDIR")
  has_ckpt_dir=0
  for arg in "${JOB[@]:1}"; do
    [[ $arg != --config.checkpoint_dir=* ]] || has_ckpt_dir=1
  done
  ((has_ckpt_dir)) || cmd+=("--config.checkpoint_dir=$REMOTE/checkpoints")
else
  cmd+=(--workdir "$WORKDIR")
fi
cmd+=("${JOB[@]:1}")

sync_up() {
  run gcloud storage rsync --recursive "$WORKDIR" "$REMOTE/workdir"
}

# 1. what earlier launches left in the bucket (finished stages' final/, metrics), except the logs
if ((DRY_RUN)); then
  note "(if $REMOTE/workdir exists:)"
  run gcloud storage rsync --recursive --exclude='^logs/' "$REMOTE/workdir" "$WORKDIR"
else
  mkdir -p "$WORKDIR/logs"
  if [[ -z ${SHINE_TPU_DETACHED:-} ]]; then  # in the foreground: keep a log too (it is synced with the workdir)
    exec > >(tee -a "$LOG") 2>&1
  fi
  if gcloud storage ls "$REMOTE/workdir/" >/dev/null 2>&1; then
    run gcloud storage rsync --recursive --exclude='^logs/' "$REMOTE/workdir" "$WORKDIR"
  fi
fi

# 2. the job (worker 0 copies the workdir to the bucket meanwhile)
((${#ENVS[@]} == 0)) || cmd=(env "${ENVS[@]}" "${cmd[@]}")
if ((DRY_RUN)); then
  run "${cmd[@]}"
  if ((WORKER_ID == 0)); then
    ((SYNC_EVERY == 0)) || note "(worker 0, every $SYNC_EVERY s while the job runs, and once at the end:)"
    sync_up
  fi
  exit 0
fi

syncer=""
if ((WORKER_ID == 0 && SYNC_EVERY > 0)); then
  (while sleep "$SYNC_EVERY"; do
    sync_up || note "warning: copying $WORKDIR to the bucket failed; trying again in $SYNC_EVERY s"
  done) &
  syncer=$!
fi
note "worker $WORKER_ID: $(quote "${cmd[@]}")"
status=0
"${cmd[@]}" &
echo $! >"$PIDFILE"
wait $! || status=$?
rm -f "$PIDFILE"
if [[ -n $syncer ]]; then
  kill "$syncer" 2>/dev/null || true
fi
note "worker $WORKER_ID: shine-jax exited with status $status"
if ((WORKER_ID == 0)) && ! sync_up; then
  note "error: copying $WORKDIR to $REMOTE/workdir failed"
  ((status)) || status=1
fi
exit "$status"
