"""Population mode: P students of one shape trained as ONE vmapped jitted program over ONE teacher.

A hyper-parameter or pruning sweep trains many students of equal shapes that differ only in
values: init seeds, pruning masks (masked training keeps every member's shapes equal), loss
weights, learning rates. Run one by one, each pays for the teacher forward and for a step of small
matmuls. Here the population state is the members' `TrainState`s stacked on a leading axis of
size P, and one step runs

    teacher forward once per batch (stop-gradient; outside the vmap: every member reads it)
    jax.vmap over members: masked student forward, fused loss, micro-batch accumulation,
                           clipping, AdamW and re-masking — the single-student step, unchanged

so member k follows exactly the trajectory `step.make_train_step` gives it alone (to float
rounding). Per-member loss weights and learning rates are static values, one per member: inside
the vmap a member picks its own (`lax.switch` on its index, evaluated for all members as a select)
coefficient function of the blended loss and its own learning-rate schedule, each built by the
same code as a lone run's with that value. With a mesh that has a "population" axis the leading
axis of the state is sharded over it (members split across devices); the teacher's weights and
the batch are replicated, so each device runs the teacher forward once for its members.

    init_population(c, params, keys, masks=None)          -> stacked TrainState
    make_population_step(c, P, learning_rates=, loss_weights=, mesh=)  -> jitted step
    unstack(state, k)                                      -> member k's TrainState
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxdistill import losses
from jaxdistill.models import init_params
from jaxdistill.pruning import full_masks
from jaxdistill.train.errors import TrainingError
from jaxdistill.train.optimizer import learning_rate_schedule
from jaxdistill.train.step import (PER_TOKEN, CompiledStep, StepConfig, TrainState, _teacher_inputs, init_state,
                                   student_update)

POPULATION = "population"                          # the mesh axis the members are sharded over
LOSS_WEIGHTS = ("w_answer", "w_trace_ce", "w_kl")  # per-member weights of the blended loss


# ---------------------------------------------------------------------------- stacked states


def _members(tree_or_list, P: int | None, what: str) -> list:
    """A list of P member trees from a list or a tree stacked on a leading axis."""
    if isinstance(tree_or_list, (list, tuple)):
        members = list(tree_or_list)
    else:
        n = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(tree_or_list)}
        if len(n) != 1 or None in n:
            raise TrainingError(f"{what}: a list of members or a tree stacked on one leading axis, got leading "
                                f"sizes {sorted(n, key=str)}")
        members = [jax.tree.map(lambda x, k=k: x[k], tree_or_list) for k in range(n.pop())]
    if P is not None and len(members) != P:
        raise TrainingError(f"{what}: {len(members)} members, the population has {P}")
    return members


def _check_shapes(what: str, got, want) -> None:
    """`got` has `want`'s tree structure and leaf shapes (member shapes must all be equal)."""
    shape = lambda x: tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    (g, g_def), (w, w_def) = jax.tree_util.tree_flatten_with_path(got), jax.tree_util.tree_flatten_with_path(want)
    bad = ["tree structure differs"] if g_def != w_def else [
        f"{jax.tree_util.keystr(path)}: {shape(a)}, expected {shape(b)}" for (path, a), (_, b) in zip(g, w)
        if shape(a) != shape(b)]
    if bad:
        raise TrainingError(f"{what} does not match the population's shapes: {'; '.join(bad[:4])} — "
                            "members must share one shape (train pruned members masked, not compacted)")


def init_population(c: StepConfig, params, keys, masks=None) -> TrainState:
    """Every member's fresh `init_state`, stacked on a leading population axis.

    params: a list of P student param trees, or one tree stacked [P, ...]; keys: P keys (a list or
    a [P] key array; they initialise LoRA adapters); masks: None (keep everything), a list or a
    stacked tree of P pruning masks. All members must have the student config's shapes."""
    params = _members(params, None, "params")
    P = len(params)
    keys = _members(list(keys), P, "keys")
    masks = [None] * P if masks is None else _members(masks, P, "masks")
    want = jax.eval_shape(functools.partial(init_params, c.student), jax.random.key(0))
    for k, (p, m) in enumerate(zip(params, masks)):
        _check_shapes(f"member {k}'s params", p, want)
        if m is not None:
            _check_shapes(f"member {k}'s masks", m, full_masks(c.student))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[init_state(c, p, key, masks=m)
                                                     for p, key, m in zip(params, keys, masks)])


