"""The distill job (`jaxdistill run` / `distill`): resolve the teacher -> its rationales (cot /
blended; cached) -> fine-tune it on the task (cached) -> evaluate it -> pruned-only baseline -> distil
and prune the student (compacted at each stage) -> export -> evaluate.

    run_dir/
      teacher -> <cache>/teachers/<key>/   the fine-tuned teacher, HF format (a link into the cache)
      checkpoints-{teacher,student}/   orbax checkpoints (resume: run the same command again)
      metrics-{teacher,student}.jsonl  one record per logged step
      eval-{teacher,pruned_only,student}.json, split.json
      student/                 the compacted student with its tokenizer, HF format
      result.json              the summary, with the wall time of each phase (written atomically, last);
                               a rerun of a finished run returns it as it is

Shared through the cache directory (`cache_dir`), so runs that can share them (the points of a
sweep) pay once: the resolved model, the fine-tuned teacher and its evaluation, the rationales,
and the sparse teacher targets (teacher.targets=cached: <cache>/targets/<key>/, built under a file
lock). result.json's `reused` says which of them this run found ready.

Random streams (fixed, so results do not depend on which phases ran before): key = key(seed);
teacher init fold_in(key, 0), teacher state fold_in(key, 2), student state fold_in(key, 3), a
random student fold_in(key, 5); batch order seed + 100 (teacher), seed (student), seed + 200
(pruning calibration).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxdistill.atomic_files import write_json
from jaxdistill.config import RunConfig, RunConfigError
from jaxdistill.data import TargetSettings, build_teacher_cache, encode_dataset
from jaxdistill.jobs import rundir
from jaxdistill.jobs.export import ExportError, check_prompt, documented_prompt, export_model
from jaxdistill.jobs.evaluation import (check_encoding, evaluate_model, guard_dropped, pruned_only, report,
                                         split_data, suites_of, template_of)
from jaxdistill.jobs.phases import batches, calibration_batches, pruning_hooks, run_phase
from jaxdistill.jobs.teacher import (cache_root, cached_evaluation, check_vocab, prepare_teacher, resolve_teacher,
                                     run_tokenizer, teacher_key, teacher_traces)
from jaxdistill.models import ModelConfig, init_params, load_pretrained, logical_axes, make_mesh, shard_params
from jaxdistill.models.hf import check_pretrained, read_config, to_host
from jaxdistill.pruning import compact, compression_ratio, param_count
from jaxdistill.train import (StepConfig, current_config, init_state, optimizer_state_bytes,
                              student_params)


def init_student(run: RunConfig, teacher_config: ModelConfig, teacher, mesh, key):
    s = run.student
    if s.path:
        return load_pretrained(s.path, mesh=mesh)
    if s.init == "teacher":
        return teacher_config, jax.tree.map(jnp.copy, teacher)
    params = init_params(teacher_config, jax.random.fold_in(key, 5))
    return teacher_config, shard_params(params, logical_axes(teacher_config), mesh)


def host_tree(tree):
    """A pytree of global arrays as host numpy arrays, gathered across processes where needed."""
    return jax.tree.map(to_host, tree)


def teacher_cache(run: RunConfig, teacher_config, teacher, examples, log):
    settings = TargetSettings(method=run.teacher.cache.method, k=run.teacher.cache.k,
                              temperature=run.loss.temperature, seed=run.seed)
    root = cache_root(run) / "targets"
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):  # one writer per key: the points of a sweep may build it concurrently
        cache = build_teacher_cache(teacher_config, teacher, examples, root, format=run.data.format,
                                    tokenizer_id=str(run.data.tokenizer), settings=settings, seq_len=run.train.seq_len)
    log(f"teacher cache: {cache.meta['positions']} supervised positions in {cache.path}")
    return cache


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on `path` (created) for the duration of the block, across processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class PhaseTimer:
    """Wall time per phase of a run (seconds), reported in result.json."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - start, 2)


def finished_result(run: RunConfig) -> dict | None:
    """The stored result of a finished run of these same settings (None: not finished, or another config)."""
    run_dir = Path(run.run_dir)
    try:
        result = json.loads((run_dir / "result.json").read_text())
        saved = rundir.stored_settings(run_dir)
    except (OSError, ValueError):
        return None
    if saved is None or rundir.differences(saved, rundir.settings(run), rundir.default_settings()):
        return None
    return result if "wall_s" in result and result.get("steps") == run.train.steps else None


