"""The distillation engine: sharded steps, resume, checkpoints under SIGKILL, LoRA, pruning in the
loop, learning, compilation count, bad input."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from jaxdistill import losses
from jaxdistill.cli import main
from jaxdistill.config import load_config, packaged_config
from jaxdistill.jobs.distill import run_distill
from jaxdistill.jobs.rundir import RunDirError
from jaxdistill.losses import DivergenceLoss, LossConfig
from jaxdistill.models import ModelConfig, forward, init_params, logical_axes, make_mesh, save_pretrained, shard_params
from jaxdistill.models.structure import decay_mask
from jaxdistill.models.lora import merge
from jaxdistill.models.sharding import activation_sharding
from jaxdistill.pruning import apply_masks, masked_forward, param_count
from jaxdistill.train import (Checkpoints, LoraConfig, OptimizerConfig, StepConfig, TrainingError, init_state,
                              learning_rate_schedule, make_train_step, optimizer_state_bytes, state_shardings)
from tests.tiny_models import hf_logits

TINY = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)


def _step_config(*, learning_rate=1e-3, warmup_steps=0, decay="cosine", teacher=TINY, **kw) -> StepConfig:
    """A step config with the engine's plain defaults: blended loss, live teacher, no weight decay."""
    kw.setdefault("loss", LossConfig())
    kw.setdefault("teacher_targets", "live" if teacher is not None else "none")
    opt = OptimizerConfig(learning_rate=learning_rate, warmup_steps=warmup_steps, decay=decay, weight_decay=0.0)
    return StepConfig(student=TINY, teacher=teacher, optimizer=opt, **kw)


def _device_batch(batch, mesh):
    return {k: jax.device_put(np.asarray(v), activation_sharding(mesh, np.ndim(v))) for k, v in batch.items()}


def _batches(n, rows=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, 64, (rows, length)).astype(np.int32)
        segments = np.ones_like(tokens)
        segments[:, length // 2:] = 2
        labels = np.roll(tokens, -1, 1)
        labels[:, -1] = -1
        labels[:, length // 2 - 1] = -1
        out.append({"tokens": tokens, "segment_ids": segments, "labels": labels,
                    "weights": (labels >= 0).astype(np.float32),
                    "parts": np.where(labels >= 0, 3, 0).astype(np.int8)})
    return out


def _models(seed=0):
    teacher = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, init_params(TINY, jax.random.key(seed)))
    student = init_params(TINY, jax.random.key(seed + 1))
    return teacher, student


def _run_steps(c, mesh_shape, n=5, masks=None):
    mesh = make_mesh(mesh_shape)
    teacher, student = _models()
    axes = logical_axes(TINY)
    teacher, student = shard_params(teacher, axes, mesh), shard_params(student, axes, mesh)
    state = init_state(c, student, jax.random.key(2), masks=masks)
    shardings = state_shardings(c, state, mesh)
    state = jax.device_put(state, shardings)
    step = make_train_step(c, shardings)
    out = []
    for batch in _batches(n):
        state, metrics = step(state, teacher, _device_batch(batch, mesh))
        out.append(float(metrics["loss"]))
    return out, state, step


@functools.lru_cache(maxsize=1)
def _single_device_steps(c):
    """The single-device reference losses and weights (computed once for all mesh shapes)."""
    losses, state, _ = _run_steps(c, (1, 1, 1))
    return losses, jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), pytest.param((2, 2, 2), marks=pytest.mark.slow),
                                        pytest.param((1, 4, 2), marks=pytest.mark.slow)])
def test_sharded_steps_equal_single_device(mesh_shape):
    c = _step_config(micro_batches=2, learning_rate=1e-2, total_steps=5)
    single, single_params = _single_device_steps(c)
    sharded, state, step = _run_steps(c, mesh_shape)
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
    # the weights too: sharded reductions sum in another order, and Adam scales that rounding up (it
    # normalises each gradient entry, so an entry within rounding of zero can move by up to ~lr per
    # step): 1% of lr over the 5 steps
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single_params)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-2 * 1e-2)
    assert step.compilations == 1


def test_learning_reduces_kl_to_teacher():
    """Forward-KL distillation on a fixed synthetic set: the KL falls (smoothed over 10-step windows,
    each window lower than the one before) and ends below half of the untrained student's."""
    c = _step_config(loss=DivergenceLoss(), learning_rate=3e-3, total_steps=60, warmup_steps=5, decay="constant")
    teacher, student = _models(3)
    state = init_state(c, student, jax.random.key(4))
    step = make_train_step(c)
    data = [{k: jnp.asarray(v) for k, v in b.items()} for b in _batches(4, seed=5)]
    kl = []
    for i in range(60):
        state, metrics = step(state, teacher, data[i % 4])
        kl.append(float(metrics["forward_kl"]))
    windows = np.asarray(kl).reshape(6, 10).mean(1)
    assert np.all(np.diff(windows) < 0), windows
    assert windows[-1] < 0.5 * kl[0], (kl[0], windows)