def unstack(state: TrainState, k: int) -> TrainState:
    """Member k's TrainState (what a lone run of that member would hold)."""
    return jax.tree.map(lambda x: x[k], state)


def population_shardings(state: TrainState, mesh) -> TrainState:
    """Every leaf's leading (member) axis over the mesh axis "population", the rest replicated."""
    return jax.tree.map(lambda x: NamedSharding(mesh, PartitionSpec(POPULATION)), state)


# ---------------------------------------------------------------------------- one member's step


def _padded_coefficients(loss, program_loss, tokens, step):
    """`loss`'s coefficients with the structure of `program_loss`'s: a term or metric the member's
    loss lacks (the divergence of a member with w_kl = 0) gets coefficient 0, which adds exactly
    nothing to its value and gradient (`combine_terms`)."""
    coefs, counts = loss.token_loss().coefficients(tokens, step)
    ref, ref_counts = jax.eval_shape(program_loss.token_loss().coefficients, tokens, step)
    pad = lambda got, want: {k: got[k] if k in got else jnp.zeros(v.shape, v.dtype) for k, v in want.items()}
    return (losses.Coefficients(pad(coefs.loss, ref.loss), pad(coefs.metrics, ref.metrics), ref.metric_terms),
            pad(counts, ref_counts))


@dataclasses.dataclass(frozen=True)
class _Members:
    """The static per-member choices: each member's loss spec and optimizer section (None: all
    members use the config's, and the step is the lone step's code exactly)."""

    losses: tuple | None
    optimizers: tuple | None

    def coefficients(self, c: StepConfig, k, tokens, step):
        if self.losses is None:
            return c.loss.token_loss().coefficients(tokens, step)
        fns = [functools.partial(_padded_coefficients, loss, c.loss) for loss in self.losses]
        return jax.lax.switch(k, fns, tokens, step)

    def schedule(self, c: StepConfig, k):
        if self.optimizers is None:
            return learning_rate_schedule(c.optimizer, c.total_steps)
        fns = [learning_rate_schedule(o, c.total_steps) for o in self.optimizers]
        return lambda count: jax.lax.switch(k, fns, count)


def _member_step(c: StepConfig, members: _Members, k, state: TrainState, teacher, batch):
    """`step.student_update` for member k (its index, for its loss weights and learning rate), with
    the teacher's inputs computed once for the whole batch: rows split along with the batch, the
    teacher's head (the same for every micro-batch) passed whole."""
    head = {n: v for n, v in teacher.items() if n == "teacher_head"}
    rows = {n: v for n, v in teacher.items() if n != "teacher_head"}
    return student_update(c, state, batch, lambda micro, micro_rows: {**micro_rows, **head},
                          coefficients=members.coefficients(c, k, {n: batch[n] for n in PER_TOKEN}, state.step),
                          schedule=members.schedule(c, k), rows=rows)


# ---------------------------------------------------------------------------- the population step


