"""The losses as plain functions of full logits [..., V]: each is `evaluate` of one token loss,
a weighted mean over positions (weights default 1; see `token_loss`)."""

from __future__ import annotations

from jaxdistill.losses.divergences import Array
from jaxdistill.losses.sparse import SparseTargets
from jaxdistill.losses.token_loss import BlendedCoT, cross_entropy_loss, divergence_loss, evaluate


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
    target belongs to (`jaxdistill.parts`: IGNORE=0, PROMPT=1, TRACE=2, ANSWER=3). teacher: logits
    [..., V], `SparseTargets` (forward KL only), or None when w_kl = 0.
    Returns (loss, metrics): ce_answer, ce_trace, kl (means over their tokens), the token counts of
    each part, and the current w_kl.
    """
    return evaluate(config.token_loss(), student_logits, teacher, {"labels": labels, "parts": parts},
                    step=step)
