"""Command line:

    jaxdistill run | distill [CONFIG] [key=value ...]      a distill run (no CONFIG: the default experiment)
    jaxdistill eval (RUN_DIR | HF_DIR) [--suites a,b] [--limit N]
    jaxdistill sweep SWEEP.yaml [--shard i/n] [--status]  a sweep of distill runs -> results.parquet
    jaxdistill fit RESULTS                                scaling laws, intervals, collapse points -> fits.json
    jaxdistill report SWEEP_DIR                           report.md + plots
    jaxdistill recommend FITS --in-domain X --floor METRIC=Y
    jaxdistill convert FILE.gguf OUT_DIR
    jaxdistill config show [CONFIG] [key=value ...]
    jaxdistill bench CONFIG [key=value ...] [--json]

Every mistake in the inputs (config key or value, run directory, data, model files, mesh and batch
sizes) is a usage error (exit 2), found before any training; a failure of the run itself exits 1. Both
are one line without a traceback (`jaxdistill --debug ...` or JAXDISTILL_DEBUG=1 shows it); see
`jobs.errors` and docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import click
import yaml

from jaxdistill.bench import PRESETS, check_spec, run_benchmark
from jaxdistill.config import RunConfigError, dump, load_config, load_yaml, merge, parse_override
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.evaluate.run import available_suites, check_suites, summary_table
from jaxdistill.jobs.distill import run_distill
from jaxdistill.jobs.errors import describe
from jaxdistill.jobs.evaluation import evaluate_dir
from jaxdistill.jobs.smoke import model_smoke
from jaxdistill.models import CheckpointError, ConfigError



JOB_RUNNERS = {"distill": run_distill, "model-smoke": model_smoke}  # the jobs of `config.JOBS`


class JobError(click.ClickException):
    """An error a command met, printed as one line (`Error: ...`) with its exit code (2: usage, 1: runtime)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Main(click.Group):
    """The command group: any error a command meets leaves as one line and an exit code, unless --debug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:
            if ctx.params.get("debug"):
                raise
            message, code = describe(err)
            raise JobError(message, code) from err


@click.group(cls=Main)
@click.option("--debug", is_flag=True, envvar="JAXDISTILL_DEBUG", help="Show tracebacks (errors are one line otherwise).")
def main(debug):
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


def _run_job(config, resume_changed: bool = False, force_new: bool = False) -> None:
    log = lambda msg: click.echo(msg, err=True)
    if resume_changed and force_new:
        raise click.UsageError("--resume-changed and --force-new exclude each other: continue the run, or start afresh")
    options = {}
    if config.job == "distill":
        options["on_change"] = "resume" if resume_changed else "new" if force_new else "refuse"
    elif resume_changed or force_new:
        raise click.UsageError(f"--resume-changed / --force-new apply to the distill job, not job={config.job}")
    JOB_RUNNERS[config.job](config, log=log, **options)


_RUN_DIR_OPTIONS = [
    click.option("--resume-changed", is_flag=True, help="run_dir holds a run with other settings: continue it from "
                 "its checkpoints with these (recorded in run_dir/run.json)."),
    click.option("--force-new", is_flag=True, help="run_dir holds a run with other settings: move it aside "
                 "(RUN_DIR.replaced-<time>) and start afresh."),
]


def _run_dir_options(command):
    for option in reversed(_RUN_DIR_OPTIONS):
        command = option(command)
    return command


@main.command(context_settings={"ignore_unknown_options": True})
@_run_dir_options
@click.argument("args", nargs=-1)
def run(args, resume_changed, force_new):
    """Run the job a config describes (no CONFIG: the embedded finance-topic distillation demo),
    with key=value overrides; `job=model-smoke` runs the model smoke job instead. A run_dir that
    holds a run with other settings is refused (see --resume-changed, --force-new)."""
    _run_job(_load(args), resume_changed, force_new)


@main.command(context_settings={"ignore_unknown_options": True})
@_run_dir_options
@click.argument("args", nargs=-1)
def distill(args, resume_changed, force_new):
    """Distil (and prune) a student: CONFIG (default: the shipped finance-topic demo) and key=value overrides."""
    _run_job(_load(args, job="distill"), resume_changed, force_new)


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
        raise JobError(f"{type(err).__name__}: {err}", 2) from err
    click.echo(f"converted {gguf_file} -> {path}", err=True)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option("--shard", default=None, help="Run only points j with j mod n == i: 'i/n' (one process or host "
              "each, one sweep_dir), or 'auto' (SLURM_PROCID/SLURM_NTASKS, TPU_WORKER_ID/TPU_WORKER_HOSTNAMES).")
@click.option("--status", is_flag=True, help="Print the progress (done / failed / running / left, ETA) and exit.")
@click.argument("overrides", nargs=-1)
def sweep(sweep_file, shard, status, overrides):
    """Run a sweep: a base run config and axes (any config key) as a grid and/or a list of points,
    each point a distill run in SWEEP_DIR/points/<id>, results in SWEEP_DIR/results.parquet. Rerun the
    same command to resume; key=value overrides apply to every point."""
    from jaxdistill.jobs.sweep import SweepError, format_progress, load_sweep, parse_shard, progress, run_sweep

    try:
        spec = load_sweep(sweep_file, overrides)
        where = parse_shard(shard)
        if status:
            click.echo(format_progress(spec, progress(spec)))
            return
        run_sweep(spec, shard=where, log=lambda msg: click.echo(msg, err=True))
    except SweepError as err:
        raise click.UsageError(str(err)) from err


def _results_path(path: Path) -> Path:
    table = path / "results.parquet" if path.is_dir() else path
    if not table.is_file():
        raise click.UsageError(f"{path}: no results table (a sweep directory with results.parquet, or the "
                               "parquet file itself; run `jaxdistill sweep SWEEP.yaml` first)")
    return table


@main.command()
@click.argument("results", type=click.Path(exists=True, path_type=Path))
@click.option("--boot", default=200, show_default=True, help="Bootstrap draws (over evaluation examples).")
@click.option("--level", default=0.9, show_default=True, help="Interval level.")
@click.option("--margin-general", default=0.25, show_default=True,
              help="Collapse: a general metric within this share of (teacher - chance) above chance.")
@click.option("--margin-in-domain", default=0.1, show_default=True,
              help="In-domain quality held: within this share of (teacher - chance) below the teacher.")
def fit(results, boot, level, margin_general, margin_in_domain):
    """Fit scaling laws to a sweep's results (SWEEP_DIR or results.parquet): each metric as a function
    of (D, r) per format / schedule / method, with bootstrap intervals and leave-one-point-out error,
    and the collapse point per format; writes fits.json next to the table and prints the collapse points."""
    import pandas as pd

    from jaxdistill.scaling import fit_table, write_fits

    table = _results_path(results)
    with warnings.catch_warnings():  # fit_table also lists them in the document: printed once, below
        warnings.simplefilter("ignore")
        doc = fit_table(pd.read_parquet(table), boot=boot, level=level, margin_general=margin_general,
                        margin_in_domain=margin_in_domain)
    write_fits(doc, table.parent / "fits.json")
    for group in doc["groups"]:
        label = ", ".join(f"{k}={v}" for k, v in group["key"].items())
        for metric, c in group.get("collapse", {}).items():
            click.echo(f"{label}: {metric} collapses at r={_r(c['r_general'])} {_ci(c['r_general_ci'])}, in-domain "
                       f"holds to r={_r(c['r_in_domain'])} {_ci(c['r_in_domain_ci'])} at D={c['D']:g}; "
                       f"P(general collapses first) = {c['claim_prob']:.2f}")
    for warning in doc.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"written to {table.parent / 'fits.json'}", err=True)


def _r(value) -> str:
    return "beyond 0.99" if value is None else f"{value:.2f}"


def _ci(ci) -> str:
    return "" if not ci else f"[{_r(ci[0])}, {_r(ci[1])}]"


@main.command()
@click.argument("sweep_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--title", default=None, help="The report's title (default: from the sweep's name).")
def report(sweep_dir, title):
    """Write SWEEP_DIR/report.md and plots/ from results.parquet and fits.json (`jaxdistill fit` first;
    without fits the report has the measurements only)."""
    from jaxdistill.scaling.report import write_report

    _results_path(sweep_dir)
    click.echo(f"written {write_report(sweep_dir, title=title)}", err=True)


@main.command()
@click.argument("fits", type=click.Path(exists=True, path_type=Path))
@click.option("--in-domain", "target", type=float, required=True, help="Target in-domain accuracy.")
@click.option("--floor", "floors", multiple=True, help="A general metric's floor, e.g. arc_easy.acc=0.35 (repeat).")
@click.option("--data-size", "ds", type=float, multiple=True, help="Candidate D (default: the sweep's).")
@click.option("--format", "formats", multiple=True, help="Candidate formats (default: all fitted).")
def recommend(fits, target, floors, ds, formats):
    """The smallest student (largest compression ratio r), with its D and format, that the fitted laws
    predict meets an in-domain accuracy target and a floor on each general metric; with intervals."""
    from jaxdistill.scaling import load_fits
    from jaxdistill.scaling import recommend as recommend_from

    path = fits / "fits.json" if fits.is_dir() else fits
    general = {}
    for text in floors:
        name, _, value = text.partition("=")
        try:
            general[name.strip()] = float(value)
        except ValueError:
            raise click.UsageError(f"--floor {text!r}: expected METRIC=VALUE, e.g. arc_easy.acc=0.35") from None
    try:
        out = recommend_from(load_fits(path), in_domain_target=target, general_floor=general, ds=list(ds) or None,
                             formats=list(formats) or None)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    click.echo(out["message"])
    click.echo(json.dumps({k: v for k, v in out.items() if k != "message"}, indent=2, default=str))


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
        spec = load_yaml(config_file.read_text()) or {}
        from jaxdistill.bench_step import STEP_PRESETS

        for field in ("model", "teacher", "student"):  # a preset's fields, to override one of them
            preset = {**PRESETS, **STEP_PRESETS}.get(spec.get(field)) if isinstance(spec.get(field), str) else None
            if preset is not None and any(t.startswith(f"{field}.") for t in overrides):
                spec[field] = dataclasses.asdict(preset)
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
