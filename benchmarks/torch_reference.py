"""The distillation step of `jaxdistill bench` (benchmark: step) written the way PyTorch + Hugging Face
transformers users write it, timed the same way, so the two can be compared on one machine.

    python benchmarks/torch_reference.py CONFIG.yaml [key=value ...] [--device cpu|cuda]
                                         [--dtype float32|bfloat16] [--json]

What one step is: teacher and student `LlamaForCausalLM` (random init, shapes from the YAML's
`teacher`/`student`, resolved with `jaxdistill.bench_step.model_config`; attention "sdpa", no KV
cache), the teacher's forward under `torch.no_grad()`, the student's forward, the loss on full logits
(fp32 log-softmax), `loss.backward()`, optional `clip_grad_norm_` (only if `optimizer.clip_norm`),
`torch.optim.AdamW` (lr, betas, weight_decay from `optimizer:`; constant lr), `zero_grad(set_to_none=True)`.

Workloads (the YAML's `data:`):
    random   batch x seq random tokens, target = next token (rolled, as the JAX bench), every position
             supervised; `loss: {kind: divergence}` = forward KL at temperature tau, mean over positions
    finance  `finance_examples(format, max_len)` taken `batch` at a time in a seeded random order, each
             batch right-padded to its longest example (attention_mask); position t predicts token t+1,
             whose part (PROMPT/TRACE/ANSWER) it takes; `kind: blended` = w_answer * mean CE(answer)
             + w_trace_ce * mean CE(trace) + s * w_kl * mean KL_tau(p_T || p_S) over trace + answer,
             s = tau^2 only with scale_by_t2 (the `BlendedCoT` formula); useful tokens = supervised
             (trace + answer, `loss_weights`) targets

Timing: one untimed first step, `warmup` untimed steps, then `steps` timed steps (wall clock, with
`torch.cuda.synchronize()` on cuda); median, p10, p90. FLOPs: `jaxdistill.perf.step_flops` (student x3,
teacher x1; finance: each batch's padded shape, averaged over the timed steps). Peak: the same
workload-weighted matmul ceiling as the JAX bench (`perf.step_matmuls` shapes and FLOP weights, the
forward, dX = dY W^T and dW = X^T dY layouts) but timed with torch.matmul in this process (finance: at
batch x the median padded length). bfloat16 = autocast bf16 over fp32 master weights.
Keys of a bench YAML the torch side has no use for (remat, capacity, compilation_cache, memory_only,
loss.chunk_size) are ignored.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # jaxdistill is imported for configs and data only

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from jaxdistill.bench_step import DATA, finance_examples, model_config
from jaxdistill.config import merge, parse_override
from jaxdistill.data.formats import loss_weights
from jaxdistill.losses import LossConfig
from jaxdistill.parts import ANSWER, TRACE
from jaxdistill.perf import step_flops, step_matmuls

_examples = functools.lru_cache(maxsize=4)(finance_examples)  # encoding the data takes seconds
DEFAULT_LOSS = {"kind": "divergence", "divergence": "forward_kl", "temperature": 2.0}
DEFAULT_OPT = {"learning_rate": 1e-4, "weight_decay": 0.01, "clip_norm": None, "b1": 0.9, "b2": 0.95}


def hf_model(config, *, device: str) -> torch.nn.Module:
    """A random-init transformers model with the shapes of a jaxdistill `ModelConfig`."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    families = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
    if config.model_type not in families:
        raise ValueError(f"model_type {config.model_type!r}: the torch reference knows {', '.join(families)}")
    cls_config, cls_model = families[config.model_type]
    hf = cls_config(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                    intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                    head_dim=config.head_dim, tie_word_embeddings=config.tie_word_embeddings,
                    rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
                    max_position_embeddings=config.max_position_embeddings,
                    attn_implementation="sdpa", use_cache=False)
    return cls_model(hf).to(device)


def build_models(spec: dict, *, device: str = "cpu", seed: int = 0):
    """(teacher in eval mode without gradients, student in train mode, teacher ModelConfig, student ModelConfig)."""
    t_config = model_config(spec.get("teacher", "cpu-small-teacher"), dtype=None, remat=None)
    s_config = model_config(spec.get("student", "cpu-small-student"), dtype=None, remat=None)
    torch.manual_seed(seed)
    teacher = hf_model(t_config, device=device).eval().requires_grad_(False)
    student = hf_model(s_config, device=device).train()
    return teacher, student, t_config, s_config


