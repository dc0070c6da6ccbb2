"""Hand-written gradients w.r.t. the student logits of the terms the fused head uses most: cross-entropy
(with label smoothing) and forward KL against dense teacher logits at temperature tau.

    CE:   term = lse(z) - (1 - eps) z_y - eps mean_v z_v         dterm/dz = softmax(z) - (1 - eps) onehot(y) - eps / V
    KL:   term = sum_v p_T,v (log p_T,v - log p_S,v),  p = softmax(. / tau)
                                                          dterm/dz = (softmax(z / tau) - p_T) / tau

A chunk of the fused loss (`fused._scan_value_and_grads`) then needs one pass over its [C, V] logits per
softmax and one for the gradient, instead of autodiff's saved intermediates and select passes; the
value is the same as `divergences` computes (teacher -inf entries are p_T = 0; a row without a finite
teacher entry is uniform, as in `divergences.teacher_rows`). `scaled_forward_kl_and_grad` is the
forward KL the fused head uses against a live teacher: its logits come pre-divided by tau (1 / tau
folded into the [C, d] hidden states, not a pass over [C, V]) and the teacher's are finite, so no
-inf handling runs. Tested against autodiff of the reference
terms (`tests/test_fused_loss.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses.divergences import Array, teacher_rows, to_f32


def _max_and_lse(z: Array) -> tuple[Array, Array]:
    """(m, log sum_v exp(z_v - m)), m the row max, both [..., 1] (no [..., V] array is kept)."""
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    return m, jnp.log(jnp.sum(jnp.exp(z - m), axis=-1, keepdims=True))


def _log_softmax(z: Array) -> Array:
    m, lse = _max_and_lse(z)
    return (z - m) - lse


def cross_entropy_and_grad(logits: Array, labels: Array, label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """(per-position CE [...], its gradient w.r.t. logits [..., V]); labels < 0 give 0 and no gradient."""
    log_p = _log_softmax(to_f32(logits))
    vocab = jax.lax.broadcasted_iota(jnp.int32, log_p.shape, log_p.ndim - 1)
    hit = vocab == labels[..., None]
    term = -jnp.sum(jnp.where(hit, log_p, 0.0), axis=-1)
    grad = jnp.exp(log_p) - hit
    if label_smoothing:
        term = (1.0 - label_smoothing) * term - label_smoothing * jnp.mean(log_p, axis=-1)
        grad = jnp.exp(log_p) - (1.0 - label_smoothing) * hit - label_smoothing / log_p.shape[-1]
    valid = labels >= 0
    return jnp.where(valid, term, 0.0), jnp.where(valid[..., None], grad, 0.0)


def forward_kl_and_grad(logits: Array, teacher_logits: Array, temperature: float = 1.0) -> tuple[Array, Array]:
    """(per-position KL(p_T || p_S) [...], its gradient w.r.t. the student logits [..., V])."""
    t, _ = teacher_rows(teacher_logits)
    log_t = _log_softmax(t / temperature)
    p_t = jnp.exp(log_t)
    log_s = _log_softmax(to_f32(logits) / temperature)
    term = jnp.sum(jnp.where(p_t > 0, p_t * (log_t - log_s), 0.0), axis=-1)
    return term, (jnp.exp(log_s) - p_t) / temperature


def scaled_forward_kl_and_grad(scaled_logits: Array, scaled_teacher: Array) -> tuple[Array, Array]:
    """`forward_kl_and_grad` at temperature tau for logits already divided by tau (z / tau, t / tau:
    the fused head folds 1 / tau into its hidden states) and a finite teacher (logits from a matmul,
    no -inf entries): (per-position KL [...], its gradient w.r.t. z / tau, i.e. softmax(z / tau) - p_T).
    One max, one exp-sum per side and one gradient pass; no select passes."""
    t, z = to_f32(scaled_teacher), to_f32(scaled_logits)
    (m_t, lse_t), (m_s, lse_s) = _max_and_lse(t), _max_and_lse(z)
    p_t = jnp.exp((t - m_t) - lse_t)
    # log p_T - log p_S = (t - z) - (m_T - m_S) - (lse_T - lse_S), each difference taken first (as
    # exact as fp32 allows when teacher and student are close); neither log p_T nor log p_S is
    # written out as a [..., V] array
    term = jnp.sum(p_t * ((t - z) - ((m_t - m_s) + (lse_t - lse_s))), axis=-1)
    return term, jnp.exp((z - m_s) - lse_s) - p_t


def combine_grads(grads: dict[str, Array], coefs: dict[str, Array]) -> Array:
    """d/dz sum_k sum_n coef_k[n] term_k[n] = sum_k coef_k[:, None] * dterm_k/dz (0 where coef_k is 0)."""
    total = None
    for k, c in coefs.items():
        g = jnp.where((c != 0)[..., None], c[..., None] * grads[k], 0.0)
        total = g if total is None else total + g
    return total
