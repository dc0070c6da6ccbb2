"""Distillation losses against float64 numpy references, finite differences and properties."""

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from jaxdistill import losses as L
from tests import reference_losses as ref

DIVERGENCES = {
    "forward_kl": lambda s, t, w, T: L.forward_kl(s, t, w, temperature=T),
    "reverse_kl": lambda s, t, w, T: L.reverse_kl(s, t, w, temperature=T),
    "jsd": lambda s, t, w, T: L.jsd(s, t, w, beta=0.3, temperature=T),
    "skew_forward_kl": lambda s, t, w, T: L.skew_kl(s, t, w, alpha=0.2, temperature=T),
    "skew_reverse_kl": lambda s, t, w, T: L.skew_kl(s, t, w, alpha=0.2, reverse=True, temperature=T),
}
REF_KW = {"jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}
B, T, V = 3, 5, 33


def _logits(kind, seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 3, (B, T, V)).astype(np.float32)
    t = rng.normal(0, 3, (B, T, V)).astype(np.float32)
    if kind == "extreme":
        s = rng.choice([-1e4, 0.0, 1e4], (B, T, V)).astype(np.float32)
        t = rng.choice([-1e4, 0.0, 1e4], (B, T, V)).astype(np.float32)
    elif kind == "teacher_neg_inf":
        t[rng.random((B, T, V)) < 0.4] = -np.inf
        t[0, 0, :] = -np.inf  # a row with no support at all
    elif kind == "bf16":
        s, t = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    return s, t


def _weights(seed):
    w = np.random.default_rng(seed).random((B, T)).astype(np.float32)
    w[w < 0.3] = 0.0
    return w


@pytest.mark.parametrize("name, kind, temperature", list(itertools.product(
    DIVERGENCES, ["normal", "extreme", "teacher_neg_inf", "bf16"], [0.5, 1.0, 2.0, 4.0])))
def test_divergence_matches_float64_reference(name, kind, temperature):
    s, t = _logits(kind, seed=zlib.crc32(f"{name}-{kind}".encode()) % 1000)
    w = _weights(7)
    value = DIVERGENCES[name](jnp.asarray(s), jnp.asarray(t), jnp.asarray(w), temperature)
    s64 = np.asarray(jnp.asarray(s, jnp.float32), np.float64)
    t64 = np.asarray(jnp.asarray(t, jnp.float32), np.float64)
    expected = ref.weighted_mean(ref.divergence(s64, t64, name, temperature, **REF_KW.get(name, {})), w)
    assert value.dtype == jnp.float32
    assert abs(float(value) - expected) <= 1e-5 * max(1.0, abs(expected)), (float(value), expected)
    grads = jax.grad(lambda a, b: DIVERGENCES[name](a, b, jnp.asarray(w), temperature), argnums=(0, 1))(
        jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name", DIVERGENCES)
def test_gradients_match_finite_differences_float64(name):
    from jax.test_util import check_grads

    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        s = jnp.asarray(rng.normal(0, 2, (4, 11)))
        t = jnp.asarray(rng.normal(0, 2, (4, 11)))
        w = jnp.asarray([1.0, 0.0, 0.5, 2.0])
        f = lambda a, b: DIVERGENCES[name](a, b, w, 1.5)
        assert f(s, t).dtype == jnp.float64
        check_grads(f, (s, t), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_cross_entropy_reference_and_gradients():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (B, T, V)).astype(np.float32)
    labels = rng.integers(0, V, (B, T))
    labels[0, :2] = -100
    w = _weights(1)
    for eps in (0.0, 0.1):
        value = L.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(w), label_smoothing=eps)
        expected = ref.weighted_mean(ref.cross_entropy(logits, labels, eps), w * (labels >= 0))
        assert abs(float(value) - expected) <= 1e-5 * max(1, abs(expected))
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        check_grads(lambda z: L.cross_entropy(z, jnp.asarray(labels), label_smoothing=0.1),
                    (jnp.asarray(logits, jnp.float64),), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_masked_positions_contribute_exactly_zero():
    s, t = _logits("normal", 0)
    w = _weights(2)
    s_garbage = np.where(w[..., None] == 0, 1e4 * np.sign(s), s).astype(np.float32)
    for name, f in DIVERGENCES.items():
        clean = f(jnp.asarray(s), jnp.asarray(t), jnp.asarray(w), 1.0)
        value, g = jax.value_and_grad(f)(jnp.asarray(s_garbage), jnp.asarray(t), jnp.asarray(w), 1.0)
        assert float(value) == pytest.approx(float(clean), rel=1e-6), name
        assert np.all(np.asarray(g)[w == 0] == 0.0), name
    zeros = jnp.zeros((B, T))
    for name, f in DIVERGENCES.items():
        value, g = jax.value_and_grad(f)(jnp.asarray(s), jnp.asarray(t), zeros, 1.0)
        assert float(value) == 0.0 and np.all(np.asarray(g) == 0.0), name
    assert float(L.cross_entropy(jnp.asarray(s), jnp.full((B, T), -100))) == 0.0


def test_tau_squared_scaling():
    s, t = _logits("normal", 4)
    plain = L.forward_kl(jnp.asarray(s), jnp.asarray(t), temperature=2.0)
    scaled = L.forward_kl(jnp.asarray(s), jnp.asarray(t), temperature=2.0, scale_by_t2=True)
    assert float(scaled) == pytest.approx(4.0 * float(plain), rel=1e-6)


# ----------------------------------------------------------------------- properties

logit_rows = arrays(np.float32, (2, 9), elements=st.floats(-30, 30, width=32))


@settings(max_examples=60, deadline=None)
@given(logit_rows, logit_rows, st.sampled_from(sorted(DIVERGENCES)))
def test_divergences_nonnegative_and_zero_iff_equal(s, t, name):
    f = DIVERGENCES[name]
    value = float(f(jnp.asarray(s), jnp.asarray(t), None, 1.0))
    assert value >= -1e-6
    assert abs(float(f(jnp.asarray(s), jnp.asarray(s + 3.0), None, 1.0))) <= 1e-5  # same distribution
    ps = np.exp(s - s.max(-1, keepdims=True)); ps /= ps.sum(-1, keepdims=True)
    pt = np.exp(t - t.max(-1, keepdims=True)); pt /= pt.sum(-1, keepdims=True)
    if np.abs(ps - pt).max() > 0.05:
        assert value > 1e-6


@settings(max_examples=40, deadline=None)
@given(logit_rows, logit_rows)
def test_jsd_half_symmetric_and_endpoints(s, t):
    s, t = jnp.asarray(s), jnp.asarray(t)
    assert float(L.jsd(s, t, beta=0.5)) == pytest.approx(float(L.jsd(t, s, beta=0.5)), abs=1e-6)
    assert float(L.jsd(s, t, beta=0.0)) == float(L.forward_kl(s, t))
    assert float(L.jsd(s, t, beta=1.0)) == float(L.reverse_kl(s, t))
    assert float(L.skew_kl(s, t, alpha=0.0)) == float(L.forward_kl(s, t))


def test_sampled_targets_average_to_full_kl():
    """Unbiasedness: the mean of M independent 8-sample estimates is within 4 standard errors of the
    exact forward KL (a false failure has probability ~6e-5), for the value and for the gradient
    w.r.t. the student logits, with the teacher itself and a flatter proposal (tau_q = 2)."""
    rng = np.random.default_rng(5)
    s = jnp.asarray(rng.normal(0, 2, (3, 40)), jnp.float32)
    t = jnp.asarray(rng.normal(0, 2, (3, 40)), jnp.float32)
    exact, exact_grad = jax.value_and_grad(L.forward_kl)(s, t)
    for proposal in (None, 2.0):
        def estimate(key):
            targets = L.sampled_targets(key, t, 8, proposal_temperature=proposal)
            return jax.value_and_grad(L.sparse_kl)(s, targets)

        values, grads = jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(0), 4000))
        sem = float(values.std()) / np.sqrt(len(values))
        assert abs(float(values.mean()) - float(exact)) <= 4 * sem + 1e-6
        grad_sem = np.asarray(grads.std(0)) / np.sqrt(len(values))
        assert np.all(np.abs(np.asarray(grads.mean(0) - exact_grad)) <= 4 * grad_sem + 1e-4)


