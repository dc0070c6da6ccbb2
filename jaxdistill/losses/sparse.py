"""Sparse teacher targets for cached distillation: k (token id, weight) pairs per position stand in
for the teacher's distribution over V tokens.

    sum_j w_j f(id_j) ~= E_{v ~ p_T}[f(v)],   so   KL(p_T || p_S) ~= self_term - sum_j w_j log p_S(id_j)

with self_term = sum_v p_T log p_T. `topk_targets` (biased: renormalised top k) and
`sampled_targets` (unbiased importance sampling) build them; `sparse_kl_per_token` evaluates the
estimate per position.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill.losses.divergences import (Array, check_temperature, check_token_array, teacher_rows,
                                           to_f32)


class SparseTargets(NamedTuple):
    """A sparse stand-in for the teacher distribution at each position, for cached distillation.

    ids [..., k] int32 and weights [..., k] fp32 with sum_j weights_j f(ids_j) ~= E_{v ~ p_T}[f(v)],
    and self_term [...] = sum_v p_T log p_T of the distribution the weights stand for, so that
    KL(p_T || p_S) ~= self_term - sum_j weights_j log p_S(ids_j).
    """

    ids: Array
    weights: Array
    self_term: Array


def topk_targets(teacher_logits, k: int, *, temperature: float = 1.0) -> SparseTargets:
    """The teacher's top-k tokens with probabilities renormalised over them.

    Biased: the KL it gives is KL(p_T^k || p_S) with p_T^k the renormalised top-k distribution, which
    ignores the tail mass the teacher puts outside the k tokens (and the student is not pushed to drop it).
    """
    log_t = jax.nn.log_softmax(teacher_rows(teacher_logits)[0] / temperature, axis=-1)
    top_log, ids = jax.lax.top_k(log_t, k)
    weights = jax.nn.softmax(top_log, axis=-1)
    log_w = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), 0.0)
    return SparseTargets(ids.astype(jnp.int32), weights, jnp.sum(weights * log_w, axis=-1))


def sampled_targets(key, teacher_logits, num_samples: int, *, temperature: float = 1.0,
                    proposal_temperature: float | None = None) -> SparseTargets:
    """Random-sampling targets (arXiv:2503.16870): an unbiased estimate of the full KD loss.

    Draws x_1..x_N i.i.d. from a proposal q (the teacher at `proposal_temperature`, default: p_T
    itself) and weights each by p_T(x) / (N q(x)), so that E[sum_j w_j f(x_j)] = E_{p_T}[f] exactly
    for any f; with f = log p_S, E[self_term - sum_j w_j log p_S(x_j)] = KL(p_T || p_S), value and
    gradient. `self_term` is the exact sum_v p_T log p_T.
    """
    z = teacher_rows(teacher_logits)[0]
    log_t = jax.nn.log_softmax(z / temperature, axis=-1)
    log_q = log_t if proposal_temperature is None else jax.nn.log_softmax(z / proposal_temperature, axis=-1)
    # Inverse-CDF sampling: O(V) memory per position (categorical's Gumbel noise would be O(k V)).
    cdf = jnp.cumsum(jnp.exp(log_q), axis=-1)
    u = jax.random.uniform(key, (*log_q.shape[:-1], num_samples)) * cdf[..., -1:]
    flat_cdf, flat_u = cdf.reshape(-1, cdf.shape[-1]), u.reshape(-1, num_samples)
    ids = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(flat_cdf, flat_u)
    ids = jnp.minimum(ids, cdf.shape[-1] - 1).reshape(u.shape)
    ids = jnp.where(jnp.take_along_axis(log_q, ids, axis=-1) > -jnp.inf, ids,
                    jnp.argmax(log_q, axis=-1, keepdims=True))  # never a zero-probability token
    log_ratio = (jnp.take_along_axis(log_t, ids, axis=-1) - jnp.take_along_axis(log_q, ids, axis=-1))
    p_t = jnp.exp(log_t)
    self_term = jnp.sum(jnp.where(p_t > 0, p_t * jnp.where(p_t > 0, log_t, 0.0), 0.0), axis=-1)
    return SparseTargets(ids.astype(jnp.int32), jnp.exp(log_ratio) / num_samples, self_term)


def sparse_kl_per_token(student_logits, targets: SparseTargets, *, temperature: float = 1.0) -> Array:
    """KL(p_T || p_S) estimated from sparse targets: self_term - sum_j w_j log p_S(ids_j), per position."""
    check_temperature(temperature)
    check_token_array("targets.weights", targets.weights, targets.ids.shape, "same as targets.ids")
    check_token_array("targets.self_term", targets.self_term, targets.ids.shape[:-1],
                      "targets.ids without its last axis")
    log_s = jax.nn.log_softmax(to_f32(student_logits) / temperature, axis=-1)
    picked = jnp.take_along_axis(log_s, targets.ids, axis=-1)
    return targets.self_term - jnp.sum(targets.weights * picked, axis=-1)
