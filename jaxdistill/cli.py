"""Command line: `jaxdistill run | distill [CONFIG] [key=value ...]` and `jaxdistill bench CONFIG [--json]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from jaxdistill.run_config import RunConfigError, load_run_config

JOBS = {"distill": "distill_demo.yaml", "model-smoke": "demo.yaml"}  # job -> embedded default (schema)


@click.group()
def main():
    """jaxdistill: distil a teacher LLM into a pruned student and measure what it costs."""


def _job(config_path, overrides) -> str:
    """The job a command line asks for: a job=... override, else the config file's, else distill."""
    for text in overrides:
        if text.startswith("job="):
            return text.split("=", 1)[1]
    if config_path is not None and Path(config_path).is_file():
        loaded = yaml.safe_load(Path(config_path).read_text()) or {}
        if isinstance(loaded, dict) and "job" in loaded:
            return loaded["job"]
    return "distill"


def _run_job(args, default_job=None):
    from jaxdistill.models import ConfigError
    from jaxdistill.train import TrainingError

    config_path = None
    if args and "=" not in args[0]:
        config_path, args = args[0], args[1:]
    job = default_job or _job(config_path, args)
    if job not in JOBS:
        raise click.UsageError(f"job={job!r}: valid jobs are {', '.join(JOBS)}")
    log = lambda msg: click.echo(msg, err=True)
    try:
        config = load_run_config(config_path, args, default=JOBS[job])
        if job == "model-smoke":
            from jaxdistill.smoke import model_smoke

            model_smoke(config, log=log)
        else:
            from jaxdistill.train import run_distill

            run_distill(config, log=log)
    except (RunConfigError, ConfigError) as err:
        raise click.UsageError(str(err)) from err
    except TrainingError as err:
        raise click.ClickException(str(err)) from err


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def run(args):
    """Run the job a config describes (no CONFIG: the embedded finance-topic distillation demo),
    with key=value overrides; `job=model-smoke` runs the model smoke job instead."""
    _run_job(args)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def distill(args):
    """Distil (and prune) a student: CONFIG (default: the shipped finance-topic demo) and key=value overrides."""
    _run_job(args, default_job="distill")


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.argument("overrides", nargs=-1)
def bench(config, as_json, overrides):
    """Run the benchmark a YAML file describes (e.g. jaxdistill/configs/bench/forward_cpu.yaml)."""
    from jaxdistill.bench import run_benchmark
    from jaxdistill.run_config import parse_override

    spec = yaml.safe_load(config.read_text()) or {}
    try:
        for text in overrides:
            spec.update(parse_override(text))
        result = run_benchmark(spec)
    except (RunConfigError, ValueError) as err:
        raise click.UsageError(str(err)) from err
    if as_json:
        click.echo(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            click.echo(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
