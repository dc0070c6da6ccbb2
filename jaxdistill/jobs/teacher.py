"""The teacher side of a distill run, each step cached so that every later run and sweep point reuses it:

    resolve     teacher.path (a local dir, a .gguf, a hub id or a preset) -> a local HF directory
                (`models.sources.resolve_model`; downloads and conversions land in the cache dir)
    tokenizer   data.tokenizer, else the teacher's own, else (a teacher built here) the shipped BPE
    prepare     supervised fine-tuning on the task in the label format for teacher.prepare_steps
                steps, kept in <cache>/teachers/<key>/ (HF format, tokenizer, prepared.json) where the
                key hashes the teacher's source, the tokenizer, the training rows, the prompt and
                every setting that changes the result; its evaluations are stored next to it
    traces      for data.format cot | blended without a rationale column: the pretrained teacher, before
                its fine-tuning (fine-tuned on labels it answers in one word), explains the gold label of
                every training headline (`data.generate_rationales`), stored in <cache>/traces/<key>.jsonl
                and attached with `attach_traces(policy="keep")`

The cache dir is `cache_dir`, else $JAXDISTILL_CACHE, else ~/.cache/jaxdistill.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax

from jaxdistill.atomic_files import write_json
from jaxdistill.config import RunConfig, to_dict
from jaxdistill.data import (ClassificationData, attach_traces, encode_dataset, generate_rationales, load_tokenizer,
                             load_traces, trace_quality)
from jaxdistill.data.rationales import RATIONALE_PROMPT
from jaxdistill.jobs.export import export_model
from jaxdistill.jobs.phases import batches, run_phase
from jaxdistill.jobs.rundir import fingerprint
from jaxdistill.losses import CrossEntropyLoss
from jaxdistill.models import ModelConfig, init_params, load_pretrained, logical_axes, shard_params
from jaxdistill.models.hf import check_pretrained
from jaxdistill.models.sources import ModelSourceError, default_cache_dir, resolve_model
from jaxdistill.sample import SamplingSettings
from jaxdistill.train import StepConfig, TrainingError, init_state


def cache_root(run: RunConfig) -> Path:
    return Path(run.cache_dir).expanduser() if run.cache_dir else default_cache_dir()


def resolve_teacher(run: RunConfig, log) -> tuple[Path | None, dict]:
    """(local HF dir or None for a teacher built here, its provenance)."""
    if run.teacher.path is None:
        return None, {"built_here": run.teacher.model}
    resolved = resolve_model(run.teacher.path, cache_dir=cache_root(run), hub=run.teacher.hub, log=log)
    log(f"teacher: {run.teacher.path} -> {resolved.path} ({resolved.kind})")
    check_pretrained(resolved.path)  # config.json and the safetensors headers, before any work
    return Path(resolved.path), {"spec": run.teacher.path, "kind": resolved.kind, **resolved.provenance}


def run_tokenizer(run: RunConfig, teacher_dir: Path | None):
    """data.tokenizer, else the teacher directory's tokenizer, else the shipped BPE."""
    if run.data.tokenizer:
        return load_tokenizer(run.data.tokenizer), str(run.data.tokenizer)
    if teacher_dir is not None and (teacher_dir / "tokenizer.json").is_file():
        return load_tokenizer(str(teacher_dir)), f"teacher:{fingerprint(_source_identity(teacher_dir))}"
    if teacher_dir is not None:
        raise ModelSourceError(f"{teacher_dir} has no tokenizer.json: set data.tokenizer to the teacher's tokenizer "
                               "directory")
    return load_tokenizer(None), "shipped-bpe"


def _source_identity(teacher_dir: Path) -> dict:
    """What identifies a resolved teacher's weights: its config and the safetensors headers' sizes
    and modification-independent names (cheap; the conversion records a sha256 of a GGUF source)."""
    files = sorted(p.name for p in teacher_dir.glob("*.safetensors"))
    meta = {}
    for name in ("gguf_source.json", "config.json"):
        if (teacher_dir / name).is_file():
            meta[name] = json.loads((teacher_dir / name).read_text())
    return {"files": {f: (teacher_dir / f).stat().st_size for f in files}, **meta}


