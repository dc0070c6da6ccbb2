"""The token-loss algebra: a loss is per-token terms times per-token coefficients,

    L = sum_k sum_n coef_k[n] * term_k[n],        metric_m = sum_n coef_m[n] * term_{k(m)}[n],

where the terms need logits (a divergence, a cross-entropy; see `divergences`, `sparse`) and the
coefficients need only labels, weights, parts and the step. Because the coefficients never depend
on logits, one loss is evaluated on full logits (`evaluate`) or chunk by chunk from hidden states
(`fused.fused_loss`), and whole-batch coefficients can be split into micro-batches that add up
exactly to the whole batch.

Means are over supervised tokens: coef[n] = w_n / sum_n w_n, so a position with weight 0 adds
exactly zero to value and gradient, and an all-masked batch gives 0, not NaN.

Loss specs (frozen, hashable dataclasses: static parts of a jitted step), each with `token_loss()`:

    DivergenceLoss    s * mean_w D(p_T || p_S), D any of `DIVERGENCES`, s = tau^2 or 1
    CrossEntropyLoss  mean_w CE(labels) with label smoothing
    BlendedCoT        answer CE + trace CE + ramped divergence over trace and answer tokens
    LossConfig        a run's loss section: BlendedCoT, or its divergence alone, plus the chunk size
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill.losses.divergences import (Array, LossInputError, check_divergence, check_label_smoothing,
                                           check_token_array, check_tokens, check_vocab,
                                           cross_entropy_per_token, divergence_per_token, to_f32)
from jaxdistill.losses.analytic import cross_entropy_and_grad, forward_kl_and_grad, scaled_forward_kl_and_grad
from jaxdistill.losses.sparse import SparseTargets, sparse_kl_per_token
from jaxdistill.parts import ANSWER, IGNORE, PROMPT, TRACE

KL_SCHEDULES = ("constant", "linear", "cosine")
LOSS_KINDS = ("blended", "divergence")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["loss", "metrics"],
                   meta_fields=["metric_terms"])
@dataclasses.dataclass(frozen=True)
class Coefficients:
    """Per-position coefficients of a `TokenLoss` (arrays shaped like the tokens, e.g. [B, T]):

        loss          {term k: coef_k}      L = sum_k sum_n coef_k[n] * term_k[n]
        metrics       {metric m: coef_m}    metric_m = sum_n coef_m[n] * term_{k(m)}[n]
        metric_terms  ((m, k(m)), ...)      static: the term each metric reads

    A pytree whose leaves are the arrays only, so `jax.tree.map` (e.g. splitting whole-batch
    coefficients into micro-batches) keeps the term names static.
    """

    loss: dict[str, Array]
    metrics: dict[str, Array]
    metric_terms: tuple[tuple[str, str], ...]


class TokenLoss(NamedTuple):
    """L = sum_k sum_n coef_k[n] * term_k[n].

    terms(student_logits [..., V], teacher, tokens) -> {k: [...]}, teacher being logits [..., V],
      `SparseTargets` or None; tokens a dict of per-position arrays (labels, weights, parts), always
      with `weights` (`with_weights`).
    coefficients(tokens, step) -> (Coefficients, counts {name: scalar}); must not depend on logits.
    terms_and_grads(student_logits, teacher, tokens) -> (terms, {k: dterm_k/dlogits}) written by hand
      (`analytic`), or None where that teacher/divergence has none (autodiff of `terms` is used then).
    scaled: (s, fn) where every term reads the logits only as s * logits and the teacher's as
      s * teacher (forward KL at temperature 1/s): fn(s * logits, s * teacher, tokens) -> (terms,
      {k: dterm_k/d(s * logits)}) for finite dense teacher logits. The fused head then folds s into
      the [C, d] hidden states instead of scaling [C, V] logits (None: no such form).
    """

    terms: Callable[..., dict[str, Array]]
    coefficients: Callable[[dict[str, Array], Any], tuple[Coefficients, dict[str, Array]]]
    uses_teacher: bool
    terms_and_grads: Callable[..., tuple[dict[str, Array], dict[str, Array]] | None] | None = None
    scaled: tuple[float, Callable[..., tuple[dict[str, Array], dict[str, Array]]]] | None = None


def with_weights(tokens: dict[str, Array | None], shape: tuple[int, ...]) -> dict[str, Array]:
    """The per-position arrays of `tokens` (None entries dropped), with weights = 1 [shape] when absent."""
    out = {k: v for k, v in tokens.items() if v is not None}
    out.setdefault("weights", jnp.ones(shape, jnp.float32))
    return out


def _mean_coef(weights: Array) -> tuple[Array, Array]:
    """(w_n / sum w, sum w), with coefficients 0 (not NaN) when everything is masked."""
    weights = to_f32(weights)
    total = jnp.sum(weights)
    return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0), total


def combine_terms(terms: dict[str, Array], coefs: Coefficients) -> tuple[Array, dict[str, Array]]:
    """(sum_k sum_n coef_k[n] term_k[n], {m: sum_n coef_m[n] term_k(m)[n]}); metrics carry no
    gradient, and a zero coefficient hides any term value (even inf or NaN)."""
    value = sum((jnp.sum(jnp.where(c != 0, c * terms[k], 0.0)) for k, c in coefs.loss.items()),
                start=jnp.zeros((), jnp.float32))
    term_of = dict(coefs.metric_terms)
    metrics = {m: jnp.sum(jnp.where(c != 0, c * jax.lax.stop_gradient(terms[term_of[m]]), 0.0))
               for m, c in coefs.metrics.items()}
    return value, metrics


# ---------------------------------------------------------------------------- loss specs


@dataclasses.dataclass(frozen=True)
class DivergenceLoss:
    """L = s * sum_n w_n D(p_T || p_S)[n] / sum_n w_n, D one of `DIVERGENCES` at temperature tau,
    s = tau^2 with `scale_by_t2` (Hinton: keeps gradient magnitudes comparable across temperatures),
    else 1. A `SparseTargets` teacher gives the sparse estimate of forward KL (other divergences
    need dense teacher logits). Metric: the divergence (unscaled mean); count: tokens = sum_n w_n.
    """

    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    scale_by_t2: bool = False

    def __post_init__(self):
        check_divergence(self.divergence, self.temperature, self.beta, self.alpha)

    @property
    def uses_teacher(self) -> bool:
        return True

    def terms(self, student_logits, teacher, tokens) -> dict[str, Array]:
        if isinstance(teacher, SparseTargets):
            if self.divergence != "forward_kl":
                raise LossInputError(
                    f"sparse teacher targets estimate forward_kl only, not {self.divergence!r}")
            return {"div": sparse_kl_per_token(student_logits, teacher, temperature=self.temperature)}
        return {"div": divergence_per_token(student_logits, teacher, divergence=self.divergence,
                                            temperature=self.temperature, beta=self.beta, alpha=self.alpha)}

    def terms_and_grads(self, student_logits, teacher, tokens):
        """Forward KL against dense teacher logits, by hand (`analytic`); None otherwise."""
        if self.divergence != "forward_kl" or isinstance(teacher, SparseTargets):
            return None
        term, grad = forward_kl_and_grad(student_logits, teacher, self.temperature)
        return {"div": term}, {"div": grad}

    def scaled_terms_and_grads(self, scaled_logits, scaled_teacher, tokens):
        """Forward KL from logits and finite teacher logits already divided by the temperature."""
        term, grad = scaled_forward_kl_and_grad(scaled_logits, scaled_teacher)
        return {"div": term}, {"div": grad}

    def coefficients(self, tokens, step) -> tuple[Coefficients, dict[str, Array]]:
        coef, total = _mean_coef(tokens["weights"])
        scale = self.temperature ** 2 if self.scale_by_t2 else 1.0
        return (Coefficients({"div": scale * coef}, {self.divergence: coef}, ((self.divergence, "div"),)),
                {"tokens": total})

    def token_loss(self) -> TokenLoss:
        scaled = (1.0 / self.temperature, self.scaled_terms_and_grads) if self.divergence == "forward_kl" else None
        return TokenLoss(self.terms, self.coefficients, self.uses_teacher, self.terms_and_grads, scaled)


@dataclasses.dataclass(frozen=True)
class CrossEntropyLoss:
    """L = sum_n w_n CE_n / sum_n w_n over positions with labels >= 0 (labels < 0 are ignored like
    weight 0), CE_n = -(1 - eps) log p(label_n) - eps mean_v log p(v). Metric: cross_entropy;
    count: tokens."""

    label_smoothing: float = 0.0

    def __post_init__(self):
        check_label_smoothing(self.label_smoothing)

    @property
    def uses_teacher(self) -> bool:
        return False

    def terms(self, student_logits, teacher, tokens) -> dict[str, Array]:
        return {"ce": cross_entropy_per_token(student_logits, tokens["labels"],
                                              label_smoothing=self.label_smoothing)}

    def terms_and_grads(self, student_logits, teacher, tokens):
        term, grad = cross_entropy_and_grad(student_logits, tokens["labels"], self.label_smoothing)
        return {"ce": term}, {"ce": grad}

    def coefficients(self, tokens, step) -> tuple[Coefficients, dict[str, Array]]:
        coef, total = _mean_coef(tokens["weights"] * (tokens["labels"] >= 0))
        coefs = Coefficients({"ce": coef}, {"cross_entropy": coef}, (("cross_entropy", "ce"),))
        return coefs, {"tokens": total}

    def token_loss(self) -> TokenLoss:
        return TokenLoss(self.terms, self.coefficients, self.uses_teacher, self.terms_and_grads)


def divergence_loss(divergence: str = "forward_kl", *, temperature: float = 1.0, beta: float = 0.5,
                    alpha: float = 0.1, scale_by_t2: bool = False) -> TokenLoss:
    """The `DivergenceLoss` token loss: s * mean_w D(p_T || p_S)."""
    return DivergenceLoss(divergence, temperature, beta, alpha, scale_by_t2).token_loss()


def cross_entropy_loss(*, label_smoothing: float = 0.0) -> TokenLoss:
    """The `CrossEntropyLoss` token loss: mean_w CE on `labels`, labels < 0 ignored."""
    return CrossEntropyLoss(label_smoothing).token_loss()


@dataclasses.dataclass(frozen=True)
class BlendedCoT:
    """The blended chain-of-thought loss (our form; the paper's exact formula is not public):

        L(t) = w_answer * CE(answer tokens) + w_trace_ce * CE(trace tokens)
               + s * w_kl(t) * D(p_T || p_S over trace + answer tokens)

    each term a mean over its own tokens (parts from `tokens["parts"]`, see `jaxdistill.parts`),
    D any of `DIVERGENCES` at `temperature`, s = tau^2 with `scale_by_t2` else 1, and
    w_kl(t) = w_kl * r(t) with r = 1 (constant), min(t / warmup, 1) (linear) or
    (1 - cos(pi * min(t / warmup, 1))) / 2 (cosine). Label-only supervision is w_trace_ce = w_kl = 0
    (only answer tokens matter), CoT-only is w_kl = 0, blended is all three.
    Metrics: ce_answer, ce_trace, kl (means over their tokens); counts: answer_tokens,
    trace_tokens, prompt_tokens, w_kl (= w_kl(t)).
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
    scale_by_t2: bool = False

    def __post_init__(self):
        check_divergence(self.divergence, self.temperature, self.beta, self.alpha)
        check_label_smoothing(self.label_smoothing)
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

    @property
    def uses_teacher(self) -> bool:
        return self.token_loss().uses_teacher

    def kl_weight(self, step) -> Array:
        """w_kl(t), traced-step friendly (no recompilation as the step changes)."""
        if self.kl_schedule == "constant":
            return jnp.asarray(self.w_kl, jnp.float32)
        ramp = jnp.clip(jnp.asarray(step, jnp.float32) / self.kl_warmup_steps, 0.0, 1.0)
        if self.kl_schedule == "cosine":
            ramp = 0.5 * (1.0 - jnp.cos(jnp.pi * ramp))
        return self.w_kl * ramp

    def divergence_part(self) -> DivergenceLoss:
        """The divergence on its own: `DivergenceLoss` with this loss's divergence settings."""
        return DivergenceLoss(self.divergence, self.temperature, self.beta, self.alpha, self.scale_by_t2)

    def terms(self, student_logits, teacher, tokens) -> dict[str, Array]:
        out = {"ce": cross_entropy_per_token(student_logits, tokens["labels"],
                                             label_smoothing=self.label_smoothing)}
        if self.w_kl > 0:
            out.update(self.divergence_part().terms(student_logits, teacher, tokens))
        return out

    def terms_and_grads(self, student_logits, teacher, tokens):
        """CE and (w_kl > 0) forward KL against dense teacher logits by hand; None otherwise."""
        terms, grads = CrossEntropyLoss(self.label_smoothing).terms_and_grads(student_logits, teacher, tokens)
        if self.w_kl > 0:
            div = self.divergence_part().terms_and_grads(student_logits, teacher, tokens)
            if div is None:
                return None
            terms, grads = {**terms, **div[0]}, {**grads, **div[1]}
        return terms, grads

    def coefficients(self, tokens, step) -> tuple[Coefficients, dict[str, Array]]:
        parts = jnp.where(tokens["labels"] >= 0, tokens["parts"], IGNORE)
        answer, n_answer = _mean_coef(parts == ANSWER)
        trace, n_trace = _mean_coef(parts == TRACE)
        w_kl = self.kl_weight(step)
        loss = {"ce": self.w_answer * answer + self.w_trace_ce * trace}
        metrics = {"ce_answer": answer, "ce_trace": trace}
        metric_terms = (("ce_answer", "ce"), ("ce_trace", "ce"))
        if self.w_kl > 0:
            kl, _ = _mean_coef((parts == TRACE) | (parts == ANSWER))
            scale = self.temperature ** 2 if self.scale_by_t2 else 1.0
            loss["div"] = scale * w_kl * kl
            metrics["kl"] = kl
            metric_terms += (("kl", "div"),)
        counts = {"answer_tokens": n_answer, "trace_tokens": n_trace,
                  "prompt_tokens": jnp.sum(parts == PROMPT).astype(jnp.float32), "w_kl": w_kl}
        return Coefficients(loss, metrics, metric_terms), counts

    def token_loss(self) -> TokenLoss:
        return TokenLoss(self.terms, self.coefficients, uses_teacher=self.w_kl > 0,
                         terms_and_grads=self.terms_and_grads)


@dataclasses.dataclass(frozen=True)
class LossConfig(BlendedCoT):
    """A run's loss section: the `BlendedCoT` settings plus

        kind        "blended": the BlendedCoT loss; "divergence": its divergence alone over all
                    weighted positions (`divergence_part()`; the w_* and kl_* fields are unused)
        chunk_size  positions per chunk of the fused head + loss (`fused_loss`), >= 1
    """

    kind: str = "blended"
    chunk_size: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if self.kind not in LOSS_KINDS:
            raise LossInputError(f"kind={self.kind!r}; valid: {', '.join(LOSS_KINDS)}")
        if self.chunk_size < 1:
            raise LossInputError(f"chunk_size={self.chunk_size}: must be >= 1 (positions per chunk of the "
                                 "fused head + loss)")

    def token_loss(self) -> TokenLoss:
        if self.kind == "divergence":
            return self.divergence_part().token_loss()
        return super().token_loss()


# ---------------------------------------------------------------------------- evaluation


def _check_teacher(teacher, student_logits) -> None:
    """A teacher for a loss that uses one: logits shaped like the student's, or `SparseTargets`
    whose ids are [..., k] over the student's positions."""
    lead = student_logits.shape[:-1]
    if teacher is None:
        raise LossInputError("this loss needs the teacher (logits or SparseTargets), got None")
    if isinstance(teacher, SparseTargets):
        check_token_array("targets.ids", teacher.ids, (*lead, teacher.ids.shape[-1]),
                          "student logits' leading shape plus k")
    else:
        check_vocab(student_logits.shape[-1], teacher.shape[-1])
        check_token_array("teacher_logits", teacher, student_logits.shape, "student logits' shape")


def evaluate(loss: TokenLoss, student_logits, teacher, tokens: dict[str, Array | None], *,
             step=0) -> tuple[Array, dict[str, Array]]:
    """(L, metrics and counts) of a TokenLoss on full logits [..., V]:
    L = sum_k sum_n coef_k[n] * term_k[n] with the coefficients of these tokens at `step`."""
    lead = student_logits.shape[:-1]
    if loss.uses_teacher:
        _check_teacher(teacher, student_logits)
    check_tokens(tokens, lead, "student logits without the vocab axis", student_logits.shape[-1])
    tok = with_weights(tokens, lead)
    coefs, counts = loss.coefficients(tok, step)
    value, metrics = combine_terms(loss.terms(student_logits, teacher, tok), coefs)
    return value, {**metrics, **counts}
