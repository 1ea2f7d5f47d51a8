"""The training stages as data: what each trains, from which earlier stage, on which dataset, with which loss.

Every module asks this table instead of comparing stage names. The order is the order a run trains them in.
``SIDE`` stages are no part of that pipeline: each trains a model of its own for one evaluation method, from the
config's base (``memory3_train``: the base that reads Memory3's explicit memories, for the ``memory3`` method).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    previous: str | None  # the stage whose final/ this one starts from (None: a fresh start)
    trains: str  # "base": the decoder itself; "hypernetwork": memory tokens, Meta LoRA and M2P on a frozen base;
    # "memory_base": a copy of the config's base, fine-tuned whole (memory3_train)
    dataset: str  # "lm": base pretraining texts; "recon_comp": SHINE pretraining; "multi_qa" / "single_qa": IFT;
    # "memory3": QA and continual LM rows that read memories (data.memory3_data)
    losses: tuple[str, ...]  # the allowed values of shine.loss ("nll+kl" and "kl" need documents in the batch)
    extra_metalora: bool  # the IFT stages' additional Meta LoRA (shine.extra_metalora_rank) applies

    @property
    def trains_base(self) -> bool:
        return self.trains == "base"

    @property
    def freezes_base(self) -> bool:
        """The base only reads (its storage dtype may then be model.frozen_param_dtype)."""
        return self.trains == "hypernetwork"


TABLE: tuple[Stage, ...] = (
    Stage("base_pretrain", None, "base", "lm", ("nll",), False),
    Stage("pretrain", None, "hypernetwork", "recon_comp", ("nll",), False),
    Stage("ift_mqa", "pretrain", "hypernetwork", "multi_qa", ("nll", "nll+kl", "kl"), True),
    Stage("ift_1qa", "ift_mqa", "hypernetwork", "single_qa", ("nll", "nll+kl", "kl"), True),
)
SIDE: tuple[Stage, ...] = (
    Stage("memory3_train", None, "memory_base", "memory3", ("nll",), False),
)
BY_NAME = {s.name: s for s in TABLE + SIDE}
NAMES = tuple(s.name for s in TABLE)  # the pipeline's stages
ALL_NAMES = NAMES + tuple(s.name for s in SIDE)
HYPERNETWORK_STAGES = tuple(s.name for s in TABLE if not s.trains_base)
BASE_STAGE = next(s.name for s in TABLE if s.trains_base)  # trains a scratch base, which the SHINE stages then read


def stage(name: str) -> Stage:
    """The stage called ``name`` (a KeyError names the known ones: callers validate user input first)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(ALL_NAMES)}") from None


def most_trained_first() -> tuple[str, ...]:
    """Hypernetwork stages from the last trained to the first: where a workdir's finished SHINE is found."""
    return tuple(reversed(HYPERNETWORK_STAGES))
