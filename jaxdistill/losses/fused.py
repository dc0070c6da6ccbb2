"""The chunked fused LM head + loss: `evaluate(loss, h_S W_S, h_T W_T (or targets), tokens)`
without ever materialising an [N, V] array.

The N positions are flattened and cut into chunks of C rows (the last padded with rows whose
coefficients are 0), and

    L = sum_c sum_k sum_n coef_k[c, n] * term_k(h_c W_S, teacher_c)[n],   h_c [C, d], W_S [d, V]

with teacher_c = h_T,c W_T or the chunk's sparse targets. A custom VJP computes each chunk's
gradients inside the forward scan — dh_c [C, d] kept per chunk, dW_S [d, V] summed in fp32 — so the
backward pass only scales them by the incoming cotangent: peak temporary memory is O(C * V) plus
one [d, V] accumulator, and no logits are recomputed. Only the student hidden states and head get
gradients; metrics, the per-token inputs and the teacher are constants.

    _chunk_loss            one chunk: logits, terms, (value, metrics)
    _scan_value            value and metrics summed over chunks (the primal)
    _scan_value_and_grads  the same, plus dh per chunk and dW summed (the VJP's forward)
    _chunked_head_loss     the custom-VJP core
    _gather_supervised     the capacity gather: only rows with a non-zero coefficient reach the head
    fused_loss             the driver; `fused_reference` is the unfused computation it must equal
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxdistill.losses.analytic import combine_grads
from jaxdistill.losses.divergences import Array, LossInputError, check_token_array, check_tokens, check_vocab
from jaxdistill.losses.sparse import SparseTargets
from jaxdistill.losses.token_loss import Coefficients, TokenLoss, combine_terms, evaluate, with_weights


def _chunk_loss(loss: TokenLoss, h, w, rows: dict[str, Any], w_teacher) -> tuple[Array, dict[str, Array]]:
    """(sum_k sum_n coef_k[n] term_k[n], metrics) of one chunk; logits = h [C, d] @ w [d, V] in fp32."""
    logits = jnp.einsum("nd,dv->nv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)
    teacher = rows["teacher"].get("targets")
    if "hidden" in rows["teacher"]:
        h_t = rows["teacher"]["hidden"]
        teacher = jnp.einsum("nd,dv->nv", h_t, w_teacher.astype(h_t.dtype),
                             preferred_element_type=jnp.float32)
    return combine_terms(loss.terms(logits, teacher, rows["tok"]), rows["coef"])


def _chunk_value_and_grads(loss: TokenLoss, h, w, rows: dict[str, Any], w_teacher):
    """(value, metrics, dh, dw) of one chunk from the loss's hand-written logit gradients
    (`TokenLoss.terms_and_grads`, see `analytic`), or None where it has none (autodiff then).

    A loss that reads only s * logits (`TokenLoss.scaled`: forward KL at temperature 1/s) against a
    live teacher gets s folded into the [C, d] hidden states (`_folded_scale`), so no [C, V] pass
    scales logits and the teacher's logits (a matmul of finite values) need no -inf handling. With
    u = s h: z_s = u W, dW = u^T dz_s, dh = s dz_s W^T (s = 1: the plain gradients)."""
    scale = _folded_scale(loss, h, rows)
    terms_and_grads = loss.terms_and_grads if scale is None else loss.scaled[1]
    if terms_and_grads is None:
        return None
    scale = 1.0 if scale is None else scale
    fold = (lambda x: x) if scale == 1.0 else (lambda x: (x * scale).astype(x.dtype))
    u = fold(h)
    logits = jnp.einsum("nd,dv->nv", u, w.astype(h.dtype), preferred_element_type=jnp.float32)
    teacher = rows["teacher"].get("targets")
    if "hidden" in rows["teacher"]:
        h_t = fold(rows["teacher"]["hidden"])
        teacher = jnp.einsum("nd,dv->nv", h_t, w_teacher.astype(h_t.dtype), preferred_element_type=jnp.float32)
    out = terms_and_grads(logits, teacher, rows["tok"])
    if out is None:
        return None
    terms, grads = out
    value, metrics = combine_terms(terms, rows["coef"])
    dlogits = combine_grads(grads, rows["coef"].loss).astype(h.dtype)
    dh = scale * jnp.einsum("nv,dv->nd", dlogits, w.astype(h.dtype), preferred_element_type=jnp.float32)
    dw = jnp.einsum("nd,nv->dv", u, dlogits, preferred_element_type=jnp.float32)
    return value, metrics, dh.astype(h.dtype), dw


def _folded_scale(loss: TokenLoss, h, rows: dict[str, Any]) -> float | None:
    """`loss.scaled`'s s when it can be folded into the hidden states: a live teacher, and folding
    rounds like the logits' own fp32 scaling for the student's and the teacher's dtype alike — fp32
    (one extra rounding at 2^-24) or a power-of-two s (exact in any float format); else None."""
    if loss.scaled is None or "hidden" not in rows["teacher"]:
        return None
    scale = loss.scaled[0]
    exact = lambda dtype: jnp.dtype(dtype) == jnp.float32 or math.frexp(scale)[0] == 0.5  # noqa: E731
    return scale if exact(h.dtype) and exact(rows["teacher"]["hidden"].dtype) else None


def _zero_metrics(coefs: Coefficients) -> dict[str, Array]:
    return {m: jnp.zeros((), jnp.float32) for m in coefs.metrics}


def _scan_value(loss: TokenLoss, h_chunks, w, rows, w_teacher) -> tuple[Array, dict[str, Array]]:
    """(sum over chunks of the value, of each metric); h_chunks [n_chunks, C, d], rows likewise."""

    def body(carry, xs):
        value, metrics = _chunk_loss(loss, xs[0], w, xs[1], w_teacher)
        return (carry[0] + value, jax.tree.map(jnp.add, carry[1], metrics)), None

    init = (jnp.zeros((), jnp.float32), _zero_metrics(rows["coef"]))
    return jax.lax.scan(body, init, (h_chunks, rows))[0]


def _scan_value_and_grads(loss: TokenLoss, h_chunks, w, rows, w_teacher, hand_written: bool = True):
    """(value, metrics, dvalue/dh_chunks [n_chunks, C, d], dvalue/dw [d, V]), one chunk's
    gradients at a time (dw accumulated in fp32): by hand where the loss has them
    (`_chunk_value_and_grads`), else by autodiff of `_chunk_loss` (also with hand_written=False)."""

    def body(carry, xs):
        value_sum, metric_sum, dw_sum = carry
        h, chunk_rows = xs
        analytic = _chunk_value_and_grads(loss, h, w, chunk_rows, w_teacher) if hand_written else None
        if analytic is not None:
            value, metrics, dh, dw = analytic
        else:
            (value, metrics), vjp = jax.vjp(
                functools.partial(_chunk_loss, loss, rows=chunk_rows, w_teacher=w_teacher), h, w)
            dh, dw = vjp((jnp.ones((), jnp.float32), jax.tree.map(jnp.zeros_like, metrics)))
        metric_sum = jax.tree.map(jnp.add, metric_sum, metrics)
        return (value_sum + value, metric_sum, dw_sum + dw.astype(jnp.float32)), dh

    init = (jnp.zeros((), jnp.float32), _zero_metrics(rows["coef"]), jnp.zeros(w.shape, jnp.float32))
    (value, metrics, dw), dh = jax.lax.scan(body, init, (h_chunks, rows))
    return value, metrics, dh, dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_head_loss(loss: TokenLoss, h_chunks, w, rows, w_teacher) -> tuple[Array, dict[str, Array]]:
    """`_scan_value`, differentiable in h_chunks and w by the gradients of `_scan_value_and_grads`."""
    return _scan_value(loss, h_chunks, w, rows, w_teacher)


def _chunked_head_loss_fwd(loss, h_chunks, w, rows, w_teacher):
    value, metrics, dh, dw = _scan_value_and_grads(loss, h_chunks, w, rows, w_teacher)
    return (value, metrics), (dh, dw)


def _chunked_head_loss_bwd(loss, residuals, cotangent):
    """d/dh = g * dh, d/dw = g * dw for the value's cotangent g; metrics are constants."""
    dh, dw = residuals
    g = cotangent[0]
    return g.astype(dh.dtype) * dh, g.astype(dw.dtype) * dw, None, None