def teacher_key(run: RunConfig, teacher_dir: Path | None, tokenizer_id: str, train_ids: list[int]) -> str:
    """The hash a prepared teacher is stored under: everything that changes its weights."""
    d, t = run.data, run.teacher
    opt = to_dict(run.optimizer)
    if t.learning_rate is not None:
        opt["learning_rate"] = t.learning_rate
    return fingerprint({
        "teacher": _source_identity(teacher_dir) if teacher_dir is not None else {"model": t.model, "seed": run.seed},
        "tokenizer": tokenizer_id, "data": [d.source, d.split, d.text_column, d.label_column], "rows": train_ids,
        "format": "label", "instruction": d.instruction, "max_len": d.max_len, "steps": t.prepare_steps,
        "optimizer": opt, "batch": [run.train.batch_size, run.train.seq_len, run.train.micro_batches], "seed": run.seed})


def prepare_teacher(run: RunConfig, teacher_dir: Path | None, tokenizer, tokenizer_id: str,
                    data: ClassificationData, train_ids: list[int], template, mesh, log, *, ignore=()):
    """(config, params, steps done, prepared dir or None): the teacher as loaded (prepare_steps=0), or
    fine-tuned on `data` in the label format (from the cache when an equal preparation exists; fewer
    steps done: the run stopped early). `ignore`: config keys a resumed checkpoint may differ in."""
    t = run.teacher
    steps = t.prepare_steps
    if steps == 0:
        if teacher_dir is None:
            config = ModelConfig(vocab_size=len(tokenizer), **t.model)
            params = init_params(config, jax.random.fold_in(jax.random.key(run.seed), 0))
            return config, shard_params(params, logical_axes(config), mesh), 0, None
        config, params = load_pretrained(teacher_dir, mesh=mesh)
        return config, params, 0, teacher_dir
    key = teacher_key(run, teacher_dir, tokenizer_id, train_ids)
    prepared = cache_root(run) / "teachers" / key
    if (prepared / "prepared.json").is_file():
        log(f"teacher: fine-tuned teacher from the cache ({prepared})")
        config, params = load_pretrained(prepared, mesh=mesh)
        return config, params, steps, prepared
    if teacher_dir is None:
        config = ModelConfig(vocab_size=len(tokenizer), **t.model)
        params = shard_params(init_params(config, jax.random.fold_in(jax.random.key(run.seed), 0)),
                              logical_axes(config), mesh)
    else:
        config, params = load_pretrained(teacher_dir, mesh=mesh)
    check_vocab(config, tokenizer)
    examples, counts = encode_dataset(data, tokenizer, format="label", template=template, max_len=run.data.max_len)
    if not examples:
        raise TrainingError(f"no examples left after encoding: {counts}")
    log(f"teacher: fine-tuning {steps} steps on {len(examples)} label-format examples")
    optimizer = run.optimizer if t.learning_rate is None else dataclasses.replace(run.optimizer, learning_rate=t.learning_rate)
    c = StepConfig(student=config, loss=CrossEntropyLoss(), optimizer=optimizer, total_steps=steps,
                   micro_batches=run.train.micro_batches, chunk_size=run.loss.chunk_size, masked=False)
    state = init_state(c, params, jax.random.fold_in(jax.random.key(run.seed), 2))
    state, last = run_phase(run, c, state, {}, batches(run, examples, mesh, format="label", seed_offset=100), mesh,
                            name="teacher", log=log, ignore=ignore)
    done = int(jax.device_get(state.step))
    if done == steps:  # every process calls it: it gathers shards, process 0 writes
        record = {"key": key, "source": str(teacher_dir) if teacher_dir else "built here", "steps": steps,
                  "examples": len(examples), "encoding": counts, "final": last}
        _store(config, state.params, prepared, record, tokenizer=tokenizer, label_names=data.label_names,
               template=template, max_len=run.data.max_len)
    return config, state.params, done, prepared if done == steps else None