def test_topk_targets_full_k_is_exact_and_small_k_renormalises():
    rng = np.random.default_rng(6)
    s = jnp.asarray(rng.normal(0, 2, (4, 16)), jnp.float32)
    t = jnp.asarray(rng.normal(0, 2, (4, 16)), jnp.float32)
    full = L.topk_targets(t, 16)
    assert float(L.sparse_kl(s, full)) == pytest.approx(float(L.forward_kl(s, t)), rel=1e-5)
    top3 = L.topk_targets(t, 3)
    np.testing.assert_allclose(np.asarray(top3.weights.sum(-1)), 1.0, rtol=1e-6)
    p = np.exp(np.asarray(t, np.float64)); p /= p.sum(-1, keepdims=True)
    idx = np.argsort(-p, -1)[:, :3]
    pk = np.take_along_axis(p, idx, -1); pk /= pk.sum(-1, keepdims=True)
    ls = np.asarray(jax.nn.log_softmax(s), np.float64)
    expected = np.mean((pk * (np.log(pk) - np.take_along_axis(ls, idx, -1))).sum(-1))
    assert float(L.sparse_kl(s, top3)) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------ blended CoT


@pytest.mark.parametrize("schedule, step", [("constant", 0), ("linear", 3), ("linear", 50),
                                            ("cosine", 4), ("cosine", 0)])
