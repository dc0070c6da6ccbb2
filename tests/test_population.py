"""Population mode: member k of a vmapped population equals the same student trained alone with
`make_train_step` (different init, pruning masks, loss weights, learning rates); the population
sharded over a "population" mesh axis equals it unsharded; bad populations fail clearly.
(8 virtual CPU devices come from conftest.py, set before JAX is imported.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.losses import LossConfig
from jaxdistill.models import ModelConfig, init_params, make_mesh
from jaxdistill.parts import ANSWER, TRACE
from jaxdistill.pruning import full_masks
from jaxdistill.train import OptimizerConfig, StepConfig, TrainingError, init_state, make_train_step
from jaxdistill.train.population import init_population, make_population_step, population_shardings, unstack

TINY = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)
STEPS = 5
# four members, each with its own init seed and pruning masks; members 0 and 3 share a learning rate
# and loss weights (so three lone configs, three compilations, cover all four)
LRS = (3e-3, 1e-2, 6e-3, 3e-3)
WEIGHTS = {"w_answer": (1.0, 0.5, 2.0, 1.0), "w_trace_ce": (1.0, 0.0, 0.3, 1.0), "w_kl": (1.0, 0.0, 2.5, 1.0)}
P = len(LRS)


def _config(learning_rate=1e-2, **loss) -> StepConfig:
    """Blended loss, live teacher, warm-up then cosine decay, weight decay, two micro-batches."""
    opt = OptimizerConfig(learning_rate=learning_rate, warmup_steps=2, decay="cosine", weight_decay=0.01)
    return StepConfig(student=TINY, teacher=TINY, loss=LossConfig(**loss), optimizer=opt, total_steps=STEPS,
                      teacher_targets="live", micro_batches=2)


def _batches(n=STEPS, rows=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, 64, (rows, length)).astype(np.int32)
        segments = np.where(np.arange(length) < length // 2, 1, 2) * np.ones_like(tokens)
        labels = np.roll(tokens, -1, 1)
        labels[:, [length // 2 - 1, -1]] = -1
        parts = np.where(np.arange(length) % (length // 2) < 3, TRACE, ANSWER) * (labels >= 0)
        out.append({"tokens": tokens, "segment_ids": segments, "labels": labels,
                    "weights": (labels >= 0).astype(np.float32), "parts": parts.astype(np.int8)})
    return [{k: jnp.asarray(v) for k, v in b.items()} for b in out]


@functools.lru_cache(maxsize=1)
def _teacher():
    return jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, init_params(TINY, jax.random.key(0)))


def _masks():
    """Four different pruning masks (equal shapes): none, heads + neurons, hidden channels + neurons, a layer."""
    full = full_masks(TINY)
    return [full,
            {**full, "heads": full["heads"].at[1, 0, 1].set(0.0), "mlp": full["mlp"].at[:, ::4].set(0.0)},
            {**full, "hidden": full["hidden"].at[-8:].set(0.0), "mlp": full["mlp"].at[0, :16].set(0.0)},
            {**full, "layers": full["layers"].at[0].set(0.0)}]


@functools.lru_cache(maxsize=1)
def _all_params():
    """Six students' initial weights, one init program (init_params compiles on every call)."""
    return jax.jit(jax.vmap(lambda k: init_params(TINY, k)))(jax.random.split(jax.random.key(10), 6))


def _params(n):
    return [jax.tree.map(lambda x, k=k: x[k], _all_params()) for k in range(n)]


def _keys(n):
    return [jax.random.key(20 + k) for k in range(n)]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _weight_tolerance(learning_rate) -> float:
    """Weights agree to 1e-5 plus 1% of a step. vmapped matmuls round differently (~1e-7 relative
    gradients), and Adam's first update lr * g / (|g| + 1e-8) turns that into a fraction of a step
    for the rare weight whose gradient is ~1e-8 (measured: up to 2.2e-5 at lr 3e-3, set at step 0, not
    growing after); Adam's moments themselves agree to ~1e-7."""
    return 1e-5 + 1e-2 * learning_rate


def _train(state, step, n=STEPS):
    """n steps: (per-step losses, the final state as numpy, the last metrics)."""
    teacher, out = _teacher(), []
    for batch in _batches(n):
        state, metrics = step(state, teacher, batch)
        out.append(np.asarray(metrics["loss"]))
    return np.stack(out), jax.tree.map(np.asarray, state), metrics


