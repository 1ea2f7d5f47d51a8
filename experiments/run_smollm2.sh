#!/usr/bin/env bash
# The recorded SmolLM2-135M-Instruct run (experiments/results/smollm2_run.md): SHINE trained on the bundled corpus
# for ~46 min on a 2-core CPU (configs/smollm2_135m.py: PIPELINE pretrain -> ift_mqa), then none / icl / sft / shine
# on the first 16 test documents (people never seen in training). Rerunning reuses finished stages.
# Usage: experiments/run_smollm2.sh [WORKDIR]   (default workdirs/smollm2)
set -euo pipefail
W=${1:-workdirs/smollm2}
.venv/bin/shine-jax demo --config configs/smollm2_135m.py --workdir "$W" \
  --docs 16 --batch-size 16 --max-new-tokens 24 --sft-epochs 10
.venv/bin/python experiments/plot_training.py "$W" --out experiments/results/smollm2_training.png