def test_blended_cot_matches_reference(schedule, step):
    rng = np.random.default_rng(8)
    s = rng.normal(0, 2, (B, T, V)).astype(np.float32)
    t = rng.normal(0, 2, (B, T, V)).astype(np.float32)
    labels = rng.integers(0, V, (B, T))
    parts = rng.integers(0, 4, (B, T))
    cfg = L.BlendedCoT(w_answer=1.0, w_trace_ce=0.5, w_kl=2.0, divergence="jsd", beta=0.4,
                       temperature=2.0, kl_schedule=schedule, kl_warmup_steps=8 if schedule != "constant" else 0)
    value, metrics = L.blended_cot_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(labels),
                                        jnp.asarray(parts), step=step, config=cfg)
    ce = ref.cross_entropy(s, labels)
    kl = ref.divergence(s, t, "jsd", 2.0, beta=0.4)
    r = min(step / 8, 1.0) if schedule != "constant" else 1.0
    r = 0.5 * (1 - np.cos(np.pi * r)) if schedule == "cosine" else r
    ce_answer = ref.weighted_mean(ce, parts == 3)
    ce_trace = ref.weighted_mean(ce, parts == 2)
    kl_mean = ref.weighted_mean(kl, (parts == 2) | (parts == 3))
    expected = ce_answer + 0.5 * ce_trace + 2.0 * r * kl_mean
    assert float(value) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["ce_answer"]) == pytest.approx(ce_answer, rel=1e-5)
    assert float(metrics["ce_trace"]) == pytest.approx(ce_trace, rel=1e-5)
    assert float(metrics["kl"]) == pytest.approx(kl_mean, rel=1e-5)
    assert float(metrics["w_kl"]) == pytest.approx(2.0 * r, rel=1e-6)
    assert metrics["answer_tokens"] == (parts == 3).sum() and metrics["trace_tokens"] == (parts == 2).sum()
    assert metrics["prompt_tokens"] == (parts == 1).sum()


def test_blended_cot_family_endpoints():
    rng = np.random.default_rng(9)
    s = jnp.asarray(rng.normal(0, 2, (B, T, V)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, V, (B, T)))
    parts = jnp.asarray(rng.integers(0, 4, (B, T)))
    label_only, _ = L.blended_cot_loss(s, None, labels, parts, config=L.BlendedCoT.label_only())
    assert float(label_only) == pytest.approx(float(L.cross_entropy(s, labels, parts == 3)), rel=1e-6)
    cot_only, _ = L.blended_cot_loss(s, None, labels, parts, config=L.BlendedCoT.cot_only())
    expected = L.cross_entropy(s, labels, parts == 3) + L.cross_entropy(s, labels, parts == 2)
    assert float(cot_only) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(L.LossInputError, match="needs the teacher"):
        L.blended_cot_loss(s, None, labels, parts)


# ------------------------------------------------------------------------------ errors


def test_vocab_mismatch_names_both_sizes():
    with pytest.raises(L.LossInputError, match="teacher 151936, student 32000 — teacher and student must share a tokenizer"):
        L.forward_kl(jnp.zeros((2, 32000)), jnp.zeros((2, 151936)))


def test_mask_of_wrong_shape_names_shapes():
    with pytest.raises(L.LossInputError, match=r"weights has shape \(2, 4\), expected \(2, 5\)"):
        L.reverse_kl(jnp.zeros((2, 5, 7)), jnp.zeros((2, 5, 7)), jnp.ones((2, 4)))
    with pytest.raises(L.LossInputError, match=r"parts has shape \(2, 3\), expected \(2, 5\)"):
        L.blended_cot_loss(jnp.zeros((2, 5, 7)), jnp.zeros((2, 5, 7)), jnp.zeros((2, 5), int),
                           jnp.zeros((2, 3), int))


