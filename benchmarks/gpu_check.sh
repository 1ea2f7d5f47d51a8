#!/usr/bin/env bash
# GPU check of shine_jax (issue 15, item 6): the GPU's bf16 matmul peak first, then the bf16 SHINE train step's time
# and MFU at Qwen3-0.6B and Qwen3-1.7B shapes (random weights, micro batch 8, evidence 1,150, conversation 2,380),
# with the reference attention and with cuDNN flash attention (model.attention=cudnn), the frozen base stored in bf16
# as the paper configs set it, and `plan`'s predicted per-device bytes against
# jax.devices()[0].memory_stats()['peak_bytes_in_use']. The work is in benchmarks/gpu_check.py.
#
# NOT YET RUN ON A GPU. It was written and exercised on CPU only (`benchmarks/gpu_check.sh --cpu-smoke`, tiny
# shapes); read the first GPU run's figures with that in mind and fix what breaks.
#
#   benchmarks/gpu_check.sh                 # on the GPU machine, from anywhere; <= 8 minutes in all
#   benchmarks/gpu_check.sh --cpu-smoke     # the same logic on CPU with tiny shapes (~1-2 min)
#   benchmarks/gpu_check.sh --variant model.attention=cudnn   # further arguments go to `gpu_check.py all`
#
# Python: $PYTHON if set, else the first of .venv/bin/python and python3 whose jax has a GPU backend (with
# --cpu-smoke: the first that imports jax). Nothing is installed from the network: when no python has jax with a GPU
# backend it says so and how to install one (scripts/setup, then `.venv/bin/pip install "jax[cuda12]==0.10.2"`),
# and stops. When shine_jax's own imports are missing (a stock CUDA image lacks grain, array_record, ml_collections,
# clu and portpicker), wheels in .whl/ are installed to a temporary --target first; make them on a machine with pip:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 clu==0.0.12 portpicker
# Figures go to stdout and, when $OUT is set, to $OUT/gpu_check.{json,md,log}. Every step runs under `timeout`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
LIMIT=${GPU_CHECK_LIMIT:-470}   # seconds for the whole script (8 minutes less a margin)
START=$(date +%s)
SMOKE=()
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=(--cpu-smoke) && LIMIT=${GPU_CHECK_LIMIT:-150} && shift
# anything else is passed to `gpu_check.py all`, e.g. --variant model.attention=cudnn, --presets qwen3-0.6b
say() { echo "[gpu_check.sh] $*"; }
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# no preallocation of 75% of the GPU: memory_stats stays meaningful, and a failed case frees what it held
export XLA_PYTHON_CLIENT_PREALLOCATE=false

# 1. a python whose jax has a GPU backend
PY=""
report=""
for cand in ${PYTHON:-} .venv/bin/python python3; do
  command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
  platform=$(timeout 120 "$cand" -c 'import jax; print(jax.devices()[0].platform, jax.__version__)' 2>/dev/null | tail -1)
  report="$report
  $cand: ${platform:-no jax (or it failed to start)}"
  case "$platform" in
    gpu*|cuda*) PY=$cand; break ;;
    cpu*) [ ${#SMOKE[@]} -gt 0 ] && PY=$cand && break ;;
  esac
done
if [ -z "$PY" ]; then
  say "error: no python here has jax with a GPU backend; what each candidate said:$report"
  say "install one (needs the network): scripts/setup && .venv/bin/pip install \"jax[cuda12]==0.10.2\", or run with PYTHON=/path/to/python"
  exit 3
fi
say "python: $PY ($(command -v "$PY" || echo "$PY")), jax: $platform"

# 2. shine_jax's imports; offline wheels from .whl/ when something is missing
check_imports() { timeout 180 "$PY" -c 'import shine_jax.plan, shine_jax.train.loop' 2>&1 | tail -1; }
missing=$(check_imports)
if [ -n "$missing" ] && compgen -G ".whl/*.whl" >/dev/null; then
  say "shine_jax does not import ($missing); installing .whl/*.whl into /tmp/gpu_check_site"
  timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
  missing=$(check_imports)
fi
if [ -n "$missing" ]; then
  say "error: shine_jax does not import with $PY: $missing"
  say "install the repository's requirements (scripts/setup, or pip install -e .) or carry the wheels listed in this script's header in .whl/"
  exit 4
fi

# 3. the measurements, each in its own process under a deadline, all under one timeout
budget=$(( $(left) - 25 ))
if [ "$budget" -lt 60 ]; then
  say "error: only $(left) s left of $LIMIT s after the checks; nothing measured"
  exit 5
fi
say "measuring with a budget of $budget s (the whole script: $LIMIT s)"
timeout $(( budget + 20 )) "$PY" benchmarks/gpu_check.py all --budget "$budget" "${SMOKE[@]}" "$@"
rc=$?
[ $rc -eq 124 ] && say "error: the measurements outran their timeout ($(( budget + 20 )) s)"
say "done in $(( $(date +%s) - START )) s (rc $rc)"
exit $rc
