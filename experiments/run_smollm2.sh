#!/usr/bin/env bash
# The recorded SmolLM2-135M-Instruct run (experiments/results/smollm2_run.md): SHINE trained on the bundled corpus
# for about an hour on a 2-core CPU (configs/smollm2_135m.py: PIPELINE pretrain -> ift_mqa on one-person documents),
# then none / icl / shine and the wrong-document control on the first 16 one-person test documents (people never
# seen in training). Rerunning reuses finished stages.
# Usage: experiments/run_smollm2.sh [WORKDIR]   (default workdirs/smollm2)
set -euo pipefail
W=${1:-workdirs/smollm2}
.venv/bin/shine-jax demo --config configs/smollm2_135m.py --workdir "$W" \
  --sets one_person --methods none,icl,shine,shine-wrong-doc --docs 16 --batch-size 16 --max-new-tokens 24
.venv/bin/python experiments/plot_training.py "$W" --out experiments/results/smollm2_training.png