def show_stored(run: RunConfig, result: dict, log) -> None:
    """What a finished run's rerun prints: its stored result, untouched."""
    log(f"{run.run_dir}: finished before; its result.json is left as it is")
    if "eval" in result:
        report({k: v for k, v in result["eval"].items() if isinstance(v, dict)}, log)
    if "student_params" in result:
        log(f"student: {result['student_params']:,} parameters ({result['compression_ratio']['total']:.3f} removed) "
            f"in {Path(run.run_dir) / 'student'}; last loss {result.get('final', {}).get('loss', float('nan')):.4f}")


def check_layout(run: RunConfig):
    """The mesh (against the devices) and the batch (against the mesh's batch axes and the processes),
    before any work: a usage error names the sizes and what would divide."""
    try:
        mesh = make_mesh(run.mesh)
    except ValueError as err:
        raise RunConfigError(f"mesh={list(run.mesh)}: {err}") from err
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = run.train.batch_size // run.train.micro_batches
    if rows % shards or run.train.batch_size % jax.process_count():
        raise RunConfigError(f"train.batch_size={run.train.batch_size} (micro-batches of {rows} rows) does not "
                             f"divide over the mesh's batch axes (data x fsdp = {shards}) and "
                             f"{jax.process_count()} process(es): use a multiple of {shards * jax.process_count()}")
    return mesh


