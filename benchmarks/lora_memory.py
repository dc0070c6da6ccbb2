"""Optimizer-state bytes of full-parameter vs LoRA distillation (AdamW: two moments per trained
value), computed from shapes only (`jax.eval_shape`, nothing allocated). Prints one JSON line.

    python benchmarks/lora_memory.py
"""

import json

import jax

from jaxdistill.bench import PRESETS
from jaxdistill.models import ModelConfig, abstract_params
from jaxdistill.losses import LossConfig
from jaxdistill.train import LoraConfig, OptimizerConfig, StepConfig, init_state

DEMO = ModelConfig(model_type="qwen3", vocab_size=4096, hidden_size=128, intermediate_size=384, num_layers=4,
                   num_heads=4, num_kv_heads=2, head_dim=32, qk_norm=True, tie_word_embeddings=True)


def opt_bytes(config, trainable, rank, modules):
    c = StepConfig(student=config, teacher=config, teacher_targets="live", loss=LossConfig(),
                   optimizer=OptimizerConfig(), total_steps=100, trainable=trainable,
                   lora=LoraConfig(rank=rank, modules=modules))
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), abstract_params(config))
    state = jax.eval_shape(lambda p: init_state(c, p, jax.random.key(0)), params)
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state)))


def main():
    rows = []
    for name, config in (("demo", DEMO), ("qwen3-0.6b", PRESETS["qwen3-0.6b"]), ("qwen3-8b", PRESETS["qwen3-8b"])):
        for rank, modules in ((8, ("q", "k", "v", "o")), (16, ("q", "k", "v", "o", "gate", "up", "down"))):
            full = opt_bytes(config, "full", rank, modules)
            lora = opt_bytes(config, "lora", rank, modules)
            rows.append({"model": name, "lora_rank": rank, "lora_modules": list(modules), "full_opt_bytes": full,
                         "lora_opt_bytes": lora, "saved_bytes": full - lora, "ratio": lora / full})
    print(json.dumps({"benchmark": "lora_memory", "rows": rows}))


if __name__ == "__main__":
    main()
