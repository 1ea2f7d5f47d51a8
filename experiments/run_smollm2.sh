#!/usr/bin/env bash
# The recorded SmolLM2-135M-Instruct run: SHINE trained on the bundled corpus for about an hour on a 2-core CPU,
# then none / icl / sft / shine on the first 32 test documents (people never seen in training).
# Usage: experiments/run_smollm2.sh [WORKDIR]   (default workdirs/smollm2; rerunning skips finished stages)
set -euo pipefail
W=${1:-workdirs/smollm2}
BIN=.venv/bin
for stage in pretrain ift_mqa; do
  if [ -d "$W/$stage/final" ]; then echo "[smollm2] $stage already trained"; continue; fi
  $BIN/shine-jax train --config "configs/smollm2_135m.py:$stage" --workdir "$W" --no-progress
done
$BIN/python - "$W" <<'PY'
import sys, pathlib
from shine_jax.data.corpus import write_jsonl
from shine_jax.data.tfds_builder import load_split
from shine_jax.train.config import load_config
from shine_jax.train.loop import corpus_overrides
w = pathlib.Path(sys.argv[1])
cfg = load_config("configs/smollm2_135m.py:ift_mqa", [])
test = load_split(w / "data" / "tfds", "test", config=cfg.data.builder_config, **corpus_overrides(cfg))
write_jsonl([test[i] for i in range(32)], w / "eval" / "test.jsonl")
PY
$BIN/shine-jax eval --workdir "$W" --data "$W/eval/test.jsonl" --methods none,icl,sft,shine \
  --out "$W/eval/results.json" --batch-size 32 --max-new-tokens 24 --no-progress
$BIN/python experiments/plot_training.py "$W"
