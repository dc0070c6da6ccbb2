"""Pruning on a small Qwen3-style model (random weights, random calibration tokens): compression
ratio reached vs asked per split policy, and masked-vs-compacted max |logit difference| per
granularity. Prints one JSON line.

    python benchmarks/pruning_report.py
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.models import ModelConfig, forward, init_params
from jaxdistill.pruning import Widths, compact, compression_ratio, importance, masked_forward, prune_to

CONFIG = ModelConfig(model_type="qwen3", vocab_size=2048, hidden_size=256, intermediate_size=768,
                     num_layers=6, num_heads=8, num_kv_heads=2, head_dim=32, qk_norm=True)
GRANULARITIES = {
    "heads (query, within groups)": dict(heads=4),
    "heads (whole kv groups)": dict(kv_heads=1, heads=4),
    "mlp neurons": dict(mlp=384),
    "hidden channels": dict(hidden=192),
    "layers": dict(layers=4),
    "all four": dict(kv_heads=1, heads=2, mlp=384, hidden=192, layers=4),
}


def main():
    params = jax.tree.map(lambda x: x * 10.0 if x.ndim > 2 else x, init_params(CONFIG, jax.random.key(0)))
    rng = np.random.default_rng(0)
    batches = [{"tokens": jnp.asarray(rng.integers(0, CONFIG.vocab_size, (4, 64)), jnp.int32)} for _ in range(4)]
    imp = importance(CONFIG, params, batches, method="activation")
    tokens = batches[0]["tokens"]
    parity = {}
    for name, widths in GRANULARITIES.items():
        masks, _ = prune_to(CONFIG, imp, Widths.of(CONFIG, **widths))
        small_config, small = compact(CONFIG, params, masks)
        diff = jnp.abs(masked_forward(CONFIG, params, masks, tokens) - forward(small_config, small, tokens))
        parity[name] = {"max_abs_logit_diff": float(diff.max()),
                        "ratio_total": compression_ratio(CONFIG, small_config)["total"]}
    ratios = []
    for split in ("width", "depth", "mixed"):
        for asked in (0.25, 0.5):
            masks, widths = prune_to(CONFIG, imp, asked, split=split, multiple=64)
            small_config, _ = compact(CONFIG, params, masks)
            reached = compression_ratio(CONFIG, small_config)
            ratios.append({"split": split, "asked_total": asked, "reached_total": reached["total"],
                           "reached_non_embedding": reached["non_embedding"], "widths": vars(widths)})
    print(json.dumps({"model": "qwen3-style d=256 F=768 L=6 H=8 K=2", "parity": parity, "ratios": ratios}))


if __name__ == "__main__":
    main()
