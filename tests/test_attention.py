"""Causal attention in query blocks (`models.attention`, the default path) equals JAX's own XLA attention
(`jax.nn.dot_product_attention(implementation="xla")`, full T x T then masked): values and gradients
with grouped-query heads, packed-segment masks, sliding windows, bf16, and lengths that do not block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.models.attention import causal_attention, query_blocks


def _inputs(B, T, H, K, D, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q, k, v, ct = (jax.random.normal(kk, (B, T, n, D), jnp.float32).astype(dtype)
                   for kk, n in zip(ks, (H, K, K, H)))
    return q, k, v, ct


def _segments(B, T, seed=0):
    """[B, 1, T, T] same-segment mask of random packed rows (2-4 segments each)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((B, T), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, T), rng.integers(1, 4), replace=False))
        ids[b] = np.searchsorted(cuts, np.arange(T), side="right")
    return jnp.asarray(ids[:, None, :, None] == ids[:, None, None, :])


def _reference(q, k, v, mask, window):
    local = None if window is None else (window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=local,
                                        implementation="xla")


@pytest.mark.parametrize("T, H, K, segments, window, blocks", [
    (128, 4, 2, False, None, None),   # the student's shape: 2 blocks of 64
    (128, 8, 8, True, None, None),    # multi-head, packed segments
    (96, 6, 2, True, 20, 3),          # 3 blocks, a window shorter than a block
    (64, 4, 1, False, 40, 2),         # multi-query, a window longer than a block
    (50, 2, 1, True, None, None),     # no blocking (blocks of >= 64 rows)
    (256, 4, 2, True, None, None),    # 4 blocks of 64
    (64, 4, 2, True, None, 8),        # blocks of 8 rows, asked for
])
def test_blocked_equals_xla_attention(T, H, K, segments, window, blocks):
    B, D = 2, 16
    q, k, v, ct = _inputs(B, T, H, K, D, jnp.float32)
    mask = _segments(B, T) if segments else None

    @jax.jit  # one compilation per side (op-by-op vjp would compile every op)
    def values_and_grads(q, k, v, ct, mask):
        ours = lambda q, k, v: causal_attention(q, k, v, mask=mask, sliding_window=window, blocks=blocks)
        out, vjp = jax.vjp(ours, q, k, v)
        want, vjp_want = jax.vjp(lambda q, k, v: _reference(q, k, v, mask, window), q, k, v)
        return out, want, vjp(ct), vjp_want(ct)

    out, want, grads, grads_want = values_and_grads(q, k, v, ct, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-6, rtol=1e-5)
    for got, ref, name in zip(grads, grads_want, "qkv"):
        scale = float(jnp.abs(ref).max())
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5 * scale, err_msg=f"d{name}")


def test_blocked_equals_xla_attention_in_bf16():
    q, k, v, _ = _inputs(2, 128, 4, 2, 32, jnp.bfloat16, seed=1)
    mask = _segments(2, 128, seed=1)
    out = jax.jit(lambda q, k, v, m: causal_attention(q, k, v, mask=m))(q, k, v, mask)
    want = jax.jit(lambda q, k, v, m: _reference(q, k, v, m, None))(q, k, v, mask)
    assert out.dtype == jnp.bfloat16
    # both round fp32 probabilities to bf16 and accumulate in fp32: a few bf16 ulps apart at most
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), atol=3e-2, rtol=2e-2)
    exact = jax.jit(lambda q, k, v, m: causal_attention(q, k, v, mask=m))(
        *(x.astype(jnp.float32) for x in (q, k, v)), mask)
    err_ours = float(jnp.abs(out.astype(jnp.float32) - exact).max())
    err_xla = float(jnp.abs(want.astype(jnp.float32) - exact).max())
    assert err_ours <= 1.5 * err_xla + 1e-3, (err_ours, err_xla)


def test_query_blocks():
    assert query_blocks(128) == 2 and query_blocks(2048) == 8 and query_blocks(256) == 4 and query_blocks(192) == 3
    assert query_blocks(64) == 1 and query_blocks(100) == 1 and query_blocks(1) == 1
    with pytest.raises(ValueError, match="does not divide"):
        causal_attention(*_inputs(1, 12, 2, 1, 4, jnp.float32)[:3], blocks=5)
