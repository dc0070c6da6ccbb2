"""The train state and the one-jit distillation step.

State (`TrainState`, a registered dataclass pytree; everything the step changes):

    step      int32            params     student weights (trained when trainable=full, frozen for lora)
    lora      LoRA adapters ({} unless trainable=lora)    opt_state  optax state of what trains
    masks     pruning masks (`pruning.full_masks` when not pruning)
    first_bad_step  int32, the first step whose loss or update was not finite (-1: none); checked
                    before every checkpoint, so saved checkpoints are always finite

One jitted step (state donated) runs: the teacher forward (stop-gradient) or the batch's cached
sparse targets, the student forward on masked weights (adapters merged), the chunked fused loss,
gradients accumulated over micro-batches in a scan, clipping and the optax update, and re-masking
(so pruned structures stay exactly zero). Two independent choices shape it:

    teacher_targets   none (no teacher term) | live (teacher forward in the step) | cached (sparse
                      targets in the batch: target_ids, target_weights, target_self_term)
    trainable         full (every student weight) | lora (adapters on a frozen student)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxdistill import losses
from jaxdistill.models import ModelConfig, as_module, hidden_states, logical_axes, tree_shardings
from jaxdistill.models.lora import MODULES, init_lora, merge
from jaxdistill.models.transformer import Params
from jaxdistill.pruning import apply_masks, full_masks
from jaxdistill.train.errors import TrainingError
from jaxdistill.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer

TEACHER_TARGETS = ("none", "live", "cached")
TRAINABLE = ("full", "lora")
PER_TOKEN = ("labels", "weights", "parts")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    modules: tuple[str, ...] = ("q", "k", "v", "o")

    def __post_init__(self):
        unknown = sorted(set(self.modules) - set(MODULES))
        if unknown or not self.modules:
            raise TrainingError(f"LoRA modules {list(self.modules)}: unknown {unknown}; valid: {', '.join(MODULES)}")
        if self.rank < 1 or not self.alpha > 0:
            raise TrainingError(f"LoRA rank={self.rank} (>= 1), alpha={self.alpha} (> 0): out of range")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about the step (hashable: part of the compiled program). `loss` is a loss
    spec (`losses.LossConfig`, `BlendedCoT`, `DivergenceLoss`, `CrossEntropyLoss`)."""

    student: ModelConfig
    loss: Any
    optimizer: OptimizerConfig
    total_steps: int
    teacher: ModelConfig | None = None
    teacher_targets: str = "none"
    trainable: str = "full"
    lora: LoraConfig = LoraConfig()
    micro_batches: int = 1
    chunk_size: int = 1024
    capacity: int | None = None  # supervised positions per micro-batch reaching the head (None: all)
    masked: bool = True          # multiply by the pruning masks (False: a run that never holds partial masks)

    def __post_init__(self):
        if self.teacher_targets not in TEACHER_TARGETS:
            raise TrainingError(f"teacher_targets={self.teacher_targets!r}; valid: {', '.join(TEACHER_TARGETS)}")
        if self.trainable not in TRAINABLE:
            raise TrainingError(f"trainable={self.trainable!r}; valid: {', '.join(TRAINABLE)}")
        if self.teacher_targets == "live" and self.teacher is None:
            raise TrainingError("teacher_targets='live' needs a teacher model")
        if self.loss.uses_teacher and self.teacher_targets == "none":
            raise TrainingError(f"the loss {self.loss} needs a teacher, but teacher_targets='none'")
        if self.teacher is not None and self.teacher.vocab_size != self.student.vocab_size:
            raise TrainingError(
                f"vocab sizes differ: teacher {self.teacher.vocab_size}, student {self.student.vocab_size} "
                "— teacher and student must share a tokenizer")
        if self.capacity is not None and self.capacity < 1:
            raise TrainingError(f"capacity={self.capacity}: must be >= 1, or None (every position)")
        if self.micro_batches < 1 or self.total_steps < 1:
            raise TrainingError(f"micro_batches={self.micro_batches}, total_steps={self.total_steps}: "
                                "both must be >= 1")

    @property
    def live_teacher(self) -> bool:
        return self.teacher_targets == "live" and self.loss.uses_teacher


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: jax.Array
    params: Params
    lora: Params
    opt_state: Any
    masks: dict[str, jax.Array]
    first_bad_step: jax.Array

    def replace(self, **changes) -> TrainState:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict (the checkpoint layout)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def trainable_of(c: StepConfig, state: TrainState):
    return state.lora if c.trainable == "lora" else state.params


