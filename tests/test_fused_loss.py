"""The chunked fused head + loss equals the unfused computation (value and gradients), on one
device and on 8 virtual devices with the head and logits sharded over the vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill import losses as L
from jaxdistill.models import make_mesh

B, T, D, DT, V = 2, 13, 16, 24, 64  # B*T = 26 positions: no chunk size below divides it


def _inputs(seed=0, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 6)
    return dict(
        hs=jax.random.normal(k[0], (B, T, D), dtype),
        ws=(0.4 * jax.random.normal(k[1], (D, V))).astype(dtype),
        ht=jax.random.normal(k[2], (B, T, DT), dtype),
        wt=(0.4 * jax.random.normal(k[3], (DT, V))).astype(dtype),
        labels=jax.random.randint(k[4], (B, T), 0, V),
        parts=jax.random.randint(k[5], (B, T), 0, 4),
    )


LOSSES = {
    "forward_kl": (L.divergence_loss("forward_kl", temperature=2.0, scale_by_t2=True), "weights"),
    "jsd": (L.divergence_loss("jsd", beta=0.3), "weights"),
    "skew_reverse_kl": (L.divergence_loss("skew_reverse_kl", alpha=0.2), "weights"),
    "cross_entropy": (L.cross_entropy_loss(label_smoothing=0.1), "weights"),
    "blended": (L.BlendedCoT(w_trace_ce=0.5, divergence="reverse_kl", kl_schedule="cosine",
                             kl_warmup_steps=10).token_loss(), "parts"),
    # forward KL and CE: the chunks' gradients are the hand-written ones (`losses.analytic`)
    "blended_forward_kl": (L.BlendedCoT(w_trace_ce=0.5, temperature=2.0, label_smoothing=0.1).token_loss(), "parts"),
}


def _tokens(x, which):
    tokens = {"labels": x["labels"]}
    if which == "parts":
        tokens["parts"] = x["parts"]
    else:
        tokens["weights"] = (x["parts"] > 0).astype(jnp.float32)
    return tokens


def _both(loss, x, tokens, **kw):
    def fused(hs, ws):
        return L.fused_loss(loss, hs, ws, tokens, teacher_hidden=x["ht"], teacher_head=x["wt"], step=4, **kw)

    def unfused(hs, ws):
        return L.fused_reference(loss, hs, ws, tokens, teacher_hidden=x["ht"], teacher_head=x["wt"], step=4)

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x["hs"], x["ws"])
    return grad(fused), grad(unfused)


def _assert_close(fused, unfused, rtol=1e-5):
    (value, metrics), grads = fused
    (value_ref, metrics_ref), grads_ref = unfused
    assert abs(float(value) - float(value_ref)) <= rtol * abs(float(value_ref))
    for name in metrics_ref:
        assert float(metrics[name]) == pytest.approx(float(metrics_ref[name]), rel=rtol, abs=1e-7), name
    for g, g_ref in zip(grads, grads_ref):
        g, g_ref = np.asarray(g, np.float64), np.asarray(g_ref, np.float64)
        assert np.abs(g - g_ref).max() <= rtol * np.abs(g_ref).max()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("chunk_size", [4, 7, 64])
def test_fused_equals_unfused(name, chunk_size):
    loss, which = LOSSES[name]
    x = _inputs()
    _assert_close(*_both(loss, x, _tokens(x, which), chunk_size=chunk_size))


@pytest.mark.parametrize("name", ["jsd", "blended"])
def test_capacity_skips_unsupervised_positions(name):
    loss, which = LOSSES[name]
    x = _inputs(1)
    tokens = _tokens(x, which)
    supervised = np.asarray(x["parts"] > 0) if which == "weights" else np.asarray(x["parts"] >= 2)
    n_supervised = int(supervised.sum())
    fused, unfused = _both(loss, x, tokens, chunk_size=5, capacity=n_supervised)
    _assert_close(fused, unfused)
    assert float(fused[0][1]["dropped_tokens"]) == 0.0
    # Unsupervised positions (prompt, padding) get exactly zero gradient.
    assert np.all(np.asarray(fused[1][0])[~supervised] == 0.0)
    too_small, _ = _both(loss, x, tokens, chunk_size=5, capacity=n_supervised - 3)
    assert float(too_small[0][1]["dropped_tokens"]) == 3.0


@pytest.mark.parametrize("name", ["forward_kl", "blended"])
def test_micro_batch_coefficients_add_up_to_the_whole_batch(name):
    """Whole-batch coefficients split by rows with one tree_map: the micro-batch values, metric sums
    and gradients add up to the whole batch's (unfused); metrics then hold no counts."""
    loss, which = LOSSES[name]
    x = _inputs(6)
    tokens = {"weights": jnp.ones((B, T)), **_tokens(x, which)}
    coefs, counts = loss.coefficients(tokens, 4)
    (value_ref, metrics_ref), grads_ref = jax.value_and_grad(
        lambda hs, ws: L.fused_reference(loss, hs, ws, tokens, teacher_hidden=x["ht"], teacher_head=x["wt"],
                                         step=4), argnums=(0, 1), has_aux=True)(x["hs"], x["ws"])
    value, metrics, grad_ws = 0.0, {}, 0.0
    for rows in (slice(0, 1), slice(1, 2)):
        part = lambda a: a[rows]
        (v, m), (g_hs, g_ws) = jax.value_and_grad(
            lambda hs, ws: L.fused_loss(loss, hs, ws, jax.tree.map(part, tokens), teacher_hidden=part(x["ht"]),
                                        teacher_head=x["wt"], chunk_size=5,
                                        coefficients=jax.tree.map(part, coefs)),
            argnums=(0, 1), has_aux=True)(part(x["hs"]), x["ws"])
        assert set(m) == set(coefs.metrics)
        value, grad_ws = value + v, grad_ws + g_ws
        metrics = {k: metrics.get(k, 0.0) + m[k] for k in m}
        np.testing.assert_allclose(np.asarray(g_hs), np.asarray(grads_ref[0][rows]), rtol=1e-5, atol=1e-7)
    assert float(value) == pytest.approx(float(value_ref), rel=1e-5)
    for k in metrics:
        assert float(metrics[k]) == pytest.approx(float(metrics_ref[k]), rel=1e-5, abs=1e-7), k
    for k in counts:
        assert float(counts[k]) == pytest.approx(float(metrics_ref[k])), k
    np.testing.assert_allclose(np.asarray(grad_ws), np.asarray(grads_ref[1]), rtol=1e-5, atol=1e-6)


