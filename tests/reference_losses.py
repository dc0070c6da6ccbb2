"""Float64 numpy references for the distillation losses, written from the formulas alone."""

import numpy as np
from scipy.special import logsumexp


def _log_softmax(z, mask):
    z = np.where(mask, z, -np.inf)
    return z - logsumexp(z, axis=-1, keepdims=True)


def _kl(log_p, log_q):
    """sum_v p_v (log p_v - log q_v), terms with p_v == 0 being 0."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def _log_mix(a, log_p, log_q):
    """log(a p + (1 - a) q)."""
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(a) + log_p, np.log1p(-a) + log_q)


def divergence(student, teacher, name, temperature=1.0, beta=0.5, alpha=0.1):
    """Teacher -inf entries have p_T = 0; a row with none finite is uniform. The student's full
    distribution everywhere, except reverse KL: over the teacher's support, student renormalised."""
    s = np.asarray(student, np.float64) / temperature
    t = np.asarray(teacher, np.float64) / temperature
    support = t > -np.inf
    empty = ~support.any(-1, keepdims=True)
    t = np.where(empty, 0.0, t)
    support = support | empty
    lt = _log_softmax(t, support)
    ls = _log_softmax(s, np.ones_like(support))
    if name == "forward_kl" or (name == "jsd" and beta == 0) or (name == "skew_forward_kl" and alpha == 0):
        return _kl(lt, ls)
    if name == "reverse_kl" or (name == "jsd" and beta == 1) or (name == "skew_reverse_kl" and alpha == 0):
        return _kl(_log_softmax(s, support), lt)
    if name == "jsd":
        lm = _log_mix(beta, lt, ls)
        return beta * _kl(lt, lm) + (1 - beta) * _kl(ls, lm)
    if name == "skew_forward_kl":
        return _kl(lt, _log_mix(alpha, lt, ls))
    if name == "skew_reverse_kl":
        return _kl(ls, _log_mix(alpha, ls, lt))
    raise ValueError(name)


def weighted_mean(values, weights):
    weights = np.asarray(weights, np.float64)
    return float((values * weights).sum() / weights.sum()) if weights.sum() > 0 else 0.0


def cross_entropy(logits, labels, label_smoothing=0.0):
    z = np.asarray(logits, np.float64)
    logp = z - logsumexp(z, axis=-1, keepdims=True)
    safe = np.where(labels >= 0, labels, 0)
    nll = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return np.where(labels >= 0, nll, 0.0)