def random_batches(n: int, *, batch: int, seq: int, vocab: int, seed: int) -> list[dict]:
    """n batches of random tokens, target = the next token (rolled), every position supervised (ANSWER)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = torch.from_numpy(rng.integers(0, vocab, (batch, seq)).astype(np.int64))
        out.append({"input_ids": tokens, "attention_mask": None, "targets": torch.roll(tokens, -1, dims=1),
                    "parts": torch.full((batch, seq), ANSWER, dtype=torch.int8),
                    "weights": torch.ones(batch, seq), "useful": batch * seq})
    return out


def finance_batches(n: int, *, batch: int, format: str = "blended", max_len: int = 128, vocab: int,
                    seed: int) -> list[dict]:
    """n batches of `batch` finance examples in a seeded random order, right-padded to the longest;
    targets -100 (and part 0) where a position has no next token in its example."""
    examples = _examples(format=format, max_len=max_len)
    top = max(int(e.tokens.max()) for e in examples)
    if top >= vocab:
        raise ValueError(f"finance token id {top} is outside the models' vocabulary [0, {vocab})")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    out = []
    for _ in range(n):
        while len(order) < batch:
            order += rng.permutation(len(examples)).tolist()
        chosen, order = [examples[i] for i in order[:batch]], order[batch:]
        length = max(len(e) for e in chosen)
        ids, mask = np.zeros((batch, length), np.int64), np.zeros((batch, length), np.int64)
        targets, parts = np.full((batch, length), -100, np.int64), np.zeros((batch, length), np.int8)
        weights = np.zeros((batch, length), np.float32)
        for r, e in enumerate(chosen):
            k = len(e)
            ids[r, :k], mask[r, :k] = e.tokens, 1
            targets[r, :k - 1], parts[r, :k - 1] = e.tokens[1:], e.parts[1:]
            weights[r, :k - 1] = loss_weights(e.parts[1:], format)
        out.append({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                    "targets": torch.from_numpy(targets), "parts": torch.from_numpy(parts),
                    "weights": torch.from_numpy(weights), "useful": int((weights > 0).sum())})
    return out


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)  # 0, not NaN, when nothing is selected


def step_loss(loss: LossConfig, s_logits: torch.Tensor, t_logits: torch.Tensor, b: dict) -> torch.Tensor:
    """The bench's loss on full logits [B, T, V], computed in fp32 (the usual PyTorch way)."""
    s, t = s_logits.float(), t_logits.float()
    tau = loss.temperature
    kl = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                  reduction="none").sum(-1)  # forward KL(p_T || p_S) per position
    scale = tau ** 2 if loss.scale_by_t2 else 1.0
    if loss.kind == "divergence":
        return scale * _masked_mean(kl, b["weights"] > 0)
    v = s.shape[-1]
    ce = F.cross_entropy(s.reshape(-1, v), b["targets"].reshape(-1), ignore_index=-100, reduction="none",
                         label_smoothing=loss.label_smoothing).view(b["targets"].shape)
    valid = b["targets"] >= 0
    answer, trace = valid & (b["parts"] == ANSWER), valid & (b["parts"] == TRACE)
    value = loss.w_answer * _masked_mean(ce, answer) + loss.w_trace_ce * _masked_mean(ce, trace)
    if loss.w_kl > 0:
        value = value + scale * loss.w_kl * _masked_mean(kl, answer | trace)
    return value


def loss_config(spec: dict) -> LossConfig:
    config = LossConfig(**(spec.get("loss") or DEFAULT_LOSS))
    if config.divergence != "forward_kl" or config.kl_schedule != "constant":
        raise ValueError("the torch reference implements forward_kl with a constant kl_schedule only "
                         f"(got divergence={config.divergence!r}, kl_schedule={config.kl_schedule!r})")
    return config


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed_matmul(kind: str, b: int, m: int, k: int, n: int, *, device, dtype, repeats: int) -> float:
    """Best FLOP/s of one matmul in the layout `perf.step_matmuls` names (see `perf._timed_matmul`)."""
    shapes = {"fwd": ((b, m, k), (b, k, n)), "dx": ((b, m, k), (b, n, k)), "dw": ((b, k, m), (b, k, n))}[kind]
    x, y = (torch.ones(s[1:] if b == 1 else s, device=device, dtype=dtype) for s in shapes)
    if kind == "dx":
        y = y.transpose(-1, -2)  # dY . W^T: W used transposed (a view, as autograd does)
    elif kind == "dw":
        x = x.transpose(-1, -2)  # X^T . dY over the token axis
    best = float("inf")
    with torch.no_grad():
        for i in range(repeats + 1):  # the first run warms up
            _sync(device)
            t0 = time.perf_counter()
            torch.matmul(x, y)
            _sync(device)
            if i:
                best = min(best, time.perf_counter() - t0)
    return 2.0 * b * m * k * n / best


def matmul_ceiling(weighted, *, device: str = "cpu", dtype=torch.float32, repeats: int = 5) -> float:
    """sum FLOPs / sum (FLOPs / best torch rate of that shape): the step's matmuls back to back."""
    rates, total, seconds = {}, 0.0, 0.0
    for shape, flops in weighted:
        if shape not in rates:
            rates[shape] = _timed_matmul(*shape, device=device, dtype=dtype, repeats=repeats)
        total += flops
        seconds += flops / rates[shape]
    return total / seconds


