#!/usr/bin/env bash
# Put the repository on every worker of a TPU VM and install it: a virtual environment with the pinned stack,
# the TPU jaxlib plugin and this package in editable mode. Safe to run again (updates the code, reuses .venv).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: $SCRIPT_NAME --name NAME [options]

The code comes from this checkout's committed HEAD (git archive, copied with 'tpu-vm scp'), or with --repo-url
from a git clone on each worker. Then, in ~/DIR on each worker:
  $PYTHON -m venv .venv   (apt-get installs $PYTHON first if the image lacks it)
  .venv/bin/pip install -r requirements.txt "$JAX_SPEC"
  .venv/bin/pip install --no-deps -e .

  --name NAME           TPU VM name (required; or SHINE_TPU_NAME)
  --zone ZONE           default: $ZONE (or SHINE_TPU_ZONE)
  --project PROJECT     default: gcloud's configured project (or SHINE_TPU_PROJECT)
  --worker W            all (default) or worker indices (0, 0,1, 0-3)
  --dir DIR             directory on the workers, relative to the home directory (default: $DIR; or SHINE_TPU_DIR)
  --repo-url URL        git clone URL instead of copying this checkout
  --ref REF             with --repo-url: branch, tag or commit to check out (default: the remote's default branch)
  --python PY           interpreter for the venv (default: $PYTHON; the package needs Python >= 3.11)
  --jax SPEC            the jax requirement with its TPU plugin (default: $JAX_SPEC)
  --model-uri gs://...  also copy a model folder (e.g. an HF Qwen3 checkpoint) from a bucket to every worker
  --model-dir PATH      where --model-uri goes, relative to DIR (default: models/<last part of the URI>)
  --dry-run             print every command, one per line, and run none
  -h, --help            this help
EOF
}

WORKER=all
REPO_URL=""
REF=""
PYTHON=python3.11
JAX_SPEC="jax[tpu]==0.10.2"
MODEL_URI=""
MODEL_DIR=""
while (($#)); do
  case $1 in
    --worker | --worker=*) flag_value "$@" && WORKER=$VALUE ;;
    --dir | --dir=*) flag_value "$@" && DIR=$VALUE ;;
    --repo-url | --repo-url=*) flag_value "$@" && REPO_URL=$VALUE ;;
    --ref | --ref=*) flag_value "$@" && REF=$VALUE ;;
    --python | --python=*) flag_value "$@" && PYTHON=$VALUE ;;
    --jax | --jax=*) flag_value "$@" && JAX_SPEC=$VALUE ;;
    --model-uri | --model-uri=*) flag_value "$@" && MODEL_URI=$VALUE ;;
    --model-dir | --model-dir=*) flag_value "$@" && MODEL_DIR=$VALUE ;;
    *) common_flag "$@" || unknown_flag "$1" ;;
  esac
  shift "$SHIFT"
done

check_vm
check_worker "$WORKER"
[[ -n $DIR && $DIR != /* && $DIR != *..* ]] || die "--dir '$DIR' must be a path relative to the home directory"
[[ -z $REF || -n $REPO_URL ]] || die "--ref needs --repo-url (without it the committed HEAD of this checkout is copied)"
[[ $PYTHON =~ ^python3(\.[0-9]+)?$ ]] || die "--python '$PYTHON' must look like python3.11"
[[ $JAX_SPEC == jax* ]] || die "--jax '$JAX_SPEC' must be a jax requirement such as 'jax[tpu]==0.10.2'"
if [[ -n $MODEL_URI ]]; then
  [[ $MODEL_URI =~ ^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]/.+ ]] ||
    die "--model-uri '$MODEL_URI' must be gs://BUCKET/PATH"
  MODEL_URI=${MODEL_URI%/}
  MODEL_DIR=${MODEL_DIR:-models/${MODEL_URI##*/}}
elif [[ -n $MODEL_DIR ]]; then
  die "--model-dir needs --model-uri"
fi
scope_args

# 1. the code
dir_q=$(quote "$DIR")
if [[ -n $REPO_URL ]]; then
  tpu_ssh "$WORKER" "set -euo pipefail; [ -d $dir_q/.git ] || git clone --quiet $(quote "$REPO_URL") $dir_q; \
git -C $dir_q fetch --quiet origin $(quote "${REF:-HEAD}"); git -C $dir_q checkout --quiet --detach FETCH_HEAD"
else
  tarball="${TMPDIR:-/tmp}/shine_jax-$NAME.tar.gz"
  if ((!DRY_RUN)) && [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    note "warning: uncommitted changes in $REPO_ROOT are not copied (git archive takes the committed HEAD)"
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:shine_jax-src.tar.gz" "${SCOPE[@]}" --worker="$WORKER"
  tpu_ssh "$WORKER" "set -euo pipefail; mkdir -p $dir_q; tar -xzf shine_jax-src.tar.gz -C $dir_q; \
rm shine_jax-src.tar.gz"
fi

# 2. the environment
py_q=$(quote "$PYTHON")
tpu_ssh "$WORKER" "set -euo pipefail; cd $dir_q; if ! command -v $py_q >/dev/null; then sudo apt-get update -qq \
&& sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $py_q $py_q-venv; fi; [ -x .venv/bin/python ] \
|| $py_q -m venv .venv; .venv/bin/pip install -q --disable-pip-version-check -U pip; \
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt $(quote "$JAX_SPEC"); \
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .; \
.venv/bin/python -c 'import jax, shine_jax; print(\"jax\", jax.__version__, \"installed\")'"

# 3. the model weights, if any
if [[ -n $MODEL_URI ]]; then
  model_q=$(quote "$MODEL_DIR")
  tpu_ssh "$WORKER" "set -euo pipefail; cd $dir_q; mkdir -p $model_q; \
gcloud storage rsync --recursive $(quote "$MODEL_URI") $model_q"
fi
