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

which is JAX's own XLA attention arithmetic (same precisions, same masking constant), so the two agree to
rounding (`tests/test_attention.py` checks values and gradients against it, with segment masks, sliding
windows and bf16). The decoding path with a KV cache keeps `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

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


def _precision(dtype):
    # as jax.nn.dot_product_attention: bf16/fp16 inputs multiply into fp32 logits explicitly
    if dtype == jnp.bfloat16:
        return jax.lax.DotAlgorithmPreset.BF16_BF16_F32
    if dtype == jnp.float16:
        return jax.lax.DotAlgorithmPreset.F16_F16_F32
    return None


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
    scale = 1.0 / math.sqrt(D)
    precision = _precision(q.dtype)
    big_negative = jnp.asarray(-0.7 * float(jnp.finfo(jnp.float32).max), jnp.float32)
    # [B, K, G, T, D] queries and [B, K, T, D] keys/values: each kv head's products are one batched matmul
    qg = q.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    outs = []
    for i in range(n):
        rows = slice(i * L, (i + 1) * L)
        hi = (i + 1) * L
        lo = 0 if sliding_window is None else max(0, i * L - (sliding_window - 1))
        q_i = qg[:, :, :, rows].reshape(B, K, G * L, D)
        logits = jnp.einsum("bkqd,bksd->bkqs", q_i, kt[:, :, lo:hi], precision=precision,
                            preferred_element_type=jnp.float32) * jnp.float32(scale)
        q_pos = np.tile(np.arange(i * L, hi), G)[:, None]          # [(g, t), 1], static
        k_pos = np.arange(lo, hi)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= q_pos - k_pos < sliding_window
        allowed = jnp.asarray(allowed)
        if mask is not None:  # [B, 1, T, T] -> [B, 1, (g, t), keys]
            m = jnp.tile(mask[:, :, rows, lo:hi], (1, 1, G, 1))
            allowed = allowed & m
        probs = jax.nn.softmax(jnp.where(allowed, logits, big_negative), axis=-1).astype(v.dtype)
        out = jnp.einsum("bkqs,bksd->bkqd", probs, vt[:, :, lo:hi], precision=precision,
                         preferred_element_type=jnp.float32 if precision is not None else None)
        outs.append(out.astype(q.dtype).reshape(B, K, G, L, D))
    out = outs[0] if n == 1 else jnp.concatenate(outs, axis=3)        # [B, K, G, T, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, D)