def reference_step(spec: dict, *, device: str = "cpu", dtype: str = "float32", steps: int = 10,
                   warmup: int = 2, seed: int = 0) -> dict:
    """Time the PyTorch distillation step of a bench spec; one flat result dict (see the module doc)."""
    data, batch, seq = spec.get("data", "random"), int(spec.get("batch", 8)), int(spec.get("seq", 128))
    if data not in DATA:
        raise ValueError(f"data={data!r}; valid: {', '.join(DATA)}")
    if dtype not in ("float32", "bfloat16") or steps < 1 or warmup < 0:
        raise ValueError(f"dtype={dtype!r} (float32 | bfloat16), steps={steps} (>= 1), warmup={warmup} (>= 0)")
    loss = loss_config(spec)
    opt = {**DEFAULT_OPT, **(spec.get("optimizer") or {})}
    teacher, student, t_config, s_config = build_models(spec, device=device, seed=seed)
    n = min(1 + warmup + steps, 32)
    if data == "random":
        host = random_batches(n, batch=batch, seq=seq, vocab=s_config.vocab_size, seed=seed)
    else:
        host = finance_batches(n, batch=batch, format=spec.get("format", "blended"),
                               max_len=int(spec.get("max_len", 128)), vocab=s_config.vocab_size, seed=seed)
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in host]
    optimizer = torch.optim.AdamW(student.parameters(), lr=opt["learning_rate"], betas=(opt["b1"], opt["b2"]),
                                  weight_decay=opt["weight_decay"])
    autocast = lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                                      enabled=dtype == "bfloat16")

    def step(b):
        with torch.no_grad(), autocast():
            t_logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        with autocast():
            s_logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        value = step_loss(loss, s_logits, t_logits, b)
        value.backward()
        if opt.get("clip_norm") is not None:
            torch.nn.utils.clip_grad_norm_(student.parameters(), opt["clip_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value.detach()

    times, used = [], []
    for i in range(1 + warmup + steps):
        b = batches[i % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        value = step(b)
        _sync(device)
        times.append(time.perf_counter() - t0)
        used.append(b)
    first_step_s, times, used = times[0], times[1 + warmup:], used[1 + warmup:]
    median = statistics.median(times)
    lengths = [b["input_ids"].shape[1] for b in used]
    padded = statistics.mean(batch * length for length in lengths)
    useful = statistics.mean(b["useful"] for b in used)
    per_step = [step_flops(s_config, t_config, batch * length, length) for length in lengths]
    flops = {k: statistics.mean(f[k] for f in per_step) for k in per_step[0]}
    peak_seq = int(round(statistics.median(lengths)))
    if spec.get("peak_tflops") is not None:
        peak, peak_source = float(spec["peak_tflops"]) * 1e12, "given"
    else:
        weighted = (step_matmuls(s_config, batch, peak_seq, backward=True)
                    + step_matmuls(t_config, batch, peak_seq, backward=False))
        peak = matmul_ceiling(weighted, device=device, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        peak_source = f"measured torch.matmul {dtype} ceiling, step-weighted (forward + both backward products)"
    import transformers

    return {"benchmark": "torch_reference", "data": data, "format": spec.get("format", "blended") if data == "finance"
            else None, "device": device, "dtype": dtype, "batch": batch, "seq": seq if data == "random" else peak_seq,
            "loss_kind": loss.kind, "tokens_per_step": padded, "useful_tokens_per_step": useful,
            "step_ms_median": 1e3 * median, "step_ms_p10": 1e3 * float(np.percentile(times, 10)),
            "step_ms_p90": 1e3 * float(np.percentile(times, 90)), "steps_timed": len(times),
            "tokens_per_s": padded / median, "useful_tokens_per_s": useful / median, "first_step_s": first_step_s,
            "flops_per_step": flops, "mfu": sum(flops.values()) / median / peak, "peak_flops": peak,
            "peak_source": peak_source, "last_loss": float(value), "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "threads": torch.get_num_threads()}


def load_spec(path, overrides) -> dict:
    """The YAML at `path` with `key=value` overrides merged in (as `jaxdistill bench` does)."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    for text in overrides:
        spec = merge(spec, parse_override(text))
    if spec.get("benchmark", "step") != "step":
        raise ValueError(f"benchmark={spec['benchmark']!r}: the torch reference runs `benchmark: step` only")
    return spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value, merged into the YAML (steps=3, loss.temperature=1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: the YAML's dtype, else float32")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_intermixed_args(argv)
    try:
        spec = load_spec(args.config, args.overrides)
    except (ValueError, OSError, yaml.YAMLError) as err:
        parser.error(f"{args.config}: {err}")
    result = reference_step(spec, device=args.device, dtype=args.dtype or spec.get("dtype") or "float32",
                            steps=int(spec.get("steps", 10)), warmup=int(spec.get("warmup", 2)),
                            seed=int(spec.get("seed", 0)))
    if args.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