@pytest.mark.parametrize("kwargs, message", [
    (dict(kl_schedule="step"), "kl_schedule='step'; valid: constant, linear, cosine"),
    (dict(kl_schedule="linear"), "needs kl_warmup_steps > 0"),
    (dict(divergence="kl"), "divergence='kl'; valid: forward_kl"),
    (dict(w_kl=-1.0), "w_kl=-1.0: weights must be >= 0"),
])
def test_blended_config_errors(kwargs, message):
    with pytest.raises(L.LossInputError, match=message):
        L.BlendedCoT(**kwargs)


def test_sparse_targets_with_neg_inf_teacher_rows():
    """-inf teacher entries and an all -inf row: finite targets and gradients, and the sparse
    estimate with k = V (top-k) equals the dense forward KL (the same convention)."""
    rng = np.random.default_rng(11)
    s = jnp.asarray(rng.normal(0, 2, (2, 3, 12)), jnp.float32)
    t = rng.normal(0, 2, (2, 3, 12)).astype(np.float32)
    t[rng.random(t.shape) < 0.4] = -np.inf
    t[1, 2, :] = -np.inf
    t = jnp.asarray(t)
    w = jnp.asarray([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    full = L.topk_targets(t, 12)
    assert float(L.sparse_kl(s, full, w)) == pytest.approx(float(L.forward_kl(s, t, w)), rel=1e-5)
    for targets in (full, L.topk_targets(t, 4), L.sampled_targets(jax.random.key(0), t, 5)):
        assert all(np.all(np.isfinite(np.asarray(x))) for x in targets)
        g = jax.grad(lambda z: L.sparse_kl(z, targets, w))(s)
        assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[1, 2] == 0.0)
    sampled = L.sampled_targets(jax.random.key(1), t, 64)
    finite = np.isfinite(np.asarray(t))
    ids = np.asarray(sampled.ids)
    assert all(finite[b, p, ids[b, p]].all() for b in range(2) for p in range(3) if finite[b, p].any())


def test_sampled_targets_memory_is_linear_in_vocab():
    """Inverse-CDF sampling: compiled temporaries do not grow with the number of samples x vocab."""
    z = jax.ShapeDtypeStruct((256, 8192), jnp.float32)
    temp = lambda k: jax.jit(lambda key, x: L.sampled_targets(key, x, k)).lower(
        jax.random.key(0), z).compile().memory_analysis().temp_size_in_bytes
    assert temp(64) < 2 * temp(1)


def test_out_of_range_labels_and_ignored_answer_tokens():
    logits = jnp.zeros((1, 3, 5))
    with pytest.raises(L.LossInputError, match=r"label id 7 is outside the vocabulary \[0, 5\)"):
        L.cross_entropy(logits, jnp.asarray([[1, 7, 2]]))
    rng = np.random.default_rng(12)
    s = jnp.asarray(rng.normal(0, 2, (1, 4, 6)), jnp.float32)
    labels = jnp.asarray([[1, -100, 2, 3]])
    parts = jnp.asarray([[3, 3, 3, 3]])
    value, metrics = L.blended_cot_loss(s, None, labels, parts, config=L.BlendedCoT.label_only())
    assert float(metrics["answer_tokens"]) == 3.0
    assert float(value) == pytest.approx(float(L.cross_entropy(s, labels)), rel=1e-6)


# ------------------------------------------------------------------------------ loss specs


def test_loss_specs_match_float64_reference():
    """LossConfig(kind="divergence") is the divergence alone over weighted positions, and
    scale_by_t2 multiplies the blended loss's divergence coefficient by tau^2."""
    rng = np.random.default_rng(13)
    s = rng.normal(0, 2, (B, T, V)).astype(np.float32)
    t = rng.normal(0, 2, (B, T, V)).astype(np.float32)
    labels = rng.integers(0, V, (B, T))
    parts = rng.integers(0, 4, (B, T))
    w = _weights(14)
    config = L.LossConfig(kind="divergence", divergence="jsd", beta=0.3, temperature=2.0, scale_by_t2=True)
    value, metrics = L.evaluate(config.token_loss(), jnp.asarray(s), jnp.asarray(t), {"weights": jnp.asarray(w)})
    jsd_mean = ref.weighted_mean(ref.divergence(s, t, "jsd", 2.0, beta=0.3), w)
    assert float(value) == pytest.approx(4.0 * jsd_mean, rel=1e-5)
    assert float(metrics["jsd"]) == pytest.approx(jsd_mean, rel=1e-5) and float(metrics["tokens"]) == w.sum()
    blended = L.BlendedCoT(w_trace_ce=0.5, w_kl=2.0, temperature=2.0, scale_by_t2=True)
    value, _ = L.blended_cot_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(labels), jnp.asarray(parts),
                                  config=blended)
    ce = ref.cross_entropy(s, labels)
    kl = ref.weighted_mean(ref.divergence(s, t, "forward_kl", 2.0), (parts == 2) | (parts == 3))
    expected = ref.weighted_mean(ce, parts == 3) + 0.5 * ref.weighted_mean(ce, parts == 2) + 4.0 * 2.0 * kl
    assert float(value) == pytest.approx(expected, rel=1e-5)
    smoothed, _ = L.evaluate(L.CrossEntropyLoss(0.1).token_loss(), jnp.asarray(s), None,
                             {"labels": jnp.asarray(labels), "weights": jnp.asarray(w)})
    assert float(smoothed) == pytest.approx(ref.weighted_mean(ref.cross_entropy(s, labels, 0.1), w), rel=1e-5)


