"""Sweeps (`jaxdistill sweep SWEEP.yaml [--shard i/n]`): one base run config, points that change any
of its keys, each point a distill run in its own directory, every result in one table.

    name: smollm2-cpu                 # the sweep's identity (default: the file's stem)
    sweep_dir: sweeps/smollm2-cpu     # default: sweeps/<name>
    base: null                        # a run config YAML (relative to this file, or a packaged name);
                                      # null: the embedded default experiment
    set: {eval.limit: 100}            # dotted keys applied to every point
    grid:                             # the cartesian product of these axes ...
      pruning.final_ratio: [0.1, 0.3, 0.5]
      data.format: [label, cot, blended]
      "data.subsample,train.steps": [[160, 12], [480, 36]]   # linked keys move together
    points:                           # ... plus these points (each on top of base + set)
      - {pruning.final_ratio: 0.3, pruning.stages: 1}
    keep: [student]                   # after a point finishes: its exported student stays; its
                                      # checkpoints are deleted unless listed (default [student])

    sweep_dir/
      sweep.json                the sweep's name, base fingerprint and points (checked on every start)
      points/<id>/              a distill run directory; row.json (written last, atomically) = finished
      results.parquet           one row per finished point (done or failed), rebuilt from the row files
                                under a file lock and replaced atomically: several processes (`--shard
                                i/n`) write to one sweep directory without clashes

Cheap by construction: points share the cache directory, so one teacher preparation, one set of
rationales per training sample and one teacher-target cache serve every point that can share them;
the persistent compilation cache (<cache>/xla) serves compiled steps to points of equal shapes, in
this process and the next; pruning stages compact the student so small points cost less.

Resume: run the same command again. Finished points (row.json) are skipped, an interrupted point
resumes from its last checkpoint; a failed point is retried. Every point's config is validated
before the first one runs.

One module (~490 lines) on purpose: the sweep file, its points, their rows, the shared table and the
progress view are one contract (a point's id, run dir and row file name each other); its seams, if it
grows, are the spec (load_sweep, parse_shard) and the table (rows, write_table, progress).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from jaxdistill.atomic_files import atomic_write, write_json
from jaxdistill.config import RunConfig, RunConfigError, load_config, load_yaml, packaged_config, to_dict
from jaxdistill.jobs.distill import file_lock, run_distill
from jaxdistill.jobs.errors import RUN_ERRORS
from jaxdistill.jobs.teacher import cache_root, fingerprint

SWEEP_KEYS = ("name", "sweep_dir", "base", "set", "grid", "points", "keep")
KEEP = ("student", "checkpoints")  # what a finished point keeps besides its results (checkpoints: GBs each)


class SweepError(ValueError):
    """A sweep file or sweep directory that cannot be used as asked (named value, what is valid)."""


@dataclass(frozen=True)
class Point:
    id: str
    overrides: dict[str, Any]          # dotted key -> value, on top of the base config
    config: RunConfig


@dataclass(frozen=True)
class Sweep:
    name: str
    sweep_dir: Path
    base: Path | None
    fingerprint: str                   # of the resolved base config (the points' common ground)
    points: tuple[Point, ...]
    keep: tuple[str, ...] = ("student",)

    @property
    def table_path(self) -> Path:
        return self.sweep_dir / "results.parquet"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"data": {"format": "cot"}} -> {"data.format": "cot"} (dotted keys stay as they are)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _expand_grid(grid: dict) -> list[dict[str, Any]]:
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid axis {key!r} = {values!r}: expected a non-empty list of values")
        names = [k.strip() for k in key.split(",")]
        if len(names) == 1:
            axes.append([{names[0]: v} for v in values])
            continue
        for v in values:
            if not isinstance(v, list) or len(v) != len(names):
                raise SweepError(f"linked grid axis {key!r}: each value must be a list of {len(names)} "
                                 f"(one per key), got {v!r}")
        axes.append([dict(zip(names, v)) for v in values])
    return [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*axes)]


def _base_path(value, here: Path) -> Path | None:
    if value is None:
        return None
    for candidate in (here / value, Path(value), packaged_config(value)):
        if candidate.is_file():
            return candidate
    raise SweepError(f"base={value!r}: no such run config (relative to {here}, or packaged in jaxdistill/configs)")


def override_args(values: dict[str, Any]) -> list[str]:
    """key=value texts that parse back to the same values (YAML: 2e-05 is written 2.0e-05, a float)."""
    def text(value) -> str:
        out = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
        return out[:-3].strip() if out.endswith("\n...") or out.endswith("...") else out
    return [f"{k}={text(v)}" for k, v in values.items()]


def point_id(config: RunConfig) -> str:
    """A readable, stable name: the axes users read first, and a hash of the whole resolved config."""
    p = config.pruning
    r = 0.0 if p is None else p.final_ratio
    digest = fingerprint({k: v for k, v in to_dict(config).items() if k != "run_dir"})[:8]
    return (f"D{config.data.subsample or 'all'}-r{r:g}-{config.data.format}-{schedule_of(config)}-"
            f"{config.student.trainable}-s{config.seed}-{digest}")


def schedule_of(config: RunConfig) -> str:
    p = config.pruning
    if p is None:
        return "none"
    if p.stages == 1:
        return "one-shot"
    return f"iterative-{p.stages}" + ("" if p.kind == "cubic" else f"-{p.kind}")


def load_sweep(path: str | Path, overrides=()) -> Sweep:
    """The sweep a file describes, every point's run config loaded and validated (`SweepError` names
    the point and the bad key or value). `overrides`: key=value applied to every point, after `set`."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        spec = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown sweep key(s) {unknown}; valid: {', '.join(SWEEP_KEYS)}")
    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SweepError(f"name={name!r}: use letters, digits, '.', '_' and '-'")
    sweep_dir = Path(spec.get("sweep_dir") or Path("sweeps") / name)
    base = _base_path(spec.get("base"), path.parent)
    common = _flatten(spec.get("set") or {})
    extra = list(overrides)
    grid, listed = spec.get("grid") or {}, spec.get("points") or []
    if not isinstance(grid, dict) or not isinstance(listed, list):
        raise SweepError(f"{path}: grid must be a mapping of axes to lists, points a list of mappings")
    combos = (_expand_grid(grid) if grid else []) + [_flatten(p) if isinstance(p, dict) else p for p in listed]
    if not combos:
        raise SweepError(f"{path}: the sweep has no points: give grid axes (key: [values]) and/or points")
    try:
        base_config = load_config(base, [*override_args(common), *extra], check_paths=False)
    except RunConfigError as err:
        raise SweepError(f"{path}: the base config: {err}") from err
    points, seen = [], {}
    for i, combo in enumerate(combos):
        if not isinstance(combo, dict):
            raise SweepError(f"{path}: point {i} = {combo!r}: expected a mapping of config keys to values")
        values = {**common, **combo}
        try:
            config = load_config(base, [*override_args(values), *extra])
        except RunConfigError as err:
            raise SweepError(f"point {i} {combo}: {err}") from err
        pid = point_id(config)
        if pid in seen:
            raise SweepError(f"points {seen[pid]} and {i} ({combo}) resolve to the same run config")
        seen[pid] = i
        config = load_config(base, [*override_args(values), *extra, f"run_dir={json.dumps(str(sweep_dir / 'points' / pid))}"],
                             check_paths=False)
        points.append(Point(pid, combo, config))
    keep = spec.get("keep", ["student"]) or []
    if not isinstance(keep, list) or set(keep) - set(KEEP):
        raise SweepError(f"keep={keep!r}: a list of {', '.join(KEEP)} (or [])")
    identity = {k: v for k, v in to_dict(base_config).items() if k != "run_dir"}
    return Sweep(name, sweep_dir, base, fingerprint(identity), tuple(points), tuple(keep))


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); 'auto' -> from SLURM_PROCID/SLURM_NTASKS or TPU_WORKER_ID/TPU_WORKER_HOSTNAMES
    (one process per host or task), else (0, 1); None -> (0, 1)."""
    if text is None:
        return 0, 1
    if text == "auto":
        env = os.environ
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        if "TPU_WORKER_ID" in env and env.get("TPU_WORKER_HOSTNAMES"):
            return int(env["TPU_WORKER_ID"]), len(env["TPU_WORKER_HOSTNAMES"].split(","))
        return 0, 1
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise SweepError(f"--shard {text!r}: expected i/n with 0 <= i < n (e.g. 0/2), or auto")
    return int(match[1]), int(match[2])


# ---------------------------------------------------------------------------------------------- rows

def _suite_columns(prefix: str, results: dict) -> dict[str, Any]:
    out = {}
    for suite, res in results.items():
        for metric, value in res.get("metrics", {}).items():
            name = "ppl" if metric == "perplexity" else metric
            out[f"{prefix}{suite}.{name}"] = value
            se = res.get("stderr", {}).get(metric)
            if se is not None:
                out[f"{prefix}{suite}.{name}_se"] = se
        out[f"{prefix}{suite}.n"] = res.get("n")
        chance = res.get("chance")
        if isinstance(chance, dict):  # in-domain: uniform over the classes, and the majority class
            out[f"{prefix}{suite}.chance"], out[f"{prefix}{suite}.majority"] = chance["uniform"], chance["majority"]
        elif chance is not None:
            out[f"{prefix}{suite}.chance"] = chance
        if not prefix and "correct" in res:
            out[f"{suite}.correct"] = list(res["correct"])
    return out


def _compile_s(run_dir: Path) -> float | None:
    """First step time minus the steady step time of the first window (metrics-student.jsonl)."""
    try:
        first = json.loads((run_dir / "metrics-student.jsonl").read_text().splitlines()[0])
        return max(first["first_step_s"] - first["step_time_s"], 0.0)
    except (OSError, IndexError, KeyError, ValueError, TypeError):
        return None


def teacher_flops_saved(config: RunConfig, result: dict) -> float:
    """Teacher FLOPs this point did not spend because shared work was found ready in the cache: the
    fine-tuning (6 N per token) and the rationales (2 N per prompt and generated token); model FLOPs
    from `perf`, approximate (the teacher's evaluation, also reused, is not counted)."""
    reused = result.get("reused", {})
    teacher = result.get("teacher_params")
    if not teacher:
        return 0.0
    saved = 0.0
    t, tr = config.teacher, config.teacher.traces
    if reused.get("prepare_teacher"):
        saved += 6.0 * teacher * t.prepare_steps * config.train.batch_size * config.train.seq_len
    if reused.get("traces"):
        n = result.get("traces", {}).get("n", 0)
        saved += 2.0 * teacher * n * (config.data.max_len + tr.max_new_tokens)
    return saved


def _axes(point: Point, examples: int = 0) -> dict[str, Any]:
    """A row's identity and axes (the same for a finished and a failed point)."""
    c = point.config
    return {"point": point.id, "D": int(c.data.subsample or examples),
            "r": 0.0 if c.pruning is None else float(c.pruning.final_ratio), "format": c.data.format,
            "schedule": schedule_of(c), "method": c.student.trainable, "divergence": c.loss.divergence,
            "seed": c.seed, "overrides": json.dumps(point.overrides, sort_keys=True)}


def row_of(point: Point, result: dict, wall_s: float) -> dict[str, Any]:
    """One results-table row: the point's axes, every metric (student, and the teacher's and the
    pruned-only baseline's under `teacher.` / `pruned_only.`) and every cost."""
    c = point.config
    evals = result.get("eval", {})
    row = {**_axes(point, result.get("data", {}).get("examples", 0)), "status": "done", "error": None,
           "r_actual": float(result.get("compression_ratio", {}).get("total", 0.0)),
           **_suite_columns("", evals.get("student", {})),
           **_suite_columns("teacher.", evals.get("teacher", {})),
           **_suite_columns("pruned_only.", evals.get("pruned_only", {})),
           "steps": int(result.get("steps", 0)),
           "tokens": int(result.get("steps", 0)) * c.train.batch_size * c.train.seq_len,
           "wall_s": float(wall_s), "compile_s": _compile_s(Path(c.run_dir)),
           "student_params": result.get("student_params"), "teacher_params": result.get("teacher_params"),
           "teacher_flops_saved": teacher_flops_saved(c, result),
           "reused": json.dumps(result.get("reused", {}), sort_keys=True)}
    for phase, seconds in result.get("wall_s", {}).items():
        row[f"wall.{phase}"] = seconds
    row["distill_s"] = result.get("wall_s", {}).get("distill")
    row["eval_s"] = sum(v for k, v in result.get("wall_s", {}).items() if k.startswith("eval"))
    return row


def failed_row(point: Point, err: BaseException, wall_s: float) -> dict[str, Any]:
    return {**_axes(point), "status": "failed", "error": f"{type(err).__name__}: {err}", "wall_s": float(wall_s)}


# ---------------------------------------------------------------------------------------------- table

def _row_file(point: Point) -> Path:
    return Path(point.config.run_dir) / "row.json"


def read_rows(sweep: Sweep) -> list[dict]:
    rows = []
    for p in sweep.points:
        try:
            rows.append(json.loads(_row_file(p).read_text()))
        except (OSError, ValueError):
            continue
    return rows


LEADING = ("point", "status", "D", "r", "r_actual", "format", "schedule", "method", "divergence", "seed", "steps",
           "wall_s", "error", "overrides")


def write_table(sweep: Sweep) -> pd.DataFrame:
    """results.parquet rebuilt from the finished points' row files, under the sweep's lock, replaced
    atomically; rows in the sweep's point order, with the sweep's name and base fingerprint."""
    with file_lock(sweep.sweep_dir / ".results.lock"):
        table = pd.DataFrame(read_rows(sweep))
        if len(table):
            first = [c for c in LEADING if c in table.columns]
            table = table[first + sorted(c for c in table.columns if c not in first)]
            table.insert(0, "sweep", sweep.name)
            table.insert(1, "base_fingerprint", sweep.fingerprint)
        atomic_write(sweep.table_path, lambda tmp: table.to_parquet(tmp, index=False))
    return table


def check_sweep_dir(sweep: Sweep) -> None:
    """The sweep directory is this sweep's (or new): another sweep's results are never mixed in."""
    meta = sweep.sweep_dir / "sweep.json"
    if meta.is_file():
        known = json.loads(meta.read_text())
        if known.get("name") != sweep.name or known.get("base_fingerprint") != sweep.fingerprint:
            raise SweepError(f"{sweep.sweep_dir} holds sweep {known.get('name')!r} (base config "
                             f"{known.get('base_fingerprint')}), not {sweep.name!r} (base config {sweep.fingerprint}): "
                             "give this sweep its own sweep_dir, or restore the base config it was run with")
    if sweep.table_path.is_file():
        cols = pd.read_parquet(sweep.table_path, columns=None)
        if len(cols) and ({"sweep", "base_fingerprint"} - set(cols.columns) or
                          set(cols["sweep"]) != {sweep.name} or set(cols["base_fingerprint"]) != {sweep.fingerprint}):
            raise SweepError(f"{sweep.table_path} is the results table of another sweep "
                             f"({sorted(set(cols.get('sweep', ['unknown'])))}), not {sweep.name!r} with base config "
                             f"{sweep.fingerprint}: give this sweep its own sweep_dir")


# ---------------------------------------------------------------------------------------------- progress

def _running(point: Point) -> bool:
    """A point another live process (on this host: its pid exists; elsewhere: heartbeat < 1 h) runs."""
    try:
        info = json.loads((Path(point.config.run_dir) / "RUNNING").read_text())
    except (OSError, ValueError):
        return False
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
            return True
        except (OSError, ValueError, KeyError):
            return False
    return time.time() - float(info.get("since", 0)) < 3600


def progress(sweep: Sweep) -> dict[str, Any]:
    """Points done / failed / running / left, and an ETA from the mean wall time of finished points."""
    rows = {r["point"]: r for r in read_rows(sweep)}
    done = sum(r["status"] == "done" for r in rows.values())
    failed = sum(r["status"] == "failed" for r in rows.values())
    running = sum(1 for p in sweep.points if p.id not in rows and _running(p))
    left = len(sweep.points) - len(rows) - running
    walls = [r["wall_s"] for r in rows.values() if r["status"] == "done" and r.get("wall_s")]
    per_point = float(np.mean(walls)) if walls else None
    eta = None if per_point is None else per_point * (left + 0.5 * running) / max(running, 1)
    return {"total": len(sweep.points), "done": done, "failed": failed, "running": running, "left": left,
            "mean_point_s": per_point, "eta_s": eta}


def format_progress(sweep: Sweep, p: dict) -> str:
    eta = "unknown" if p["eta_s"] is None else _duration(p["eta_s"])
    return (f"sweep {sweep.name}: {p['done']} done, {p['failed']} failed, {p['running']} running, {p['left']} left "
            f"of {p['total']}; ETA {eta}")


def _duration(seconds: float) -> str:
    minutes = int(math.ceil(seconds / 60))
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


# ---------------------------------------------------------------------------------------------- run

@contextlib.contextmanager
def compilation_cache(root: Path, min_compile_s: float = 0.5):
    """JAX's persistent compilation cache under the run cache for the block (unless the user set one):
    a point whose step has the shapes of an earlier point's, in this process or a later one, loads it
    compiled. The previous settings come back afterwards."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        yield
        return
    (root / "xla").mkdir(parents=True, exist_ok=True)
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(root / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
        from jax._src import compilation_cache  # no public way to drop the initialised cache

        compilation_cache.reset_cache()


def _clean(run_dir: Path, keep: tuple[str, ...]) -> None:
    """A finished point's bulk, removed unless the sweep keeps it (its results and logs always stay)."""
    doomed = [] if "checkpoints" in keep else sorted(run_dir.glob("checkpoints-*"))
    doomed += [] if "student" in keep else [run_dir / "student"]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def run_sweep(sweep: Sweep, *, shard: tuple[int, int] = (0, 1), log=print) -> pd.DataFrame:
    """Run this shard's unfinished points (point j belongs to shard j mod n), one after the other,
    those with fewer training steps first (stable); returns the results table (all shards' finished
    points, in the sweep's order)."""
    check_sweep_dir(sweep)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep.sweep_dir / "sweep.json", {
        "name": sweep.name, "base": str(sweep.base) if sweep.base else None, "base_fingerprint": sweep.fingerprint,
        "points": [{"id": p.id, "overrides": p.overrides} for p in sweep.points]})
    with compilation_cache(cache_root(sweep.points[0].config)):
        return _run_points(sweep, shard, log)


