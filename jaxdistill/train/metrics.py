"""Metrics: a JSONL log, steady-state step timing, and throughput / MFU records.

Each logged record holds the step's metrics (loss terms, token counts, grad norm, learning rate),
the steady-state time per step over the window since the last record (the first, compiling step is
timed alone and pruning stages are left out), tokens/s, and MFU split into student and teacher:

    mfu = (student FLOPs x3 + teacher FLOPs x1) / step time / peak      (see `jaxdistill.perf`)
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import jax

from jaxdistill.atomic_files import atomic_write, jsonl_records


class MetricsLog:
    """Appends one JSON object per logged step to a .jsonl file (line-buffered). Only process 0
    writes; on resume, records of steps after the restored checkpoint are dropped (they are redone)."""

    def __init__(self, path, *, resume_step: int | None = None):
        self.path = Path(path)
        self.file = None
        if jax.process_index() != 0:
            return
        if self.path.exists():  # a kill can tear only the last line: it is dropped, like the steps redone
            kept = [r for r in jsonl_records(self.path) if resume_step is not None and r["step"] <= resume_step]
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n"
                                                                       for r in kept)))
        self.file = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def host_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class StepTimer:
    """Steady-state seconds per step: the first step (compilation) alone, then per logging window."""

    def __init__(self):
        self.first_step_s = None
        self.window_start = time.perf_counter()
        self.window_steps = 0

    def start_step(self) -> None:
        self._t0 = time.perf_counter()

    def end_step(self, state) -> None:
        if self.first_step_s is None:
            jax.block_until_ready(state.step)
            self.first_step_s = time.perf_counter() - self._t0
            self.window_start, self.window_steps = time.perf_counter(), 0
        else:
            self.window_steps += 1

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (a pruning stage) does not count as step time."""
        t0 = time.perf_counter()
        yield
        self.window_start += time.perf_counter() - t0

    def window(self) -> float:
        """Seconds per step over the window since the last call (the first step's time if none)."""
        step_s = (time.perf_counter() - self.window_start) / self.window_steps if self.window_steps \
            else self.first_step_s
        self.window_start, self.window_steps = time.perf_counter(), 0
        return step_s


def throughput(step_s: float, *, tokens: int, flops: dict[str, float], peak: float, peak_source: str) -> dict:
    """Tokens/s and MFU (total, student, teacher) of one step time."""
    return {"step_time_s": step_s, "tokens_per_s": tokens / step_s,
            "mfu_student": flops["student"] / step_s / peak, "mfu_teacher": flops["teacher"] / step_s / peak,
            "mfu": (flops["student"] + flops["teacher"]) / step_s / peak, "peak_source": peak_source}