def _per_member(c: StepConfig, P: int, learning_rates, loss_weights) -> _Members:
    """Validate the [P] learning rates and loss weights; one loss spec / optimizer section each."""
    def values(name, v):
        v = np.asarray(v, np.float64)
        if v.shape != (P,):
            raise TrainingError(f"{name}: shape {v.shape}, the population has P={P} members (one value each)")
        return [float(x) for x in v]

    optimizers = None
    if learning_rates is not None:
        optimizers = tuple(dataclasses.replace(c.optimizer, learning_rate=lr)
                           for lr in values("learning_rates", learning_rates))
    member_losses = None
    if loss_weights:
        unknown = sorted(set(loss_weights) - set(LOSS_WEIGHTS))
        if unknown or not isinstance(c.loss, losses.BlendedCoT) or getattr(c.loss, "kind", "blended") != "blended":
            raise TrainingError(f"loss_weights {sorted(loss_weights)}: per-member weights are "
                                f"{', '.join(LOSS_WEIGHTS)} of the blended loss (BlendedCoT / LossConfig "
                                f"kind='blended'), loss is {c.loss}")
        weights = {name: values(f"loss_weights[{name!r}]", v) for name, v in loss_weights.items()}
        if c.loss.w_kl == 0 and any(w > 0 for w in weights.get("w_kl", [])):
            raise TrainingError("a member has w_kl > 0 but the config's loss has w_kl = 0: the divergence term "
                                "(and the teacher) must be in the program — set the config's w_kl > 0")
        try:
            member_losses = tuple(dataclasses.replace(c.loss, **{n: w[k] for n, w in weights.items()})
                                  for k in range(P))
        except ValueError as e:
            raise TrainingError(f"loss_weights: {e}") from e
    return _Members(member_losses, optimizers)


class PopulationStep(CompiledStep):
    """The jitted population step; checks the population size and shapes before each call and,
    with a mesh, places the teacher and the batch replicated."""

    def __init__(self, fn, c: StepConfig, P: int, mesh, **jit_kwargs):
        super().__init__(fn, config=c, **jit_kwargs)
        self.size, self.mesh = P, mesh
        key = jax.random.key(0)
        self._member = jax.eval_shape(lambda: init_state(c, init_params(c.student, key), key))

    def __call__(self, state: TrainState, teacher, batch):
        sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(state)}
        if sizes != {self.size}:
            raise TrainingError(f"population state with leading sizes {sorted(sizes, key=str)}; this step was "
                                f"made for P={self.size} members (init_population stacks them)")
        member = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)
        _check_shapes("the population state (per member)", member, self._member)
        if self.mesh is not None:
            replicated = NamedSharding(self.mesh, PartitionSpec())
            teacher, batch = jax.device_put((teacher, batch), replicated)
        return super().__call__(state, teacher, batch)


def make_population_step(c: StepConfig, P: int, *, learning_rates: Sequence[float] | None = None,
                         loss_weights: dict[str, Sequence[float]] | None = None, mesh=None) -> PopulationStep:
    """The compiled population step: (stacked state, teacher_params, batch) -> (state, metrics with
    a leading P axis). The teacher's inputs (hidden states and head for the live fused loss, or the
    batch's cached targets) are computed once per batch; everything per student is vmapped.

    learning_rates: [P] peak learning rates (each member's schedule is the config's with its value);
    loss_weights: {"w_answer" | "w_trace_ce" | "w_kl": [P]} for the blended loss (unnamed weights
    keep the config's); both are static (new values compile a new step). mesh: with a "population"
    axis dividing P, the state is sharded over it (`population_shardings`; place the state with
    them) and the teacher and batch replicated. The state is donated."""
    if P < 1:
        raise TrainingError(f"P={P}: a population has at least one member")
    members = _per_member(c, P, learning_rates, loss_weights)
    out_shardings = None
    if mesh is not None:
        n = dict(mesh.shape).get(POPULATION)
        if n is None or P % n:
            raise TrainingError(f"mesh axes {dict(mesh.shape)}: population sharding needs an axis {POPULATION!r} "
                                f"whose size divides P={P}")
        out_shardings = (NamedSharding(mesh, PartitionSpec(POPULATION)), None)  # every state leaf

    def step(state, teacher, batch):
        teacher_in = _teacher_inputs(c, teacher, batch)  # once per batch, shared by every member
        member = functools.partial(_member_step, c, members)
        vmapped = jax.vmap(member, in_axes=(0, 0, None, None), spmd_axis_name=None if mesh is None else POPULATION)
        return vmapped(jnp.arange(P), state, teacher_in, batch)

    return PopulationStep(step, c, P, mesh, donate_argnums=(0,), out_shardings=out_shardings)
