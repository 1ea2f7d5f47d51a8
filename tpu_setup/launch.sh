#!/usr/bin/env bash
# Start a training stage or a sweep on every host of a TPU VM, with checkpoints and results in a GCS bucket.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: $SCRIPT_NAME --name NAME --run RUN --bucket gs://B[/P] [options] -- (train|sweep) [shine-jax arguments...]
       $SCRIPT_NAME --name NAME --run RUN --bucket gs://B[/P] --config configs/X.py:STAGE [options]   (train)

Runs tpu_setup/worker.sh on the workers (gcloud compute tpus tpu-vm ssh --worker=all): each host runs
  .venv/bin/shine-jax train --distributed-auto --no-progress --workdir runs/RUN \\
      --config.checkpoint_dir=gs://B[/P]/RUN/checkpoints <arguments after -->
(or 'shine-jax sweep --workdir runs/RUN <arguments after -->'), after bringing back what earlier launches of RUN
left in gs://B[/P]/RUN/workdir; worker 0 copies the workdir there every --sync-every seconds and at the end
(gcloud storage rsync). Launching the same RUN again resumes from its latest checkpoint.

  --name NAME          TPU VM name (required; or SHINE_TPU_NAME)
  --zone ZONE          default: $ZONE (or SHINE_TPU_ZONE)
  --project PROJECT    default: gcloud's configured project (or SHINE_TPU_PROJECT)
  --run RUN            the run's name: gs://B[/P]/RUN and runs/RUN (required; or SHINE_TPU_RUN)
  --bucket gs://B[/P]  bucket (and prefix) for checkpoints and results (required; or SHINE_TPU_BUCKET)
  --config SPEC        shorthand for '-- train --config SPEC' (with '-- sweep ...': adds --config SPEC to it)
  --config.FIELD=V     a config override, added to the shine-jax command (repeatable)
  --workdir PATH       workdir on the workers, relative to DIR (default: runs/RUN)
  --dir DIR            the repository on the workers (default: $DIR; or SHINE_TPU_DIR)
  --worker W           all (default) or worker indices; a sweep of single-host points may use --worker=0
  --sync-every S       seconds between copies of the workdir to the bucket (default: $SYNC_EVERY; 0: at the end)
  --env KEY=VALUE      environment for shine-jax (repeatable), e.g. SHINE_JAX_QWEN3_8B_DIR=models/Qwen3-8B
  --no-distributed     train without --distributed-auto
  --foreground         stay attached until the job ends (default: start it with nohup and return; see watch.sh)
  --dry-run            print every command, one per line, and run none
  -h, --help           this help
EOF
}

WORKER=all
WORKDIR=""
SYNC_EVERY=600
ENVS=()
DISTRIBUTED=1
FOREGROUND=0
CONFIG=""
OVERRIDES=()
JOB=()
while (($#)); do
  case $1 in
    --run | --run=*) flag_value "$@" && RUN_NAME=$VALUE ;;
    --bucket | --bucket=*) flag_value "$@" && BUCKET=$VALUE ;;
    --workdir | --workdir=*) flag_value "$@" && WORKDIR=$VALUE ;;
    --config | --config=*) flag_value "$@" && CONFIG=$VALUE ;;
    --config.*=*) OVERRIDES+=("$1") SHIFT=1 ;;
    --dir | --dir=*) flag_value "$@" && DIR=$VALUE ;;
    --worker | --worker=*) flag_value "$@" && WORKER=$VALUE ;;
    --sync-every | --sync-every=*) flag_value "$@" && SYNC_EVERY=$VALUE ;;
    --env | --env=*) flag_value "$@" && ENVS+=("$VALUE") ;;
    --no-distributed) DISTRIBUTED=0 SHIFT=1 ;;
    --foreground) FOREGROUND=1 SHIFT=1 ;;
    --)
      shift
      JOB=("$@")
      break
      ;;
    *) common_flag "$@" || unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_vm
check_run_name
require BUCKET --bucket
check_bucket
check_worker "$WORKER"
check_uint --sync-every "$SYNC_EVERY"
[[ -n $DIR && $DIR != /* ]] || die "--dir '$DIR' must be a path relative to the home directory"
for kv in "${ENVS[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv' must look like KEY=VALUE"
done
if [[ -n $CONFIG ]]; then
  ((${#JOB[@]})) || JOB=(train)
  for arg in "${JOB[@]:1}"; do
    [[ $arg != --config && $arg != --config=* ]] || die "--config is given twice (before and after --)"
  done
  JOB=("${JOB[0]}" --config "$CONFIG" "${JOB[@]:1}")
fi
((${#JOB[@]} == 0)) || JOB+=("${OVERRIDES[@]}")
check_job "${JOB[@]}"
WORKDIR=${WORKDIR:-runs/$RUN_NAME}
scope_args

remote=(tpu_setup/worker.sh --run "$RUN_NAME" --bucket "$BUCKET" --workdir "$WORKDIR" --sync-every "$SYNC_EVERY")
for kv in "${ENVS[@]}"; do
  remote+=(--env "$kv")
done
((DISTRIBUTED)) || remote+=(--no-distributed)
((FOREGROUND)) || remote+=(--detach)
remote+=(-- "${JOB[@]}")
tpu_ssh "$WORKER" "cd $(quote "$DIR") && $(quote "${remote[@]}")"

if ((!FOREGROUND && !DRY_RUN)); then
  watch=(tpu_setup/watch.sh --name "$NAME" --zone "$ZONE" --run "$RUN_NAME")
  [[ -z $PROJECT ]] || watch+=(--project "$PROJECT")
  [[ $DIR == shine_jax ]] || watch+=(--dir "$DIR")
  [[ $WORKDIR == "runs/$RUN_NAME" ]] || watch+=(--workdir "$WORKDIR")
  note "started in the background on worker(s) $WORKER; follow it with: $(quote "${watch[@]}")"
fi