def test_loss_specs_are_static_and_say_whether_they_use_the_teacher():
    assert hash(L.LossConfig()) == hash(L.LossConfig()) and L.LossConfig() != L.BlendedCoT()
    assert L.LossConfig(kind="divergence", w_kl=0.0).uses_teacher and not L.LossConfig(w_kl=0.0).uses_teacher
    assert L.DivergenceLoss().uses_teacher and not L.CrossEntropyLoss().uses_teacher
    assert L.LossConfig(kind="divergence").token_loss().uses_teacher


@pytest.mark.parametrize("spec, kwargs, message", [
    (L.LossConfig, dict(kind="kd"), "kind='kd'; valid: blended, divergence"),
    (L.LossConfig, dict(chunk_size=0), r"chunk_size=0: must be >= 1"),
    (L.LossConfig, dict(temperature=0.0), r"temperature=0.0: must be > 0"),
    (L.LossConfig, dict(label_smoothing=1.0), r"label_smoothing=1.0: must be in \[0, 1\)"),
    (L.DivergenceLoss, dict(divergence="kl"), "divergence='kl'; valid: forward_kl, reverse_kl, jsd"),
    (L.DivergenceLoss, dict(divergence="jsd", beta=1.5), "beta=1.5: JSD needs 0 <= beta <= 1"),
    (L.DivergenceLoss, dict(divergence="skew_forward_kl", alpha=1.0), "alpha=1.0: skew KL needs 0 <= alpha < 1"),
    (L.CrossEntropyLoss, dict(label_smoothing=-0.1), r"label_smoothing=-0.1: must be in \[0, 1\)"),
])
def test_loss_spec_errors_name_value_and_valid_choices(spec, kwargs, message):
    with pytest.raises(L.LossInputError, match=message):
        spec(**kwargs)


def test_coefficients_tree_map_keeps_term_names_static():
    labels = jnp.asarray([[1, 2, -1, 3], [0, 1, 2, 3]])
    parts = jnp.asarray([[1, 2, 3, 3], [0, 2, 2, 3]])
    tokens = {"labels": labels, "parts": parts, "weights": jnp.ones((2, 4))}
    coefs, counts = L.BlendedCoT().token_loss().coefficients(tokens, 0)
    assert coefs.metric_terms == (("ce_answer", "ce"), ("ce_trace", "ce"), ("kl", "div"))
    assert len(jax.tree.leaves(coefs)) == 5 and float(counts["answer_tokens"]) == 2.0
    halves = jax.tree.map(lambda c: c[:, :2], coefs)
    assert isinstance(halves, L.Coefficients) and halves.metric_terms == coefs.metric_terms
    np.testing.assert_allclose(np.asarray(coefs.metrics["ce_answer"]), [[0, 0, 0, 0.5], [0, 0, 0, 0.5]])
    np.testing.assert_allclose(np.asarray(coefs.metrics["ce_trace"]), [[0, 1 / 3, 0, 0], [0, 1 / 3, 1 / 3, 0]])
