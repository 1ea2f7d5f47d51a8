"""Run with 8 fake CPU devices: the sharded forward (mesh 2x2x2) equals the unsharded one."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np

from shine_jax import sharding as shd
from shine_jax.base_model import BaseModel
from shine_jax.model.config import ModelConfig
from tests.conftest import left_padded_batch
from tests.test_lora import random_lora


def main():
    assert jax.device_count() == 8, jax.devices()
    cfg = ModelConfig(family="qwen3", vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False)
    ids, mask = left_padded_batch(cfg.vocab_size, [6, 3, 5, 6], 6, seed=0)
    lora = random_lora(cfg, 4, 4, seed=1)
    single = BaseModel.random(cfg, seed=0)
    ref = np.asarray(single.logits(ids, mask, lora=lora))
    ref_gen = single.generate(ids, mask, 4, lora=lora, eos_token_id=[])

    mesh = shd.make_mesh((2, 2, 2))
    sharded = BaseModel.random(cfg, seed=0).shard(mesh)
    q = sharded.state["layers"]["q"][...]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    out = sharded.logits(ids, mask, lora=lora)
    assert len(out.sharding.device_set) == 8
    err = np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref))
    assert err <= 1e-5, err
    np.testing.assert_array_equal(sharded.generate(ids, mask, 4, lora=lora, eos_token_id=[]), ref_gen)
    print(f"OK sharded-vs-single max rel err {err:.2e}")


if __name__ == "__main__":
    sys.exit(main())
