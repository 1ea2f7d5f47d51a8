#!/usr/bin/env bash
# Create a Cloud TPU VM (or a queued resource that becomes one), and optionally the run bucket in its region.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: $SCRIPT_NAME --name NAME [options] [-- EXTRA_GCLOUD_ARGS...]

Creates the TPU VM NAME with 'gcloud compute tpus tpu-vm create', or with --queued a queued resource whose node
is NAME ('gcloud compute tpus queued-resources create'), which Cloud TPU provisions when capacity frees up.
Arguments after -- go to that gcloud command unchanged (e.g. -- --network=my-net --internal-ips).

  --name NAME              TPU VM / node name (required; or SHINE_TPU_NAME)
  --zone ZONE              default: $ZONE (or SHINE_TPU_ZONE)
  --project PROJECT        default: gcloud's configured project (or SHINE_TPU_PROJECT)
  --accelerator-type TYPE  default: $ACCELERATOR (v4-64 = 32 chips on 8 hosts, v5p-8, v6e-8, ...)
  --runtime-version V      TPU software version, default: $RUNTIME
  --spot                   spot capacity (cheaper, can be preempted at any time)
  --reserved               use the project's reservation
  --queued                 create a queued resource instead of the VM directly
  --queued-id ID           the queued resource's name (default: NAME)
  --valid-until-duration D queued: give up if not provisioned within D (e.g. 6h)
  --wait                   queued: poll every 30 s until the resource is ACTIVE
  --bucket gs://B[/P]      with --create-bucket: the bucket for checkpoints and results (or SHINE_TPU_BUCKET)
  --create-bucket          also create that bucket in the zone's region
  --dry-run                print every command, one per line, and run none
  -h, --help               this help
EOF
}

ACCELERATOR=v4-8
RUNTIME=tpu-ubuntu2204-base
SPOT=0
RESERVED=0
QUEUED=0
QUEUED_ID=""
VALID_UNTIL=""
WAIT=0
CREATE_BUCKET=0
EXTRA=()
while (($#)); do
  case $1 in
    --accelerator-type | --accelerator-type=*) flag_value "$@" && ACCELERATOR=$VALUE ;;
    --runtime-version | --runtime-version=*) flag_value "$@" && RUNTIME=$VALUE ;;
    --queued-id | --queued-id=*) flag_value "$@" && QUEUED_ID=$VALUE ;;
    --valid-until-duration | --valid-until-duration=*) flag_value "$@" && VALID_UNTIL=$VALUE ;;
    --bucket | --bucket=*) flag_value "$@" && BUCKET=$VALUE ;;
    --spot) SPOT=1 SHIFT=1 ;;
    --reserved) RESERVED=1 SHIFT=1 ;;
    --queued) QUEUED=1 SHIFT=1 ;;
    --wait) WAIT=1 SHIFT=1 ;;
    --create-bucket) CREATE_BUCKET=1 SHIFT=1 ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    *) common_flag "$@" || unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_vm
[[ $ACCELERATOR =~ ^[a-z0-9]+-[0-9]+$ ]] || die "--accelerator-type '$ACCELERATOR' is not a type like v4-8 or v5p-64"
[[ -n $RUNTIME ]] || die "--runtime-version must not be empty"
((SPOT + RESERVED <= 1)) || die "--spot and --reserved exclude each other"
QUEUED_ID=${QUEUED_ID:-$NAME}
check_name --queued-id "$QUEUED_ID"
if ((!QUEUED)); then
  [[ -z $VALID_UNTIL ]] || die "--valid-until-duration needs --queued"
  ((!WAIT)) || die "--wait needs --queued (tpu-vm create already waits)"
fi
if ((CREATE_BUCKET)); then
  require BUCKET --bucket
  check_bucket
elif [[ -n $BUCKET ]]; then
  check_bucket
fi
scope_args

if ((CREATE_BUCKET)); then
  bucket_only=${BUCKET#gs://}
  bucket_only=gs://${bucket_only%%/*}
  run gcloud storage buckets create "$bucket_only" --location="${ZONE%-*}" --uniform-bucket-level-access \
    "${PROJECT_ARGS[@]}"
fi

capacity=()
((SPOT)) && capacity+=(--spot)
((RESERVED)) && capacity+=(--reserved)

if ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources create "$QUEUED_ID" --node-id="$NAME" "${SCOPE[@]}"
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${capacity[@]}")
  [[ -z $VALID_UNTIL ]] || cmd+=(--valid-until-duration="$VALID_UNTIL")
  run "${cmd[@]}" "${EXTRA[@]}"
  describe=(gcloud compute tpus queued-resources describe "$QUEUED_ID" "${SCOPE[@]}" --format='value(state.state)')
  if ((WAIT)); then
    if ((DRY_RUN)); then
      note "(--wait: the next command is repeated every 30 s until it prints ACTIVE)"
      run "${describe[@]}"
    else
      while :; do
        state=$("${describe[@]}")
        note "queued resource $QUEUED_ID: $state"
        case $state in
          ACTIVE) break ;;
          FAILED | SUSPENDED | SUSPENDING) die "queued resource $QUEUED_ID is $state" ;;
        esac
        sleep 30
      done
    fi
  else
    note "queued: '$(quote "${describe[@]}")' prints ACTIVE once the VM $NAME exists"
  fi
else
  run gcloud compute tpus tpu-vm create "$NAME" "${SCOPE[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" "${capacity[@]}" "${EXTRA[@]}"
fi