_chunked_head_loss.defvjp(_chunked_head_loss_fwd, _chunked_head_loss_bwd)


def _gather_supervised(h, rows: dict[str, Any], capacity: int) -> tuple[Array, dict[str, Any], Array]:
    """(h [capacity, d], rows [capacity, ...], dropped): the rows with any non-zero coefficient, in
    order, with coefficient 0 on the fill rows; dropped = max(#supervised - capacity, 0) rows lost."""
    supervised = jnp.zeros((h.shape[0],), bool)
    for c in jax.tree.leaves(rows["coef"]):
        supervised |= c != 0
    total = jnp.sum(supervised)
    idx = jnp.nonzero(supervised, size=capacity, fill_value=0)[0]
    valid = jnp.arange(capacity) < total
    rows = jax.tree.map(lambda x: x[idx], rows)
    rows["coef"] = jax.tree.map(lambda c: jnp.where(valid, c, 0.0), rows["coef"])
    return h[idx], rows, jnp.maximum(total - capacity, 0).astype(jnp.float32)


def _flatten_positions(x, n_lead: int):
    """[*lead, *rest] -> [N, *rest], N = prod(lead) (the first n_lead axes are positions)."""
    return x.reshape(math.prod(x.shape[:n_lead]), *x.shape[n_lead:])


