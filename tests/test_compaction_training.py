"""Compacting pruning stages: the student and its optimizer state shrink to the dense shapes its masks
emulate. The masked full-width path stays the reference: through two stages (ratios of the ORIGINAL
model) and five more steps, the compacted run's losses, weights and Adam moments equal the masked
run's compacted values to float rounding — full and LoRA trainable, sharded and micro-batched. Each new
shape compiles its step once; a checkpoint saved after compaction resumes in the small shape, and the
resumed run continues bitwise identically."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill.losses import LossConfig
from jaxdistill.models import ModelConfig, init_params, logical_axes, make_mesh, shard_params
from jaxdistill.models.sharding import activation_sharding
from jaxdistill.models.structure import decay_mask
from jaxdistill.pruning import compact, compression_ratio, importance, prune_to
from jaxdistill.train import (Checkpoints, LoraConfig, MetricsLog, OptimizerConfig, StepConfig, TrainConfig,
                              compact_state, compacting_stage, current_config, init_state, make_optimizer,
                              make_train_step, place, reset_pruned_moments, resume_student, state_shardings,
                              student_params, train_loop)

TINY = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3,
                   num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)
STEPS = 10
FULL = dict(stages={2: 0.3, 5: 0.55}, split="mixed", head_pruning="groups")  # layers, hidden, kv groups, MLP
LORA = dict(stages={3: 0.65}, split="width", head_pruning="query")           # hidden, query heads, MLP
# stages at ratios of the ORIGINAL model (two for full: iterative; one for LoRA, whose adapters slice
# with the same code at every stage), then five or more steps; importance from activations
ROWS, LENGTH = 8, 16


def _config(trainable="full", micro_batches=2) -> StepConfig:
    return StepConfig(student=TINY, teacher=TINY, loss=LossConfig(), teacher_targets="live", trainable=trainable,
                      lora=LoraConfig(rank=4, modules=("q", "k", "o", "up", "down")), micro_batches=micro_batches,
                      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.01),
                      total_steps=STEPS)


def _batches(n=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, 64, (ROWS, LENGTH)).astype(np.int32)
        labels = np.roll(tokens, -1, 1)
        labels[:, -1] = -1
        out.append({"tokens": tokens, "segment_ids": np.ones_like(tokens), "labels": labels,
                    "weights": (labels >= 0).astype(np.float32), "parts": np.where(labels >= 0, 3, 0).astype(np.int8)})
    return out


class Batches:
    """A fixed list of batches with the iterator protocol `train_loop` and `resume` need."""

    def __init__(self, batches, mesh=None):
        self.batches, self.mesh, self.i = batches, mesh, 0

    def __next__(self):
        batch = self.batches[self.i]
        self.i += 1
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in batch.items()}
        return {k: jax.device_put(v, activation_sharding(self.mesh, v.ndim)) for k, v in batch.items()}

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = state["i"]


@functools.lru_cache(maxsize=None)
def _models():
    """(teacher, student) on the host: matrices scaled up (the teacher more) so both are far from
    uniform, norms left at 1 (scaled norms make these tiny models chaotic: a 1e-6 change in the
    weights then becomes 1e-3 in the next gradient, and no two float summation orders agree)."""
    scaled = lambda params, s: jax.tree.map(lambda x, matrix: np.asarray(x * s if matrix else x), params,
                                            decay_mask(params))
    return scaled(init_params(TINY, jax.random.key(0)), 8.0), scaled(init_params(TINY, jax.random.key(1)), 2.0)


def _prune(c_now: StepConfig, state, *, ratio: float, split: str, head_pruning: str):
    """One stage's masks, as `jobs.phases.pruning_hooks` computes them (ratio of the original TINY)."""
    weights = student_params(c_now, state.params, state.lora, state.masks)
    calibration = [{"tokens": jnp.asarray(b["tokens"][:4])} for b in _batches(2, seed=7)]
    scores = importance(c_now.student, weights, calibration, method="activation", masks=state.masks)
    masks, _ = prune_to(c_now.student, scores, ratio, masks=state.masks, split=split, multiple=32,
                        head_pruning=head_pruning, reference=TINY)
    return masks


@functools.lru_cache(maxsize=None)
def _mesh():
    return make_mesh((1, 2, 1))  # params and moments sharded (fsdp)


