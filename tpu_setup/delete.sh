#!/usr/bin/env bash
# Delete the TPU VM (or its queued resource). The bucket, with the checkpoints and results, is kept.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
usage: $SCRIPT_NAME --name NAME [options]

  --name NAME        TPU VM / node name (required; or SHINE_TPU_NAME)
  --zone ZONE        default: $ZONE (or SHINE_TPU_ZONE)
  --project PROJECT  default: gcloud's configured project (or SHINE_TPU_PROJECT)
  --queued           it was created with create.sh --queued: delete the queued resource and its node (--force)
  --queued-id ID     the queued resource's name (default: NAME)
  --yes              do not ask for confirmation (gcloud --quiet)
  --async            return without waiting for the deletion to finish
  --dry-run          print every command, one per line, and run none
  -h, --help         this help
EOF2
}

QUEUED=0
QUEUED_ID=""
YES=0
ASYNC=0
while (($#)); do
  case $1 in
    --queued-id | --queued-id=*) flag_value "$@" && QUEUED_ID=$VALUE ;;
    --queued) QUEUED=1 SHIFT=1 ;;
    --yes) YES=1 SHIFT=1 ;;
    --async) ASYNC=1 SHIFT=1 ;;
    *) common_flag "$@" || unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_vm
[[ -z $QUEUED_ID || $QUEUED == 1 ]] || die "--queued-id needs --queued"
QUEUED_ID=${QUEUED_ID:-$NAME}
check_name --queued-id "$QUEUED_ID"
scope_args

flags=()
((!YES)) || flags+=(--quiet)
((!ASYNC)) || flags+=(--async)
if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$QUEUED_ID" "${SCOPE[@]}" --force "${flags[@]}"
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE[@]}" "${flags[@]}"
fi
