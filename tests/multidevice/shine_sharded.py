"""Run with 8 fake CPU devices: the sharded SHINE (mesh 2x2x2) generates the same LoRA and logits as 1 device."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np

from shine_jax import sharding as shd
from shine_jax.shine import Shine
from tests.conftest import FIXTURES


def main():
    assert jax.device_count() == 8
    ref = np.load(FIXTURES / "reference.npz")
    ev = np.concatenate([ref["evidence_ids"]] * 2), np.concatenate([ref["evidence_attention_mask"]] * 2)
    qa = np.concatenate([ref["input_ids"]] * 2), np.concatenate([ref["input_attention_mask"]] * 2)

    def load():
        return Shine.from_official(FIXTURES / "checkpoint-epoch-1", FIXTURES / "base_model", m2p_heads=4)

    single = load()
    lora1 = single.generate_lora(*ev)
    logits1 = np.asarray(single.logits(*qa, lora1))

    sharded = load().shard(shd.make_mesh((2, 2, 2)))
    lora8 = sharded.generate_lora(*ev)
    a = lora8["q"]["A"]
    assert a.sharding.spec[1] == ("data", "fsdp"), a.sharding.spec  # LoRA batch axis sharded with the data
    logits8 = sharded.logits(*qa, lora8)
    assert len(logits8.sharding.device_set) == 8
    worst = 0.0
    for m in lora1:
        for f in ("A", "B"):
            x, y = np.asarray(lora1[m][f]), np.asarray(lora8[m][f])
            worst = max(worst, np.max(np.abs(x - y)) / np.max(np.abs(x)))
    mask = qa[1].astype(bool)
    lerr = np.max(np.abs(np.asarray(logits8) - logits1)[mask]) / np.max(np.abs(logits1[mask]))
    assert worst <= 1e-5 and lerr <= 1e-5, (worst, lerr)
    print(f"OK lora rel err {worst:.2e} logits rel err {lerr:.2e}")


if __name__ == "__main__":
    sys.exit(main())
