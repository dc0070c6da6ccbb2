"""The performance model: FLOPs of the workload and the peak they are measured against.

FLOPs are counted the MaxText way: 2 x (multiply-adds of every matmul), causal attention halved
(QK^T and AV each cost 2*T*H*D per token per layer before halving). A distillation step counts the
student's forward x3 (forward + backward) and a live teacher's forward x1. MFU = FLOPs / time / peak.
Peak: on CPU, an fp32 matmul ceiling measured in the same process, right before the run, at the
workload's own matmul shapes (the machine is shared, so a stale number would mislead); on
accelerators, the datasheet dense bf16 peak for the device kind.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxdistill.models import ModelConfig


# Dense bf16 peak, TFLOP/s per chip, from the vendors' datasheets (substring of device_kind).
# More specific names first: "H100 PCIe" must match before "H100" (SXM).
DATASHEET_PEAK_TFLOPS = {
    "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
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
    """The ceiling: best achieved FLOP/s over `shapes` (M, K, N), each the best of `repeats` timed runs."""
    return max(_timed_matmul("fwd", 1, m, k, n, dtype=dtype, repeats=repeats) for m, k, n in shapes)


def peak_flops(config: ModelConfig, tokens: int) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for the default backend."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measure_matmul_peak(matmul_shapes(config, tokens)), "measured fp32 matmul ceiling"
    for kind, tflops in DATASHEET_PEAK_TFLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return tflops * 1e12, f"datasheet bf16 ({kind})"
    # MFU is then NaN: a missing datasheet entry must not stop a run (the benchmark takes peak_tflops=)
    return float("nan"), f"unknown: no datasheet peak for {device.device_kind!r} (known: {', '.join(DATASHEET_PEAK_TFLOPS)})"



def step_flops(student: ModelConfig, teacher: ModelConfig | None, tokens: int, seq_len: int) -> dict[str, float]:
    """FLOPs of one distillation step: student forward+backward (x3), a live teacher's forward (x1)."""
    teacher_flops = 0.0 if teacher is None else forward_flops_per_token(teacher, seq_len) * tokens
    return {"student": float(3 * forward_flops_per_token(student, seq_len) * tokens), "teacher": float(teacher_flops)}


def step_matmuls(config: ModelConfig, batch: int, seq: int, *, backward: bool) -> list[tuple[tuple, float]]:
    """[((kind, batch dims, M, K, N), FLOPs in the step)] of one model's matmuls on [batch, seq]
    tokens: the forward products and, with `backward`, the two backward products of each
    (dX = dY W^T: (M, N, K) contracting W's last axis; dW = X^T dY: (K, M, N) contracting the
    tokens). Attention's QK^T and AV are batched over batch x heads; their FLOPs are halved (causal)
    as in `forward_flops_per_token`."""
    c, n = config, batch * seq
    d, H, K, D, F, V, L = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
                           c.vocab_size, c.num_layers)
    dense = [((n, d, H * D), L), ((n, d, K * D), 2 * L), ((n, H * D, d), L), ((n, d, F), 2 * L),
             ((n, F, d), L), ((n, d, V), 1)]
    out = []
    for (m, k, nn), count in dense:
        flops = 2.0 * m * k * nn * count
        out.append((("fwd", 1, m, k, nn), flops))
        if backward:
            out += [(("dx", 1, m, nn, k), flops), (("dw", 1, k, m, nn), flops)]
    bh = batch * H
    flops = 2.0 * bh * seq * seq * D * L / 2  # each of QK^T and AV, halved (causal)
    scores, values = ("fwd", bh, seq, D, seq), ("fwd", bh, seq, seq, D)  # (M, K, N): QK^T, AV
    out += [(scores, flops), (values, flops)]
    if backward:  # QK^T: dQ = dS K, dK = dS^T Q (both T x T x D); AV: dP = dO V^T (T x D x T), dV = P^T dO
        out += [(values, 2 * flops), (scores, flops), (values, flops)]
    return out


def _timed_matmul(kind: str, b: int, m: int, k: int, n: int, dtype, repeats: int, min_seconds: float = 0.1) -> float:
    """Best FLOP/s of one matmul in the layout the step uses (see `step_matmuls`)."""
    if kind == "fwd":
        shapes, dims = ((b, m, k), (b, k, n)), (((2,), (1,)), ((0,), (0,)))
    elif kind == "dx":  # dY [m, k'] . W [n, k'] over k' (W used transposed)
        shapes, dims = ((b, m, k), (b, n, k)), (((2,), (2,)), ((0,), (0,)))
    else:  # dw: X [k', m] . dY [k', n] over the token axis
        shapes, dims = ((b, k, m), (b, k, n)), (((1,), (1,)), ((0,), (0,)))
    x, y = (jnp.ones(s, dtype) for s in shapes)
    f = jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims))
    f(x, y).block_until_ready()
    best, spent, calls = float("inf"), 0.0, 0
    while calls < repeats or spent < min_seconds:  # the best of several calls: the machine is shared
        t0 = time.perf_counter()
        f(x, y).block_until_ready()
        elapsed = time.perf_counter() - t0
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return 2.0 * b * m * k * n / best


def matmul_ceiling(weighted: list[tuple[tuple, float]], dtype=jnp.float32, repeats: int = 5) -> float:
    """The workload-weighted matmul ceiling: sum FLOPs / sum (FLOPs / best rate of that shape), i.e.
    the FLOP/s of running every matmul of the step back to back at its own best speed."""
    rates = {}
    total, seconds = 0.0, 0.0
    for shape, flops in weighted:
        if shape not in rates:
            rates[shape] = _timed_matmul(*shape, dtype=dtype, repeats=repeats)
        total += flops
        seconds += flops / rates[shape]
    return total / seconds


def step_peak(student: ModelConfig, teacher: ModelConfig | None, batch: int, seq: int) -> tuple[float, str]:
    """(peak FLOP/s, how) for a distillation step: on CPU the matmul ceiling at the step's own shapes
    (student forward and both backward products, the teacher's forward), weighted by their FLOPs,
    measured now; elsewhere the datasheet peak (`peak_flops`)."""
    if jax.devices()[0].platform != "cpu":
        return peak_flops(student, batch * seq)
    weighted = step_matmuls(student, batch, seq, backward=True)
    if teacher is not None:
        weighted += step_matmuls(teacher, batch, seq, backward=False)
    return matmul_ceiling(weighted), "measured fp32 matmul ceiling, step-weighted (forward + both backward products)"
