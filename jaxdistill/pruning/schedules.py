"""Pruning schedules: a pure function step -> target compression ratio.

K stages at steps start, start + interval, ..., start + (K-1) * interval; stage k (1..K) targets
r_k = r * p(k / K) with progress p:

    linear     p(x) = x
    geometric  equal keep-fraction per stage: r_k = 1 - (1 - r)^(k / K)
    cubic      Zhu & Gupta (arXiv:1710.01878): p(x) = 1 - (1 - x)^3 (prune fast, then slowly)

Before `start` the ratio is 0; from the last stage on it is exactly r. One-shot is K = 1.
"""

from __future__ import annotations

import dataclasses

from jaxdistill.pruning.widths import PruningError

KINDS = ("linear", "geometric", "cubic")


@dataclasses.dataclass(frozen=True)
class PruningSchedule:
    final_ratio: float
    stages: int = 1
    kind: str = "linear"
    interval: int = 1
    start: int = 0

    def __post_init__(self):
        if not 0.0 < self.final_ratio < 1.0:
            raise PruningError(f"final_ratio={self.final_ratio} is outside the valid range (0, 1)")
        if self.stages < 1:
            raise PruningError(f"stages={self.stages}: must be >= 1")
        if self.kind not in KINDS:
            raise PruningError(f"schedule kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.interval < 1 or self.start < 0:
            raise PruningError(f"interval={self.interval}, start={self.start}: need interval >= 1, start >= 0")

    def stage_ratio(self, stage: int) -> float:
        """Target ratio after stage `stage` (0 = before pruning, K = final)."""
        stage = min(max(stage, 0), self.stages)
        if stage == self.stages:
            return self.final_ratio
        x = stage / self.stages
        if self.kind == "linear":
            return self.final_ratio * x
        if self.kind == "geometric":
            return 1.0 - (1.0 - self.final_ratio) ** x
        return self.final_ratio * (1.0 - (1.0 - x) ** 3)

    def stage_steps(self) -> list[int]:
        """The steps at which stages 1..K prune."""
        return [self.start + k * self.interval for k in range(self.stages)]

    def __call__(self, step: int) -> float:
        """Target ratio in force at `step`."""
        if step < self.start:
            return 0.0
        return self.stage_ratio((step - self.start) // self.interval + 1)