def test_lora_trains_adapters_only_and_merges(tmp_path):
    c = _step_config(loss=DivergenceLoss(), learning_rate=1e-2, total_steps=3, trainable="lora",
                     lora=LoraConfig(rank=4, alpha=16.0, modules=("q", "v", "down")))
    teacher, student = _models(6)
    state = init_state(c, student, jax.random.key(7))
    before = jax.tree.map(np.asarray, state)
    step = make_train_step(c)
    for batch in _batches(3, seed=8):
        state, _ = step(state, teacher, {k: jnp.asarray(v) for k, v in batch.items()})
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert any(not np.array_equal(a, np.asarray(b))
               for a, b in zip(jax.tree.leaves(before.lora), jax.tree.leaves(state.lora)))
    adapter_bytes = sum(x.nbytes for x in jax.tree.leaves(state.lora))
    assert 2 * adapter_bytes <= optimizer_state_bytes(state) <= 2 * adapter_bytes + 64  # mu, nu (+ counters)
    merged = merge(TINY, state.params, state.lora, alpha=16.0)
    a = np.asarray(state.lora["down"]["a"][1], np.float64)
    b = np.asarray(state.lora["down"]["b"][1], np.float64)
    expected = np.asarray(student["layers"]["mlp"]["down"]["kernel"][1], np.float64) + 16.0 / 4 * a @ b
    np.testing.assert_allclose(np.asarray(merged["layers"]["mlp"]["down"]["kernel"][1]), expected, rtol=1e-5, atol=1e-6)
    save_pretrained(TINY, merged, tmp_path / "merged")
    tokens = np.random.default_rng(0).integers(0, 64, 12)
    ours = np.asarray(forward(TINY, merged, jnp.asarray(tokens[None])))[0]
    assert np.abs(ours - hf_logits(tmp_path / "merged", [tokens])[0]).max() <= 1e-4
    full = _step_config(total_steps=3)
    assert optimizer_state_bytes(init_state(full, student, jax.random.key(0))) > 10 * optimizer_state_bytes(state)


def test_vocab_mismatch():
    with pytest.raises(TrainingError, match="teacher 128, student 64 — teacher and student must share a tokenizer"):
        _step_config(teacher=TINY.replace(vocab_size=128), total_steps=1)


# ------------------------------------------------------------------- the loop (run_distill)


def _run(tmp_path, *overrides):
    base = [f"run_dir={tmp_path}", "data.subsample=120", "data.max_len=40", "train.seq_len=80",
            "train.batch_size=4", "teacher.prepare_steps=0", "teacher.model.hidden_size=32",
            "teacher.model.intermediate_size=64", "teacher.model.num_layers=2", "teacher.model.head_dim=8",
            "train.steps=10", "train.log_every=1", "train.checkpoint_every=5", "pruning.start=2",
            "pruning.interval=3", "pruning.stages=2", "pruning.multiple=8", "pruning.calibration_batches=2",
            "loss.chunk_size=64", "eval=null"]  # evaluation in a run: tests/test_eval_run.py
    return load_config(packaged_config("tiny.yaml"), base + list(overrides))


@pytest.mark.slow  # ~40 / ~25 s: the default suite stays under ~10 min on 2 cores
def test_resume_is_bitwise_identical(tmp_path):
    straight = run_distill(_run(tmp_path / "a"), log=lambda m: None)
    assert straight["steps"] == 10
    stopped = run_distill(_run(tmp_path / "b", "train.stop_at_step=5"), log=lambda m: None)
    assert stopped["steps"] == 5 and not (tmp_path / "b" / "student").exists()
    resumed = run_distill(_run(tmp_path / "b"), log=lambda m: None)
    assert resumed["steps"] == 10
    a = (tmp_path / "a" / "student" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "student" / "model.safetensors").read_bytes()
    assert a == b
    with pytest.raises(RunDirError, match=r"holds a run with other settings: optimizer.learning_rate: 0.002 -> 0.01"):
        run_distill(_run(tmp_path / "b", "optimizer.learning_rate=0.01"), log=lambda m: None)


