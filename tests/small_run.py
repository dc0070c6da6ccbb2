"""A distill run small enough to run many times in a test: the from-scratch tiny configuration shrunk
(a 2-layer, 32-wide teacher fine-tuned 2 steps, 64 headlines, 4 student steps, checkpoints at 2 and 4),
run through the command line in this process (`invoke`) or in a subprocess (`command`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from jaxdistill.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "jaxdistill" / "configs" / "tiny.yaml")
SMALL = [
    "eval=null", "pruning=null", "teacher.prepare_steps=2", "data.subsample=64", "data.max_len=64",
    "train.steps=4", "train.batch_size=4", "train.seq_len=64", "train.log_every=1", "train.checkpoint_every=2",
    "train.keep_checkpoints=3", "teacher.model.hidden_size=32", "teacher.model.intermediate_size=64",
    "teacher.model.num_layers=2", "teacher.model.num_heads=2", "teacher.model.num_kv_heads=1",
    "teacher.model.head_dim=16",
]


def args(run_dir, cache_dir, *extra) -> list[str]:
    """`jaxdistill run` arguments for the small run in run_dir (extra overrides and flags last)."""
    return [TINY, f"run_dir={run_dir}", f"cache_dir={cache_dir}", *SMALL, *extra]


def invoke(*argv: str):
    """`jaxdistill ARGV...` in this process: the click result (exit_code, output)."""
    return CliRunner().invoke(main, list(argv))


def command(*argv: str) -> list[str]:
    """`jaxdistill ARGV...` as a subprocess command line (this interpreter)."""
    return [sys.executable, "-c", "import sys; from jaxdistill.cli import main; sys.exit(main())", *argv]


def student_weights(run_dir) -> dict[str, np.ndarray]:
    """The exported student's tensors (to compare two runs bitwise)."""
    from safetensors.numpy import load_file

    out = {}
    for file in sorted((Path(run_dir) / "student").glob("*.safetensors")):
        out.update(load_file(file))
    return out


def assert_same_student(a, b) -> None:
    wa, wb = student_weights(a), student_weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
