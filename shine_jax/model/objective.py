"""SHINE's training objective: a document's evidence -> generated LoRA -> the loss of the answer pass with it."""

from __future__ import annotations

import jax

from shine_jax.model.decoder import positions_from_mask
from shine_jax.model.hypernet import Hypernetwork
from shine_jax.model.losses import LOSSES, causal_lm_loss, kl_distill_loss


def shine_loss(decoder, hyper: Hypernetwork, batch: dict, loss: str = "nll",
               kl_weight: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Evidence -> LoRA -> answer-pass loss, differentiable w.r.t. ``hyper``. Returns (loss, positions averaged).

    ``nll`` is SHINE's next-token loss. ``kl`` distils the frozen base reading the document in its prompt (the
    batch's ``teacher_*`` fields, see ``pipelines.teacher_example``) into the answer pass with the generated LoRA;
    ``nll+kl`` adds ``kl_weight`` times it to the NLL (then the count is the NLL's)."""
    lora = hyper.generate_lora(decoder, batch["evidence_ids"], batch["evidence_mask"])
    if loss == "nll":  # only the labelled positions reach the LM head
        return decoder.lm_loss(batch["input_ids"], batch["attention_mask"], batch["labels"], loras=(lora,))
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    logits = decoder(batch["input_ids"], batch["attention_mask"], loras=(lora,))
    n = logits.shape[1]
    teacher = teacher_logits(decoder, batch["teacher_input_ids"], batch["teacher_attention_mask"], n)
    kl, n_kl = kl_distill_loss(logits, teacher, batch["labels"], batch["teacher_attention_mask"][:, -n:])
    if loss == "kl":
        return kl, n_kl
    nll, n_nll = causal_lm_loss(logits, batch["labels"])
    return nll + kl_weight * kl, n_nll


def teacher_logits(decoder, ids: jax.Array, mask: jax.Array, n: int) -> jax.Array:
    """Logits of the last ``n`` positions of the base model without any LoRA (the document positions before them
    are run but never projected onto the vocabulary), no gradient."""
    x, _, _ = decoder.run_layers(decoder.embed_tokens(ids), mask.astype(bool), positions_from_mask(mask))
    return jax.lax.stop_gradient(decoder.project_logits(x[:, -n:]))
