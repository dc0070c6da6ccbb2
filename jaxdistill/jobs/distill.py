"""The distill job (`jaxdistill run` / `distill`): data -> teacher -> teacher cache -> distil and prune
the student -> compact -> export.

    run_dir/
      teacher/                 a teacher trained here (teacher.path null, prepare_steps > 0), HF format
      teacher-cache/<key>/     sparse teacher targets (teacher.targets=cached)
      checkpoints-{teacher,student}/   orbax checkpoints (resume: run the same command again)
      metrics-{teacher,student}.jsonl  one record per logged step
      student/                 the compacted student, HF format
      result.json              the summary (written atomically, last)

Random streams (fixed, so results do not depend on which phases ran before): key = key(seed);
teacher init fold_in(key, 0), teacher state fold_in(key, 2), student state fold_in(key, 3), a
random student fold_in(key, 5); batch order seed + 100 (teacher), seed (student), seed + 200
(pruning calibration).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.atomic_files import atomic_write, write_json
from jaxdistill.config import RunConfig, dump, to_dict
from jaxdistill.data import BatchIterator, TargetSettings, build_teacher_cache, encode_dataset, load_tokenizer
from jaxdistill.jobs.evaluation import evaluate_model, pruned_only, report, split_data, suites_of, template_of
from jaxdistill.losses import CrossEntropyLoss
from jaxdistill.models import (ModelConfig, init_params, load_pretrained, logical_axes, make_mesh, save_pretrained,
                               shard_params)
from jaxdistill.models.hf import to_host
from jaxdistill.models.sharding import activation_sharding
from jaxdistill.perf import peak_flops, step_flops
from jaxdistill.pruning import compact, compression_ratio, importance, param_count, prune_to
from jaxdistill.train import (Checkpoints, MetricsLog, StepConfig, TrainingError, init_state, make_train_step,
                              optimizer_state_bytes, reset_pruned_moments, resume, state_shardings,
                              student_params, throughput, train_loop)


def prepare_data(run: RunConfig, log):
    """(tokenizer, encoded training examples, encoding counts, held-out data or None); the row ids of
    both sides are written to run_dir/split.json."""
    d = run.data
    tokenizer = load_tokenizer(d.tokenizer)
    data, held_out, ids = split_data(run)
    if jax.process_index() == 0:
        write_json(Path(run.run_dir) / "split.json", ids)
    examples, counts = encode_dataset(data, tokenizer, format=d.format, template=template_of(run), max_len=d.max_len)
    if not examples:
        raise TrainingError(f"no examples left after encoding: {counts}")
    held = "" if held_out is None else f", {len(held_out)} held out"
    log(f"data: {len(examples)} examples ({counts}){held}, vocab {len(tokenizer)}")
    return tokenizer, examples, counts, held_out


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


def batches(run: RunConfig, examples, mesh, *, seed_offset: int = 0, teacher_cache=None) -> DeviceBatches:
    t = run.train
    iterator = BatchIterator(examples, batch_size=t.batch_size, seq_len=t.seq_len, format=run.data.format,
                             seed=run.seed + seed_offset, process_index=jax.process_index(),
                             process_count=jax.process_count())
    return DeviceBatches(iterator, mesh, teacher_cache)


def run_phase(run: RunConfig, c: StepConfig, state, teacher, data: DeviceBatches, mesh, *, name: str,
              hooks=None, log=print):
    """Place the state, resume from run_dir if a checkpoint exists, and run the loop for `c.total_steps`."""
    run_dir = Path(run.run_dir)
    checkpoints = Checkpoints(run_dir / f"checkpoints-{name}", keep=run.train.keep_checkpoints)
    shardings = state_shardings(c, state, mesh)
    config = to_dict(run)
    state, resumed = resume(checkpoints, jax.device_put(state, shardings), data, config=config,
                            ignore=("train.stop_at_step",))
    if resumed is not None:
        log(f"{name}: resumed from step {resumed}")
    tokens = run.train.batch_size * run.train.seq_len
    flops = step_flops(c.student, c.teacher if c.live_teacher else None, tokens, run.train.seq_len)
    peak, peak_source = peak_flops(c.student, tokens)
    record = functools.partial(throughput, tokens=tokens, flops=flops, peak=peak, peak_source=peak_source)
    hooks = {step: functools.partial(hook, shardings=shardings) for step, hook in (hooks or {}).items()}
    return train_loop(make_train_step(c, shardings), state, data, steps=c.total_steps, train=run.train,
                      checkpoints=checkpoints, metrics=MetricsLog(run_dir / f"metrics-{name}.jsonl",
                                                                  resume_step=resumed or 0),
                      config=config, teacher=teacher if c.live_teacher else {}, hooks=hooks,
                      record=record, name=name)


def prepare_teacher(run: RunConfig, vocab: int, examples, mesh, key, log):
    """(teacher config, params, steps done): loaded from teacher.path, or built here and trained
    (supervised) for teacher.prepare_steps (fewer steps done: the run stopped early)."""
    steps = run.teacher.prepare_steps
    if run.teacher.path:
        config, params = load_pretrained(run.teacher.path, mesh=mesh)
        return config, params, steps
    config = ModelConfig(vocab_size=vocab, **run.teacher.model)
    params = shard_params(init_params(config, jax.random.fold_in(key, 0)), logical_axes(config), mesh)
    if not steps:
        return config, params, steps
    c = StepConfig(student=config, loss=CrossEntropyLoss(), optimizer=run.optimizer, total_steps=steps,
                   micro_batches=run.train.micro_batches, chunk_size=run.loss.chunk_size)
    state = init_state(c, params, jax.random.fold_in(key, 2))
    state, _ = run_phase(run, c, state, {}, batches(run, examples, mesh, seed_offset=100), mesh, name="teacher",
                         log=log)
    done = int(jax.device_get(state.step))
    if done == steps:  # every process calls it: it gathers shards, process 0 writes
        save_pretrained(config, state.params, Path(run.run_dir) / "teacher")
    return config, state.params, done


def init_student(run: RunConfig, teacher_config: ModelConfig, teacher, mesh, key):
    s = run.student
    if s.path:
        return load_pretrained(s.path, mesh=mesh)
    if s.init == "teacher":
        return teacher_config, jax.tree.map(jnp.copy, teacher)
    params = init_params(teacher_config, jax.random.fold_in(key, 5))
    return teacher_config, shard_params(params, logical_axes(teacher_config), mesh)


def calibration_batches(run: RunConfig, examples, mesh) -> list[dict]:
    """The pruning calibration batches (tokens, segment ids), from their own batch order."""
    data = batches(run, examples, mesh, seed_offset=200)
    return [{k: v for k, v in next(data).items() if k in ("tokens", "segment_ids")}
            for _ in range(run.pruning.calibration_batches)]


def pruning_hooks(run: RunConfig, c: StepConfig, calibration: list[dict], log) -> dict:
    """{step: stage(state, shardings) -> state} for each stage of the pruning schedule."""
    p = run.pruning
    if p is None:
        return {}
    schedule = p.schedule()

    def stage(state, *, step: int, shardings):
        current = student_params(c, state.params, state.lora, state.masks)
        scores = importance(c.student, current, calibration, method=p.method, masks=state.masks)
        masks, widths = prune_to(c.student, scores, schedule(step), masks=state.masks, ratio_of=p.ratio_of,
                                 split=p.split, multiple=p.multiple)
        log(f"student: step {step}: pruned to {widths} (target ratio {schedule(step):.3f})")
        return jax.device_put(reset_pruned_moments(c, state.replace(masks=masks)), shardings)

    return {step: functools.partial(stage, step=step) for step in schedule.stage_steps()}


def host_tree(tree):
    """A pytree of global arrays as host numpy arrays, gathered across processes where needed."""
    return jax.tree.map(to_host, tree)


def teacher_cache(run: RunConfig, teacher_config, teacher, examples, log):
    settings = TargetSettings(method=run.teacher.cache.method, k=run.teacher.cache.k,
                              temperature=run.loss.temperature, seed=run.seed)
    cache = build_teacher_cache(teacher_config, teacher, examples, Path(run.run_dir) / "teacher-cache",
                                format=run.data.format, tokenizer_id=str(run.data.tokenizer), settings=settings,
                                seq_len=run.train.seq_len)
    log(f"teacher cache: {cache.meta['positions']} supervised positions in {cache.path}")
    return cache


def run_distill(run: RunConfig, log=print) -> dict:
    """The distill job (see the module docstring); returns the result (also written to result.json)."""
    mesh = make_mesh(run.mesh)
    if run.teacher.targets == "cached" and jax.process_count() > 1:
        raise TrainingError("teacher.targets=cached runs in one process only (the cache is built by one writer); "
                            "use teacher.targets=live on several processes")
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(dump(run)))
    tokenizer, examples, counts, held_out = prepare_data(run, log)
    key = jax.random.key(run.seed)
    teacher_config, teacher, done = prepare_teacher(run, len(tokenizer), examples, mesh, key, log)
    if done < run.teacher.prepare_steps:
        return {"stopped_at": done, "phase": "teacher"}
    if teacher_config.vocab_size != len(tokenizer):
        raise TrainingError(f"vocab sizes differ: teacher {teacher_config.vocab_size}, tokenizer {len(tokenizer)} "
                            "— teacher and student must share a tokenizer")
    evals = {}
    if run.eval is not None:
        evals["teacher"] = evaluate_model(run, "teacher", teacher_config, teacher, tokenizer, held_out, log, mesh)
    student_config, params = init_student(run, teacher_config, teacher, mesh, key)
    calibration = calibration_batches(run, examples, mesh) if run.pruning is not None else []
    if run.eval is not None and run.pruning is not None:
        small = pruned_only(run, student_config, params, calibration)
        evals["pruned_only"] = evaluate_model(run, "pruned_only", *small, tokenizer, held_out, log, mesh)
    c = StepConfig(student=student_config, loss=run.loss, optimizer=run.optimizer, total_steps=run.train.steps,
                   teacher=teacher_config, teacher_targets=run.teacher.targets, trainable=run.student.trainable,
                   lora=run.student.lora, micro_batches=run.train.micro_batches, chunk_size=run.loss.chunk_size)
    cache = teacher_cache(run, teacher_config, teacher, examples, log) if c.teacher_targets == "cached" else None
    state = init_state(c, params, jax.random.fold_in(key, 3))
    state, last = run_phase(run, c, state, teacher, batches(run, examples, mesh, teacher_cache=cache), mesh,
                            name="student", hooks=pruning_hooks(run, c, calibration, log), log=log)
    done = int(jax.device_get(state.step))
    result = {"phase": "student", "steps": done, "final": last, "data": counts,
              "optimizer_state_bytes": optimizer_state_bytes(state), "teacher_targets": c.teacher_targets,
              "trainable": c.trainable}
    if done < run.train.steps:
        return result
    final = host_tree(student_params(c, state.params, state.lora, state.masks))
    small_config, small = compact(student_config, final, host_tree(state.masks))
    result.update(compression_ratio=compression_ratio(student_config, small_config),
                  student_params=param_count(small_config)["total"], teacher_params=param_count(teacher_config)["total"])
    save_pretrained(small_config, small, run_dir / "student")  # every process calls it; process 0 writes
    if run.eval is not None:
        evals["student"] = evaluate_model(run, "student", small_config, small, tokenizer, held_out, log, mesh)
        result["eval"] = {"held_out": len(held_out), "suites": list(suites_of(run)), **evals}
        report(evals, log)
    if jax.process_index() == 0:
        write_json(run_dir / "result.json", result)
    log(f"student: {result['student_params']:,} parameters ({result['compression_ratio']['total']:.3f} removed), "
        f"exported to {run_dir / 'student'}; last loss {last.get('loss', float('nan')):.4f}")
    return result
