"""The host loop: step, run stage hooks (pruning), log, check finiteness, checkpoint, stop.

    for step in range(start, steps):
        state = hooks[step](state)              # e.g. a pruning stage, untimed (see `Hook`)
        state, metrics = train_step(state, teacher, batch)
        every log_every: check finite, write metrics     every checkpoint_every: check finite, save

The loop knows nothing of models or configs: it takes a step function, a batch source with
`state()` / `restore()` (for resume), hooks, a `Checkpoints` and a `MetricsLog`. A step made by
`make_train_step` carries its `StepConfig` (`train_step.config`); its student's `ModelConfig` is
saved with every checkpoint, so a resume can rebuild a student compacted mid-run
(`resume(..., reshape=...)`, `train.compaction.resume_student`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from typing import Union

import jax
import jax.numpy as jnp
from tqdm import tqdm

from jaxdistill.train.checkpoints import Checkpoints, abstract_like
from jaxdistill.train.metrics import MetricsLog, StepTimer, host_metrics
from jaxdistill.train.errors import TrainingError
from jaxdistill.train.step import TrainState

# A hook returns the new state, or (state, train_step): the loop steps on with the new step (a
# compacting pruning stage: a smaller student needs its own compiled step; `step_compilations` then
# counts that step's compilations), or (state, train_step, record): also a new `record` (throughput
# of the smaller student).
Hook = Callable[[TrainState], Union[TrainState, tuple]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 120
    batch_size: int = 16               # rows per step (global), packed
    seq_len: int = 192
    micro_batches: int = 1
    log_every: int = 10
    checkpoint_every: int = 40
    keep_checkpoints: int = 2
    stop_at_step: int | None = None    # end this process early (as if killed) — for resume tests

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "micro_batches", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise TrainingError(f"train.{name}={getattr(self, name)}: must be >= 1")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise TrainingError(f"train.stop_at_step={self.stop_at_step}: must be >= 1, or null")
        if self.batch_size % self.micro_batches:
            raise TrainingError(f"train.batch_size={self.batch_size} is not a multiple of train.micro_batches="
                                f"{self.micro_batches}")


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resume(checkpoints: Checkpoints, state: TrainState, batches, *, config: dict,
           ignore: tuple[str, ...] = (), reshape: Callable | None = None,
           log: Callable[[str], None] = _warn) -> tuple[TrainState, int | None]:
    """The newest intact checkpoint restored into `state`'s placement (and `batches` rewound), if any.
    The run config saved with it must equal `config` (keys in `ignore` aside): resuming a different
    run would silently mix two experiments.

    A checkpoint that cannot be restored (a file deleted or truncated) is skipped with a one-line
    warning; once an older one restores, the damaged newer ones are moved aside
    (`Checkpoints.quarantine`), so the run goes on from there. When none restores, nothing is moved
    and a `TrainingError` lists each checkpoint with its damage.

    reshape: for a state whose shapes may have changed during the run (a student compacted by a
    pruning stage). Called with the `ModelConfig` saved with the checkpoint (only if one was: older
    checkpoints restore into `state` as before), it returns the state to restore into: placed
    arrays or `jax.ShapeDtypeStruct`s with shardings, laid out as that model, e.g.
    `lambda model: train.compaction.abstract_state(dataclasses.replace(c, student=model), mesh)`.
    The restored state then has the saved shapes; `train.compaction.current_config(c, state)` is its
    StepConfig. `train.compaction.resume_student` does all of this in one call."""
    steps = checkpoints.all_steps()[::-1]
    if not steps:
        return state, None
    damaged = []
    for latest in steps:
        try:
            target = state
            if reshape is not None:
                model = checkpoints.saved_model(latest)
                if model is not None:
                    target = reshape(model)
            restored, data_state, saved = checkpoints.restore(latest, abstract_like(target))
            break
        except Exception as err:  # noqa: BLE001 — orbax, tensorstore and json raise many types for damage
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            damaged.append((latest, f"{type(err).__name__}: {reason}"))
            log(f"warning: checkpoint step {latest} in {checkpoints.directory} is damaged ({damaged[-1][1]}); "
                "trying the one before")
    else:
        raise TrainingError(f"no checkpoint in {checkpoints.directory} can be restored ("
                            + "; ".join(f"step {s}: {why}" for s, why in damaged)
                            + "): move the directory away to start this phase afresh")
    saved, config = flat_config(saved), flat_config(config)
    changed = sorted(k for k in set(saved) | set(config) if k not in ignore and saved.get(k) != config.get(k))
    if changed:  # refused before anything is moved
        raise TrainingError(f"{checkpoints.directory} holds a run with other settings ({', '.join(changed)}): "
                            "use another run_dir, or the same settings to resume")
    for step, _ in damaged:
        log(f"warning: resuming from step {latest}; the damaged step {step} is moved to {checkpoints.quarantine(step)}")
    state = restored
    batches.restore(data_state)
    return state, latest


def flat_config(tree: dict, prefix: str = "") -> dict:
    """{'a.b': value} for a nested dict (tuples as lists, so a config and its YAML / JSON compare equal)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


