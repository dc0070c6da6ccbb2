"""The distillation engine: the train state and one-jit step (`step`), the optimizer section
(`optimizer`), the host loop (`loop`), checkpoints and metrics, compacting pruning stages
(`compaction`), and P students of one shape trained as one vmapped step (`population`). Jobs (`jaxdistill.jobs`) assemble them; nothing here reads a run config file."""

from jaxdistill.train.checkpoints import Checkpoints
from jaxdistill.train.loop import TrainConfig, resume, train_loop
from jaxdistill.train.metrics import MetricsLog, host_metrics, throughput
from jaxdistill.train.errors import TrainingError
from jaxdistill.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from jaxdistill.train.step import (LoraConfig, StepConfig, TrainState, init_state, make_train_step,
                                   optimizer_state_bytes, reset_pruned_moments, state_shardings, student_params)
from jaxdistill.train.compaction import (abstract_state, compact_state, compacting_stage, current_config, place,
                                         resume_student)
from jaxdistill.train.population import init_population, make_population_step, population_shardings, unstack

__all__ = ["Checkpoints", "LoraConfig", "MetricsLog", "OptimizerConfig", "StepConfig", "TrainConfig", "TrainState",
           "TrainingError", "abstract_state", "compact_state", "compacting_stage", "current_config", "host_metrics",
           "init_population", "init_state", "learning_rate_schedule", "make_optimizer", "make_population_step", "make_train_step", "optimizer_state_bytes", "place",
           "population_shardings", "reset_pruned_moments", "resume", "resume_student", "state_shardings", "student_params", "throughput",
           "train_loop", "unstack"]