def _run_points(sweep: Sweep, shard: tuple[int, int], log) -> pd.DataFrame:
    index, count = shard
    mine = [p for j, p in enumerate(sweep.points) if j % count == index]
    mine.sort(key=lambda p: p.config.train.steps)  # cheap points first: an early stop still covers the grid
    log(f"sweep {sweep.name}: {len(sweep.points)} points in {sweep.sweep_dir}; shard {index}/{count} runs {len(mine)}")
    for point in mine:
        row_file = _row_file(point)
        if row_file.is_file() and json.loads(row_file.read_text()).get("status") == "done":
            continue
        run_dir = Path(point.config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = run_dir / "RUNNING"
        write_json(marker, {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        log(f"sweep {sweep.name}: point {point.id} {point.overrides}")
        start = time.perf_counter()
        try:
            result = run_distill(point.config, log=lambda msg, pid=point.id: log(f"[{pid}] {msg}"))
            if result.get("steps") != point.config.train.steps or "wall_s" not in result:
                log(f"sweep {sweep.name}: point {point.id} stopped at step {result.get('steps')}: left unfinished")
                marker.unlink(missing_ok=True)
                break  # train.stop_at_step: the process was asked to stop
            row = row_of(point, result, time.perf_counter() - start)
        except RUN_ERRORS as err:
            log(f"sweep {sweep.name}: point {point.id} failed: {type(err).__name__}: {err}")
            row = failed_row(point, err, time.perf_counter() - start)
        finally:
            marker.unlink(missing_ok=True)
        write_json(row_file, row)
        if row["status"] == "done":
            _clean(run_dir, sweep.keep)
        write_table(sweep)
        log(format_progress(sweep, progress(sweep)))
    table = write_table(sweep)
    log(format_progress(sweep, progress(sweep)) + f"; table {sweep.table_path}")
    return table
