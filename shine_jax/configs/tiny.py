"""tiny: SHINE on a 4-layer d=128 LLaMA-family base trained from scratch on the bundled corpus; CPU, minutes.

Usage: shine-jax train --config configs/tiny.py:STAGE --workdir W   (STAGE: base_pretrain, pretrain, ift_mqa, ift_1qa,
memory3_train)

The SHINE stages start from the shipped base ``models/tiny_base`` (a Hugging Face folder, frozen as a pretrained
LLM is): ``scripts/build_tiny_base`` rebuilds it with ``base_pretrain`` in two runs, 3000 + 4000 steps (about
100 min on one core, five times the demo's budget). ``--config.model.source=scratch`` trains SHINE on the base
that ``base_pretrain`` trained in the same workdir instead (what the tests and the CPU sweep do).

``memory3_train`` (a side stage, apart from the pipeline) fine-tunes a copy of the same base to read Memory3's
explicit memories; ``shine-jax eval --methods memory3`` reads with it (``--memory3-base``, or found in the workdir),
and ``shine-jax demo --methods ...,memory3`` trains it after the pipeline (about 10 CPU minutes on one core).
"""

import os

from shine_jax.train.config import base_config

# what `shine-jax demo` trains, in order (each stage starts from the previous one's result)
PIPELINE = ("pretrain", "ift_mqa", "ift_1qa")
# trained apart, by the demo when its --methods has memory3: a copy of the base taught to read Memory3's memories
SIDE_STAGES = ("memory3_train",)
# In a checkout this file is read as configs/tiny.py (a link into the package) and the base as models/tiny_base,
# the paths earlier runs recorded; in an installed package, from the package's own assets.
_TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_BASE = next((p for p in (os.path.join(_TOP, "models", "tiny_base"), os.path.join(_TOP, "assets", "tiny_base"))
                  if os.path.isdir(p)), os.path.join(_TOP, "assets", "tiny_base"))


def get_config(arg=None):
    c = base_config()
    c.name = "tiny"
    c.stage = arg or "pretrain"
    # the shipped base for SHINE; base_pretrain builds one from scratch (its shape: the fields below)
    c.model.source, c.model.hf_dir = ("scratch", "") if c.stage == "base_pretrain" else ("hf", TINY_BASE)
    c.model.family = "llama"
    c.model.hidden_size, c.model.intermediate_size = 128, 256
    c.model.num_layers, c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 4, 4, 4, 32
    c.shine.lora_rank = 4  # M = 17 r = 68 memory tokens
    # a Meta LoRA of rank 32 (was 8) reads multi-person documents better: demo shine F1 0.158 -> 0.171 (3.14x none)
    # (experiments/results/tiny_learning_probes.md §6)
    c.shine.metalora_rank = 32
    c.shine.m2p.num_layers, c.shine.m2p.num_heads = 2, 4
    c.shine.scale = 1e-2  # the CPU prototype learned fastest at 0.01 (0.001 is the paper's value)
    c.data.num_people, c.data.train_docs, c.data.eval_docs = 10000, 20000, 256
    c.log_every, c.eval_every, c.eval_batches = 10, 100, 4
    c.checkpoint_every = 100
    # (steps, batch, lr, warmup, evidence length, conversation length); a RECON answer is the whole evidence
    stage = {
        "base_pretrain": (1200, 16, 3e-3, 50, 256, 256),
        "pretrain": (100, 8, 1e-3, 20, 256, 272),
        "ift_mqa": (900, 8, 2e-3, 20, 296, 160),  # 296: the longest bundled document has ~290 tokens
        "ift_1qa": (40, 16, 1e-3, 5, 296, 32),
        "memory3_train": (400, 16, 3e-3, 20, 256, 192),  # conversation: a document's QA turns, or one reference
    }[c.stage]
    c.steps, c.batch_size, c.optim.lr, c.optim.warmup_steps = stage[:4]
    c.data.context_length, c.data.conversation_length = stage[4:]
    # The instruction stages read one-person documents (the bundled "single_person" corpus: the same people split,
    # one person per document), and multi-QA runs 900 steps. Measured over training seeds 0-3 on the 32 one-person
    # test documents (experiments/results/tiny_one_person_ift.md): shine F1 0.605 +- 0.043 (icl 0.607), against
    # 0.438 +- 0.101 (3 seeds) for 600 steps on the 1-4-person documents; with distractors 0.241 +- 0.026 (icl 0.224).
    if c.stage in ("ift_mqa", "ift_1qa"):
        c.data.builder_config = "single_person"
    # base_pretrain: a reading curriculum, packed, answers the only QA targets. Every document is about freshly
    # generated people (1-2 per document), so an answer can only be read from the prompt, never recalled; 40 % of the
    # in-context examples show only the sentence stating the answer, 20 % of the examples ask for a bio back
    # verbatim, and the first 400 steps are synthetic copying of random token spans. Measured on its own: one-person
    # icl F1 0.172 (none 0.019), the best of the curricula in experiments/results/tiny_reading_curricula.md; the
    # previous recipe (bundled people, fact share 0.6, 1000 steps) read at the none level (icl 0.063, none 0.054).
    c.data.lm_length, c.data.lm_pack, c.data.lm_questions = 192, True, 0
    c.data.lm_answer_loss, c.data.lm_mix = True, (0.1, 0.0, 0.9)
    c.data.lm_fresh_share, c.data.lm_fresh_max_people = 1.0, 2
    c.data.lm_fact_share, c.data.lm_person_share, c.data.lm_copy_share = 0.4, 0.0, 0.2
    c.data.lm_copy_warmup = 1 / 3  # 400 of 1200 steps (a share, so shorter runs of this config scale it)
    # memory3_train: QA rows about one fresh person, as the one-person test documents. Measured (one_person, 32
    # documents, 183 questions): memory3 F1 0.208 (none 0.047, icl 0.607, memory3 on the frozen base 0.080);
    # 200 steps: 0.156; 200 steps at lr 1e-3 with 1-2 people and the first 2000 documents' references: 0.122
    c.memory3.fresh_max_people = 1
    return c