def test_fused_with_sparse_teacher_targets():
    x = _inputs(2)
    teacher_logits = jnp.einsum("btd,dv->btv", x["ht"], x["wt"])
    targets = L.sampled_targets(jax.random.key(3), teacher_logits, 6)
    loss = L.divergence_loss("forward_kl")
    tokens = _tokens(x, "weights")
    fused = jax.value_and_grad(lambda hs, ws: L.fused_loss(loss, hs, ws, tokens, teacher_targets=targets,
                                                          chunk_size=8), argnums=(0, 1), has_aux=True)
    unfused = jax.value_and_grad(lambda hs, ws: L.fused_reference(loss, hs, ws, tokens, teacher_targets=targets),
                                 argnums=(0, 1), has_aux=True)
    _assert_close(fused(x["hs"], x["ws"]), unfused(x["hs"], x["ws"]))


def test_fused_bf16_hidden_states():
    """bf16 activations and heads: fp32 logits and loss; fused and unfused see the same bf16 logits."""
    loss, which = LOSSES["forward_kl"]
    x = _inputs(4, jnp.bfloat16)
    (value, _), grads = _both(loss, x, _tokens(x, which), chunk_size=8)[0]
    assert value.dtype == jnp.float32 and grads[0].dtype == jnp.bfloat16
    _assert_close(*_both(loss, x, _tokens(x, which), chunk_size=8), rtol=2e-2)


@pytest.mark.parametrize("mesh_shape", [(1, 1, 8), (2, 1, 4)])
def test_fused_vocab_parallel_on_8_devices(mesh_shape):
    """Heads sharded over `tensor` on the vocab axis, positions over `data`: same numbers as one device."""
    mesh = make_mesh(mesh_shape)
    loss, which = LOSSES["blended"]
    x = _inputs(5)
    tokens = _tokens(x, which)
    single_fused, single_unfused = _both(loss, x, tokens, chunk_size=7)
    vocab = NamedSharding(mesh, P(None, "tensor"))
    batch = NamedSharding(mesh, P("data"))
    sharded = dict(x, ws=jax.device_put(x["ws"], vocab), wt=jax.device_put(x["wt"], vocab),
                   hs=jax.device_put(x["hs"], batch), ht=jax.device_put(x["ht"], batch))
    tokens_sharded = jax.device_put(tokens, batch)
    fused, unfused = _both(loss, sharded, tokens_sharded, chunk_size=7)
    assert fused[1][1].sharding.is_equivalent_to(vocab, 2) or mesh_shape[2] == 1
    _assert_close(fused, single_unfused)
    _assert_close(unfused, single_unfused)
    _assert_close(single_fused, single_unfused)


def test_fused_errors_name_shapes():
    x = _inputs()
    loss = L.divergence_loss()
    with pytest.raises(L.LossInputError, match="teacher 65, student 64 — teacher and student must share a tokenizer"):
        L.fused_loss(loss, x["hs"], x["ws"], {}, teacher_hidden=x["ht"], teacher_head=jnp.zeros((DT, 65)))
    with pytest.raises(L.LossInputError, match=r"weights has shape \(2, 12\), expected \(2, 13\)"):
        L.fused_loss(loss, x["hs"], x["ws"], {"weights": jnp.ones((2, 12))}, teacher_hidden=x["ht"],
                     teacher_head=x["wt"])
    with pytest.raises(L.LossInputError, match=r"student_head has shape \(8, 64\), expected \(16, 64\)"):
        L.fused_loss(loss, x["hs"], x["ws"][:8], {}, teacher_hidden=x["ht"], teacher_head=x["wt"])


