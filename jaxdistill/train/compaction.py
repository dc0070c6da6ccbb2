"""Compacting pruning stages: at each stage the student and its optimizer state are sliced to the
smaller dense model its masks emulate, so the steps after the stage cost what the smaller model
costs (a 50% student trains at about half the FLOPs) instead of running full width under masks.

    stage(state):  c_now = current_config(c, state)             the student as it is now (its shapes)
                   masks = prune(c_now, state)                   e.g. importance + prune_to(..., reference=c.student)
                   c', state' = compact_state(c_now, state)      params, Adam mu/nu, LoRA adapters sliced
                   state' placed by state_shardings(c', .), step' = make_train_step(c', shardings)
                   -> (state', step')                            the loop steps on with step' (one compilation)

The masked path (train at full width, `reset_pruned_moments` at each stage) is the reference: the
compacted student has the same losses, weights and Adam moments as the masked one sliced, to float
rounding. That holds because in the masked step pruned weights get exactly zero gradients (so the
global gradient norm, hence clipping, is the same), Adam and weight decay are elementwise, the masked
RMSNorm averages over the surviving channels only, and LoRA factors slice with their kernel's input
(a) and output (b) axes. Ratios stay fractions of the ORIGINAL model: `prune` passes `reference=c.student`
(the original) to `prune_to`, and the width search depends only on the reference and the current
widths, so each stage picks the same widths as the masked path would.

Checkpoints record the student's shape (the step's config, saved by `train_loop`), and
`resume_student` restores a compacted student into its saved shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import optax

from jaxdistill.models import abstract_params, structure
from jaxdistill.models.hf import to_host
from jaxdistill.pruning import Masks, compaction_plan, full_masks, slice_adapter, slice_leaf, slice_params
from jaxdistill.train.checkpoints import Checkpoints
from jaxdistill.train.errors import TrainingError
from jaxdistill.train.loop import resume
from jaxdistill.train.optimizer import make_optimizer
from jaxdistill.train.step import StepConfig, TrainState, init_state, make_train_step, state_shardings, trainable_of


def current_config(c: StepConfig, state) -> StepConfig:
    """`c` with the student's sizes (layers, hidden, heads, kv heads, MLP width) read from the
    shapes of `state.params` (a `TrainState`, placed, host or abstract; or a params tree): the
    StepConfig of a student compacted by earlier stages. `c` itself when nothing changed."""
    params = state.params if isinstance(state, TrainState) else state
    sizes: dict[str, int] = {}
    for axes, leaf in structure.leaves_with_axes(c.student, params):
        for name, n in zip(axes, np.shape(leaf)):
            field = structure.axis(name).size
            if sizes.setdefault(field, int(n)) != n:
                raise TrainingError(f"the student's params disagree on {field} ({sizes[field]} vs {n}): "
                                    "not the params of one model")
    student = c.student.replace(**sizes)
    return c if student == c.student else dataclasses.replace(c, student=student)


def _slicers(c: StepConfig, trainable, kept) -> object:
    """A tree like the trainable tree holding, per leaf, the function slicing that leaf (or any leaf
    shaped like it: an optimizer moment) to the kept indices."""
    if c.trainable == "lora":
        return {module: {factor: (lambda x, m=module, f=factor: slice_adapter(c.student, m, f, x, kept))
                         for factor in ab} for module, ab in trainable.items()}
    return structure.map_with_axes(lambda axes, _: (lambda x, axes=axes: slice_leaf(x, axes, kept)),
                                   c.student, trainable)


def compact_state(c: StepConfig, state: TrainState) -> tuple[StepConfig, TrainState]:
    """(the compacted StepConfig, the compacted state): every structure `state.masks` prunes sliced
    away — params, every params-shaped subtree of the optimizer state (Adam mu/nu; scalars such as
    the step count stay), the LoRA adapters and their moments (trainable=lora) — and masks = the
    small model's full masks. `c` must describe the state as it is (`current_config`); the masks must
    be concrete and uniform across kept layers (as `prune_to` makes them).

    The state is gathered to the host (sharded or not, across processes too) and the result is host
    numpy arrays: place it with `place` (or `jax.device_put(state, state_shardings(c', state, mesh))`)
    before stepping it with `make_train_step(c', shardings)`."""
    host = lambda tree: jax.tree.map(to_host, tree)
    small, kept = compaction_plan(c.student, host(state.masks))
    trainable = host(trainable_of(c, state))
    slicers = _slicers(c, trainable, kept)
    sliced = jax.tree.map(lambda fn, x: fn(x), slicers, trainable)
    opt_state = optax.tree_map_params(make_optimizer(c.optimizer, c.total_steps, trainable),
                                      lambda x, fn: fn(to_host(x)), state.opt_state, slicers,
                                      transform_non_params=to_host)
    if c.trainable == "lora":
        params, lora = slice_params(c.student, host(state.params), kept), sliced
    else:
        params, lora = sliced, {}
    new = TrainState(step=to_host(state.step), params=params, lora=lora, opt_state=opt_state,
                     masks=jax.tree.map(np.asarray, full_masks(small)), first_bad_step=to_host(state.first_bad_step))
    return dataclasses.replace(c, student=small), new


def _put(x, sharding):
    if isinstance(x, jax.Array):
        return jax.device_put(x, sharding)
    x = np.asarray(x)  # the same host value on every process: each takes the shards it holds
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place(c: StepConfig, state: TrainState, mesh=None) -> tuple[TrainState, TrainState | None]:
    """(the state on `mesh` by `state_shardings`, the shardings); without a mesh, on the default
    device (shardings None)."""
    if mesh is None:
        return jax.device_put(state), None
    shardings = state_shardings(c, state, mesh)
    return jax.tree.map(_put, state, shardings), shardings


def abstract_state(c: StepConfig, mesh=None) -> TrainState:
    """The train state of `c` as `jax.ShapeDtypeStruct`s placed by `state_shardings` (on the
    default device without a mesh): a restore target, nothing allocated."""
    key = jax.random.key(0)
    shapes = jax.eval_shape(lambda params: init_state(c, params, key), abstract_params(c.student))
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    else:
        shardings = state_shardings(c, shapes, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def compacting_stage(c: StepConfig, prune: Callable[[StepConfig, TrainState], Masks], *, mesh=None,
                     make_step: Callable = make_train_step,
                     make_record: Callable[[StepConfig], Callable] | None = None):
    """A `train_loop` hook for one pruning stage that compacts the student.

    prune(c_now, state) -> masks: the stage's masks for the student as it is now (`c_now`, from the
    state's shapes; `state.masks` are its current masks), e.g. importance on
    `student_params(c_now, ...)` and `prune_to(c_now.student, scores, ratio, masks=state.masks,
    reference=c.student, ...)` — `reference` keeps the ratio a fraction of the original model.

    The hook returns (state, make_step(c', shardings)) — or with `make_record`, also the new
    throughput `record = make_record(c')` — where c', state are the compacted config and state,
    placed on `mesh` (or, when the hook is called with `shardings=` as `run_phase` does today, on
    their mesh). When the masks prune nothing new, it returns the state alone (same step)."""

    def hook(state: TrainState, *, shardings=None):
        nonlocal mesh
        if mesh is None and shardings is not None:
            mesh = jax.tree.leaves(shardings)[0].mesh
        now = current_config(c, state)
        small_c, small = compact_state(now, state.replace(masks=prune(now, state)))
        small, small_shardings = place(small_c, small, mesh)
        if small_c == now:
            return small
        step = make_step(small_c, small_shardings)
        return (small, step) if make_record is None else (small, step, make_record(small_c))

    return hook


def resume_student(checkpoints: Checkpoints, c: StepConfig, state: TrainState, batches, *, mesh=None,
                   config: dict, ignore: tuple[str, ...] = (), log=None) -> tuple[StepConfig, TrainState, int | None]:
    """`resume` for a student that may have been compacted before the checkpoint was saved:
    (the StepConfig of the restored student, the state placed on `mesh`, the step resumed from or
    None). `c` and `state` are the run's start (original student); without a checkpoint they come
    back placed, unchanged. Use it in place of `resume` and go on with what it returns:

        c, state, resumed = resume_student(checkpoints, c, state, data, mesh=mesh, config=config,
                                           ignore=("train.stop_at_step",))
        shardings = state_shardings(c, state, mesh)
        step = make_train_step(c, shardings)
    """
    placed, _ = place(c, state, mesh)
    reshape = lambda model: placed if model == c.student else abstract_state(
        dataclasses.replace(c, student=model), mesh)
    restored, step = resume(checkpoints, placed, batches, config=config, ignore=ignore, reshape=reshape,
                            **({} if log is None else {"log": log}))
    return current_config(c, restored), restored, step

