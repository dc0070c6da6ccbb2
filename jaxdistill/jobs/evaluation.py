"""Evaluation inside a distill run, and `jaxdistill eval (RUN_DIR | HF_DIR)`.

In a run (`eval` section set) three models are evaluated on the same held-out split, which
training never sees (stratified, seeded; row ids of both sides in run_dir/split.json):

    teacher       after its preparation (or as loaded)
    pruned_only   the student at initialisation, pruned one-shot to pruning.final_ratio with the same
                  importance method and calibration, compacted — no distillation (the baseline)
    student       the final, compacted student

Results go to run_dir/eval-{model}.json as each finishes (a resumed run does not redo them) and
into result.json's `eval` block; the log prints one table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.atomic_files import write_json
from jaxdistill.config import RunConfig, load_config
from jaxdistill.data import (ClassificationData, DataError, Template, encode_dataset, load_source, load_tokenizer,
                             stratified_split, stratified_subsample)
from jaxdistill.evaluate.classification import check_vocabulary
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.evaluate.run import default_suites, run_suites, summary_table
from jaxdistill.models import ModelConfig, load_pretrained
from jaxdistill.models.hf import read_config, to_host
from jaxdistill.pruning import compact, full_masks, importance, prune_to


def template_of(run: RunConfig) -> Template:
    d = run.data
    return Template(instruction=d.instruction, use_chat_template=False) if d.instruction else Template()


def split_data(run: RunConfig, *, teacher: bool = False):
    """(training data, held-out data or None, {"train": source row ids, "held_out": ...}), and with
    `teacher` a fourth item: the teacher's fine-tuning data (ids["teacher"]). The held-out part is
    split off first (stratified, seeded), then D is drawn from the rest; the teacher's sample
    (teacher.prepare_subsample) is drawn from the same rest with its own seed, independent of D, so
    every D of a sweep shares one prepared teacher (null: the run's D examples)."""
    d = run.data
    data = load_source(d.source, split=d.split, text_column=d.text_column, label_column=d.label_column,
                       rationale_column=d.rationale_column,
                       label_names=None if d.label_names is None else list(d.label_names))
    dropped = sum(v for k, v in data.report.items() if k.startswith("dropped_"))
    if not len(data):
        raise DataError(f"data.source={d.source!r} (split {d.split!r}) has no usable rows ({data.report}): every row "
                        "has an empty text, a missing label or a label outside data.label_names")
    guard_dropped(run, dropped, len(data) + dropped, f"were dropped while reading data.source={d.source!r} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(data.report.items()))})")
    pool = np.arange(len(data))
    held_rows = np.array([], int)
    if run.eval is not None:
        pool, held_rows = stratified_split(data.labels, (1.0 - run.eval.held_out, run.eval.held_out), seed=run.seed)
    rows = pool
    if d.subsample:
        rows = pool[stratified_subsample(data.labels[pool], min(d.subsample, len(pool)), seed=run.seed)]
    ids = {"train": rows.tolist(), "held_out": held_rows.tolist()}
    out = (data.subset(rows), (data.subset(held_rows) if run.eval is not None else None), ids)
    if not teacher:
        return out
    n = run.teacher.prepare_subsample
    teacher_rows = rows if n is None else pool[stratified_subsample(data.labels[pool], min(n, len(pool)),
                                                                    seed=run.seed + 1)]
    ids["teacher"] = teacher_rows.tolist()
    return (*out, data.subset(teacher_rows))


def guard_dropped(run: RunConfig, dropped: int, total: int, what: str) -> None:
    """Stop when a filter lost more than data.max_dropped of the rows (a data-loss guard)."""
    if total and dropped / total > run.data.max_dropped:
        raise DataError(f"{dropped} of {total} rows ({dropped / total:.0%}) {what}: more than data.max_dropped="
                        f"{run.data.max_dropped:g}. Fix the data or the settings, or allow it with "
                        f"data.max_dropped={min(1.0, dropped / total + 0.005):.2f}")


def check_encoding(run: RunConfig, data: ClassificationData, tokenizer, template: Template) -> None:
    """Before any work: the training rows encoded as the run will (the label format when traces are
    still to be written) lose no more than data.max_dropped to data.max_len."""
    format = run.data.format if data.rationales is not None else "label"
    _, counts = encode_dataset(data, tokenizer, format=format, template=template, max_len=run.data.max_len)
    guard_dropped(run, counts.get("dropped_too_long", 0), len(data),
                  f"do not fit data.max_len={run.data.max_len} in the {format} format")


def suites_of(run: RunConfig) -> tuple[str, ...]:
    return run.eval.suites if run.eval.suites is not None else default_suites(run.teacher.path is not None)


def evaluate_model(run: RunConfig, name: str, config: ModelConfig, params, tokenizer, held_out, log,
                   mesh=None, *, format: str | None = None, cache: Path | None = None) -> dict:
    """The run's suites on one model; cached in run_dir/eval-{name}.json (a resumed run reads it) and,
    with `cache`, also there (a prepared teacher's evaluation, reused by every run that shares it).
    `format`: the supervision format the model was trained in (default data.format): the fine-tuned
    teacher and the pruned-only baseline answer in the label format.
    On one process the scoring batches are sharded over `mesh`'s batch axes with the parameters where
    they are; on several, every process evaluates the gathered model and process 0 writes."""
    path = Path(run.run_dir) / f"eval-{name}.json"
    for known in (path, cache):
        if known is not None and known.is_file():
            results = json.loads(known.read_text())
            if known != path and jax.process_index() == 0:
                write_json(path, results)
            return results
    if jax.process_count() > 1:
        params, mesh = jax.tree.map(lambda x: jnp.asarray(to_host(x)), params), None
    else:
        params = jax.tree.map(jnp.asarray, params)  # compacted models come as host arrays: place them once
    log(f"eval: {name}")
    results = run_suites(config, params, tokenizer, suites_of(run), eval_config=run.eval, held_out=held_out,
                         format=format or run.data.format, template=template_of(run), mesh=mesh, log=log)
    if jax.process_index() == 0:
        write_json(path, results)
        if cache is not None and cache.parent.is_dir():
            write_json(cache, results)
    return results


def pruned_only(run: RunConfig, config: ModelConfig, params, calibration) -> tuple[ModelConfig, dict]:
    """The student at initialisation pruned one-shot to the final ratio and compacted (no training)."""
    p = run.pruning
    scores = importance(config, params, calibration, method=p.method, masks=full_masks(config))
    masks, _ = prune_to(config, scores, p.final_ratio, ratio_of=p.ratio_of, split=p.split, multiple=p.multiple)
    return compact(config, jax.tree.map(to_host, params), jax.tree.map(to_host, masks))


def report(results: dict[str, dict], log) -> None:
    log("eval (held-out):\n" + summary_table(results))


def evaluate_dir(path: str | Path, overrides=(), *, suites=None, limit=None, log=print) -> dict:
    """`jaxdistill eval`: a run directory (its student, and its teacher if saved there, on the run's
    held-out split and suites) or a Hugging Face model directory (with the default run config, or
    the given key=value overrides, for the data and the suites)."""
    path = Path(path)
    run_config_file = path / "config.yaml"
    if run_config_file.is_file():
        run = load_config(run_config_file, overrides, check_paths=False)
        models = {name: path / name for name in ("teacher", "student") if (path / name / "config.json").is_file()}
    elif (path / "config.json").is_file():
        run = load_config(None, ["data.format=label", *overrides], check_paths=False)
        models = {path.name: path}
    else:
        raise EvaluationError(f"{path}: neither a run directory (config.yaml) nor a Hugging Face model directory "
                              "(config.json)")
    if run.eval is None:
        raise EvaluationError("eval=null in the run config: set eval.suites (and eval.held_out) to evaluate")
    eval_config = run.eval if limit is None else dataclasses.replace(run.eval, limit=limit)
    own = next((m for m in models.values() if (m / "tokenizer.json").is_file()), None)
    tokenizer = load_tokenizer(run.data.tokenizer or (str(own) if own is not None else None))
    _, held_out, _ = split_data(run)
    out = {}
    for name, model_dir in models.items():
        check_vocabulary(read_config(model_dir), tokenizer)  # before loading any weights
        config, params = load_pretrained(model_dir)
        log(f"eval: {name}")
        out[name] = run_suites(config, params, tokenizer, suites or suites_of(run), eval_config=eval_config,
                               held_out=held_out, format="label" if name == "teacher" else run.data.format,
                               template=template_of(run), log=log)
    write_json(path / "eval.json", out)
    return out
