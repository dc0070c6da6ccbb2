"""Run directories that never lie, checkpoints that survive damage and a full disk, and runs killed
at random points that resume to the uninterrupted result (docs/reliability.md).

Every run is the small distill run of `tests/small_run.py`; `reference` is one uninterrupted run
whose exported student every interrupted run must equal bitwise."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.small_run import args, assert_same_student, command, invoke


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time (to show nothing was touched)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """An uninterrupted small run (its teacher stays in the module's cache for the other runs)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = invoke("run", *args(run_dir, cache))
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture
def copy_of(reference, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(reference, target, symlinks=True)
    return target


def ok(result):
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def refused(result, code: int = 2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


# ----------------------------------------------------------------------------- run directories

def test_finished_run_rerun_prints_its_result_and_touches_nothing(reference, cache):
    before = snapshot(reference)
    out = ok(invoke("run", *args(reference, cache)))
    assert "finished before; its result.json is left as it is" in out
    assert "149,728 parameters" in out or "parameters" in out
    assert snapshot(reference) == before
    result = json.loads((reference / "result.json").read_text())
    assert result["final"]["loss"] > 0 and result["steps"] == 4


def test_exported_files_share_the_usual_permissions(reference):
    """Every file of the export has the same mode, 0666 less the umask (safetensors creates 0600 files:
    a shared export must be readable by its group)."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (reference / "student").iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


@pytest.mark.parametrize("change, listed", [
    (["loss.temperature=3"], "loss.temperature: 1.0 -> 3.0"),
    (["seed=1"], "seed: 0 -> 1"),
    (["data.source=other.csv", "train.steps=6"], "data.source: 'finance_topic' -> 'other.csv'; train.steps: 4 -> 6"),
])
def test_changed_settings_are_refused_naming_each_key(reference, cache, tmp_path, change, listed, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.csv").write_text("text,label\nBank raises dividend,Dividend\n")
    before = snapshot(reference)
    out = refused(invoke("run", *args(reference, cache, *change)))
    assert "holds a run with other settings" in out and listed in out
    assert "--resume-changed" in out and "--force-new" in out
    assert snapshot(reference) == before


def test_resume_changed_continues_and_records_the_change(copy_of, cache):
    out = ok(invoke("run", *args(copy_of, cache, "train.steps=6"), "--resume-changed"))
    assert "continuing with changed settings (train.steps: 4 -> 6)" in out
    assert "student: resumed from step 4" in out
    assert json.loads((copy_of / "result.json").read_text())["steps"] == 6
    changes = json.loads((copy_of / "run.json").read_text())["changes"]
    assert changes[-1]["changed"] == {"train.steps": [4, 6]}


def test_interrupted_resume_changed_run_resumes_without_the_flag(copy_of, cache):
    """--resume-changed rewrote config.yaml, then the run was stopped before a new checkpoint: the
    same command (with or without the flag) resumes from the old checkpoint, whose saved config still
    has the old value (run.json keeps the accepted keys)."""
    ok(invoke("run", *args(copy_of, cache, "train.steps=6", "train.stop_at_step=5"), "--resume-changed"))
    assert json.loads((copy_of / "run.json").read_text())["accepted"] == ["train.steps"]
    out = ok(invoke("run", *args(copy_of, cache, "train.steps=6")))
    assert "student: resumed from step 4" in out
    assert json.loads((copy_of / "result.json").read_text())["steps"] == 6


def test_force_new_with_a_failing_check_moves_nothing(copy_of, cache, tmp_path):
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    before = snapshot(copy_of)
    refused(invoke("run", *args(copy_of, cache, f"data.source={tmp_path / 'bad.csv'}"), "--force-new"))
    assert snapshot(copy_of) == before
    assert not [p for p in copy_of.parent.iterdir() if ".replaced-" in p.name]


def test_force_new_moves_the_old_run_aside(copy_of, cache):
    old = (copy_of / "result.json").read_bytes()
    out = ok(invoke("run", *args(copy_of, cache, "loss.temperature=3"), "--force-new"))
    aside = [p for p in copy_of.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in out
    assert (aside[0] / "result.json").read_bytes() == old
    assert json.loads((copy_of / "result.json").read_text())["steps"] == 4
    assert "temperature: 3.0" in (copy_of / "config.yaml").read_text()


def test_key_added_by_a_newer_version_at_its_default_is_no_change(copy_of, cache):
    config = copy_of / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(True) if "max_dropped" not in line))
    assert "finished before" in ok(invoke("run", *args(copy_of, cache)))


def test_a_run_that_fails_validation_creates_nothing(tmp_path, cache):
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    out = refused(invoke("run", *args(tmp_path / "run", cache, f"data.source={tmp_path / 'bad.csv'}")))
    assert "column(s) ['text', 'label'] not found" in out
    assert not (tmp_path / "run").exists()


def test_run_dir_with_foreign_files_is_refused(tmp_path, cache):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert "holds no run (no config.yaml)" in refused(invoke("run", *args(tmp_path / "run", cache)))
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- checkpoints

def _damage(step_dir: Path, how: str) -> None:
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    if how == "truncate":
        with open(files[0], "r+b") as f:
            f.truncate(files[0].stat().st_size // 2)
    elif how == "delete":
        files[0].unlink()
    else:  # garbage: the array metadata overwritten
        for p in step_dir.rglob("_sharding"):
            p.write_text("{not json")


@pytest.mark.parametrize("how", ["truncate", pytest.param("delete", marks=pytest.mark.slow),
                                 pytest.param("garbage", marks=pytest.mark.slow)])
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(reference, cache, tmp_path, how):
    run_dir = tmp_path / "run"
    ok(invoke("run", *args(run_dir, cache, "train.checkpoint_every=1", "train.stop_at_step=3")))
    _damage(run_dir / "checkpoints-student" / "3", how)
    out = ok(invoke("run", *args(run_dir, cache, "train.checkpoint_every=1")))
    warnings = [line for line in out.splitlines() if line.startswith("warning: checkpoint step 3")]
    assert len(warnings) == 1 and "is damaged" in warnings[0]
    assert "student: resumed from step 2" in out
    assert (run_dir / "checkpoints-student.damaged" / "3").is_dir()
    assert_same_student(run_dir, reference)


def test_no_intact_checkpoint_is_one_error_and_moves_nothing(cache, tmp_path):
    run_dir = tmp_path / "run"
    ok(invoke("run", *args(run_dir, cache, "train.checkpoint_every=1", "train.stop_at_step=2")))
    for step in (1, 2):
        _damage(run_dir / "checkpoints-student" / str(step), "truncate")
    out = refused(invoke("run", *args(run_dir, cache, "train.checkpoint_every=1")), code=1)
    assert "no checkpoint in" in out and "step 2:" in out and "step 1:" in out
    assert sorted(p.name for p in (run_dir / "checkpoints-student").iterdir()) == ["1", "2"]
    assert not (run_dir / "checkpoints-student.damaged").exists()


@contextlib.contextmanager
def tmpfs(path: Path, size: int):
    """A tmpfs of `size` bytes mounted at path for the block (the test is skipped where mounting is
    not allowed: it needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def full_disk_then_space(run, disk: Path) -> str:
    """Run once on the full disk (one clear error line, exit 1), then grow the disk; the output."""
    out = refused(run(), code=1)
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0], out
    assert not [p for p in disk.rglob("*") if ".tmp-" in p.name or "orbax-checkpoint-tmp" in p.name]
    subprocess.run(["mount", "-o", f"remount,size={64 << 20}", str(disk)], check=True, timeout=30)
    return out


def test_full_disk_during_a_checkpoint_save(reference, cache, tmp_path):
    """run_dir on a tmpfs that holds the step-2 checkpoint but not the step-4 one: one clear line,
    no temporary directory, step 2 intact; with space again, the run resumes to the reference."""
    probe = tmp_path / "probe"
    ok(invoke("run", *args(probe, cache, "train.stop_at_step=2")))
    used = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    checkpoint = sum(p.stat().st_size for p in (probe / "checkpoints-student" / "2").rglob("*") if p.is_file())
    with tmpfs(tmp_path / "disk", used + checkpoint // 2) as disk:
        run_dir = disk / "run"
        full_disk_then_space(lambda: invoke("run", *args(run_dir, cache)), disk)
        assert sorted(p.name for p in (run_dir / "checkpoints-student").iterdir()) == ["2"]
        out = ok(invoke("run", *args(run_dir, cache)))
        assert "student: resumed from step 2" in out
        assert_same_student(run_dir, reference)


@pytest.mark.slow
def test_full_disk_while_writing_the_cache(reference, tmp_path):
    """cache_dir on a 300 kB tmpfs: the prepared teacher (600 kB) does not fit; one clear line, no
    temporary directory in the cache; with space again the run finishes and equals the reference."""
    with tmpfs(tmp_path / "cache", 300 << 10) as disk:
        run_dir = tmp_path / "run"
        full_disk_then_space(lambda: invoke("run", *args(run_dir, disk)), disk)
        ok(invoke("run", *args(run_dir, disk)))
        assert_same_student(run_dir, reference)


# ----------------------------------------------------------------------------- kills

WATCH = {  # where a kill lands: a path pattern under run_dir whose appearance triggers it
    "training": "metrics-student.jsonl",
    "checkpoint_save": "checkpoints-student/*orbax-checkpoint-tmp*",
    "export": "student/*",
}


def kill_when(cmd: list[str], run_dir: Path, pattern: str, delay: float, timeout: float = 300, env=None) -> bool:
    """Start `cmd`, SIGKILL it `delay` seconds after a path matching `pattern` under run_dir is written
    by it (modified after its start); False if it finished first."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if run_dir.exists() and any(_mtime(p) >= start for p in run_dir.glob(pattern)):
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return True
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # gone between the listing and the look
        return 0.0


def kill_and_resume(reference, cache, root: Path, points: list[tuple[str, float]], extra=()) -> int:
    """Kill a run at each (phase, delay) in turn, each rerun resuming the last; a run that finishes
    before its kill lands is checked and the next kill goes to a fresh run. Every run, finished, must
    equal the reference's student. Returns how many kills landed."""
    landed, runs = 0, 0

    def finish(run_dir):
        done = subprocess.run(command("run", *args(run_dir, cache, *extra)), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        assert not list(run_dir.rglob("*orbax-checkpoint-tmp*"))
        assert_same_student(run_dir, reference)

    run_dir = root / "run-0"
    for phase, delay in points:
        if kill_when(command("run", *args(run_dir, cache, *extra)), run_dir, WATCH[phase], delay):
            landed += 1
        else:  # it finished first: check it, and the next kill goes to a fresh run
            finish(run_dir)
            runs += 1
            run_dir = root / f"run-{runs}"
    finish(run_dir)
    return landed


def test_sigkill_during_checkpoint_save_resumes_to_the_same_student(reference, cache, tmp_path):
    assert kill_and_resume(reference, cache, tmp_path, [("checkpoint_save", 0.0)]) == 1


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_the_same_student(reference, cache, tmp_path):
    rng = random.Random(14)
    points = [(rng.choice(sorted(WATCH)), rng.uniform(0.0, 0.2)) for _ in range(8)]
    landed = kill_and_resume(reference, cache, tmp_path, points)
    print(f"kills landed: {landed} of {len(points)} at {points}")
    assert landed >= 5, points


@pytest.mark.slow
def test_sigkill_while_building_the_teacher_cache_resumes_to_the_same_student(tmp_path):
    """teacher.targets=cached: kills while the sparse teacher targets are written (in the cache
    directory), then the run finishes and equals an uninterrupted run with its own cache."""
    extra = ("teacher.targets=cached", "teacher.cache.k=4")
    reference = tmp_path / "reference"
    ok(invoke("run", *args(reference, tmp_path / "cache-reference", *extra)))
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    cmd = command("run", *args(run_dir, cache, *extra))
    rng = random.Random(7)
    landed = sum(kill_when(cmd, cache, "targets/*", rng.uniform(0.0, 0.2)) for _ in range(3))
    print(f"kills landed while building the cache: {landed} of 3")
    assert landed >= 1
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert_same_student(run_dir, reference)


@pytest.mark.slow
def test_sigkill_during_a_sweep_resumes_to_the_same_table(tmp_path):
    """A two-point sweep killed at random moments, then run to the end: the same results table (timings
    aside) and the same students as an uninterrupted sweep."""
    import pandas as pd
    import yaml

    from tests.test_sweep import FAST

    def spec(name):  # the same points (same ids) in two sweep directories; each its own cache (environment)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "sweep_dir": str(tmp_path / name), "base": "tiny.yaml",
                                        "set": FAST, "grid": {"loss.temperature": [1.0, 2.0]}}, sort_keys=False))
        return str(path)

    ok(invoke("sweep", spec("a")))
    cmd, env = command("sweep", spec("b")), {**os.environ, "JAXDISTILL_CACHE": str(tmp_path / "cache-b")}
    rng = random.Random(3)
    landed = sum(kill_when(cmd, tmp_path / "b", "points/*/*", rng.uniform(0.0, 3.0), env=env) for _ in range(3))
    print(f"kills landed in the sweep: {landed} of 3")
    assert landed >= 1
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    a, b = (pd.read_parquet(tmp_path / n / "results.parquet") for n in ("a", "b"))
    # timings, and which caches a (resumed) point found ready, differ; every measurement is equal
    varying = [c for c in a.columns if c.endswith("_s") or c.startswith("wall.") or c == "reused"]
    pd.testing.assert_frame_equal(a.drop(columns=varying), b.drop(columns=varying))
    for point in a["point"]:
        assert_same_student(tmp_path / "a" / "points" / point, tmp_path / "b" / "points" / point)
