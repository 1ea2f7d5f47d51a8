#!/usr/bin/env bash
# Stop a launched run on every worker (SIGTERM to shine-jax); worker 0 still copies the workdir to the bucket.
# Launching the same run again resumes from its latest checkpoint.
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
  --worker W         all (default) or worker indices
  --dry-run          print every command, one per line, and run none
  -h, --help         this help
EOF2
}

WORKDIR=""
WORKER=all
while (($#)); do
  case $1 in
    --run | --run=*) flag_value "$@" && RUN_NAME=$VALUE ;;
    --workdir | --workdir=*) flag_value "$@" && WORKDIR=$VALUE ;;
    --dir | --dir=*) flag_value "$@" && DIR=$VALUE ;;
    --worker | --worker=*) flag_value "$@" && WORKER=$VALUE ;;
    *) common_flag "$@" || unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_vm
check_run_name
check_worker "$WORKER"
[[ -n $DIR && $DIR != /* ]] || die "--dir '$DIR' must be a path relative to the home directory"
WORKDIR=${WORKDIR:-runs/$RUN_NAME}
scope_args

# worker.sh keeps the pid of shine-jax in WORKDIR/logs/worker<ID>.pid while it runs
tpu_ssh "$WORKER" "cd $(quote "$DIR") && for f in $(quote "$WORKDIR")/logs/worker*.pid; do \
if [ -e \"\$f\" ]; then pid=\$(cat \"\$f\"); kill \"\$pid\" && echo \"stopped shine-jax (pid \$pid)\"; fi; done"
