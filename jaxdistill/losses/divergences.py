"""Per-token, unreduced losses (optax style): teacher-student divergences and cross-entropy, the
log-softmax helpers they share, and the validation of loss inputs.

Every function maps logits [..., V] to one value per position [...]; reductions (weighted means,
blends) belong to `token_loss`. Computation is in fp32 for fp32/bf16/fp16 inputs (float64 stays
float64, for gradient checks), and temperature tau divides both sides: p = softmax(z / tau).

A teacher logit of -inf is a token the teacher gives probability 0 (vocabulary padding, a filtered
token); every divergence stays finite (see `divergence_per_token` for reverse KL). A teacher row
with no finite entry is treated as uniform (such positions are normally masked anyway).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")


class LossInputError(ValueError):
    """Loss inputs or settings that do not fit together: shapes, vocabularies, out-of-range values."""


def to_f32(x) -> Array:
    """fp32 for fp32/bf16/fp16 inputs; float64 stays float64 (for float64 gradient checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# ------------------------------------------------------------------------------ validation


def check_vocab(student_vocab: int, teacher_vocab: int) -> None:
    """Teacher and student logits must cover the same vocabulary."""
    if student_vocab != teacher_vocab:
        raise LossInputError(
            f"vocab sizes differ: teacher {teacher_vocab}, student {student_vocab} — teacher and "
            "student must share a tokenizer")


def check_token_array(name: str, array, expected: tuple[int, ...], what: str) -> None:
    """`array` must have shape `expected` (`what` says where that shape comes from)."""
    if tuple(jnp.shape(array)) != tuple(expected):
        raise LossInputError(
            f"{name} has shape {tuple(jnp.shape(array))}, expected {tuple(expected)} ({what})")


def check_tokens(tokens: dict[str, Any], shape: tuple[int, ...], what: str, vocab: int) -> None:
    """Every per-position array has `shape`; labels (when concrete) lie in [0, vocab) or are < 0."""
    for name, array in tokens.items():
        if array is not None:
            check_token_array(name, array, shape, what)
    labels = tokens.get("labels")
    if labels is not None and not isinstance(labels, jax.core.Tracer):  # checkable outside jit only
        top = int(np.max(np.asarray(labels))) if np.size(labels) else -1
        if top >= vocab:
            raise LossInputError(f"label id {top} is outside the vocabulary [0, {vocab}) "
                                 "(negative ids mark ignored positions)")


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise LossInputError(f"temperature={temperature}: must be > 0")


def check_divergence(divergence: str, temperature: float, beta: float, alpha: float) -> None:
    """A known divergence, tau > 0, and the parameter it reads in range: 0 <= beta <= 1 (jsd),
    0 <= alpha < 1 (skew KL)."""
    if divergence not in DIVERGENCES:
        raise LossInputError(f"divergence={divergence!r}; valid: {', '.join(DIVERGENCES)}")
    check_temperature(temperature)
    if divergence == "jsd" and not 0.0 <= beta <= 1.0:
        raise LossInputError(f"beta={beta}: JSD needs 0 <= beta <= 1")
    if divergence.startswith("skew") and not 0.0 <= alpha < 1.0:
        raise LossInputError(f"alpha={alpha}: skew KL needs 0 <= alpha < 1")


def check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise LossInputError(f"label_smoothing={label_smoothing}: must be in [0, 1)")


# ------------------------------------------------------------------------ log-probabilities


def masked_log_softmax(x: Array, mask: Array) -> Array:
    """log softmax of x over the entries where mask is True; 0 (not -inf) elsewhere, so later
    arithmetic on the masked entries stays finite in value and gradient."""
    x = jnp.where(mask, x, -jnp.inf)
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=-1, keepdims=True))
    return jnp.where(mask, shifted - lse, 0.0)


def teacher_rows(teacher_logits) -> tuple[Array, Array]:
    """(teacher logits with rows that have no finite entry replaced by zeros — uniform —, support)."""
    t = to_f32(teacher_logits)
    support = t > -jnp.inf
    has_support = jnp.any(support, axis=-1, keepdims=True)
    return jnp.where(has_support, t, 0.0), support | ~has_support


