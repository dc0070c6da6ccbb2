"""The model smoke job (`jaxdistill run job=model-smoke`, config `SmokeConfig`).

Builds a random model, exports it in Hugging Face format, imports it back, and runs the forward
pass on a packed batch of random examples; checks the round trip is exact and the logits finite,
and writes `result.json` (atomically) into the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.atomic_files import write_json
from jaxdistill.config import SmokeConfig
from jaxdistill.models import ModelConfig, forward, init_params, load_pretrained, save_pretrained


def packed_random_batch(rng: np.random.Generator, rows: int, seq_len: int, per_row: int, vocab: int):
    """tokens, segment_ids [rows, seq_len]: `per_row` random-length examples packed per row."""
    tokens = rng.integers(0, vocab, (rows, seq_len), dtype=np.int32)
    cuts = np.sort(rng.choice(np.arange(1, seq_len), per_row - 1, replace=False), axis=0) \
        if per_row > 1 else np.array([], int)
    segments = np.searchsorted(cuts, np.arange(seq_len), side="right").astype(np.int32) + 1
    return tokens, np.broadcast_to(segments, (rows, seq_len)).copy()


def model_smoke(run: SmokeConfig, log=print) -> dict[str, Any]:
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = ModelConfig(**run.model)
    params = init_params(config, jax.random.key(run.seed))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    log(f"model: {config.model_type}, {n_params / 1e6:.2f}M parameters, {config.num_layers} layers")

    export_dir = run_dir / "model"
    save_pretrained(config, params, export_dir)
    loaded_config, loaded = load_pretrained(export_dir, dtype=config.param_dtype,
                                            compute_dtype=config.compute_dtype)
    log(f"exported to and re-imported from {export_dir}")

    b = run.batch
    tokens, segments = packed_random_batch(np.random.default_rng(run.seed), b.rows, b.seq_len,
                                           b.examples_per_row, config.vocab_size)
    tokens, segments = jnp.asarray(tokens), jnp.asarray(segments)
    t0 = time.perf_counter()
    logits = forward(config, params, tokens, segment_ids=segments).block_until_ready()
    compile_and_run_s = time.perf_counter() - t0
    reloaded_logits = forward(loaded_config, loaded, tokens, segment_ids=segments)
    t0 = time.perf_counter()
    forward(loaded_config, loaded, tokens, segment_ids=segments).block_until_ready()
    step_s = time.perf_counter() - t0
    max_diff = float(jnp.max(jnp.abs(logits - reloaded_logits)))
    finite = bool(jnp.all(jnp.isfinite(logits)))
    if max_diff != 0.0 or not finite:
        raise RuntimeError(f"smoke check failed: round-trip max |logit diff| {max_diff}, finite={finite}")
    result = {
        "job": "model-smoke",
        "params": int(n_params),
        "tokens": int(tokens.size),
        "first_call_s": compile_and_run_s,
        "steady_call_s": step_s,
        "tokens_per_s": tokens.size / step_s,
        "round_trip_max_abs_diff": max_diff,
        "backend": jax.devices()[0].platform,
    }
    write_json(run_dir / "result.json", result)
    log(f"forward on {tokens.size} packed tokens: {result['tokens_per_s']:.0f} tokens/s, "
        f"HF round trip exact; result in {run_dir / 'result.json'}")
    return result