def run_distill(run: RunConfig, log=print, *, on_change: str = "refuse") -> dict:
    """The distill job (see the module docstring); returns the result (also written to result.json).
    `on_change`: what to do with a run_dir that holds other settings (`jobs.rundir`: refuse | resume
    | new)."""
    plan = rundir.check(run, on_change=on_change, log=log)
    accepted = plan.accepted
    if (stored := finished_result(run)) is not None:
        show_stored(run, stored, log)
        return stored
    mesh = check_layout(run)
    if run.teacher.targets == "cached" and jax.process_count() > 1:
        raise RunConfigError("teacher.targets=cached runs in one process only (the cache is built by one writer); "
                             "use teacher.targets=live on several processes")
    timer, template = PhaseTimer(), template_of(run)
    with timer("resolve_teacher"):
        teacher_dir, source = resolve_teacher(run, log)
        tokenizer, tokenizer_id = run_tokenizer(run, teacher_dir)
    if teacher_dir is not None:
        check_vocab(read_config(teacher_dir), tokenizer)
    if run.student.path:
        check_pretrained(run.student.path)
    data, held_out, ids, teacher_data = split_data(run, teacher=True)
    check_encoding(run, data, tokenizer, template)
    try:  # the model card documents the prompt as a string: said now if this tokenizer cannot read it back
        check_prompt(tokenizer, template, data.label_names, documented_prompt(tokenizer, template, data.label_names))
        exact_prompt = True
    except ExportError as err:
        log(f"warning: {err}; the exported model card will give the prompt as token ids instead")
        exact_prompt = False
    run_dir = Path(run.run_dir)  # every check that needs no computation passed: the run dir is made now
    if jax.process_index() == 0:
        rundir.claim(run, plan, log)
        write_json(run_dir / "split.json", ids)
    if jax.process_count() > 1:  # every process sees the claimed directory (moved aside first) before using it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxdistill-claim")
    result, student_data = {"teacher": {**source}}, data
    reused = result["reused"] = {}
    if run.data.format != "label" and data.rationales is None:
        with timer("traces"):
            student_data, result["traces"] = teacher_traces(run, teacher_dir, tokenizer, data, ids["train"], mesh, log)
        reused["traces"] = result["traces"]["cached"]
    if run.teacher.prepare_steps > 0:
        ready = cache_root(run) / "teachers" / teacher_key(run, teacher_dir, tokenizer_id, ids["teacher"])
        reused["prepare_teacher"] = (ready / "prepared.json").is_file()
    with timer("prepare_teacher"):
        teacher_config, teacher, done, prepared = prepare_teacher(run, teacher_dir, tokenizer, tokenizer_id,
                                                                  teacher_data, ids["teacher"], template, mesh, log,
                                                                  ignore=accepted)
    if done < run.teacher.prepare_steps:
        return {"stopped_at": done, "phase": "teacher"}
    check_vocab(teacher_config, tokenizer)
    result["teacher"]["prepared"] = str(prepared) if prepared else None

    if prepared is not None and prepared != teacher_dir and jax.process_index() == 0:
        link = run_dir / "teacher"
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(prepared.resolve(), target_is_directory=True)
    evals = {}
    if run.eval is not None:
        known = cached_evaluation(prepared, run, ids["held_out"], suites_of(run))
        reused["eval_teacher"] = known is not None and known.is_file()
        with timer("eval_teacher"):
            evals["teacher"] = evaluate_model(run, "teacher", teacher_config, teacher, tokenizer, held_out, log, mesh,
                                              format="label", cache=known)
    examples, counts = encode_dataset(student_data, tokenizer, format=run.data.format, template=template,
                                      max_len=run.data.max_len)
    guard_dropped(run, counts.get("dropped_too_long", 0), len(student_data), "are too long for data.max_len="
                  f"{run.data.max_len} in the {run.data.format} format (with their traces)")
    held = "" if held_out is None else f", {len(held_out)} held out"
    log(f"data: {len(examples)} {run.data.format}-format examples ({counts}){held}, vocab {len(tokenizer)}")
    key = jax.random.key(run.seed)
    student_config, params = init_student(run, teacher_config, teacher, mesh, key)
    calibration = calibration_batches(run, examples, mesh) if run.pruning is not None else []
    if run.eval is not None and run.eval.pruned_only and run.pruning is not None:
        with timer("eval_pruned_only"):
            small = pruned_only(run, student_config, params, calibration)
            evals["pruned_only"] = evaluate_model(run, "pruned_only", *small, tokenizer, held_out, log, mesh,
                                                  format="label")
    c = StepConfig(student=student_config, loss=run.loss, optimizer=run.optimizer, total_steps=run.train.steps,
                   teacher=teacher_config, teacher_targets=run.teacher.targets, trainable=run.student.trainable,
                   lora=run.student.lora, micro_batches=run.train.micro_batches, chunk_size=run.loss.chunk_size,
                   masked=False)  # pruning stages compact the student: its masks are all ones between them
    with timer("distill"):
        cache = teacher_cache(run, teacher_config, teacher, examples, log) if c.teacher_targets == "cached" else None
        state = init_state(c, params, jax.random.fold_in(key, 3))
        state, last = run_phase(run, c, state, teacher, batches(run, examples, mesh, teacher_cache=cache), mesh,
                                name="student", hooks=pruning_hooks(run, c, calibration, log), log=log,
                                ignore=accepted)
    c = current_config(c, state)  # the student as trained: compacted by the pruning stages
    done = int(jax.device_get(state.step))
    result.update({"phase": "student", "steps": done, "final": last, "data": counts,
                   "optimizer_state_bytes": optimizer_state_bytes(state), "teacher_targets": c.teacher_targets,
                   "trainable": c.trainable})
    if done < run.train.steps:
        return result
    with timer("compact"):
        final = host_tree(student_params(c, state.params, state.lora, state.masks))
        small_config, small = compact(c.student, final, host_tree(state.masks))
        result.update(compression_ratio=compression_ratio(student_config, small_config),
                      student_params=param_count(small_config)["total"],
                      teacher_params=param_count(teacher_config)["total"])
    if run.eval is not None:
        with timer("eval_student"):
            evals["student"] = evaluate_model(run, "student", small_config, small, tokenizer, held_out, log, mesh)
        result["eval"] = {"held_out": len(held_out), "suites": list(suites_of(run)), **evals}
        report(evals, log)
    with timer("export"):  # every process calls it; process 0 writes
        export_model(run_dir / "student", small_config, small, tokenizer, label_names=data.label_names,
                     template=template, data_format=run.data.format, max_len=run.data.max_len,
                     strict_prompt=exact_prompt, card={
                         "name": f"student distilled by jaxdistill ({run.run_dir})", "teacher": result["teacher"],
                         "compression": {k: result[k] for k in ("compression_ratio", "student_params",
                                                                "teacher_params")},
                         "data": {"source": run.data.source, "split": run.data.split, "D": len(data),
                                  "format": run.data.format},
                         "training": {"steps": done, "final_loss": last.get("loss"), "loss": run.loss.kind,
                                      "teacher_targets": c.teacher_targets, "trainable": c.trainable},
                         **({"eval": result["eval"]} if "eval" in result else {})})
    result["wall_s"] = timer.times
    if jax.process_index() == 0:
        write_json(run_dir / "result.json", result)
    log(f"student: {result['student_params']:,} parameters ({result['compression_ratio']['total']:.3f} removed), "
        f"exported to {run_dir / 'student'}; last loss {last.get('loss', float('nan')):.4f}")
    log("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timer.times.items()))
    return result