def _kl(log_p: Array, log_q: Array, where: Array) -> Array:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the entries in `where` (p is 0 elsewhere)."""
    return jnp.sum(jnp.where(where, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)


def _log_mix(a: float, log_p: Array, log_q: Array) -> Array:
    """log(a p + (1 - a) q), for 0 < a < 1 (either side may be -inf)."""
    return jnp.logaddexp(math.log(a) + log_p, math.log1p(-a) + log_q)


# ------------------------------------------------------------------------ per-token losses


def divergence_per_token(student_logits, teacher_logits, *, divergence: str = "forward_kl",
                         temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1) -> Array:
    """Per-position divergence [...] between teacher and student distributions.

    forward_kl        KL(p_T || p_S) = sum p_T (log p_T - log p_S)
    reverse_kl        KL(p_S || p_T)
    jsd               JSD_beta = beta KL(p_T || M) + (1 - beta) KL(p_S || M),  M = beta p_T + (1 - beta) p_S;
                      beta = 0 is exactly forward KL and beta = 1 exactly reverse KL (the formula itself
                      vanishes at both ends, so they are special-cased)
    skew_forward_kl   KL(p_T || alpha p_T + (1 - alpha) p_S)   (DistiLLM; alpha = 0: forward KL)
    skew_reverse_kl   KL(p_S || alpha p_S + (1 - alpha) p_T)   (alpha = 0: reverse KL)

    Teacher -inf entries (p_T = 0) enter every formula as they are, with the student's full
    distribution — so forward KL pushes student mass off them, and the sparse-target estimates are
    unbiased for it — except reverse KL, which would be +inf there: it is taken over the teacher's
    support with the student renormalised on it.
    """
    check_divergence(divergence, temperature, beta, alpha)
    check_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
    if divergence == "jsd" and beta in (0.0, 1.0):
        divergence = "forward_kl" if beta == 0.0 else "reverse_kl"
    if divergence.startswith("skew") and alpha == 0.0:
        divergence = divergence.removeprefix("skew_")
    s = to_f32(student_logits) / temperature
    t, support = teacher_rows(teacher_logits)
    log_t = masked_log_softmax(t / temperature, support)  # 0 (not -inf) outside the support
    log_t_or_neg_inf = jnp.where(support, log_t, -jnp.inf)  # for mixtures
    everywhere = jnp.ones_like(support)
    if divergence == "reverse_kl":
        return _kl(masked_log_softmax(s, support), log_t, support)
    log_s = jax.nn.log_softmax(s, axis=-1)
    if divergence == "forward_kl":
        return _kl(log_t, log_s, support)
    if divergence == "jsd":
        log_m = _log_mix(beta, log_t_or_neg_inf, log_s)
        return beta * _kl(log_t, log_m, support) + (1.0 - beta) * _kl(log_s, log_m, everywhere)
    if divergence == "skew_forward_kl":
        return _kl(log_t, _log_mix(alpha, log_t_or_neg_inf, log_s), support)
    return _kl(log_s, _log_mix(alpha, log_s, log_t_or_neg_inf), everywhere)


def cross_entropy_per_token(logits, labels, *, label_smoothing: float = 0.0) -> Array:
    """-(1 - eps) log p(label) - eps * mean_v log p(v), per position [...]. Labels < 0 give 0."""
    check_label_smoothing(label_smoothing)
    log_p = jax.nn.log_softmax(to_f32(logits), axis=-1)
    vocab = jax.lax.broadcasted_iota(jnp.int32, log_p.shape, log_p.ndim - 1)
    # A compare-and-sum instead of a gather: elementwise over V, so it stays vocab-parallel.
    nll = -jnp.sum(jnp.where(vocab == labels[..., None], log_p, 0.0), axis=-1)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
    return jnp.where(labels >= 0, nll, 0.0)
