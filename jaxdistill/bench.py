"""Benchmarks (`jaxdistill bench CONFIG`): forward throughput (tokens/s, MFU), the loss memory
benchmark (compiled temporary memory and time, unfused vs chunked) and the distillation step
(`jaxdistill.bench_step`). FLOPs and peaks: `jaxdistill.perf`."""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import losses
from jaxdistill.models import ModelConfig, forward, init_params
from jaxdistill.models.hf import read_config
from jaxdistill.perf import forward_flops_per_token, peak_flops

# Architectures of public checkpoints (for benchmarking shapes without the weights) and a CPU size.
PRESETS: dict[str, ModelConfig] = {
    "cpu-small": ModelConfig(model_type="llama", vocab_size=32000, hidden_size=512,
                             intermediate_size=1408, num_layers=4, num_heads=8, num_kv_heads=4,
                             head_dim=64, tie_word_embeddings=True),
    "qwen3-0.6b": ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                              intermediate_size=3072, num_layers=28, num_heads=16, num_kv_heads=8,
                              head_dim=128, qk_norm=True, tie_word_embeddings=True,
                              rope_theta=1000000.0, rms_norm_eps=1e-6),
    "llama3.2-1b": ModelConfig(model_type="llama", vocab_size=128256, hidden_size=2048,
                               intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
                               head_dim=64, tie_word_embeddings=True, rope_theta=500000.0,
                               rope_scaling=(("factor", 32.0), ("high_freq_factor", 4.0),
                                             ("low_freq_factor", 1.0),
                                             ("original_max_position_embeddings", 8192),
                                             ("rope_type", "llama3"))),
    "qwen3-8b": ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=4096,
                            intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8,
                            head_dim=128, qk_norm=True, rope_theta=1000000.0),
}


def time_call(fn, *args, iters: int, **kwargs) -> list[float]:
    """Wall times of `iters` calls after one warm-up (compile) call, each blocked until ready."""
    jax.block_until_ready(fn(*args, **kwargs))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    return times


def resolve_model(model: str | dict | ModelConfig, dtype: str | None = None) -> ModelConfig:
    """A preset name, a Hugging Face model directory, a dict of ModelConfig fields, or a config."""
    if isinstance(model, ModelConfig):
        config = model
    elif isinstance(model, dict):
        config = ModelConfig(**model)
    elif model in PRESETS:
        config = PRESETS[model]
    else:
        try:
            config = read_config(model)
        except Exception as err:
            raise ValueError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a "
                             f"Hugging Face model directory: {err}") from err
    if dtype is not None:
        config = config.replace(param_dtype=dtype, compute_dtype=dtype)
    return config


