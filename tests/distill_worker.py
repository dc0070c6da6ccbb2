"""One process of a short distillation run for test_multihost.py: `single` (one process, 4 virtual
CPU devices) or `multi PORT PROCESS_ID` (one of two processes with 2 devices each, one 4-device mesh)."""

import os
import sys

N_LOCAL = "4" if sys.argv[1] == "single" else "2"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N_LOCAL}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

from jaxdistill.config import load_config, packaged_config  # noqa: E402
from jaxdistill.jobs.distill import run_distill  # noqa: E402
from jaxdistill.models import initialize_distributed  # noqa: E402

# A tiny run: a teacher trained here for 2 steps (saved from both processes), a random student,
# live teacher, blended loss, one pruning stage, 6 steps, in-domain evaluation of the three models.
OVERRIDES = ["mesh=[2,2,1]", "data.subsample=64", "data.max_len=40", "train.seq_len=80", "train.batch_size=4",
             "teacher.prepare_steps=2", "student.init=random", "teacher.model.hidden_size=32", "teacher.model.intermediate_size=64",
             "teacher.model.num_layers=2", "teacher.model.head_dim=8", "train.steps=6", "train.log_every=1",
             "train.checkpoint_every=3", "pruning.start=2", "pruning.stages=1", "pruning.final_ratio=0.3",
             "pruning.multiple=8", "pruning.calibration_batches=1", "loss.chunk_size=64",
             "eval.suites=[in_domain]", "eval.limit=8", "eval.batch_size=4"]


def main(mode: str, run_dir: str, port: str = "", process_id: str = ""):
    if mode == "multi":
        assert initialize_distributed(f"127.0.0.1:{port}", 2, int(process_id), cpu_collectives="gloo")
    assert jax.device_count() == 4
    run_distill(load_config(packaged_config("tiny.yaml"), [*OVERRIDES, f"run_dir={run_dir}"]), log=lambda m: None)
    if mode == "multi":
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
