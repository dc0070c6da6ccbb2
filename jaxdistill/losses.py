"""Distillation losses: the KL family, JSD(beta), skew KL, cross-entropy, sparse teacher targets,
the blended chain-of-thought loss, and a chunked fused LM-head + loss path.

Conventions (every function here):
- Inputs are logits [..., V] in fp32 or bf16; everything is computed in fp32. Position n's logits
  predict `labels[n]` (the caller shifts), and `weights[n]` (default 1) weights position n.
- Means are over supervised tokens: sum_n w_n l_n / sum_n w_n. A position with weight 0 adds exactly
  zero to the value and the gradient; an all-masked batch gives 0, not NaN.
- Temperature tau divides both student and teacher logits: p = softmax(z / tau).
- A teacher logit of -inf is a token the teacher gives probability 0 (vocabulary padding, a filtered
  token); every divergence stays finite (see `divergence_per_token` for reverse KL). A teacher row
  with no finite entry is treated as uniform (such positions are normally masked anyway).

Every loss is a `TokenLoss`: per-token terms (which need logits) and per-token coefficients (which
need only labels, weights and the step), with L = sum_k sum_n coef_k[n] * term_k[n]. Because the
coefficients never depend on logits, the same loss can be evaluated on full logits (`evaluate`) or
chunk by chunk from hidden states and head weights (`fused_loss`), with gradients computed inside
the chunk loop and never a [N, V] array.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")

# Parts of a supervised sequence for the blended chain-of-thought loss (0: not supervised).
IGNORE, PROMPT, TRACE, ANSWER = 0, 1, 2, 3


class LossInputError(ValueError):
    """Loss inputs whose shapes or vocabularies do not fit together."""


def _f32(x) -> Array:
    """fp32 for fp32/bf16/fp16 inputs; float64 stays float64 (for float64 gradient checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# ------------------------------------------------------------------------------ validation


def _check_vocab(student_vocab: int, teacher_vocab: int) -> None:
    if student_vocab != teacher_vocab:
        raise LossInputError(
            f"vocab sizes differ: teacher {teacher_vocab}, student {student_vocab} — teacher and "
            "student must share a tokenizer")


def _check_token_array(name: str, array, expected: tuple[int, ...], what: str) -> None:
    if tuple(jnp.shape(array)) != tuple(expected):
        raise LossInputError(
            f"{name} has shape {tuple(jnp.shape(array))}, expected {tuple(expected)} ({what})")


def _check_tokens(tokens: dict[str, Any], shape: tuple[int, ...], what: str, vocab: int) -> None:
    for name, array in tokens.items():
        if array is not None:
            _check_token_array(name, array, shape, what)
    labels = tokens.get("labels")
    if labels is not None and not isinstance(labels, jax.core.Tracer):  # checkable outside jit only
        top = int(np.max(np.asarray(labels))) if np.size(labels) else -1
        if top >= vocab:
            raise LossInputError(f"label id {top} is outside the vocabulary [0, {vocab}) "
                                 "(negative ids mark ignored positions)")


# ------------------------------------------------------------------------ log-probabilities


def _masked_log_softmax(x: Array, mask: Array) -> Array:
    """log softmax of x over the entries where mask is True; 0 (not -inf) elsewhere, so later
    arithmetic on the masked entries stays finite in value and gradient."""
    x = jnp.where(mask, x, -jnp.inf)
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=-1, keepdims=True))
    return jnp.where(mask, shifted - lse, 0.0)


def _teacher_rows(teacher_logits) -> tuple[Array, Array]:
    """(teacher logits with rows that have no finite entry replaced by zeros — uniform —, support)."""
    t = _f32(teacher_logits)
    support = t > -jnp.inf
    has_support = jnp.any(support, axis=-1, keepdims=True)
    return jnp.where(has_support, t, 0.0), support | ~has_support


