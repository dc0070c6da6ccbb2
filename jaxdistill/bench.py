"""Benchmarks: FLOP accounting, peak throughput, and the forward benchmark (tokens/s, MFU).

FLOPs are counted the MaxText way: 2 x (multiply-adds of every matmul), causal attention halved
(QK^T and AV each cost 2*T*H*D per token per layer before halving). MFU = FLOPs / time / peak.
Peak: on CPU, an fp32 matmul ceiling measured in the same process, right before the run, at the
workload's own matmul shapes (the machine is shared, so a stale number would mislead); on
accelerators, the datasheet dense bf16 peak for the device kind.
"""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.models import ModelConfig, forward, init_params

# Dense bf16 peak, TFLOP/s per chip, from the vendors' datasheets (substring of device_kind).
# More specific names first: "H100 PCIe" must match before "H100" (SXM).
DATASHEET_PEAK_TFLOPS = {
    "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
}

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


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass per token (causal attention halved)."""
    c = config
    d, H, K, D, F = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    projections = d * H * D + 2 * d * K * D + H * D * d + 3 * d * F
    attention = 2 * seq_len * H * D  # (QK^T + AV) = 4*T*H*D, halved for the causal mask
    return 2 * c.num_layers * projections + c.num_layers * attention + 2 * d * c.vocab_size


def matmul_shapes(config: ModelConfig, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of the workload's main matmuls."""
    c = config
    return [(tokens, c.hidden_size, c.num_heads * c.head_dim),
            (tokens, c.hidden_size, c.intermediate_size),
            (tokens, c.intermediate_size, c.hidden_size),
            (tokens, c.hidden_size, c.vocab_size)]


def measure_matmul_peak(shapes, dtype=jnp.float32, repeats: int = 7) -> float:
    """The ceiling: best achieved FLOP/s over `shapes` (M, K, N) and over `repeats` timed runs."""
    best = 0.0
    for m, k, n in shapes:
        a = jnp.ones((m, k), dtype)
        b = jnp.ones((k, n), dtype)
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * n / min(times))
    return best


def peak_flops(config: ModelConfig, tokens: int) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for the default backend."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measure_matmul_peak(matmul_shapes(config, tokens)), "measured fp32 matmul ceiling"
    for kind, tflops in DATASHEET_PEAK_TFLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return tflops * 1e12, f"datasheet bf16 ({kind})"
    raise ValueError(f"no datasheet peak for device kind {device.device_kind!r}; known: "
                     f"{', '.join(DATASHEET_PEAK_TFLOPS)} — pass peak_tflops explicitly")


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
        from jaxdistill.models.hf import read_config

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
    from jaxdistill import losses

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
    from jaxdistill import losses

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


BENCHMARKS = {"forward": bench_forward, "loss_memory": bench_loss_memory}


def run_benchmark(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark a config dict names (`benchmark: forward`, then its keyword arguments)."""
    spec = dict(spec)
    name = spec.pop("benchmark", "forward")
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    valid = inspect.signature(BENCHMARKS[name]).parameters
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise ValueError(f"{name} benchmark: unknown option(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(valid)}")
    return BENCHMARKS[name](**spec)