def test_loss_memory_benchmark_runs_and_chunking_saves_memory():
    """Compile-time memory analysis (deterministic, not a timing): the chunked path's temporaries do
    not grow with the number of positions, the unfused path's do."""
    from jaxdistill.bench import run_benchmark

    out = run_benchmark({"benchmark": "loss_memory", "vocab_sizes": [2048], "token_counts": [512, 2048],
                         "hidden": 32, "teacher_hidden": 48, "chunk_size": 128,
                         "time_cases": [[2048, 512]], "iters": 1})
    small, large = out["rows"]
    assert large["chunked_temp_bytes"] < 0.25 * large["unfused_temp_bytes"]
    assert large["chunked_temp_bytes"] <= 1.1 * small["chunked_temp_bytes"]
    assert large["unfused_temp_bytes"] >= 3 * small["unfused_temp_bytes"]
    assert small["chunked_time_s"] > 0 and small["unfused_time_s"] > 0


def test_hand_written_logit_gradients_equal_autodiff_with_inf_teacher_entries():
    """`analytic`'s CE and forward-KL gradients equal autodiff of the reference terms, including
    teacher -inf entries, a teacher row without a finite entry, and ignored labels (< 0)."""
    from jaxdistill.losses.analytic import cross_entropy_and_grad, forward_kl_and_grad

    k = jax.random.split(jax.random.key(3), 3)
    s = 3.0 * jax.random.normal(k[0], (6, 32))
    t = 3.0 * jax.random.normal(k[1], (6, 32))
    t = t.at[0, :5].set(-jnp.inf).at[1].set(-jnp.inf)
    labels = jax.random.randint(k[2], (6,), 0, 32).at[2].set(-1)
    for tau in (1.0, 2.5):
        term, grad = forward_kl_and_grad(s, t, tau)
        ref = L.divergence_per_token(s, t, divergence="forward_kl", temperature=tau)
        ref_grad = jax.grad(lambda z: jnp.sum(L.divergence_per_token(z, t, temperature=tau)))(s)
        np.testing.assert_allclose(term, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
    for eps in (0.0, 0.1):
        term, grad = cross_entropy_and_grad(s, labels, eps)
        ref = L.cross_entropy_per_token(s, labels, label_smoothing=eps)
        ref_grad = jax.grad(lambda z: jnp.sum(L.cross_entropy_per_token(z, labels, label_smoothing=eps)))(s)
        np.testing.assert_allclose(term, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tau, dtype, teacher_dtype, folded", [
    (3.0, jnp.float32, jnp.float32, True), (3.0, jnp.bfloat16, jnp.bfloat16, False),
    (0.5, jnp.bfloat16, jnp.bfloat16, True), (3.0, jnp.float32, jnp.bfloat16, False)])
def test_fused_forward_kl_folds_the_temperature_into_hidden_states(tau, dtype, teacher_dtype, folded, monkeypatch):
    """Forward KL against a live teacher runs with 1/tau folded into the hidden states (`fused.
    _folded_scale`) where that rounds no worse than scaling the logits — fp32, or a power-of-two
    1/tau, for student and teacher alike — and the unfolded hand-written path otherwise (bf16 at
    tau = 3, a bf16 teacher under an fp32 student): both equal the unfused computation."""
    from jaxdistill.losses import fused

    scales = []
    folded_scale = fused._folded_scale
    monkeypatch.setattr(fused, "_folded_scale", lambda *a: scales.append(folded_scale(*a)) or scales[-1])
    loss = L.divergence_loss("forward_kl", temperature=tau, scale_by_t2=True)
    x = _inputs(5, dtype)
    x["ht"], x["wt"] = x["ht"].astype(teacher_dtype), x["wt"].astype(teacher_dtype)
    exact = dtype == jnp.float32 and teacher_dtype == jnp.float32
    _assert_close(*_both(loss, x, _tokens(x, "weights"), chunk_size=8), rtol=1e-5 if exact else 2e-2)
    assert scales and all((s == 1 / tau) if folded else (s is None) for s in scales), scales


def test_scaled_forward_kl_equals_float64():
    """`analytic.scaled_forward_kl_and_grad` (logits pre-divided by tau, a finite teacher) against
    numpy float64: KL(p_T || p_S) per row and its gradient softmax(z) - p_T, close and far apart."""
    from jaxdistill.losses.analytic import scaled_forward_kl_and_grad

    rng = np.random.default_rng(7)
    for spread, gap in ((3.0, 1.0), (0.5, 0.01)):
        t = rng.normal(0, spread, (8, 300))
        z = t + rng.normal(0, gap, t.shape)
        log_p = lambda x: x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        p_t = np.exp(log_p(t))
        want = (p_t * (log_p(t) - log_p(z))).sum(-1)
        term, grad = scaled_forward_kl_and_grad(jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32))
        # fp32 inputs carry ~1e-7 relative error in logits of size ~spread: the KL is exact to that
        np.testing.assert_allclose(np.asarray(term, np.float64), want, rtol=1e-4, atol=4e-7 * (spread + np.log(300)))
        np.testing.assert_allclose(np.asarray(grad, np.float64), np.exp(log_p(z)) - p_t, atol=1e-6)