@jax.jit
def _weights_finite(state: TrainState):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((state.params, state.lora))]))


def check_finite(state: TrainState, checkpoints: Checkpoints, name: str) -> None:
    """Stop (naming the step) when the step flagged a non-finite loss or gradient, or the weights are
    not finite (an update that overflowed: checked here, at logging and checkpoint steps only)."""
    bad = int(jax.device_get(state.first_bad_step))
    if bad < 0 and not bool(jax.device_get(_weights_finite(state))):  # became so at or before this step
        bad = int(jax.device_get(state.step)) - 1
    if bad >= 0:
        latest = checkpoints.latest_step()
        where = ("no checkpoint was saved before it (a rerun starts this phase from its beginning)" if latest is None
                 else f"the last good checkpoint is step {latest} in {checkpoints.directory}")
        raise TrainingError(f"{name}: the loss or the weights became non-finite at step {bad}; stopped: {where}. "
                            "A lower learning rate (optimizer.learning_rate, teacher.learning_rate) or clipping "
                            "(optimizer.clip_norm) usually helps")


def train_loop(train_step, state: TrainState, batches, *, steps: int, train: TrainConfig,
               checkpoints: Checkpoints, metrics: MetricsLog, config: dict, teacher=None, hooks: Mapping[int, Hook] = {},
               record: Callable[[float], dict] = lambda step_s: {"step_time_s": step_s},
               name: str = "student") -> tuple[TrainState, dict]:
    """Steps `state` to `steps` (or train.stop_at_step); returns (state, the last logged record).
    `train_step(state, teacher, batch) -> (state, metrics)` (a `CompiledStep`); `record(step_s)` adds
    throughput fields to each logged record; `config` (and the student's model config, when the step
    carries a `config`) is saved with every checkpoint. `hooks[step]` runs before that step (`Hook`):
    when it returns a new train step, that step's first (compiling) call is left out of the timing."""
    start = int(jax.device_get(state.step))
    timer, last = StepTimer(), {}
    bar = tqdm(total=steps, initial=start, desc=name, disable=jax.process_index() != 0, mininterval=2.0)
    try:
        for step in range(start, steps):
            fresh = False
            if step in hooks:
                # the steps dispatched before the stage finish inside this window, not inside the pause
                jax.block_until_ready(state)
                with timer.paused():
                    out = hooks[step](state)
                if isinstance(out, tuple):
                    state, train_step, *new_record = out
                    record, fresh = (new_record[0] if new_record else record), True
                else:
                    state = out
            fresh = fresh and timer.first_step_s is not None
            if fresh:  # the new step compiles: timed alone, like the first step
                t0 = time.perf_counter()
                with timer.paused():
                    state, step_metrics = train_step(state, teacher, next(batches))
                    jax.block_until_ready(state.step)
                fresh_s = time.perf_counter() - t0
            else:
                timer.start_step()
                state, step_metrics = train_step(state, teacher, next(batches))
                timer.end_step(state)
            done = step + 1
            logging = done % train.log_every == 0 or done == steps
            saving = done % train.checkpoint_every == 0 or done == steps
            if logging or saving:
                check_finite(state, checkpoints, name)
            if logging:
                step_s = fresh_s if fresh and not timer.window_steps else timer.window()
                last = {"step": done, **host_metrics(step_metrics), **record(step_s),
                        "first_step_s": timer.first_step_s, "step_compilations": train_step.compilations}
                metrics.write(last)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            bar.update(1)
            if saving:
                step_config = getattr(train_step, "config", None)
                checkpoints.save(done, state, batches.state(), config,
                                 model=None if step_config is None else step_config.student)
            if train.stop_at_step is not None and done >= train.stop_at_step:
                break
    finally:
        bar.close()
        metrics.close()
    return state, last