def init_state(c: StepConfig, params: Params, key, *, masks=None) -> TrainState:
    """A fresh train state around the student `params` (`key` initialises LoRA adapters)."""
    lora = init_lora(c.student, jax.random.fold_in(key, 1), rank=c.lora.rank, modules=c.lora.modules) \
        if c.trainable == "lora" else {}
    trainable = lora if c.trainable == "lora" else params
    if masks is not None and not c.masked and not all(bool(jnp.all(m != 0)) for m in jax.tree.leaves(masks)):
        raise TrainingError("these masks prune structures, but the step config has masked=False (it would train "
                            "the pruned weights): use masked=True, or compact the student first")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, lora=lora,
                      opt_state=make_optimizer(c.optimizer, c.total_steps, trainable).init(trainable),
                      masks=full_masks(c.student) if masks is None else masks,
                      first_bad_step=jnp.full((), -1, jnp.int32))


def student_params(c: StepConfig, params: Params, lora: Params, masks) -> Params:
    """The weights the student's forward uses: adapters merged, pruned structures zeroed (unless the
    config says the masks are all ones: `masked=False`)."""
    if lora:
        params = merge(c.student, params, lora, alpha=c.lora.alpha)
    return apply_masks(c.student, params, masks) if c.masked else params


def state_shardings(c: StepConfig, state: TrainState, mesh) -> TrainState:
    """Shardings of a train state on `mesh`: student weights and their optimizer moments by the
    logical-axis rules, everything else (adapters, masks, counters) replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = tree_shardings(logical_axes(c.student), state.params, mesh)
    out = jax.tree.map(lambda _: replicated, state).replace(params=params)
    if c.trainable == "lora":
        return out
    opt_state = optax.tree_map_params(
        make_optimizer(c.optimizer, c.total_steps, state.params), lambda _, sharding: sharding, state.opt_state,
        params, transform_non_params=lambda _: replicated)
    return out.replace(opt_state=opt_state)


def _teacher_inputs(c: StepConfig, teacher: Params, batch) -> dict[str, Any]:
    if not c.loss.uses_teacher:
        return {}
    if c.teacher_targets == "cached":
        return {"teacher_targets": losses.SparseTargets(batch["target_ids"], batch["target_weights"],
                                                        batch["target_self_term"])}
    hidden = hidden_states(c.teacher, teacher, batch["tokens"], segment_ids=batch.get("segment_ids"))
    return {"teacher_hidden": jax.lax.stop_gradient(hidden),
            "teacher_head": jax.lax.stop_gradient(as_module(c.teacher, teacher).head_kernel())}


def _loss(trainable, c: StepConfig, state: TrainState, batch, coefficients, teacher_inputs):
    """(loss, metrics) of one micro-batch, differentiable in `trainable`; `teacher_inputs`: the
    fused loss's teacher arguments for these rows (`_teacher_inputs`)."""
    params, lora = (state.params, trainable) if c.trainable == "lora" else (trainable, {})
    weights = student_params(c, params, lora, state.masks)
    h = hidden_states(c.student, weights, batch["tokens"], segment_ids=batch.get("segment_ids"),
                      hidden_mask=state.masks["hidden"] if c.masked else None)
    head = as_module(c.student, weights).head_kernel()
    return losses.fused_loss(c.loss.token_loss(), h, head, {k: batch[k] for k in PER_TOKEN}, step=state.step,
                             chunk_size=c.chunk_size, coefficients=coefficients, capacity=c.capacity,
                             **teacher_inputs)