def _chunked(x, chunk_size: int):
    """[N, ...] -> [ceil(N / C), C, ...], the last chunk padded with zero rows."""
    n_chunks = -(-x.shape[0] // chunk_size)
    n_pad = n_chunks * chunk_size - x.shape[0]
    if n_pad:
        x = jnp.pad(x, [(0, n_pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(n_chunks, chunk_size, *x.shape[1:])


def _check_inputs(loss: TokenLoss, student_hidden, student_head, tokens, teacher_hidden, teacher_head,
                  teacher_targets, chunk_size: int, coefficients) -> None:
    lead = student_hidden.shape[:-1]
    vocab = student_head.shape[-1]
    check_token_array("student_head", student_head, (student_hidden.shape[-1], vocab),
                      "[student hidden size, vocab]")
    check_tokens(tokens, lead, "student hidden states without the hidden axis", vocab)
    if loss.uses_teacher:
        if teacher_targets is None:
            if teacher_hidden is None or teacher_head is None:
                raise LossInputError("this loss needs teacher_hidden and teacher_head, or teacher_targets")
            check_vocab(vocab, teacher_head.shape[-1])
            check_token_array("teacher_hidden", teacher_hidden, (*lead, teacher_head.shape[0]),
                              "student positions x teacher hidden size")
        else:
            check_token_array("teacher_targets.ids", teacher_targets.ids,
                              (*lead, teacher_targets.ids.shape[-1]), "student positions x k")
    if coefficients is not None:
        for name, c in {**coefficients.loss, **coefficients.metrics}.items():
            check_token_array(f"coefficients[{name!r}]", c, lead, "student positions")
    if chunk_size < 1:
        raise LossInputError(f"chunk_size={chunk_size}: must be >= 1")


def fused_loss(loss: TokenLoss, student_hidden, student_head, tokens: dict[str, Array | None], *,
               teacher_hidden=None, teacher_head=None, teacher_targets: SparseTargets | None = None,
               step=0, chunk_size: int = 1024, capacity: int | None = None,
               coefficients: Coefficients | None = None) -> tuple[Array, dict[str, Array]]:
    """`evaluate(loss, h_S W_S, h_T W_T (or targets), tokens)` without materialising [N, V].

    student_hidden [..., d] (final-normed hidden states), student_head [d, V]; teacher likewise
    ([..., d_T], [d_T, V]) or `teacher_targets`. Positions are processed `chunk_size` at a time (see
    the module docstring). Returns (value, metrics): the metric sums, then the counts of
    `loss.coefficients(tokens, step)`.
    coefficients: per-position coefficients shaped like the tokens, computed elsewhere — e.g. one
    micro-batch's slice of whole-batch coefficients, so that micro-batch losses add up exactly to the
    whole batch's. The counts are then the caller's business: metrics hold only the metric sums.
    capacity: when given (static), only the positions with a non-zero coefficient are gathered into
    a buffer of that many rows before the head, so unsupervised positions cost no head FLOPs;
    metrics["dropped_tokens"] counts supervised positions beyond the capacity (dropped; size the
    capacity so it stays 0). Call it under jit (as a train step does): each call outside jit traces
    the chunk loop anew.
    """
    _check_inputs(loss, student_hidden, student_head, tokens, teacher_hidden, teacher_head, teacher_targets,
                  chunk_size, coefficients)
    lead = student_hidden.shape[:-1]
    flat = functools.partial(_flatten_positions, n_lead=len(lead))
    tok = jax.tree.map(flat, with_weights(tokens, lead))
    counts = {}
    if coefficients is None:
        coefficients, counts = loss.coefficients(tok, step)
    rows = {"tok": tok, "coef": jax.tree.map(flat, coefficients), "teacher": {}}
    w_teacher = None
    if loss.uses_teacher and teacher_targets is not None:
        rows["teacher"]["targets"] = jax.tree.map(flat, teacher_targets)
    elif loss.uses_teacher:
        rows["teacher"]["hidden"] = jax.lax.stop_gradient(flat(teacher_hidden))
        w_teacher = jax.lax.stop_gradient(teacher_head)
    h = flat(student_hidden)
    if capacity is not None:
        h, rows, dropped = _gather_supervised(h, rows, capacity)
        counts = {**counts, "dropped_tokens": dropped}
    h_chunks, row_chunks = jax.tree.map(functools.partial(_chunked, chunk_size=chunk_size), (h, rows))
    value, metrics = _chunked_head_loss(loss, h_chunks, student_head, row_chunks, w_teacher)
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
