"""The optimizer section and what it builds: AdamW with global-norm clipping, warm-up and decay.

    lr(t) = lr * (t + 1) / w                          for t < w (warm-up; the first step already learns)
    lr(t) = lr * decay((t - w) / (T - w))             after, decay = cosine | linear (to 0) | constant

Weight decay applies to matrices (embedding, projection kernels, LoRA factors), not to norms or
biases (`jaxdistill.models.structure.decay_mask`).
"""

from __future__ import annotations

import dataclasses

import optax

from jaxdistill.models.structure import decay_mask
from jaxdistill.train.errors import TrainingError

DECAYS = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 0.002
    warmup_steps: int = 10
    decay: str = "cosine"              # cosine | linear | constant
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0      # global-norm clipping threshold; None: no clipping
    b1: float = 0.9
    b2: float = 0.95

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise TrainingError(f"optimizer.decay={self.decay!r}; valid: {', '.join(DECAYS)}")
        if not self.learning_rate > 0 or self.warmup_steps < 0 or self.weight_decay < 0 or not (
                self.clip_norm is None or self.clip_norm > 0):
            raise TrainingError(
                f"optimizer.learning_rate={self.learning_rate} (> 0), warmup_steps={self.warmup_steps} (>= 0), "
                f"weight_decay={self.weight_decay} (>= 0), clip_norm={self.clip_norm} (> 0, or null: no clipping): "
                "out of range")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise TrainingError(f"optimizer.b1={self.b1}, b2={self.b2}: both must be in [0, 1)")


def learning_rate_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    decay_steps = max(total_steps - opt.warmup_steps, 1)
    if opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(opt.learning_rate, decay_steps)
    elif opt.decay == "linear":
        decay = optax.linear_schedule(opt.learning_rate, 0.0, decay_steps)
    else:
        decay = optax.constant_schedule(opt.learning_rate)
    if opt.warmup_steps == 0:
        return decay
    # warm-up lr/w, 2 lr/w, ..., lr over steps 0..w-1 (the first step already learns), then decay
    warmup = optax.linear_schedule(opt.learning_rate / opt.warmup_steps, opt.learning_rate, opt.warmup_steps - 1)
    return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def make_optimizer(opt: OptimizerConfig, total_steps: int, trainable,
                   schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """clip_by_global_norm (identity when clip_norm is None: same state layout, no norm computed),
    then AdamW with the schedule (default: `learning_rate_schedule`; a population member passes its
    own) and decay on `trainable`'s matrices."""
    return optax.chain(
        optax.identity() if opt.clip_norm is None else optax.clip_by_global_norm(opt.clip_norm),
        optax.adamw(schedule or learning_rate_schedule(opt, total_steps), b1=opt.b1, b2=opt.b2,
                    weight_decay=opt.weight_decay, mask=decay_mask(trainable)))