# Compiled steps, one per (step config, placement), shared by every run in this module: compiling
# dominates these tests, and a shared step must not compile again for a later run (`compilations`).
_COMPILED = {}


def _make_step(c: StepConfig, shardings):
    key = (c, None if shardings is None else jax.tree.leaves(shardings)[0].mesh)
    if key not in _COMPILED:
        _COMPILED[key] = make_train_step(c, shardings)
    return _COMPILED[key]


def _masked_run(c: StepConfig, *, stages, mesh=None, **prune):
    """The reference: full width under masks, pruned moments reset at each stage (`pruning_hooks`)."""
    teacher, student = _models()
    state, shardings = place(c, init_state(c, jax.tree.map(jnp.asarray, student), jax.random.key(2)), mesh)
    if mesh is not None:
        teacher = shard_params(teacher, logical_axes(TINY), mesh)
    step, losses, data = _make_step(c, shardings), [], Batches(_batches(), mesh)
    for i in range(STEPS):
        if i in stages:
            state = reset_pruned_moments(c, state.replace(masks=_prune(c, state, ratio=stages[i], **prune)))
            state = jax.device_put(state, shardings) if mesh is not None else state
        state, metrics = step(state, teacher, next(data))
        losses.append(float(metrics["loss"]))
    return state, losses


def _compacted_run(c: StepConfig, directory, *, stages, mesh=None, stop_at=None, **prune):
    """The compacting path through `train_loop`: hooks from `compacting_stage`, resume from `directory`."""
    teacher, student = _models()
    if mesh is not None:
        teacher = shard_params(teacher, logical_axes(TINY), mesh)
    made = []

    def make_step(c_new, shardings):
        made.append(_make_step(c_new, shardings))
        return made[-1]

    checkpoints = Checkpoints(directory / "checkpoints", keep=2)
    data = Batches(_batches(), mesh)
    state = init_state(c, jax.tree.map(jnp.asarray, student), jax.random.key(2))
    c_now, state, resumed = resume_student(checkpoints, c, state, data, mesh=mesh, config={"run": "test"})
    shardings = None if mesh is None else state_shardings(c_now, state, mesh)
    hooks = {step: compacting_stage(c, functools.partial(_prune, ratio=ratio, **prune), mesh=mesh,
                                    make_step=make_step) for step, ratio in stages.items()}
    train = TrainConfig(steps=STEPS, batch_size=ROWS, seq_len=LENGTH, micro_batches=c.micro_batches, log_every=1,
                        checkpoint_every=4, stop_at_step=stop_at)
    state, _ = train_loop(make_step(c_now, shardings), state, data, steps=STEPS, train=train, checkpoints=checkpoints,
                          metrics=MetricsLog(directory / "metrics.jsonl", resume_step=resumed or 0),
                          config={"run": "test"}, teacher=teacher, hooks=hooks)
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return state, [r["loss"] for r in records], made, records, resumed


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _assert_close(actual, expected, rtol, what):
    leaves_a, leaves_e = jax.tree.leaves(_host(actual)), jax.tree.leaves(_host(expected))
    assert len(leaves_a) == len(leaves_e), what
    for a, e in zip(leaves_a, leaves_e):
        assert a.shape == e.shape, what
        scale = max(float(np.abs(e).max()), 1e-30)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, err_msg=what)


def _check_equal_to_masked(c, masked, masked_losses, compacted, compacted_losses, final_ratio):
    reference_c, reference = compact_state(c, masked)
    small_c = current_config(c, compacted)
    assert small_c == reference_c and small_c.student != TINY
    # ratios of the original model after two stages (not of the model the second stage started from)
    assert compression_ratio(TINY, small_c.student)["total"] == pytest.approx(final_ratio, abs=0.02)
    tol = 1e-5 * STEPS  # float rounding (summation order) grows ~1e-5 relative per step
    np.testing.assert_allclose(compacted_losses, masked_losses, rtol=tol)
    _assert_close(compacted.params, reference.params, tol, "params")
    _assert_close(compacted.lora, reference.lora, tol, "lora")
    trainable = compacted.lora if c.trainable == "lora" else compacted.params
    tx = make_optimizer(c.optimizer, c.total_steps, trainable)
    moments = lambda s: optax.tree_map_params(tx, lambda x: x, s.opt_state, transform_non_params=lambda _: None)
    # Adam's second moment g^2 carries the rounding squared, its first moment is compared as the weights
    _assert_close(moments(compacted), moments(reference), 2 * tol, "adam moments")
    counts = lambda s: [np.asarray(x) for x in jax.tree.leaves(
        optax.tree_map_params(tx, lambda _: None, s.opt_state))]
    assert [int(x) for x in counts(compacted)] == [int(x) for x in counts(reference)] == [STEPS, STEPS]
    np.testing.assert_array_equal(np.asarray(compacted.masks["hidden"]), 1.0)
    # compact_state slices params exactly as the export's `compact` does
    masked_c = current_config(c, masked)
    _, exported = compact(masked_c.student, _host(masked.params), _host(masked.masks))
    for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(exported)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory):
    """Full training, mixed split (layers, hidden, kv groups, MLP), two micro-batches, fsdp-sharded (1, 2, 1)."""
    c = _config("full")
    masked, masked_losses = _masked_run(c, mesh=_mesh(), **FULL)
    compacted = _compacted_run(c, tmp_path_factory.mktemp("full"), mesh=_mesh(), **FULL)
    return c, masked, masked_losses, compacted


