"""Sweeps: grid expansion and validation, the results table, progress, resume without rerunning a
point, a kill in the middle, and two processes (`--shard i/n`) writing to one sweep directory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from jaxdistill.cli import main
from jaxdistill.jobs import sweep as sweep_module
from jaxdistill.jobs.sweep import (SweepError, check_sweep_dir, load_sweep, parse_shard, progress, row_of, run_sweep,
                                   write_table)

# A distill run of a few seconds (plus compilation): tiny teacher, 2 steps, in-domain eval on 8 headlines.
FAST = {"data.subsample": 60, "data.max_len": 40, "train.seq_len": 80, "train.batch_size": 4,
        "teacher.prepare_steps": 2, "teacher.model.hidden_size": 32, "teacher.model.intermediate_size": 64,
        "teacher.model.num_layers": 2, "teacher.model.head_dim": 8, "train.steps": 2, "train.log_every": 1,
        "train.checkpoint_every": 2, "pruning.start": 1, "pruning.interval": 1, "pruning.stages": 1,
        "pruning.multiple": 8, "pruning.calibration_batches": 1, "loss.chunk_size": 64, "eval.limit": 8,
        "eval.batch_size": 4, "eval.suites": ["in_domain"]}


def write_sweep(tmp_path, name="t", grid=None, points=None, **extra) -> Path:
    spec = {"name": name, "sweep_dir": str(tmp_path / "sweep"), "base": "tiny.yaml", "set": FAST,
            "grid": grid if grid is not None else {"pruning.final_ratio": [0.2, 0.4]}, **extra}
    if points is not None:
        spec["points"] = points
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------- expansion, validation


def test_grid_linked_axes_and_points_expand_in_order(tmp_path):
    path = write_sweep(tmp_path, grid={"pruning.final_ratio": [0.2, 0.4], "loss.temperature": [1.0, 2.0],
                                       "data.subsample,train.steps": [[60, 2], [80, 3]]},
                       points=[{"student.trainable": "lora"}])
    sweep = load_sweep(path)
    assert len(sweep.points) == 2 * 2 * 2 + 1
    first, last = sweep.points[0].config, sweep.points[-1].config
    assert (first.pruning.final_ratio, first.loss.temperature, first.data.subsample, first.train.steps) == (0.2, 1.0, 60, 2)
    assert sweep.points[1].config.data.subsample == 80 and sweep.points[1].config.train.steps == 3  # linked
    assert last.student.trainable == "lora" and last.data.subsample == 60  # a listed point: base + set + its keys
    assert len({p.id for p in sweep.points}) == len(sweep.points)
    assert all(Path(p.config.run_dir) == tmp_path / "sweep" / "points" / p.id for p in sweep.points)
    assert [p.id for p in load_sweep(path).points] == [p.id for p in sweep.points]  # stable ids
    assert load_sweep(path, ["seed=3"]).points[0].config.seed == 3


@pytest.mark.parametrize("change, message", [
    ({"grid": {"pruning.final_rato": [0.2]}}, r"unknown config key 'pruning.final_rato'; valid keys here: .*final_ratio"),
    ({"grid": {}}, r"the sweep has no points"),
    ({"grid": {"pruning.final_ratio": []}}, r"grid axis 'pruning.final_ratio' = \[\]: expected a non-empty list"),
    ({"grid": {"data.subsample,train.steps": [[60, 2, 9]]}}, r"linked grid axis .* a list of 2"),
    ({"grid": {"pruning.final_ratio": [1.5]}}, r"point 0 \{'pruning.final_ratio': 1.5\}: .*final_ratio"),
    ({"grid": {"pruning.final_ratio": [0.2, 0.2]}}, r"points 0 and 1 .* resolve to the same run config"),
    ({"keep": ["everything"]}, r"keep=\['everything'\]: a list of student, checkpoints"),
    ({"base": "nope.yaml"}, r"base='nope.yaml': no such run config"),
])
def test_bad_sweeps_are_refused_with_the_bad_value(tmp_path, change, message):
    spec = {"name": "t", "sweep_dir": str(tmp_path / "s"), "base": "tiny.yaml", "set": FAST,
            "grid": {"pruning.final_ratio": [0.2]}, **change}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        load_sweep(tmp_path / "s.yaml")


def test_unknown_sweep_key_and_shard_syntax(tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text("name: t\naxes: {}\n")
    with pytest.raises(SweepError, match=r"unknown sweep key\(s\) \['axes'\]; valid: name, sweep_dir"):
        load_sweep(tmp_path / "s.yaml")
    assert parse_shard("1/2") == (1, 2) and parse_shard(None) == (0, 1)
    for bad in ("2/2", "1-2", "x"):
        with pytest.raises(SweepError, match="expected i/n with 0 <= i < n"):
            parse_shard(bad)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parse_shard("auto") == (3, 4)
    result = CliRunner().invoke(main, ["sweep", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2 and "unknown sweep key" in result.output


def test_a_results_table_of_another_sweep_is_refused(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path))
    sweep.sweep_dir.mkdir(parents=True)
    pd.DataFrame({"sweep": ["other"], "base_fingerprint": ["x"], "point": ["p"]}).to_parquet(sweep.table_path)
    with pytest.raises(SweepError, match=r"results table of another sweep \(\['other'\]\)"):
        check_sweep_dir(sweep)
    sweep.table_path.unlink()
    (sweep.sweep_dir / "sweep.json").write_text(json.dumps({"name": "t", "base_fingerprint": "changed"}))
    with pytest.raises(SweepError, match=r"holds sweep 't' \(base config changed\)"):
        check_sweep_dir(sweep)


def _fake_result(acc=0.5):
    return {"steps": 2, "compression_ratio": {"total": 0.21}, "student_params": 10, "teacher_params": 20,
            "reused": {"prepare_teacher": True}, "wall_s": {"distill": 3.0, "eval_student": 1.0},
            "eval": {"student": {"in_domain": {"n": 4, "metrics": {"acc": acc, "macro_f1": 0.3},
                                               "stderr": {"acc": 0.25}, "chance": {"uniform": 0.05, "majority": 0.5},
                                               "correct": [1, 0, 1, 0]}},
                     "teacher": {"in_domain": {"n": 4, "metrics": {"acc": 0.75}, "stderr": {"acc": 0.2},
                                               "chance": {"uniform": 0.05, "majority": 0.5}}}}}


def test_rows_table_and_progress_from_row_files(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, grid={"pruning.final_ratio": [0.2, 0.3, 0.4]}))
    a, b, c = sweep.points
    row = row_of(a, _fake_result(), wall_s=10.0)
    assert (row["D"], row["r"], row["r_actual"], row["format"], row["schedule"], row["method"]) == \
        (60, 0.2, 0.21, "label", "one-shot", "full")
    assert row["in_domain.acc"] == 0.5 and row["in_domain.correct"] == [1, 0, 1, 0]
    assert row["in_domain.chance"] == 0.05 and row["teacher.in_domain.acc"] == 0.75
    assert row["tokens"] == 2 * 4 * 80 and row["teacher_flops_saved"] == 6.0 * 20 * 2 * 4 * 80
    for point, wall in ((a, 10.0), (b, 30.0)):
        Path(point.config.run_dir).mkdir(parents=True)
        (Path(point.config.run_dir) / "row.json").write_text(json.dumps(row_of(point, _fake_result(), wall)))
    Path(c.config.run_dir).mkdir(parents=True)
    (Path(c.config.run_dir) / "RUNNING").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                                                                "since": time.time()}))
    state = progress(sweep)
    assert (state["done"], state["running"], state["left"]) == (2, 1, 0)
    assert state["eta_s"] == pytest.approx(20.0 * 0.5)  # half a mean point left of the running one
    table = write_table(sweep)
    assert list(table["point"]) == [a.id, b.id] and set(table["sweep"]) == {"t"}
    assert pd.read_parquet(sweep.table_path)["in_domain.correct"].iloc[0].tolist() == [1, 0, 1, 0]


# ------------------------------------------------------------------------------- running


def test_sweep_runs_resumes_without_rerunning_and_records_failures(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, grid={"pruning.final_ratio": [0.3]},
                       points=[{"data.source": str(tmp_path / "empty.csv")}], keep=["student"])
    (tmp_path / "empty.csv").write_text("text,label\n")
    sweep = load_sweep(path)
    logs = []
    table = run_sweep(sweep, log=logs.append)
    done = table[table["status"] == "done"]
    assert len(table) == 2 and len(done) == 1 and table["status"].iloc[1] == "failed"
    assert table["error"].iloc[1].startswith("DataError: ")  # the reason, one line
    assert (done["in_domain.n"] == 8).all() and done["in_domain.acc"].between(0, 1).all()
    assert len(done["in_domain.correct"].iloc[0]) == 8
    assert json.loads(done["reused"].iloc[0]) == {"eval_teacher": False, "prepare_teacher": False}
    assert 0.2 < done["r_actual"].iloc[0] < 0.4 and done["steps"].iloc[0] == 2
    first = Path(sweep.points[0].config.run_dir)
    assert (first / "student" / "config.json").is_file() and not list(first.glob("checkpoints-*"))
    assert any("1 done, 1 failed, 0 running, 0 left of 2" in line for line in logs)
    stamp = (first / "row.json").stat().st_mtime_ns

    calls = []
    monkeypatch.setattr(sweep_module, "run_distill", lambda run, log: calls.append(run.run_dir) or {})
    again = run_sweep(load_sweep(path), log=lambda m: None)
    assert calls == [sweep.points[1].config.run_dir]  # only the failed point is retried
    assert (first / "row.json").stat().st_mtime_ns == stamp
    assert list(again["point"]) == list(table["point"])


def _sweep_process(path, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen([sys.executable, "-m", "jaxdistill.cli", "sweep", str(path), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_during_a_sweep_then_resume_loses_and_repeats_nothing(tmp_path):
    path = write_sweep(tmp_path, grid={"pruning.final_ratio": [0.2, 0.3, 0.4]})
    sweep = load_sweep(path)
    first = Path(sweep.points[0].config.run_dir) / "row.json"
    proc = _sweep_process(path)
    deadline = time.time() + 240
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.is_file(), proc.stderr.read() if proc.poll() is not None else "no point finished in 240 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    stamp = first.stat().st_mtime_ns
    table = run_sweep(load_sweep(path), log=lambda m: None)
    assert first.stat().st_mtime_ns == stamp  # the finished point was not rerun
    assert list(table["point"]) == [p.id for p in sweep.points] and (table["status"] == "done").all()
    assert not any((Path(p.config.run_dir) / "RUNNING").exists() for p in sweep.points)


@pytest.mark.slow
def test_two_processes_share_one_sweep_directory(tmp_path):
    path = write_sweep(tmp_path, grid={"pruning.final_ratio": [0.2, 0.3, 0.4]})
    procs = [_sweep_process(path, "--shard", f"{i}/2") for i in range(2)]
    for proc in procs:
        assert proc.wait(400) == 0, proc.stderr.read()[-2000:]
    sweep = load_sweep(path)
    table = pd.read_parquet(sweep.table_path)
    assert sorted(table["point"]) == sorted(p.id for p in sweep.points)  # every row once, none lost
    assert (table["status"] == "done").all()
    log = {p.id: (Path(p.config.run_dir) / "metrics-student.jsonl").read_text().count("\n") for p in sweep.points}
    assert all(n == 2 for n in log.values())  # each point trained once (2 logged steps), by one process


@pytest.mark.parametrize("name", ["smollm2_cpu.yaml", "smollm2_gpu.yaml", "qwen3_gpu.yaml"])
def test_shipped_sweep_configs_load(name):
    sweep = load_sweep(Path(sweep_module.__file__).resolve().parents[1] / "configs" / "sweeps" / name)
    formats = {p.config.data.format: p.config.loss.w_kl for p in sweep.points}
    assert formats == {"label": 1.0, "cot": 0.0, "blended": 1.0}  # cot is CoT-only: no KL
    assert len({p.id for p in sweep.points}) == len(sweep.points) >= 17