@functools.lru_cache(maxsize=1)
def _population_run():
    """The unsharded P=4 population after STEPS steps: (losses [STEPS, P], final state)."""
    step = make_population_step(_config(), P, learning_rates=LRS, loss_weights=WEIGHTS)
    losses, state, metrics = _train(init_population(_config(), _params(P), _keys(P), _masks()), step)
    assert {k: v.shape for k, v in metrics.items()} == {k: (P,) for k in metrics}  # a leading P axis
    np.testing.assert_allclose(metrics["w_kl"], WEIGHTS["w_kl"])
    assert step.compilations == 1
    return losses, state


@functools.lru_cache(maxsize=None)
def _lone_step(learning_rate, weights):
    """The single-student step of one (learning rate, loss weights) config (members 0 and 3 share it)."""
    return make_train_step(_config(learning_rate, **dict(weights)))


@pytest.mark.parametrize("k", range(P))
def test_member_equals_lone_run(k):
    pop_losses, pop_state = _population_run()
    weights = tuple((name, w[k]) for name, w in WEIGHTS.items())
    c = _config(LRS[k], **dict(weights))
    lone_losses, lone, _ = _train(init_state(c, _params(P)[k], _keys(P)[k], masks=_masks()[k]),
                                  _lone_step(LRS[k], weights))
    member = unstack(pop_state, k)
    assert np.max(np.abs(pop_losses[:, k] - lone_losses)) <= 1e-5 * max(1.0, np.max(np.abs(lone_losses)))
    assert _max_diff(member.params, lone.params) <= _weight_tolerance(LRS[k])
    assert _max_diff(member.opt_state, lone.opt_state) <= 1e-6  # Adam's moments: ~1e-7 apart
    assert int(member.step) == STEPS and int(member.first_bad_step) == -1
    np.testing.assert_array_equal(member.masks["mlp"], np.asarray(_masks()[k]["mlp"]))


def test_members_differ():
    """Different seeds, masks, weights and rates give different students (the test above is not vacuous)."""
    _, state = _population_run()
    assert _max_diff(unstack(state, 0).params, unstack(state, 1).params) > 1e-2


@pytest.mark.parametrize("devices", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_sharded_population_equals_unsharded(devices):
    mesh = make_mesh((devices,), ("population",))
    state = init_population(_config(), _params(P), _keys(P), _masks())
    state = jax.device_put(state, population_shardings(state, mesh))
    step = make_population_step(_config(), P, learning_rates=LRS, loss_weights=WEIGHTS, mesh=mesh)
    teacher, sharded = _teacher(), []
    for batch in _batches():
        state, metrics = step(state, teacher, batch)
        sharded.append(np.asarray(metrics["loss"]))
    embed = state.params["embed"]
    assert embed.sharding.spec[0] == "population" and step.compilations == 1
    assert [s.data.shape[0] for s in embed.addressable_shards] == [P // devices] * devices
    losses, unsharded = _population_run()
    np.testing.assert_allclose(np.stack(sharded), losses, rtol=1e-5, atol=1e-6)
    assert _max_diff(state.params, unsharded.params) <= _weight_tolerance(max(LRS))


def test_bad_populations_fail_clearly():
    c = _config()
    keys = _keys(3)
    other = init_params(TINY.replace(intermediate_size=96), jax.random.key(0))
    with pytest.raises(TrainingError, match=r"member 2's params does not match.*mlp.*\(2, 32, 96\), expected "
                                            r"\(2, 32, 64\)"):
        init_population(c, _params(2) + [other], keys)
    with pytest.raises(TrainingError, match="keys: 2 members, the population has 3"):
        init_population(c, _params(3), keys[:2])
    state = init_population(c, _params(2), keys[:2])
    step = make_population_step(c, 3)
    with pytest.raises(TrainingError, match=r"leading sizes \[2\]; this step was made for P=3"):
        step(state, _teacher(), _batches(1)[0])
    with pytest.raises(TrainingError, match=r"learning_rates: shape \(2,\), the population has P=3"):
        make_population_step(c, 3, learning_rates=[1e-3, 2e-3])
    with pytest.raises(TrainingError, match="set the config's w_kl > 0"):
        make_population_step(_config(w_kl=0.0), 2, loss_weights={"w_kl": [0.0, 1.0]})
    with pytest.raises(TrainingError, match="per-member weights are"):
        make_population_step(c, 2, loss_weights={"temperature": [1.0, 2.0]})
    with pytest.raises(TrainingError, match="whose size divides P=3"):
        make_population_step(c, 3, mesh=make_mesh((2,), ("population",)))
