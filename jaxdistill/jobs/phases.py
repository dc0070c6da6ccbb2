"""The training phases of a distill run: batches placed on the mesh, one phase (teacher fine-tuning or
student distillation) run with resume, and the pruning stages as loop hooks."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from jaxdistill.config import RunConfig, to_dict
from jaxdistill.data import BatchIterator
from jaxdistill.jobs.rundir import NOT_SETTINGS
from jaxdistill.models.sharding import activation_sharding
from jaxdistill.perf import peak_flops, step_flops
from jaxdistill.pruning import importance, prune_to
from jaxdistill.train import (Checkpoints, MetricsLog, StepConfig, compacting_stage, make_train_step, resume_student,
                              state_shardings, student_params, throughput, train_loop)


class DeviceBatches:
    """Batches from a `BatchIterator`, with cached teacher targets added (if any), placed on the mesh
    batch-sharded (`make_array_from_process_local_data`: each process holds its own rows)."""

    def __init__(self, iterator: BatchIterator, mesh, teacher_cache=None):
        self.iterator, self.mesh, self.teacher_cache = iterator, mesh, teacher_cache

    def __next__(self) -> dict[str, jax.Array]:
        batch = next(self.iterator)
        if self.teacher_cache is not None:
            t = self.teacher_cache.targets(batch)
            batch.update(target_ids=t.ids, target_weights=t.weights, target_self_term=t.self_term)
        return {k: jax.make_array_from_process_local_data(activation_sharding(self.mesh, np.ndim(v)), np.asarray(v))
                for k, v in batch.items() if k not in ("example_ids", "positions")}

    def state(self) -> dict:
        return self.iterator.state()

    def restore(self, state: dict) -> None:
        self.iterator.restore(state)


def batches(run: RunConfig, examples, mesh, *, format: str | None = None, seed_offset: int = 0,
            teacher_cache=None) -> DeviceBatches:
    t = run.train
    iterator = BatchIterator(examples, batch_size=t.batch_size, seq_len=t.seq_len, format=format or run.data.format,
                             seed=run.seed + seed_offset, process_index=jax.process_index(),
                             process_count=jax.process_count())
    return DeviceBatches(iterator, mesh, teacher_cache)


def phase_record(run: RunConfig, c: StepConfig, peak=None):
    """record(step_s) -> throughput fields, for the student as `c` describes it (compacted or not);
    `peak`: (flops/s, source) measured once per run (the CPU matmul ceiling costs seconds)."""
    tokens = run.train.batch_size * run.train.seq_len
    flops = step_flops(c.student, c.teacher if c.live_teacher else None, tokens, run.train.seq_len)
    peak, peak_source = peak or peak_flops(c.student, tokens)
    return functools.partial(throughput, tokens=tokens, flops=flops, peak=peak, peak_source=peak_source)


def run_phase(run: RunConfig, c: StepConfig, state, teacher, data: DeviceBatches, mesh, *, name: str,
              hooks=None, log=print, ignore=()):
    """Resume from run_dir if a checkpoint exists (in the shape it was saved: a compacted student
    resumes compacted), place the state, and run the loop for `c.total_steps`. The returned state may
    be smaller than `c.student` (pruning stages compact it): `train.current_config(c, state)` says.
    `ignore`: config keys the checkpoint's saved config may differ in (`jobs.rundir.check` accepted them)."""
    run_dir = Path(run.run_dir)
    checkpoints = Checkpoints(run_dir / f"checkpoints-{name}", keep=run.train.keep_checkpoints)
    config = to_dict(run)
    c, state, resumed = resume_student(checkpoints, c, state, data, mesh=mesh, config=config,
                                       ignore=(*NOT_SETTINGS, *ignore), log=log)
    if resumed is not None:
        log(f"{name}: resumed from step {resumed}")
    shardings = state_shardings(c, state, mesh)
    hooks = {step: functools.partial(hook, shardings=shardings) for step, hook in (hooks or {}).items()}
    return train_loop(make_train_step(c, shardings), state, data, steps=c.total_steps, train=run.train,
                      checkpoints=checkpoints, metrics=MetricsLog(run_dir / f"metrics-{name}.jsonl",
                                                                  resume_step=resumed or 0),
                      config=config, teacher=teacher if c.live_teacher else {}, hooks=hooks,
                      record=phase_record(run, c), name=name)


def calibration_batches(run: RunConfig, examples, mesh) -> list[dict]:
    """The pruning calibration batches (tokens, segment ids), from their own batch order."""
    data = batches(run, examples, mesh, seed_offset=200)
    return [{k: v for k, v in next(data).items() if k in ("tokens", "segment_ids")}
            for _ in range(run.pruning.calibration_batches)]


def pruning_hooks(run: RunConfig, c: StepConfig, calibration: list[dict], log) -> dict:
    """{step: stage} for each stage of the pruning schedule: importance on the current student,
    `prune_to` the schedule's ratio of the original student's parameters, then the state compacted to
    the smaller dense shapes and the step compiled once for them (`train.compacting_stage`)."""
    p = run.pruning
    if p is None:
        return {}
    schedule = p.schedule()
    peak = functools.cache(lambda: peak_flops(c.student, run.train.batch_size * run.train.seq_len))

    def prune(now: StepConfig, state, *, step: int):
        current = student_params(now, state.params, state.lora, state.masks)
        scores = importance(now.student, current, calibration, method=p.method, masks=state.masks)
        masks, widths = prune_to(now.student, scores, schedule(step), masks=state.masks, ratio_of=p.ratio_of,
                                 split=p.split, multiple=p.multiple, reference=c.student)
        log(f"student: step {step}: pruned to {widths} (target ratio {schedule(step):.3f})")
        return masks

    return {step: compacting_stage(c, functools.partial(prune, step=step),
                                   make_record=lambda now: phase_record(run, now, peak=peak()))
            for step in schedule.stage_steps()}
