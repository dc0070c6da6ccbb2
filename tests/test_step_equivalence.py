"""The fast step computes what the plain one would: `make_train_step`'s loss, gradient norm, Adam
first moments (the clipped gradients, entry by entry) and updated weights equal an independent straightforward step on a fixed batch — full logits from
`forward` for teacher and student, the loss by `losses.evaluate`, `jax.grad`, optax's AdamW — for
every speed switch (hand-written logit gradients, no mask multiply, no clipping, remat, chunking,
capacity gather, micro-batches)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill.losses import LossConfig
from jaxdistill.models import ModelConfig, forward, init_params
from jaxdistill.models.structure import decay_mask
from jaxdistill.train import OptimizerConfig, StepConfig, init_state, make_train_step

TEACHER = ModelConfig(model_type="llama", vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=False)
STUDENT = TEACHER.replace(hidden_size=16, intermediate_size=48, num_heads=2, num_kv_heads=1)
LR = 1e-2


def _batch(rows=4, length=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 96, (rows, length)).astype(np.int32)
    segments = np.ones_like(tokens)
    segments[:, length // 2:] = 2
    labels = np.roll(tokens, -1, 1)
    labels[:, -1] = labels[:, length // 2 - 1] = -1
    parts = rng.integers(1, 4, (rows, length)).astype(np.int8)
    return {"tokens": tokens, "segment_ids": segments, "labels": labels,
            "weights": (labels >= 0).astype(np.float32) * (parts > 1), "parts": parts}


def _reference(c: StepConfig, params, teacher, batch):
    """(loss, grad norm, updated params) computed the plain way."""
    tokens = {k: jnp.asarray(batch[k]) for k in ("labels", "weights", "parts")}
    t_logits = forward(c.teacher, teacher, jnp.asarray(batch["tokens"]), segment_ids=jnp.asarray(batch["segment_ids"]))

    def loss(p):
        s_logits = forward(c.student, p, jnp.asarray(batch["tokens"]), segment_ids=jnp.asarray(batch["segment_ids"]))
        from jaxdistill.losses import evaluate
        return evaluate(c.loss.token_loss(), s_logits, t_logits, tokens)[0]

    value, grads = jax.value_and_grad(loss)(params)
    opt = c.optimizer
    tx = optax.chain(optax.identity() if opt.clip_norm is None else optax.clip_by_global_norm(opt.clip_norm),
                     optax.adamw(LR, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask(params)))
    updates, opt_state = tx.update(grads, tx.init(params), params)
    return value, optax.tree.norm(grads), optax.apply_updates(params, updates), opt_state[1][0].mu


LOSSES = {
    "kl_every_position": LossConfig(kind="divergence", temperature=2.0),
    "blended_forward_kl": LossConfig(temperature=2.0, w_trace_ce=0.5, label_smoothing=0.1),
    "blended_reverse_kl": LossConfig(divergence="reverse_kl"),  # autodiff chunk gradients
}
SWITCHES = {
    "fast": dict(masked=False, chunk_size=1024),
    "masked_clipped": dict(masked=True, chunk_size=1024, clip_norm=0.5),
    "remat_chunked": dict(masked=False, chunk_size=7, remat="full"),
    "capacity_micro": dict(masked=False, chunk_size=16, capacity=40, micro_batches=2),
}


# every switch and every loss at least once (the full cross product costs minutes on 2 cores)
CASES = [("kl_every_position", "remat_chunked"), ("blended_forward_kl", "masked_clipped"),
         ("blended_forward_kl", "capacity_micro"), ("blended_reverse_kl", "fast")]


@pytest.mark.parametrize("loss, switch", CASES)
def test_step_equals_plain_step(loss, switch):
    kw = dict(SWITCHES[switch])
    clip = kw.pop("clip_norm", None)
    student = STUDENT.replace(remat_policy=kw.pop("remat", "none"))
    opt = OptimizerConfig(learning_rate=LR, warmup_steps=0, decay="constant", weight_decay=0.01, clip_norm=clip)
    c = StepConfig(student=student, teacher=TEACHER, loss=LOSSES[loss], optimizer=opt, total_steps=10,
                   teacher_targets="live", **kw)
    key = jax.random.key(0)
    params, teacher = init_params(student, jax.random.fold_in(key, 1)), init_params(TEACHER, jax.random.fold_in(key, 2))
    batch = _batch()
    value, norm, updated, mu = _reference(c, params, teacher, batch)
    state, metrics = make_train_step(c)(init_state(c, params, key), teacher, {k: jnp.asarray(v) for k, v in batch.items()})
    # a KL near 0 (random init) is a difference of per-token terms of size ~log V: fp32 leaves an
    # absolute error of a few eps * log V whatever the order of the sums, so rtol alone cannot hold
    np.testing.assert_allclose(float(metrics["loss"]), float(value), rtol=2e-5, atol=4 * 1.2e-7 * np.log(96))
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(norm), rtol=1e-4)
    assert float(metrics.get("dropped_tokens", 0.0)) == 0.0
    # Adam's first moment after one step is (1 - b1) x the (clipped) gradient: every gradient entry
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(mu))
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.opt_state[1][0].mu), jax.tree.leaves(mu)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(updated)):
        # Adam's first step moves each weight by ~lr * sign(g): a gradient within float error of 0 may
        # flip, so compare to a fraction of the step size
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=LR * 2e-2, err_msg=jax.tree_util.keystr(path))


def test_unmasked_step_refuses_partial_masks():
    from jaxdistill.pruning import full_masks
    from jaxdistill.train import TrainingError

    c = StepConfig(student=STUDENT, teacher=TEACHER, loss=LOSSES["kl_every_position"], optimizer=OptimizerConfig(),
                   total_steps=10, teacher_targets="live", masked=False)
    masks = full_masks(STUDENT)
    masks["hidden"] = masks["hidden"].at[0].set(0)
    params = init_params(STUDENT, jax.random.key(0))
    with pytest.raises(TrainingError, match="masked=False"):
        init_state(c, params, jax.random.key(1), masks=masks)
    init_state(c, params, jax.random.key(1), masks=full_masks(STUDENT))  # all ones: fine