@pytest.mark.slow  # ~40 / ~25 s: the default suite stays under ~10 min on 2 cores
def test_pruning_in_the_loop_keeps_zeros_and_exports(tmp_path):
    run = _run(tmp_path, "pruning.final_ratio=0.4")
    result = run_distill(run, log=lambda m: None)
    records = [json.loads(line) for line in (tmp_path / "metrics-student.jsonl").read_text().splitlines()]
    assert {r["step_compilations"] for r in records} == {1}  # no recompilation, across pruning stages
    assert result["compression_ratio"]["total"] > 0.2
    checkpoints = Checkpoints(tmp_path / "checkpoints-student")
    step = checkpoints.latest_step()
    restored = checkpoints.restore(step)[0]
    params, masks = restored["params"], restored["masks"]
    original = ModelConfig(model_type="qwen3", vocab_size=4096, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, tie_word_embeddings=True)
    student_config = checkpoints.saved_model(step)  # the stages compacted the student: the checkpoint is smaller
    assert student_config.replace(hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2) == original
    assert param_count(student_config)["total"] < param_count(original)["total"]
    for a, b in zip(jax.tree.leaves(apply_masks(student_config, params, masks)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # pruned weights exactly zero
    tokens = np.random.default_rng(1).integers(3, 4096, 20)
    masked = np.asarray(masked_forward(student_config, params, masks, jnp.asarray(tokens[None])))[0]
    assert np.abs(masked - hf_logits(tmp_path / "student", [tokens])[0]).max() <= 1e-4


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    run = _run(tmp_path, "optimizer.learning_rate=1.0e+30", "optimizer.clip_norm=1.0e+30", "optimizer.warmup_steps=3",
               "pruning=null", "train.checkpoint_every=1")
    with pytest.raises(TrainingError, match=r"the loss or the weights became non-finite at step (\d+); stopped: the last good checkpoint is step") as err:
        run_distill(run, log=lambda m: None)
    bad = int(err.value.args[0].split("step ")[1].split(";")[0])
    checkpoints = Checkpoints(tmp_path / "checkpoints-student")
    assert checkpoints.latest_step() == bad
    state = checkpoints.restore(bad)[0]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state["params"]))


def test_unknown_config_key_lists_valid_keys(tmp_path):
    result = CliRunner().invoke(main, ["distill", f"run_dir={tmp_path}", "train.stepz=3"])
    assert result.exit_code == 2
    assert "unknown config key 'train.stepz'; valid keys here: batch_size, checkpoint_every" in result.output


def test_sigkill_during_checkpoint_save_keeps_previous(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, jax, jax.numpy as jnp
        from jaxdistill.train import Checkpoints
        ck = Checkpoints({str(tmp_path / "ck")!r}, keep=3)
        state = {{"w": jnp.arange(1000.0), "step": jnp.asarray(1)}}
        ck.save(1, state, {{"epoch": 0}}, {{"run": 1}})
        big = {{"w": jnp.ones((4096, 4096)), "step": jnp.asarray(2)}}
        ck.save(2, big, {{"epoch": 1}}, {{"run": 2}}, wait=False)  # killed while writing
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == -signal.SIGKILL
    checkpoints = Checkpoints(tmp_path / "ck")
    assert checkpoints.latest_step() == 1
    state = checkpoints.restore(1)[0]
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(1000.0))


@pytest.mark.slow  # the same equality at the step level: test_teacher_targets_none_live_cached_with_full_and_lora
def test_cached_mode_with_full_topk_equals_live_forward_kl(tmp_path):
    """Cached sparse targets with k = V (top-k, exact) give the live forward-KL loss at step 1."""
    common = ["pruning=null", "train.steps=1", "loss.temperature=1.0", "student.init=random", "loss.kind=divergence"]
    cached = run_distill(_run(tmp_path / "cached", *common, "teacher.targets=cached", "teacher.cache.method=topk",
                              "teacher.cache.k=4096"), log=lambda m: None)
    live = run_distill(_run(tmp_path / "live", *common, "teacher.targets=live"), log=lambda m: None)
    # The sparse form is self_term - sum w log p_S, a difference of two terms of size ~log V = 8.3,
    # so its fp32 error is absolute, ~8 * 1e-7 (the teacher runs in other batches there, too).
    assert cached["final"]["forward_kl"] == pytest.approx(live["final"]["forward_kl"], abs=2e-6)
    assert cached["final"]["forward_kl"] > 0