@pytest.mark.slow
def test_full_compacted_equals_masked_and_compiles_once_per_shape(full_runs):
    c, masked, masked_losses, (state, losses, made, records, _) = full_runs
    _check_equal_to_masked(c, masked, masked_losses, state, losses, FULL["stages"][5])
    small = current_config(c, state).student
    assert small.num_layers < TINY.num_layers and small.num_kv_heads < TINY.num_kv_heads
    # one step per shape (the original — shared with the masked run —, after stage 1, after stage 2),
    # each compiled exactly once
    assert len(made) == 3 and [s.compilations for s in made] == [1, 1, 1]
    assert len({s.config.student for s in made}) == 3
    assert [r["step_compilations"] for r in records] == [1] * STEPS


@pytest.mark.slow
def test_lora_compacted_equals_masked(tmp_path):
    c = _config("lora", micro_batches=1)
    masked, masked_losses = _masked_run(c, **LORA)
    state, losses, made, _, _ = _compacted_run(c, tmp_path, **LORA)
    assert [s.compilations for s in made] == [1, 1]
    _check_equal_to_masked(c, masked, masked_losses, state, losses, LORA["stages"][3])
    small = current_config(c, state).student
    assert small.hidden_size < TINY.hidden_size and small.num_heads // small.num_kv_heads == 1
    # the frozen base and the adapters slice consistently: merged compacted = compacted merged
    c_small = current_config(c, state)
    ref_c, ref = compact_state(c, masked)
    _assert_close(student_params(c_small, state.params, state.lora, state.masks),
                  student_params(ref_c, ref.params, ref.lora, ref.masks), 1e-4, "merged")


@pytest.mark.slow
def test_resume_after_compaction_restores_small_shapes_and_continues(tmp_path, full_runs):
    c, _, _, (full, full_losses, _, _, _) = full_runs
    mesh = _mesh()
    # killed after step 4: stage 1 compacted the student at step 2, stage 2 is still ahead
    stopped, _, _, _, resumed = _compacted_run(c, tmp_path, mesh=mesh, stop_at=4, **FULL)
    assert resumed is None and int(stopped.step) == 4
    saved = Checkpoints(tmp_path / "checkpoints").saved_model(4)
    assert saved == current_config(c, stopped).student != TINY
    state, losses, made, _, resumed = _compacted_run(c, tmp_path, mesh=mesh, **FULL)
    assert resumed == 4
    assert made[0].config.student == saved and len(made) == 2  # resumed small; stage 2 makes one more
    assert [s.compilations for s in made] == [1, 1]  # the full run's steps: restored placement matches
    assert losses == full_losses
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoints_without_a_model_still_restore(tmp_path):
    """Checkpoints written before the model item existed restore into the given (original) state."""
    c = _config("full", micro_batches=1)
    _, student = _models()
    state = init_state(c, jax.tree.map(jnp.asarray, student), jax.random.key(2))
    Checkpoints(tmp_path).save(3, state.replace(step=jnp.asarray(3, jnp.int32)), {"i": 3}, {"run": "old"})
    assert Checkpoints(tmp_path).saved_model(3) is None
    data = Batches(_batches())
    c_now, restored, resumed = resume_student(Checkpoints(tmp_path), c, state, data, config={"run": "old"})
    assert resumed == 3 and c_now == c and int(restored.step) == 3 and data.i == 3
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
