"""The distillation-step benchmark (`jaxdistill bench CONFIG` with `benchmark: step`): the project's own
`make_train_step` on random-init teacher and student built from the config, compiled ahead of time,
warmed up and timed step by step.

    data: random    batch x seq random tokens, every position supervised (the `cpu_small` workload)
    data: finance   the shipped finance headlines with the shipped teacher rationales
                    (`data/finance_topic/rationales-smollm2-320.jsonl`) in the run's format, packed the
                    way `jaxdistill run` packs them (the `cpu_task` workload); `useful_tokens_per_s`
                    counts the supervised tokens

Reported: step time (median, p10, p90 over the timed steps), tokens/s, compile time (lower + compile,
the first step's wall time from the start of compilation, and from the start of the process), FLOPs per step (student x3, live
teacher x1; `perf.step_flops`), MFU against `perf.step_peak` (on CPU the step's own matmul ceiling
measured in this process), XLA's temporary bytes for the compiled step, and on accelerators the
allocator's peak. `attention: cudnn` asks for the fused attention kernel. `memory_only: true` compiles
for abstract inputs and reports memory only (shapes that would not fit this host, e.g. Qwen3-4B).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.losses import LossConfig
from jaxdistill.models import ModelConfig, init_params
from jaxdistill.models.config import remat_for
from jaxdistill.models.transformer import abstract_params
from jaxdistill.perf import step_flops, step_peak
from jaxdistill.train.optimizer import OptimizerConfig
from jaxdistill.train.step import StepConfig, init_state, make_train_step

_SMALL = dict(model_type="llama", vocab_size=8192, num_layers=8, head_dim=64, tie_word_embeddings=False)
STEP_PRESETS: dict[str, ModelConfig] = {
    "cpu-small-teacher": ModelConfig(hidden_size=512, intermediate_size=1408, num_heads=8, num_kv_heads=4, **_SMALL),
    "cpu-small-student": ModelConfig(hidden_size=256, intermediate_size=704, num_heads=4, num_kv_heads=2, **_SMALL),
    "qwen3-4b": ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                            num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, qk_norm=True,
                            tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "qwen3-1.7b": ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                              num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, qk_norm=True,
                              tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
}
RATIONALES = "finance_topic/rationales-smollm2-320.jsonl"
DATA = ("random", "finance")


def model_config(model, *, dtype: str | None, remat: str | None, attention: str | None = None) -> ModelConfig:
    from jaxdistill.bench import resolve_model  # the forward presets (qwen3-0.6b, ...), dicts, HF dirs

    config = STEP_PRESETS[model] if isinstance(model, str) and model in STEP_PRESETS else resolve_model(model)
    if dtype is not None:  # mixed precision: fp32 master weights, `dtype` matmuls
        config = config.replace(param_dtype="float32", compute_dtype=dtype)
    if remat is not None:
        config = config.replace(remat_policy=remat)
    if attention is not None:
        config = config.replace(attention_impl=attention)
    return config


def finance_examples(*, format: str = "blended", max_len: int = 128, instruction: str = "Topic of: {text}"):
    """The shipped finance headlines that have a shipped teacher rationale, encoded with the shipped
    BPE in `format` (what `jaxdistill run` trains on with traces from that teacher)."""
    from jaxdistill.data.formats import Template, encode_dataset
    from jaxdistill.data.sources import data_dir, load_source
    from jaxdistill.data.tokenizer import load_tokenizer
    from jaxdistill.data.traces import attach_traces

    records = [json.loads(line) for line in (data_dir() / RATIONALES).read_text().splitlines() if line.strip()]
    data, _ = attach_traces(load_source("finance_topic", split="train"), records, policy="drop")
    template = Template(instruction=instruction, use_chat_template=False)
    examples, _ = encode_dataset(data, load_tokenizer(None), format=format, template=template, max_len=max_len)
    return examples


def _batches(data: str, n: int, *, batch: int, seq: int, vocab: int, format: str, max_len: int, seed: int,
             targets=None):
    """n host batches (dicts of numpy arrays shaped [batch, seq]); targets(examples) -> a
    `TeacherCache` whose sparse targets are added to each batch (teacher.targets=cached)."""
    if data == "random":
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            tokens = rng.integers(0, vocab, (batch, seq), dtype=np.int32)
            # one sequence per row: no segment ids, so attention needs only the causal mask (what a
            # fused kernel such as cuDNN's takes without a dense [B, 1, T, T] mask)
            out.append({"tokens": tokens, "labels": np.roll(tokens, -1, axis=1), "weights": np.ones((batch, seq), np.float32),
                        "parts": np.full((batch, seq), 3, np.int8)})
        return out
    from jaxdistill.data.batching import BatchIterator

    examples = finance_examples(format=format, max_len=max_len)
    iterator = BatchIterator(examples, batch_size=batch, seq_len=seq, format=format, seed=seed)
    cache = None if targets is None else targets(examples)
    out = []
    for _ in range(n):
        b = next(iterator)
        if cache is not None:
            t = cache.targets(b)
            b.update(target_ids=t.ids, target_weights=t.weights, target_self_term=t.self_term)
        out.append({k: v for k, v in b.items() if k not in ("example_ids", "positions")})
    return out


def _flops(c: StepConfig, tokens: int, seq: int) -> dict[str, float]:
    """`perf.step_flops` of the step as it runs: with a capacity, only that many rows reach the
    student's (and a live teacher's) LM head, so the head FLOPs of the other rows are not counted."""
    teacher = c.teacher if c.live_teacher else None
    flops = step_flops(c.student, teacher, tokens, seq)
    if c.capacity is not None and c.capacity < tokens:
        skipped = tokens - c.capacity
        flops["student"] -= 3 * 2.0 * c.student.hidden_size * c.student.vocab_size * skipped
        if teacher is not None:
            flops["teacher"] -= 2.0 * teacher.hidden_size * teacher.vocab_size * skipped
    return flops


def _capacity(batches, micro_batches: int = 1, multiple: int = 64) -> int:
    """The most supervised positions any of the batches has, rounded up to `multiple` (no drops)."""
    most = max(int((b["weights"] > 0).sum()) for b in batches)
    return -(-most // micro_batches // multiple) * multiple


@contextlib.contextmanager
def _compilation_cache(path):
    if path is None:
        yield
        return
    from jaxdistill.jobs.sweep import compilation_cache

    with compilation_cache(Path(path), min_compile_s=0.0):  # the models' init functions too
        yield


def bench_step(**kwargs) -> dict[str, Any]:
    """Time the real distillation step (see `_bench_step` for the options). With `compilation_cache`,
    JAX's persistent compilation cache covers everything compiled from the models' random init to
    the first step (what a second process with the same shapes loads instead of compiling)."""
    with _compilation_cache(kwargs.get("compilation_cache")):
        return _bench_step(**kwargs)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _bench_step(teacher: Any = "cpu-small-teacher", student: Any = "cpu-small-student", batch: int = 8,
               seq: int = 128, data: str = "random", format: str = "blended", max_len: int = 128,
               loss: dict | None = None, optimizer: dict | None = None, remat: str | None = None,
               targets: str = "live", capacity: int | str | None = None, attention: str | None = None, dtype: str | None = None, steps: int = 10, warmup: int = 2,
               peak_tflops: float | None = None, compilation_cache: str | None = None,
               memory_only: bool = False, seed: int = 0) -> dict[str, Any]:
    """Time the real distillation step (live teacher, AdamW) on random weights; one flat result dict."""
    if data not in DATA:
        raise ValueError(f"data={data!r}; valid: {', '.join(DATA)}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} (>= 1), warmup={warmup} (>= 0): out of range")
    t_config = model_config(teacher, dtype=dtype, remat=None, attention=attention)
    if dtype is not None:  # the teacher is frozen: no master copy, its weights are stored in `dtype`
        t_config = t_config.replace(param_dtype=dtype)
    s_config = model_config(student, dtype=dtype, remat=remat, attention=attention)
    loss_config = LossConfig(**(loss or {"kind": "divergence", "divergence": "forward_kl", "temperature": 2.0}))
    opt = OptimizerConfig(**{"clip_norm": None, "weight_decay": 0.01, "warmup_steps": 0, "learning_rate": 1e-4,
                             **(optimizer or {})})
    if targets not in ("live", "cached") or (targets == "cached" and data != "finance"):
        raise ValueError(f"targets={targets!r}; valid: live, or cached (with data: finance)")
    if memory_only and targets != "live":
        raise ValueError("memory_only compiles the step with a live teacher: set targets: live")
    if capacity is not None and capacity != "auto" and not (isinstance(capacity, int) and capacity > 0):
        raise ValueError(f"capacity={capacity!r}; valid: a positive int, auto (the batches' most supervised "
                         "positions) or null (every position)")
    key = jax.random.key(seed)
    t_params = None if memory_only else init_params(t_config, jax.random.fold_in(key, 1))
    host = [] if memory_only else _batches(
        data, min(steps + warmup, 32), batch=batch, seq=seq, vocab=s_config.vocab_size, format=format,
        max_len=max_len, seed=seed, targets=None if targets == "live" else functools.partial(
            _target_cache, t_config, t_params, format=format, temperature=loss_config.temperature, seed=seed))
    if capacity == "auto":
        capacity = _capacity(host) if host else None
    c = StepConfig(student=s_config, loss=loss_config, optimizer=opt, total_steps=1000, teacher=t_config,
                   teacher_targets=targets, chunk_size=loss_config.chunk_size, capacity=capacity, masked=False)
    tokens = batch * seq
    device = jax.devices()[0]
    result: dict[str, Any] = {
        "benchmark": "step", "data": data, "format": format if data == "finance" else None,
        "backend": device.platform, "device_kind": device.device_kind, "device_count": jax.device_count(),
        "batch": batch, "seq": seq, "tokens_per_step": tokens, "compute_dtype": s_config.compute_dtype,
        "remat": remat_for(s_config, tokens, seq), "chunk_size": c.chunk_size, "capacity": capacity,
        "targets": targets, "flops_per_step": _flops(c, tokens, seq),
        "jax_version": jax.__version__}
    step = make_train_step(c)
    if memory_only:
        t_params = abstract_params(t_config)
        state = jax.eval_shape(lambda p: init_state(c, p, key), abstract_params(s_config))
        shape = lambda dt: jax.ShapeDtypeStruct((batch, seq), dt)
        host = {"tokens": shape(jnp.int32), "labels": shape(jnp.int32),
                "weights": shape(jnp.float32), "parts": shape(jnp.int8)}
        t0 = time.perf_counter()
        compiled = step._jitted.lower(state, t_params, host).compile()
        memory = compiled.memory_analysis()
        return {**result, "compile_s": time.perf_counter() - t0, "temp_bytes": int(memory.temp_size_in_bytes),
                "argument_bytes": int(memory.argument_size_in_bytes),
                "output_bytes": int(memory.output_size_in_bytes), "alias_bytes": int(memory.alias_size_in_bytes)}
    state = init_state(c, init_params(s_config, jax.random.fold_in(key, 2)), key)
    t_params = t_params if c.live_teacher else {}
    batches = [jax.device_put(b) for b in host]
    jax.block_until_ready((state, t_params, batches))
    t0 = time.perf_counter()
    compiled = step._jitted.lower(state, t_params, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, t_params, batches[0])
    jax.block_until_ready(state)
    first_step_s = time.perf_counter() - t0
    since_start = process_age_s()
    times = []
    for i in range(1, steps + warmup + 1):
        t = time.perf_counter()
        state, metrics = compiled(state, t_params, batches[i % len(batches)])
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    times = times[warmup:]
    median = statistics.median(times)
    supervised = statistics.mean(float((b["weights"] > 0).sum()) for b in host)
    if peak_tflops is not None:
        peak, peak_source = peak_tflops * 1e12, "given"
    else:
        peak, peak_source = step_peak(s_config, t_config if c.live_teacher else None, batch, seq)
    flops = sum(result["flops_per_step"].values())
    cache_s = getattr(_target_cache, "seconds", None) if targets == "cached" else None
    loss = float(jax.device_get(metrics["loss"]))
    return {**result,
            "step_ms_median": 1e3 * median, "step_ms_p10": 1e3 * float(np.percentile(times, 10)),
            "step_ms_p90": 1e3 * float(np.percentile(times, 90)), "steps_timed": len(times),
            "tokens_per_s": tokens / median, "useful_tokens_per_step": supervised,
            "useful_tokens_per_s": supervised / median, "compile_s": compile_s, "first_step_s": first_step_s,
            "process_to_first_step_s": since_start, "target_cache_build_s": cache_s,
            "mfu": flops / median / peak, "peak_flops": peak, "peak_source": peak_source,
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes), "last_loss": loss,
            "dropped_tokens": float(jax.device_get(metrics.get("dropped_tokens", 0.0))),
            "peak_bytes_in_use": (device.memory_stats() or {}).get("peak_bytes_in_use"),
            "bytes_limit": (device.memory_stats() or {}).get("bytes_limit"),
            "compilations": step.compilations}


def _target_cache(config: ModelConfig, params, examples, *, format: str, temperature: float, seed: int):
    """The teacher's sparse targets for the examples at the loss's temperature (built once, as
    `jaxdistill run` does before training with teacher.targets=cached), in a temporary directory that
    goes when the process ends; the build time is `_target_cache.seconds`."""
    import atexit
    import shutil
    import tempfile

    from jaxdistill.data import TargetSettings, build_teacher_cache

    root = tempfile.mkdtemp(prefix="jaxdistill-bench-targets-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    t0 = time.perf_counter()
    cache = build_teacher_cache(config, params, examples, root, format=format, tokenizer_id="bench",
                                settings=TargetSettings(temperature=temperature, seed=seed))
    _target_cache.seconds = time.perf_counter() - t0
    return cache