def student_update(c: StepConfig, state: TrainState, batch, teacher_of, *, coefficients=None, schedule=None,
                   rows=None):
    """One student's step (everything but where the teacher's inputs come from): gradients summed
    over the micro-batches in a scan, clipping and AdamW, re-masking, the first non-finite step.

    teacher_of(micro_batch, micro_rows) -> the micro-batch's teacher inputs: the lone step computes
    them there; a population (`train.population`) passes `rows` it computed once for every member,
    split along with the batch. coefficients: the blended loss's (coefs, counts) for the whole batch
    (default: the config's loss); schedule: the learning-rate schedule (default: the config's)."""
    # Coefficients from the whole batch, so micro-batch losses and gradients add up exactly to the
    # whole batch's (each mean is over all of the batch's supervised tokens, not per micro-batch).
    coefs, counts = coefficients or c.loss.token_loss().coefficients({k: batch[k] for k in PER_TOKEN}, state.step)
    # Micro-batch m takes rows m, m + M, m + 2M, ...: every data shard contributes to every
    # micro-batch, so no shard idles and nothing is gathered.
    split = lambda x: jnp.swapaxes(x.reshape(-1, c.micro_batches, *x.shape[1:]), 0, 1)
    trainable = trainable_of(c, state)
    grad_fn = jax.value_and_grad(_loss, has_aux=True)

    def body(carry, xs):
        micro, micro_coefs, micro_rows = xs
        (value, metrics), grads = grad_fn(trainable, c, state, micro, micro_coefs, teacher_of(micro, micro_rows))
        return jax.tree.map(jnp.add, carry, (grads, value, metrics)), None

    zeros = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32),
             {name: jnp.zeros((), jnp.float32) for name in
              [m for m, _ in coefs.metric_terms] + (["dropped_tokens"] if c.capacity is not None else [])})
    grads, loss, metrics = jax.lax.scan(body, zeros, jax.tree.map(split, (batch, coefs, rows or {})))[0]
    schedule = schedule or learning_rate_schedule(c.optimizer, c.total_steps)
    grad_norm = optax.tree.norm(grads)  # one pass: the metric, clipping's norm (CSE'd) and finiteness
    tx = make_optimizer(c.optimizer, c.total_steps, trainable, schedule)  # built at trace time: in the program
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    new = state.replace(opt_state=opt_state, step=state.step + 1)
    if c.trainable == "lora":
        new = new.replace(lora=trainable)
    else:
        new = new.replace(params=apply_masks(c.student, trainable, state.masks) if c.masked else trainable)
    # Finite loss and gradients give finite weights unless the update itself overflows; the loop
    # checks the weights too before every checkpoint (`loop.check_finite`), outside the step.
    bad = ~jnp.isfinite(loss) | ~jnp.isfinite(grad_norm)
    new = new.replace(first_bad_step=jnp.where((state.first_bad_step < 0) & bad, state.step, state.first_bad_step))
    metrics = {**metrics, **counts, "loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step)}
    return new, metrics


def _step(c: StepConfig, state: TrainState, teacher, batch):
    """The lone student's step: the teacher's inputs computed per micro-batch, inside the scan."""
    return student_update(c, state, batch, lambda micro, _: _teacher_inputs(c, teacher, micro))


class CompiledStep:
    """A jitted function that counts how often it was traced (each trace is one compilation)."""

    def __init__(self, fn, *, config: StepConfig | None = None, **jit_kwargs):
        self.compilations = 0
        self.config = config  # the StepConfig it was made for (the loop saves its student's shape)

        def traced(*args):
            self.compilations += 1
            return fn(*args)

        self._jitted = jax.jit(traced, **jit_kwargs)

    def __call__(self, *args):
        return self._jitted(*args)


def make_train_step(c: StepConfig, shardings: TrainState | None = None) -> CompiledStep:
    """The compiled step: (state, teacher_params, batch) -> (state, metrics). `batch` arrays are
    [micro_batches * rows, T]; the state is donated. With `shardings` (from `state_shardings`) the
    new state keeps exactly the input placement, so the step compiles once. A student of another
    shape (compacted by a pruning stage: `train.compaction`) needs a step made for its config."""
    return CompiledStep(lambda state, teacher, batch: _step(c, state, teacher, batch), config=c,
                        donate_argnums=(0,), out_shardings=None if shardings is None else (shardings, None))


def reset_pruned_moments(c: StepConfig, state: TrainState) -> TrainState:
    """Zero the pruned structures' weights and their optimizer moments (after a pruning stage)."""
    params = apply_masks(c.student, state.params, state.masks)
    if c.trainable == "lora":  # the frozen weights are zeroed too, so the saved state matches the masks
        return state.replace(params=params)
    keep = apply_masks(c.student, jax.tree.map(jnp.ones_like, state.params), state.masks)
    tx = make_optimizer(c.optimizer, c.total_steps, state.params)
    opt_state = optax.tree_map_params(tx, lambda m, k: m * k.astype(m.dtype), state.opt_state, keep,
                                      transform_non_params=lambda x: x)
    return state.replace(params=params, opt_state=opt_state)


def optimizer_state_bytes(state: TrainState) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(state.opt_state) if hasattr(x, "nbytes")))
