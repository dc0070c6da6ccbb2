"""Causal self-attention in query blocks: the default (`attention_impl: None`) training and scoring path.

`jax.nn.dot_product_attention(implementation="xla")` computes every query against every key and masks
the upper triangle afterwards: half of its T x T work is thrown away. Here the T queries are cut into
n blocks of L = T / n rows, and block i attends only to the keys it can see, [lo_i, (i + 1) L)
(lo_i = 0, or the sliding window's first key): (n + 1) / (2 n) of the full work. Each
block is one grouped-query product per kv head, queries of a group stacked as rows (T = 128: 2 blocks,
3/4 of the work; T = 2048: 8 blocks, 9/16),

    s[b, k, (g, t), s'] = q[b, t, (k, g), :] . k[b, s', k, :] / sqrt(D)      fp32 logits
    p = softmax(where(allowed, s, -0.7 * max_float))                           fp32
    out[b, t, (k, g), :] = sum_s' p[b, k, (g, t), s'] v[b, s', k, :]          probs cast to v's dtype

which is JAX's own XLA attention arithmetic (the same dot precisions, fp32 softmax, masking constant and
bf16 probabilities), so the two agree to rounding (`tests/test_attention.py` checks values and gradients against it, with segment masks, sliding
windows and bf16). The decoding path with a KV cache keeps `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MIN_BLOCK = 64   # rows per query block: below, smaller matmuls and more ops to compile cost more than the
                 # skipped work saves (cpu_small, T = 128: 4 blocks of 32 compiled in 4.8 s, 2 of 64 in 3.4 s,
                 # unblocked 2.9 s; the steps were within noise of each other)
MAX_BLOCKS = 8   # more blocks save little ((n + 1) / 2n -> 1/2) and unroll more ops


def query_blocks(seq_len: int) -> int:
    """How many query blocks a sequence of `seq_len` is cut into: the most (<= MAX_BLOCKS) that
    divide it into blocks of at least MIN_BLOCK rows; 1 (no blocking) for short or odd lengths."""
    for n in range(min(MAX_BLOCKS, seq_len // MIN_BLOCK), 1, -1):
        if seq_len % n == 0:
            return n
    return 1


def _logits(q, k, scale: float):
    """fp32 logits q . k / sqrt(D) [B, K, G, L, S] for q [B, K, G, L, D], k [B, K, S, D], with
    jax.nn.dot_product_attention's precision: bf16/fp16 inputs multiply into fp32 explicitly (where the
    platform takes that algorithm; JAX falls back to the default precision the same way)."""
    preset = {jnp.dtype(jnp.bfloat16): jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
              jnp.dtype(jnp.float16): jax.lax.DotAlgorithmPreset.F16_F16_F32}.get(jnp.dtype(q.dtype))
    try:
        logits = jnp.einsum("bkgqd,bksd->bkgqs", q, k, precision=preset, preferred_element_type=jnp.float32)
    except Exception:  # noqa: BLE001 — as jax.nn.dot_product_attention: a platform without the preset
        logits = jnp.einsum("bkgqd,bksd->bkgqs", q, k, preferred_element_type=jnp.float32)
    return logits * jnp.float32(scale)


def causal_attention(q, k, v, *, mask=None, sliding_window: int | None = None, blocks: int | None = None):
    """Causal grouped-query attention. q [B, T, H, D], k, v [B, T, K, D] (H a multiple of K);
    mask [B, 1, T, T] bool (True: may attend; e.g. same packed segment) or None; sliding_window w:
    a query sees its w most recent positions, itself included; blocks: query blocks (default
    `query_blocks(T)`). Returns [B, T, H, D] in q's dtype."""
    B, T, H, D = q.shape
    K = k.shape[2]
    G = H // K
    n = query_blocks(T) if blocks is None else blocks
    if T % n:
        raise ValueError(f"blocks={n} does not divide the sequence length {T}")
    L = T // n
    big_negative = jnp.float32(-0.7 * float(jnp.finfo(jnp.float32).max))
    # [B, K, G, T, D] queries and [B, K, T, D] keys/values: each kv head's products are one batched
    # matmul, the group's queries its rows (g, t)
    qg = q.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    outs = []
    for i in range(n):
        hi = (i + 1) * L
        lo = 0 if sliding_window is None else max(0, i * L - (sliding_window - 1))
        logits = _logits(qg[:, :, :, i * L:hi], kt[:, :, lo:hi], 1.0 / math.sqrt(D))  # [B, K, G, L, S]
        # positions from iota (no [L, S] constant in the program), broadcast over batch, heads, group
        q_pos = i * L + jax.lax.broadcasted_iota(jnp.int32, (L, hi - lo), 0)
        k_pos = lo + jax.lax.broadcasted_iota(jnp.int32, (L, hi - lo), 1)
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= q_pos - k_pos < sliding_window
        if mask is not None:  # [B, 1, T, T] -> [B, 1, 1, L, S]
            allowed = allowed & mask[:, :, None, i * L:hi, lo:hi]
        probs = jax.nn.softmax(jnp.where(allowed, logits, big_negative), axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgqs,bksd->bkgqd", probs, vt[:, :, lo:hi]))  # as JAX: default precision
    out = outs[0] if n == 1 else jnp.concatenate(outs, axis=3)        # [B, K, G, T, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, D).astype(q.dtype)