def bench_forward(model: str | dict | ModelConfig = "cpu-small", batch: int = 4, seq: int = 256,
                  dtype: str | None = None, iters: int = 5, peak_tflops: float | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """Forward-pass throughput on random weights and tokens; returns one flat result dict."""
    config = resolve_model(model, dtype)
    key_params, key_tokens = jax.random.split(jax.random.key(seed))
    params = init_params(config, key_params)
    tokens = jax.random.randint(key_tokens, (batch, seq), 0, config.vocab_size, jnp.int32)
    n_tokens = batch * seq
    if peak_tflops is not None:
        peak, peak_source = peak_tflops * 1e12, "given"
    else:
        peak, peak_source = peak_flops(config, n_tokens)
    times = time_call(forward, config, params, tokens, iters=iters)
    step = statistics.median(times)
    flops = forward_flops_per_token(config, seq) * n_tokens
    device = jax.devices()[0]
    return {
        "benchmark": "forward",
        "model": model if isinstance(model, str) else config.model_type,
        "backend": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "batch": batch, "seq": seq,
        "param_dtype": config.param_dtype, "compute_dtype": config.compute_dtype,
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
        "step_time_s": step,
        "step_time_s_min": min(times),
        "tokens_per_s": n_tokens / step,
        "flops_per_step": flops,
        "achieved_tflops": flops / step / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        "mfu": flops / step / peak,
        "jax_version": jax.__version__,
    }


def _loss_fn(fused: bool, loss, chunk_size: int):
    """grad of a distillation loss w.r.t. student hidden states and head, fused or unfused."""
    def value(hs, ws, ht, wt, weights):
        kwargs = dict(teacher_hidden=ht, teacher_head=wt)
        if fused:
            return losses.fused_loss(loss, hs, ws, {"weights": weights}, chunk_size=chunk_size, **kwargs)[0]
        return losses.fused_reference(loss, hs, ws, {"weights": weights}, **kwargs)[0]

    return jax.jit(jax.value_and_grad(value, argnums=(0, 1)))


def bench_loss_memory(vocab_sizes=(32768, 151936), token_counts=(4096, 16384), hidden: int = 1024,
                      teacher_hidden: int = 1024, chunk_size: int = 1024, divergence: str = "forward_kl",
                      time_cases=((32768, 4096),), iters: int = 3) -> dict[str, Any]:
    """Compiled temporary memory (XLA memory_analysis, compile only) of unfused vs chunked
    forward+backward of a distillation loss from hidden states, for every (V, N); wall time of both
    for the (V, N) in `time_cases` (those must fit in host memory)."""
    loss = losses.divergence_loss(divergence)
    rows = []
    for vocab in vocab_sizes:
        for n in token_counts:
            shapes = (jax.ShapeDtypeStruct((n, hidden), jnp.float32),
                      jax.ShapeDtypeStruct((hidden, vocab), jnp.float32),
                      jax.ShapeDtypeStruct((n, teacher_hidden), jnp.float32),
                      jax.ShapeDtypeStruct((teacher_hidden, vocab), jnp.float32),
                      jax.ShapeDtypeStruct((n,), jnp.float32))
            row = {"vocab": vocab, "tokens": n}
            fns = {"unfused": _loss_fn(False, loss, chunk_size), "chunked": _loss_fn(True, loss, chunk_size)}
            for name, fn in fns.items():
                compiled = fn.lower(*shapes).compile()
                row[f"{name}_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
            row["temp_ratio"] = row["chunked_temp_bytes"] / row["unfused_temp_bytes"]
            if (vocab, n) in {tuple(c) for c in time_cases}:
                keys = jax.random.split(jax.random.key(0), 4)
                args = (jax.random.normal(keys[0], (n, hidden)),
                        0.05 * jax.random.normal(keys[1], (hidden, vocab)),
                        jax.random.normal(keys[2], (n, teacher_hidden)),
                        0.05 * jax.random.normal(keys[3], (teacher_hidden, vocab)),
                        jnp.ones((n,), jnp.float32))
                for name, fn in fns.items():  # interleaved, so both see the same machine load
                    row[f"{name}_times_s"] = []
                for _ in range(iters + 1):
                    for name, fn in fns.items():
                        t0 = time.perf_counter()
                        jax.block_until_ready(fn(*args))
                        row[f"{name}_times_s"].append(time.perf_counter() - t0)
                for name in fns:
                    row[f"{name}_time_s"] = statistics.median(row.pop(f"{name}_times_s")[1:])
                row["time_ratio"] = row["chunked_time_s"] / row["unfused_time_s"]
            rows.append(row)
    return {"benchmark": "loss_memory", "divergence": divergence, "hidden": hidden,
            "teacher_hidden": teacher_hidden, "chunk_size": chunk_size,
            "backend": jax.devices()[0].platform, "jax_version": jax.__version__, "rows": rows}


def _bench_step(**kwargs):
    from jaxdistill.bench_step import bench_step  # imports the train step: only when asked for

    return bench_step(**kwargs)


def _step_signature():
    from jaxdistill.bench_step import _bench_step

    return inspect.signature(_bench_step).parameters


BENCHMARKS = {"forward": bench_forward, "loss_memory": bench_loss_memory, "step": _bench_step}


def check_spec(spec: dict[str, Any]):
    """(benchmark function, its keyword arguments) for a benchmark spec (`benchmark: forward`, then
    its options); unknown benchmarks and options are named with the valid ones."""
    spec = dict(spec)
    name = spec.pop("benchmark", "forward")
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    valid = _step_signature() if name == "step" else inspect.signature(BENCHMARKS[name]).parameters
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise ValueError(f"{name} benchmark: unknown option(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(valid)}")
    return BENCHMARKS[name], spec


def run_benchmark(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark a spec names (see `check_spec`)."""
    fn, kwargs = check_spec(spec)
    return fn(**kwargs)