def check_vocab(config: ModelConfig, tokenizer) -> None:
    if len(tokenizer) > config.vocab_size:
        raise ModelSourceError(f"the tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary is "
                               f"{config.vocab_size}: teacher and student must share the teacher's tokenizer")


def _store(config, params, prepared: Path, record: dict, *, tokenizer, label_names, template, max_len: int) -> None:
    """Save a prepared teacher to the cache as a self-contained export (`jobs.export`: weights,
    tokenizer, generation config, class names, model card) in a temporary directory, renamed into
    place once complete (`prepared.json` marks it complete)."""
    tmp = prepared.with_name(f".{prepared.name}.tmp-{os.getpid()}")
    try:
        export_model(tmp, config, params, tokenizer, label_names=label_names, template=template, data_format="label",
                     max_len=max_len, strict_prompt=False, card={"name": "teacher (fine-tuned by jaxdistill)",
                                            "teacher": {"source": record["source"]},
                                            "training": {k: record[k] for k in ("steps", "examples", "final")}})
        if jax.process_index() != 0:
            return
        write_json(tmp / "prepared.json", record)
    except BaseException:  # a full disk or a kill signal: leave no half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if prepared.exists():  # an equal preparation finished first elsewhere: keep it
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, prepared)


def cached_evaluation(prepared: Path | None, run: RunConfig, held_ids: list[int], suites) -> Path | None:
    """Where a prepared teacher's evaluation under this run's held-out rows and eval settings is kept."""
    if prepared is None:
        return None
    key = fingerprint({"held_out": held_ids, "eval": to_dict(run.eval), "suites": list(suites),
                       "instruction": run.data.instruction})
    return prepared / f"eval-{key}.json"


def teacher_traces(run: RunConfig, teacher_dir: Path, tokenizer, data: ClassificationData, train_ids: list[int],
                   mesh, log) -> tuple[ClassificationData, dict]:
    """`data` with rationales attached, written by the pretrained teacher before its fine-tuning (a
    teacher fine-tuned on labels answers in one word), generated once per teacher, rows and prompt and
    then read from the cache; and the trace quality report."""
    tr = run.teacher.traces
    prompt = tr.prompt or RATIONALE_PROMPT
    settings = SamplingSettings(max_new_tokens=tr.max_new_tokens)
    teacher_id = fingerprint(_source_identity(teacher_dir))
    key = fingerprint({"teacher": teacher_id, "rows": train_ids, "texts": fingerprint(data.texts),
                       "labels": fingerprint(data.labels.tolist()), "prompt": prompt,
                       "sampling": dataclasses.asdict(settings)})
    path = cache_root(run) / "traces" / f"{key}.jsonl"
    cached = path.is_file()
    if cached:
        log(f"traces: from the cache ({path})")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"traces: the teacher writes a rationale for each of {len(data)} training headlines")
        config, params = load_pretrained(teacher_dir, mesh=mesh)
        check_vocab(config, tokenizer)
        generate_rationales(config, params, tokenizer, data, path, teacher_id=f"{run.teacher.path} ({teacher_id})",
                            prompt=prompt, settings=settings, batch_size=tr.batch_size)
        del params
    records = load_traces(path)
    with_traces, counts = attach_traces(data, records, policy="keep")
    quality = {**trace_quality(records, data.label_names, tokenizer), "attach": counts, "path": str(path),
               "cached": cached}
    log(f"traces: {quality['n']} rationales, mean {quality['mean_words']:.1f} words, {quality['empty_share']:.0%} "
        f"empty, {quality['names_gold_share']:.0%} name the gold label, {quality['names_other_share']:.0%} another")
    return with_traces, quality
