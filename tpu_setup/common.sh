# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this file
#
# Shared by the tpu_setup scripts (sourced, never run): flag parsing, validation with one-line errors, shell
# quoting, and `run`, which prints each command and runs it, or only prints it under --dry-run.
#
# Flags shared by several scripts also read an environment variable, so a session can set them once:
#   --name SHINE_TPU_NAME   --zone SHINE_TPU_ZONE   --project SHINE_TPU_PROJECT   --bucket SHINE_TPU_BUCKET
#   --dir SHINE_TPU_DIR     --run SHINE_TPU_RUN

SCRIPT_NAME=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DRY_RUN=0
NAME=${SHINE_TPU_NAME:-}
ZONE=${SHINE_TPU_ZONE:-us-central2-b}
PROJECT=${SHINE_TPU_PROJECT:-}
BUCKET=${SHINE_TPU_BUCKET:-}
DIR=${SHINE_TPU_DIR:-shine_jax}
RUN_NAME=${SHINE_TPU_RUN:-}
VALUE=""
SHIFT=1

die() {
  printf 'error: %s: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 2
}

note() {  # progress and explanations go to stderr: under --dry-run stdout holds only the commands
  printf '%s\n' "$*" >&2
}

# quote WORD...: the words as one shell-safe line (bare when harmless, otherwise in single quotes)
quote() {
  local out="" word
  for word in "$@"; do
    if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+="$word "
    else
      out+="'${word//\'/\'\\\'\'}' "
    fi
  done
  printf '%s' "${out% }"
}

# run CMD ARG...: under --dry-run print the command (one line, quoted) and run nothing; otherwise echo it to
# stderr with a "+ " prefix and run it
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote "$@")"
    return 0
  fi
  note "+ $(quote "$@")"
  "$@"
}

# flag_value "$@": the value of the flag in $1, given as --flag=value or --flag value; sets VALUE and SHIFT
# (how many words the caller shifts)
flag_value() {
  if [[ $1 == *=* ]]; then
    VALUE=${1#*=}
    SHIFT=1
  elif (($# >= 2)) && [[ $2 != --* ]]; then
    VALUE=$2
    SHIFT=2
  else
    die "$1 needs a value (see $SCRIPT_NAME --help)"
  fi
}

# common_flag "$@": handle a flag every script shares (--name --zone --project --dry-run --help); returns 1 for
# any other word. Each script defines usage().
common_flag() {
  SHIFT=1
  case $1 in
    --name | --name=*) flag_value "$@" && NAME=$VALUE ;;
    --zone | --zone=*) flag_value "$@" && ZONE=$VALUE ;;
    --project | --project=*) flag_value "$@" && PROJECT=$VALUE ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) return 1 ;;
  esac
}

unknown_flag() {
  die "unknown argument '$1' (see $SCRIPT_NAME --help)"
}

require() {  # require VARIABLE --flag
  [[ -n ${!1:-} ]] || die "$2 is required (see $SCRIPT_NAME --help)"
}

check_name() {  # TPU node / queued-resource names: lower case, digits and hyphens, starting with a letter
  [[ $2 =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "$1 '$2' is not a valid name (lower-case letters, digits and hyphens, starting with a letter)"
}

check_vm() {  # the required --name of the TPU VM (or queued resource) and its --zone
  require NAME --name
  check_name --name "$NAME"
  check_zone
}

check_zone() {
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' is not a zone like us-central2-b"
}

check_bucket() {  # gs://BUCKET[/PREFIX], the same rule as the checkpoint_dir config field
  [[ $BUCKET =~ ^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$ ]] ||
    die "--bucket '$BUCKET' is not a bucket URI like gs://my-bucket or gs://my-bucket/prefix"
  BUCKET=${BUCKET%/}
}

check_run_name() {  # the required --run
  require RUN_NAME --run
  [[ $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "--run '$RUN_NAME' must be letters, digits, '.', '_' or '-' (it names gs://BUCKET/RUN and runs/RUN)"
}

check_worker() {  # all, or worker indices: 0 / 0,2 / 1-3
  [[ $1 =~ ^(all|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$ ]] ||
    die "--worker '$1' must be all or worker indices like 0, 0,1 or 0-3"
}

check_uint() {  # check_uint --flag VALUE
  [[ $2 =~ ^[0-9]+$ ]] || die "$1 '$2' is not a non-negative integer"
}

# PROJECT_ARGS: --project for any gcloud command (none: gcloud's configured project); SCOPE: --zone too
scope_args() {
  PROJECT_ARGS=()
  if [[ -n $PROJECT ]]; then
    PROJECT_ARGS=(--project="$PROJECT")
  fi
  SCOPE=(--zone="$ZONE" "${PROJECT_ARGS[@]}")
}

# tpu_ssh WORKER COMMAND: run COMMAND (one shell line) on the given workers of the TPU VM
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" --worker="$1" --command="$2"
}

# check_job ARG...: the shine-jax command given after -- (train or sweep, without the arguments worker.sh adds)
check_job() {
  (($#)) || die "nothing to run: give the shine-jax command after --, e.g. -- train --config configs/X.py:pretrain"
  [[ $1 == train || $1 == sweep ]] || die "runs 'train' or 'sweep', not '$1'"
  local arg
  for arg in "${@:2}"; do
    case $arg in
      --workdir | --workdir=*)
        die "give the workdir as --workdir before --, not after it (it is synced with the bucket)"
        ;;
      --distributed-auto | --coordinator* | --num-processes* | --process-id*)
        die "$arg is added by tpu_setup/worker.sh for train (see --no-distributed)"
        ;;
    esac
  done
}
