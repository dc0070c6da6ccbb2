"""The distillation engine: the train state and one-jit step (`step`), the optimizer section
(`optimizer`), the host loop (`loop`), checkpoints and metrics. Jobs (`jaxdistill.jobs`) assemble
them; nothing here reads a run config file."""

from jaxdistill.train.checkpoints import Checkpoints
from jaxdistill.train.loop import TrainConfig, resume, train_loop
from jaxdistill.train.metrics import MetricsLog, host_metrics, throughput
from jaxdistill.train.errors import TrainingError
from jaxdistill.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from jaxdistill.train.step import (LoraConfig, StepConfig, TrainState, init_state, make_train_step,
                                   optimizer_state_bytes, reset_pruned_moments, state_shardings, student_params)

__all__ = ["Checkpoints", "LoraConfig", "MetricsLog", "OptimizerConfig", "StepConfig", "TrainConfig", "TrainState",
           "TrainingError", "host_metrics", "init_state", "learning_rate_schedule", "make_optimizer",
           "make_train_step", "optimizer_state_bytes", "reset_pruned_moments", "resume", "state_shardings",
           "student_params", "throughput", "train_loop"]