def _kl(log_p: Array, log_q: Array, where: Array) -> Array:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the entries in `where` (p is 0 elsewhere)."""
    return jnp.sum(jnp.where(where, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)


def _log_mix(a: float, log_p: Array, log_q: Array) -> Array:
    """log(a p + (1 - a) q), for 0 < a < 1 (either side may be -inf)."""
    return jnp.logaddexp(math.log(a) + log_p, math.log1p(-a) + log_q)


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
    if divergence not in DIVERGENCES:
        raise LossInputError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if not temperature > 0:
        raise LossInputError(f"temperature={temperature}: must be > 0")
    if divergence == "jsd" and not 0.0 <= beta <= 1.0:
        raise LossInputError(f"beta={beta}: JSD needs 0 <= beta <= 1")
    if divergence.startswith("skew") and not 0.0 <= alpha < 1.0:
        raise LossInputError(f"alpha={alpha}: skew KL needs 0 <= alpha < 1")
    _check_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
    if divergence == "jsd" and beta in (0.0, 1.0):
        divergence = "forward_kl" if beta == 0.0 else "reverse_kl"
    if divergence.startswith("skew") and alpha == 0.0:
        divergence = divergence.removeprefix("skew_")
    s = _f32(student_logits) / temperature
    t, support = _teacher_rows(teacher_logits)
    log_t = _masked_log_softmax(t / temperature, support)  # 0 (not -inf) outside the support
    log_t_or_neg_inf = jnp.where(support, log_t, -jnp.inf)  # for mixtures
    everywhere = jnp.ones_like(support)
    if divergence == "reverse_kl":
        return _kl(_masked_log_softmax(s, support), log_t, support)
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
    if not 0.0 <= label_smoothing < 1.0:
        raise LossInputError(f"label_smoothing={label_smoothing}: must be in [0, 1)")
    log_p = jax.nn.log_softmax(_f32(logits), axis=-1)
    vocab = jax.lax.broadcasted_iota(jnp.int32, log_p.shape, log_p.ndim - 1)
    # A compare-and-sum instead of a gather: elementwise over V, so it stays vocab-parallel.
    nll = -jnp.sum(jnp.where(vocab == labels[..., None], log_p, 0.0), axis=-1)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
    return jnp.where(labels >= 0, nll, 0.0)


# ---------------------------------------------------------------------- sparse teacher targets


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
    log_t = jax.nn.log_softmax(_teacher_rows(teacher_logits)[0] / temperature, axis=-1)
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
    z = _teacher_rows(teacher_logits)[0]
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
    if not temperature > 0:
        raise LossInputError(f"temperature={temperature}: must be > 0")
    _check_token_array("targets.weights", targets.weights, targets.ids.shape, "same as targets.ids")
    _check_token_array("targets.self_term", targets.self_term, targets.ids.shape[:-1],
                       "targets.ids without its last axis")
    log_s = jax.nn.log_softmax(_f32(student_logits) / temperature, axis=-1)
    picked = jnp.take_along_axis(log_s, targets.ids, axis=-1)
    return targets.self_term - jnp.sum(targets.weights * picked, axis=-1)


# ------------------------------------------------------------------------- token losses


class Coefficients(NamedTuple):
    """loss: {term: coef [N]}; metrics: {name: (term, coef [N])}; counts: {name: scalar}."""

    loss: dict[str, Array]
    metrics: dict[str, tuple[str, Array]]
    counts: dict[str, Array]


class TokenLoss(NamedTuple):
    """L = sum_k sum_n coef_k[n] * term_k[n].

    terms(student_logits [..., V], teacher, tokens) -> {k: [...]}, teacher being logits [..., V],
      `SparseTargets` or None; tokens a dict of per-position arrays (labels, weights, parts).
    coefficients(tokens, step) -> Coefficients; must not depend on logits.
    """

    terms: Callable[..., dict[str, Array]]
    coefficients: Callable[[dict[str, Array], Any], Coefficients]
    uses_teacher: bool


def _mean_coef(weights: Array) -> tuple[Array, Array]:
    """(w_n / sum w, sum w), with coefficients 0 (not NaN) when everything is masked."""
    weights = _f32(weights)
    total = jnp.sum(weights)
    return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0), total


def _weights(tokens: dict[str, Array], like: Array) -> Array:
    w = tokens.get("weights")
    return jnp.ones(like.shape, jnp.float32) if w is None else w


def divergence_loss(divergence: str = "forward_kl", *, temperature: float = 1.0, beta: float = 0.5,
                    alpha: float = 0.1, scale_by_t2: bool = False) -> TokenLoss:
    """Weighted mean divergence over positions; `scale_by_t2` multiplies by tau^2 (Hinton), which
    keeps gradient magnitudes comparable across temperatures. A `SparseTargets` teacher gives the
    sparse estimate of forward KL (other divergences need dense teacher logits)."""
    scale = temperature ** 2 if scale_by_t2 else 1.0

    def terms(student_logits, teacher, tokens):
        if isinstance(teacher, SparseTargets):
            if divergence != "forward_kl":
                raise LossInputError(f"sparse teacher targets estimate forward_kl only, not {divergence!r}")
            return {"div": sparse_kl_per_token(student_logits, teacher, temperature=temperature)}
        return {"div": divergence_per_token(student_logits, teacher, divergence=divergence,
                                            temperature=temperature, beta=beta, alpha=alpha)}

    def coefficients(tokens, step):
        coef, total = _mean_coef(_weights(tokens, tokens["like"]))
        return Coefficients({"div": scale * coef}, {divergence: ("div", coef)}, {"tokens": total})

    return TokenLoss(terms, coefficients, uses_teacher=True)


def cross_entropy_loss(*, label_smoothing: float = 0.0) -> TokenLoss:
    """Weighted mean cross-entropy on `labels`; labels < 0 are ignored like weight 0."""

    def terms(student_logits, teacher, tokens):
        return {"ce": cross_entropy_per_token(student_logits, tokens["labels"],
                                              label_smoothing=label_smoothing)}

    def coefficients(tokens, step):
        w = _weights(tokens, tokens["labels"]) * (tokens["labels"] >= 0)
        coef, total = _mean_coef(w)
        return Coefficients({"ce": coef}, {"cross_entropy": ("ce", coef)}, {"tokens": total})

    return TokenLoss(terms, coefficients, uses_teacher=False)


KL_SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class BlendedCoT:
    """The blended chain-of-thought loss (our form; the paper's exact formula is not public):

        L(t) = w_answer * CE(answer tokens) + w_trace_ce * CE(trace tokens)
               + w_kl(t) * D(p_T || p_S over trace + answer tokens)

    each term a mean over its own tokens, D any of `DIVERGENCES` at `temperature`, and
    w_kl(t) = w_kl * r(t) with r = 1 (constant), min(t / warmup, 1) (linear) or
    (1 - cos(pi * min(t / warmup, 1))) / 2 (cosine). Label-only supervision is w_trace_ce = w_kl = 0
    (only answer tokens matter), CoT-only is w_kl = 0, blended is all three.
    """

    w_answer: float = 1.0
    w_trace_ce: float = 1.0
    w_kl: float = 1.0
    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    kl_schedule: str = "constant"
    kl_warmup_steps: int = 0
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise LossInputError(f"divergence={self.divergence!r}; valid: {', '.join(DIVERGENCES)}")
        if self.kl_schedule not in KL_SCHEDULES:
            raise LossInputError(f"kl_schedule={self.kl_schedule!r}; valid: {', '.join(KL_SCHEDULES)}")
        if self.kl_schedule != "constant" and self.kl_warmup_steps <= 0:
            raise LossInputError(f"kl_schedule={self.kl_schedule!r} needs kl_warmup_steps > 0, "
                                 f"got {self.kl_warmup_steps}")
        for name in ("w_answer", "w_trace_ce", "w_kl"):
            if getattr(self, name) < 0:
                raise LossInputError(f"{name}={getattr(self, name)}: weights must be >= 0")

    @classmethod
    def label_only(cls, **kw) -> BlendedCoT:
        return cls(w_answer=1.0, w_trace_ce=0.0, w_kl=0.0, **kw)

    @classmethod
    def cot_only(cls, **kw) -> BlendedCoT:
        return cls(w_answer=1.0, w_trace_ce=1.0, w_kl=0.0, **kw)

    def kl_weight(self, step) -> Array:
        """w_kl(t), traced-step friendly (no recompilation as the step changes)."""
        if self.kl_schedule == "constant":
            return jnp.asarray(self.w_kl, jnp.float32)
        ramp = jnp.clip(jnp.asarray(step, jnp.float32) / self.kl_warmup_steps, 0.0, 1.0)
        if self.kl_schedule == "cosine":
            ramp = 0.5 * (1.0 - jnp.cos(jnp.pi * ramp))
        return self.w_kl * ramp

    def token_loss(self) -> TokenLoss:
        kd = divergence_loss(self.divergence, temperature=self.temperature, beta=self.beta,
                             alpha=self.alpha)

        def terms(student_logits, teacher, tokens):
            out = {"ce": cross_entropy_per_token(student_logits, tokens["labels"],
                                                 label_smoothing=self.label_smoothing)}
            if self.w_kl > 0:
                out.update(kd.terms(student_logits, teacher, tokens))
            return out

        def coefficients(tokens, step):
            parts = jnp.where(tokens["labels"] >= 0, tokens["parts"], IGNORE)
            answer, n_answer = _mean_coef(parts == ANSWER)
            trace, n_trace = _mean_coef(parts == TRACE)
            kl, n_kl = _mean_coef((parts == TRACE) | (parts == ANSWER))
            w_kl = self.kl_weight(step)
            loss = {"ce": self.w_answer * answer + self.w_trace_ce * trace}
            metrics = {"ce_answer": ("ce", answer), "ce_trace": ("ce", trace)}
            if self.w_kl > 0:
                loss["div"] = w_kl * kl
                metrics["kl"] = ("div", kl)
            counts = {"answer_tokens": n_answer, "trace_tokens": n_trace,
                      "prompt_tokens": jnp.sum(parts == PROMPT).astype(jnp.float32), "w_kl": w_kl}
            return Coefficients(loss, metrics, counts)

        return TokenLoss(terms, coefficients, uses_teacher=self.w_kl > 0)


def _combine(terms: dict[str, Array], coefs: Coefficients) -> tuple[Array, dict[str, Array]]:
    value = sum((jnp.sum(jnp.where(c != 0, c * terms[k], 0.0)) for k, c in coefs.loss.items()),
                start=jnp.zeros((), jnp.float32))
    metrics = {name: jnp.sum(jnp.where(c != 0, c * jax.lax.stop_gradient(terms[k]), 0.0))
               for name, (k, c) in coefs.metrics.items()}
    return value, metrics


def _token_dict(tokens: dict[str, Array | None], like_shape) -> dict[str, Array]:
    out = {k: v for k, v in tokens.items() if v is not None}
    out["like"] = jnp.zeros(like_shape, jnp.bool_)
    return out


def evaluate(loss: TokenLoss, student_logits, teacher, tokens: dict[str, Array | None], *,
             step=0) -> tuple[Array, dict[str, Array]]:
    """(loss value, metrics) of a TokenLoss on full logits [..., V]."""
    lead = student_logits.shape[:-1]
    if loss.uses_teacher:
        if teacher is None:
            raise LossInputError("this loss needs the teacher (logits or SparseTargets), got None")
        if isinstance(teacher, SparseTargets):
            _check_token_array("targets.ids", teacher.ids, (*lead, teacher.ids.shape[-1]),
                               "student logits' leading shape plus k")
        else:
            _check_vocab(student_logits.shape[-1], teacher.shape[-1])
            _check_token_array("teacher_logits", teacher, student_logits.shape, "student logits' shape")
    _check_tokens(tokens, lead, "student logits without the vocab axis", student_logits.shape[-1])
    tok = _token_dict(tokens, lead)
    coefs = loss.coefficients(tok, step)
    value, metrics = _combine(loss.terms(student_logits, teacher, tok), coefs)
    return value, {**metrics, **coefs.counts}


# ------------------------------------------------------------------------- public functions


def forward_kl(student_logits, teacher_logits, weights=None, *, temperature: float = 1.0,
               scale_by_t2: bool = False) -> Array:
    """mean_w KL(p_T || p_S) (times tau^2 with scale_by_t2)."""
    return evaluate(divergence_loss("forward_kl", temperature=temperature, scale_by_t2=scale_by_t2),
                    student_logits, teacher_logits, {"weights": weights})[0]


def reverse_kl(student_logits, teacher_logits, weights=None, *, temperature: float = 1.0,
               scale_by_t2: bool = False) -> Array:
    """mean_w KL(p_S || p_T)."""
    return evaluate(divergence_loss("reverse_kl", temperature=temperature, scale_by_t2=scale_by_t2),
                    student_logits, teacher_logits, {"weights": weights})[0]


def jsd(student_logits, teacher_logits, weights=None, *, beta: float = 0.5, temperature: float = 1.0,
        scale_by_t2: bool = False) -> Array:
    """mean_w JSD_beta(p_T, p_S); beta = 0 is forward KL, beta = 1 reverse KL."""
    return evaluate(divergence_loss("jsd", temperature=temperature, beta=beta, scale_by_t2=scale_by_t2),
                    student_logits, teacher_logits, {"weights": weights})[0]


def skew_kl(student_logits, teacher_logits, weights=None, *, alpha: float = 0.1, reverse: bool = False,
            temperature: float = 1.0, scale_by_t2: bool = False) -> Array:
    """mean_w KL(p_T || a p_T + (1-a) p_S), or with reverse=True KL(p_S || a p_S + (1-a) p_T)."""
    name = "skew_reverse_kl" if reverse else "skew_forward_kl"
    return evaluate(divergence_loss(name, temperature=temperature, alpha=alpha, scale_by_t2=scale_by_t2),
                    student_logits, teacher_logits, {"weights": weights})[0]


def cross_entropy(logits, labels, weights=None, *, label_smoothing: float = 0.0) -> Array:
    """mean_w of -(1-eps) log p(label) - eps mean_v log p(v); labels < 0 are ignored."""
    return evaluate(cross_entropy_loss(label_smoothing=label_smoothing), logits, None,
                    {"labels": labels, "weights": weights})[0]


def sparse_kl(student_logits, targets: SparseTargets, weights=None, *, temperature: float = 1.0) -> Array:
    """mean_w of the sparse-target estimate of KL(p_T || p_S)."""
    return evaluate(divergence_loss("forward_kl", temperature=temperature), student_logits, targets,
                    {"weights": weights})[0]


def blended_cot_loss(student_logits, teacher, labels, parts, *, step=0,
                     config: BlendedCoT = BlendedCoT()) -> tuple[Array, dict[str, Array]]:
    """The blended chain-of-thought loss (see `BlendedCoT` for the formula).

    labels [...]: the target token at each position; parts [...]: which part of the sequence that
    target belongs to (IGNORE=0, PROMPT=1, TRACE=2, ANSWER=3). teacher: logits [..., V],
    `SparseTargets` (forward KL only), or None when w_kl = 0.
    Returns (loss, metrics): ce_answer, ce_trace, kl (means over their tokens), the token counts of
    each part, and the current w_kl.
    """
    return evaluate(config.token_loss(), student_logits, teacher, {"labels": labels, "parts": parts},
                    step=step)


# ------------------------------------------------------------------------- chunked fused path


def _pad_rows(x, n_pad: int, value=0):
    if n_pad == 0:
        return x
    return jnp.pad(x, [(0, n_pad)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def fused_loss(loss: TokenLoss, student_hidden, student_head, tokens: dict[str, Array | None], *,
               teacher_hidden=None, teacher_head=None, teacher_targets: SparseTargets | None = None,
               step=0, chunk_size: int = 1024, capacity: int | None = None,
               coefficients: Coefficients | None = None) -> tuple[Array, dict[str, Array]]:
    """`evaluate(loss, h_S W_S, h_T W_T (or targets), tokens)` without materialising [N, V].

    coefficients: per-position coefficients (arrays shaped like the tokens) computed elsewhere, e.g.
    from a whole batch of which these tokens are one micro-batch, so that micro-batch losses add up
    exactly to the whole batch's loss.

    student_hidden [..., d] (final-normed hidden states), student_head [d, V]; teacher likewise
    ([..., d_T], [d_T, V]) or `teacher_targets`. Positions are processed `chunk_size` at a time in a
    scan: each chunk computes its logits, the loss terms and — under differentiation — their
    gradients w.r.t. the chunk's hidden states and the head (a custom VJP), so peak temporary memory
    is O(chunk_size * V) plus one [d, V] gradient accumulator, and no logits are recomputed.
    capacity: when given (static), only the positions with a non-zero coefficient are gathered into
    a buffer of that many rows before the head, so unsupervised positions cost no head FLOPs;
    metrics["dropped_tokens"] counts supervised positions beyond the capacity (dropped; size the
    capacity so it stays 0). Only the student hidden states and head get gradients: metrics, the
    per-token inputs (weights, labels, parts) and the teacher are constants. Call it under jit (as a
    train step does): each call outside jit traces the chunk loop anew.
    """
    lead = student_hidden.shape[:-1]
    d, vocab = student_head.shape
    _check_token_array("student_head", student_head, (student_hidden.shape[-1], vocab),
                       "[student hidden size, vocab]")
    _check_tokens(tokens, lead, "student hidden states without the hidden axis", vocab)
    if loss.uses_teacher:
        if teacher_targets is None:
            if teacher_hidden is None or teacher_head is None:
                raise LossInputError("this loss needs teacher_hidden and teacher_head, or teacher_targets")
            _check_vocab(vocab, teacher_head.shape[-1])
            _check_token_array("teacher_hidden", teacher_hidden, (*lead, teacher_head.shape[0]),
                               "student positions x teacher hidden size")
        else:
            _check_token_array("teacher_targets.ids", teacher_targets.ids,
                               (*lead, teacher_targets.ids.shape[-1]), "student positions x k")
    if chunk_size <= 0:
        raise LossInputError(f"chunk_size={chunk_size}: must be positive")

    n = math.prod(lead)
    flat = lambda x: None if x is None else x.reshape(n, *x.shape[len(lead):])
    h_s = flat(student_hidden)
    tok = {k: flat(v) for k, v in tokens.items() if v is not None}
    tok["like"] = jnp.zeros((n,), jnp.bool_)
    if coefficients is None:
        coefs = loss.coefficients(tok, step)
    else:
        coefs = Coefficients({k: flat(v) for k, v in coefficients.loss.items()},
                             {m: (k, flat(v)) for m, (k, v) in coefficients.metrics.items()}, coefficients.counts)
    teacher_in: dict[str, Any] = {}
    if loss.uses_teacher:
        if teacher_targets is not None:
            teacher_in["targets"] = jax.tree.map(flat, teacher_targets)
        else:
            teacher_in["hidden"] = jax.lax.stop_gradient(flat(teacher_hidden))
    per_row = {"tok": tok, "coef": {"loss": coefs.loss, "metrics": {m: c for m, (_, c) in coefs.metrics.items()}},
               "teacher": teacher_in}
    counts = dict(coefs.counts)

    if capacity is not None:
        supervised = jnp.zeros((n,), bool)
        for c in jax.tree.leaves(per_row["coef"]):
            supervised |= c != 0
        total = jnp.sum(supervised)
        idx = jnp.nonzero(supervised, size=capacity, fill_value=0)[0]
        valid = jnp.arange(capacity) < total
        per_row = jax.tree.map(lambda x: x[idx], per_row)
        per_row["coef"] = jax.tree.map(lambda c: jnp.where(valid, c, 0.0), per_row["coef"])
        h_s = h_s[idx]
        n = capacity
        counts["dropped_tokens"] = jnp.maximum(total - capacity, 0).astype(jnp.float32)

    n_chunks = -(-n // chunk_size)
    n_pad = n_chunks * chunk_size - n
    chunked = lambda x: _pad_rows(x, n_pad).reshape(n_chunks, chunk_size, *x.shape[1:])
    h_chunks = chunked(h_s)
    row_chunks = jax.tree.map(chunked, per_row)  # padded rows have coefficient 0
    metric_terms = {m: k for m, (k, _) in coefs.metrics.items()}
    w_teacher = None if teacher_head is None or not loss.uses_teacher else jax.lax.stop_gradient(teacher_head)

    def chunk_loss(h, w, rows, w_teacher):
        logits = jnp.einsum("nd,dv->nv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)
        teacher = None
        if "targets" in rows["teacher"]:
            teacher = rows["teacher"]["targets"]
        elif "hidden" in rows["teacher"]:
            ht = rows["teacher"]["hidden"]
            teacher = jnp.einsum("nd,dv->nv", ht, w_teacher.astype(ht.dtype),
                                 preferred_element_type=jnp.float32)
        coefs = Coefficients(rows["coef"]["loss"],
                             {m: (metric_terms[m], c) for m, c in rows["coef"]["metrics"].items()}, {})
        return _combine(loss.terms(logits, teacher, rows["tok"]), coefs)

    zero_metrics = {m: jnp.zeros((), jnp.float32) for m in metric_terms}

    def scan_value(h_chunks, w, rows, w_teacher):
        def body(carry, xs):
            value, metrics = chunk_loss(xs[0], w, xs[1], w_teacher)
            return (carry[0] + value, jax.tree.map(jnp.add, carry[1], metrics)), None

        (value, metrics), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zero_metrics),
                                           (h_chunks, rows))
        return value, metrics

    def scan_value_and_grads(h_chunks, w, rows, w_teacher):
        def body(carry, xs):
            value_sum, metric_sum, dw_sum = carry
            (value, metrics), vjp = jax.vjp(lambda h, w_: chunk_loss(h, w_, xs[1], w_teacher), xs[0], w)
            dh, dw = vjp((jnp.ones((), jnp.float32), jax.tree.map(jnp.zeros_like, metrics)))
            carry = (value_sum + value, jax.tree.map(jnp.add, metric_sum, metrics),
                     dw_sum + dw.astype(jnp.float32))
            return carry, dh

        init = (jnp.zeros((), jnp.float32), zero_metrics, jnp.zeros(w.shape, jnp.float32))
        (value, metrics, dw), dh = jax.lax.scan(body, init, (h_chunks, rows))
        return value, metrics, dh, dw.astype(w.dtype)

    @jax.custom_vjp
    def core(h_chunks, w, rows, w_teacher):
        return scan_value(h_chunks, w, rows, w_teacher)

    def core_fwd(h_chunks, w, rows, w_teacher):
        value, metrics, dh, dw = scan_value_and_grads(h_chunks, w, rows, w_teacher)
        return (value, metrics), (dh, dw)

    def core_bwd(residuals, cotangent):
        dh, dw = residuals
        g = cotangent[0]
        return (g.astype(dh.dtype) * dh, g.astype(dw.dtype) * dw, None, None)

    core.defvjp(core_fwd, core_bwd)
    value, metrics = core(h_chunks, student_head, row_chunks, w_teacher)
    return value, {**metrics, **counts}


def fused_reference(loss: TokenLoss, student_hidden, student_head, tokens, *, teacher_hidden=None,
                    teacher_head=None, teacher_targets=None, step=0) -> tuple[Array, dict[str, Array]]:
    """The unfused computation `fused_loss` must equal: full logits [..., V], then `evaluate`."""
    logits = jnp.einsum("...d,dv->...v", student_hidden, student_head.astype(student_hidden.dtype),
                        preferred_element_type=jnp.float32)
    teacher = teacher_targets
    if loss.uses_teacher and teacher_targets is None:
        teacher = jnp.einsum("...d,dv->...v", teacher_hidden,
                             jax.lax.stop_gradient(teacher_head).astype(teacher_hidden.dtype),
                             preferred_element_type=jnp.float32)
        teacher = jax.lax.stop_gradient(teacher)
    return evaluate(loss, logits, teacher, tokens, step=step)
