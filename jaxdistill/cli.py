"""Command line: `jaxdistill run | distill [CONFIG] [key=value ...]`, `jaxdistill eval (RUN_DIR | HF_DIR)
[--suites a,b] [--limit N]`, `jaxdistill convert FILE.gguf OUT_DIR`, `jaxdistill config show [CONFIG]
[key=value ...]` and `jaxdistill bench CONFIG [key=value ...] [--json]`.

Every config mistake (unknown key, bad value, missing path, incompatible combination) is a usage
error (exit 2) before any work starts; errors the run itself meets are reported without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
import yaml

from jaxdistill.bench import PRESETS, check_spec, run_benchmark
from jaxdistill.config import RunConfigError, dump, load_config, merge, parse_override
from jaxdistill.data import BatchingError, DataError
from jaxdistill.data.formats import FormatError
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.evaluate.run import available_suites, check_suites, summary_table
from jaxdistill.jobs.distill import run_distill
from jaxdistill.jobs.evaluation import evaluate_dir
from jaxdistill.jobs.smoke import model_smoke
from jaxdistill.losses import LossInputError
from jaxdistill.models import CheckpointError, ConfigError
from jaxdistill.models.sources import ModelSourceError
from jaxdistill.pruning import PruningError
from jaxdistill.train import TrainingError

# Errors a run can meet after its config was accepted: reported as one line, without a traceback.
RUN_ERRORS = (TrainingError, DataError, FormatError, BatchingError, PruningError, CheckpointError, ConfigError,
              LossInputError, ModelSourceError)


JOB_RUNNERS = {"distill": run_distill, "model-smoke": model_smoke}  # the jobs of `config.JOBS`


@click.group()
def main():
    """jaxdistill: distil a teacher LLM into a pruned student and measure what it costs."""


def _split_args(args) -> tuple[str | None, list[str]]:
    """(CONFIG file or None, key=value overrides)."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def _load(args, *, job: str | None = None, check_paths: bool = True):
    path, overrides = _split_args(args)
    if job is not None:
        overrides = [f"job={job}", *overrides]
    try:
        return load_config(path, overrides, check_paths=check_paths)
    except RunConfigError as err:
        raise click.UsageError(str(err)) from err


def _run_job(config) -> None:
    log = lambda msg: click.echo(msg, err=True)
    try:
        JOB_RUNNERS[config.job](config, log=log)
    except RUN_ERRORS as err:
        raise click.ClickException(f"{type(err).__name__}: {err}") from err


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def run(args):
    """Run the job a config describes (no CONFIG: the embedded finance-topic distillation demo),
    with key=value overrides; `job=model-smoke` runs the model smoke job instead."""
    _run_job(_load(args))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def distill(args):
    """Distil (and prune) a student: CONFIG (default: the shipped finance-topic demo) and key=value overrides."""
    _run_job(_load(args, job="distill"))


@main.command("eval", context_settings={"ignore_unknown_options": True})
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--suites", default=None, help=f"Comma-separated suites (default: the run's); available: "
              f"{', '.join(available_suites())}.")
@click.option("--limit", type=int, default=None, help="Examples per suite (default: the run's eval.limit).")
@click.argument("overrides", nargs=-1)
def eval_command(path, suites, limit, overrides):
    """Evaluate a run directory (its teacher and student, on the run's held-out split) or a Hugging
    Face model directory; prints a table and writes eval.json into PATH. key=value overrides set the
    data and eval sections (e.g. data.tokenizer=DIR for an HF model with its own tokenizer)."""
    names = None if suites is None else tuple(s.strip() for s in suites.split(",") if s.strip())
    try:
        if names is not None:
            check_suites(names)
        results = evaluate_dir(path, list(overrides), suites=names, limit=limit,
                               log=lambda msg: click.echo(msg, err=True))
    except (EvaluationError, RunConfigError) as err:
        raise click.UsageError(str(err)) from err
    except RUN_ERRORS as err:
        raise click.ClickException(f"{type(err).__name__}: {err}") from err
    click.echo(summary_table(results))
    click.echo(f"written to {path / 'eval.json'}", err=True)


@main.command()
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def convert(gguf_file, out_dir):
    """Convert a GGUF file (Llama, Qwen2, Qwen3, Mistral; F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K and the
    other types gguf dequantises) into a Hugging Face directory: config.json, fp32 safetensors, the
    tokenizer from the GGUF metadata, and gguf_source.json (provenance). No torch."""
    from jaxdistill.models.gguf import convert_gguf

    try:
        path = convert_gguf(gguf_file, out_dir)
    except (CheckpointError, ConfigError) as err:
        raise click.ClickException(f"{type(err).__name__}: {err}") from err
    click.echo(f"converted {gguf_file} -> {path}", err=True)


@main.group()
def config():
    """Inspect run configs."""


@config.command("show", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def config_show(args):
    """Print the resolved config (defaults <- CONFIG <- overrides) as YAML; paths are not checked."""
    click.echo(dump(_load(args, check_paths=False)), nl=False)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.argument("overrides", nargs=-1)
def bench(config_file, as_json, overrides):
    """Run the benchmark a YAML file describes (e.g. jaxdistill/configs/bench/forward_cpu.yaml);
    key=value overrides merge into it (model.hidden_size=64 keeps the rest of model:)."""
    try:
        spec = yaml.safe_load(config_file.read_text()) or {}
        if isinstance(spec.get("model"), str) and spec["model"] in PRESETS and any(t.startswith("model.") for t in overrides):
            spec["model"] = dataclasses.asdict(PRESETS[spec["model"]])  # a preset's fields, to override one
        for text in overrides:
            spec = merge(spec, parse_override(text))
        check_spec(spec)
    except (RunConfigError, ValueError, yaml.YAMLError) as err:
        raise click.UsageError(f"{config_file}: {err}") from err
    result = run_benchmark(spec)
    if as_json:
        click.echo(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            click.echo(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