def test_micro_batches_add_up_to_the_whole_batch():
    """Micro-batches with different numbers of supervised tokens: same loss and update as one batch."""
    batch = _batches(1, rows=4, seed=9)[0]
    batch["weights"][:2, 4:] = 0.0          # rows 0, 1 supervise few tokens, rows 2, 3 many
    batch["parts"][:2, 4:] = 0
    teacher, student = _models(10)
    out = {}
    for micro in (1, 4):
        c = _step_config(micro_batches=micro, learning_rate=1e-2, total_steps=2)
        state = init_state(c, jax.tree.map(jnp.copy, student), jax.random.key(0))
        state, metrics = make_train_step(c)(state, teacher, {k: jnp.asarray(v) for k, v in batch.items()})
        out[micro] = (float(metrics["loss"]), float(metrics["grad_norm"]), state.params)
    assert out[4][0] == pytest.approx(out[1][0], rel=1e-6)
    assert out[4][1] == pytest.approx(out[1][1], rel=1e-5)
    for a, b in zip(jax.tree.leaves(out[4][2]), jax.tree.leaves(out[1][2])):
        # The gradients agree to float rounding (grad_norm above); Adam's m / (sqrt(v) + eps)
        # turns a rounding-level gradient difference into up to ~1e-3 of the 1e-2 step where
        # |g| is near eps, so the weights are compared at 1e-5.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_schedule_and_weight_decay_mask():
    opt = OptimizerConfig(learning_rate=1.0, warmup_steps=4, decay="linear")
    lr = [float(learning_rate_schedule(opt, 14)(s)) for s in range(14)]
    np.testing.assert_allclose(lr[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(lr[4:], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], rtol=1e-6)
    mask = decay_mask(init_params(TINY, jax.random.key(0)))
    assert mask["embed"] and mask["layers"]["attn"]["q"]["kernel"] and mask["layers"]["mlp"]["down"]["kernel"]
    assert not mask["layers"]["attn_norm"]["scale"] and not mask["final_norm"]["scale"]
    assert not mask["layers"]["attn"]["q_norm"]["scale"]


@pytest.mark.parametrize("trainable", ["full", "lora"])
def test_teacher_targets_none_live_cached_with_full_and_lora(trainable):
    """Every (teacher targets, trainable) pair steps and learns. Cached top-k targets with k = V are the
    teacher's exact distribution, so the cached step's first loss equals the live one (blended loss)."""
    teacher, student = _models(11)
    batch = {k: jnp.asarray(v) for k, v in _batches(1, rows=4, seed=12)[0].items()}
    logits = forward(TINY, teacher, batch["tokens"], segment_ids=batch["segment_ids"])
    t = losses.topk_targets(logits, TINY.vocab_size)
    cached_batch = dict(batch, target_ids=t.ids, target_weights=t.weights, target_self_term=t.self_term)
    lora = LoraConfig(rank=4, modules=("q", "up"))
    first = {}
    for targets in ("none", "live", "cached"):
        loss = LossConfig(w_kl=0.0) if targets == "none" else LossConfig()
        c = _step_config(teacher_targets=targets, loss=loss, trainable=trainable, lora=lora, learning_rate=3e-2,
                         total_steps=4)
        state = init_state(c, jax.tree.map(jnp.copy, student), jax.random.key(13))
        step = make_train_step(c)
        values = []
        for _ in range(4):
            state, metrics = step(state, teacher if targets == "live" else {},
                                  cached_batch if targets == "cached" else batch)
            values.append(float(metrics["loss"]))
        assert values[-1] < values[0], (targets, values)
        assert step.compilations == 1
        first[targets] = values[0]
    # sparse form: self_term - sum w log p_S, fp32 error ~8 * 1e-7 on terms of size log V
    assert first["cached"] == pytest.approx(first["live"], abs=2e-6)
    assert first["live"] > first["none"]  # the KL term adds to the same CE terms


@pytest.mark.slow  # the step itself: test_teacher_targets_none_live_cached_with_full_and_lora[lora]
def test_lora_from_a_cached_teacher_end_to_end(tmp_path):
    """The combination the old `mode` could not express: adapters trained on cached teacher targets,
    through the whole job (cache build, batches with targets, merge, compaction, export)."""
    result = run_distill(_run(tmp_path, "pruning=null", "train.steps=3", "teacher.targets=cached",
                              "student.trainable=lora", "teacher.cache.k=8", "student.init=random"), log=lambda m: None)
    assert result["steps"] == 3 and result["teacher_targets"] == "cached" and result["trainable"] == "lora"
    assert np.isfinite(result["final"]["kl"]) and result["final"]["kl"] > 0
    assert (tmp_path / "student" / "model.safetensors").is_file()
