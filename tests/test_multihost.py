"""Two local processes (2 virtual CPU devices each) form one 4-device mesh through
`initialize_distributed`; sharded load, forward and save agree with the single-process path."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxdistill.models import forward, load_pretrained

TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(commands: list[list[str]]) -> None:
    """Run `python -m MODULE ARGS...` for each command at once (bounded in time); each must succeed."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-m", *args], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for args in commands]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace"))
    finally:
        for p in procs:
            p.kill()
    for args, p, out in zip(commands, procs, outputs):
        assert p.returncode == 0, f"{args} failed:\n{out[-3000:]}"


def test_two_process_mesh(checkpoints, tmp_path):
    checkpoint = checkpoints["qwen3"]
    tokens = np.random.default_rng(0).integers(3, 97, (4, 10)).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    port = str(_free_port())
    _run_processes([["tests.multihost_worker", port, str(i), str(checkpoint), str(tmp_path)] for i in range(2)])

    config, params = load_pretrained(checkpoint)
    reference = np.asarray(forward(config, params, jnp.asarray(tokens)))
    assert np.abs(np.load(tmp_path / "logits.npy") - reference).max() <= 1e-4  # summation-order noise
    original = load_file(str(checkpoint / "model.safetensors"))
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert set(saved) == set(original)
    for name in original:
        np.testing.assert_array_equal(saved[name], original[name])


@pytest.mark.slow
def test_two_process_distillation_equals_one_process(tmp_path):
    """A short distillation run (a teacher trained here, live teacher targets, blended loss, a pruning
    stage, checkpoints) on two processes x 2 devices gives the same losses, teacher and exported
    student as on one process x 4."""
    port = str(_free_port())
    _run_processes([["tests.distill_worker", "single", str(tmp_path / "single")]]
                   + [["tests.distill_worker", "multi", str(tmp_path / "multi"), port, str(i)] for i in range(2)])
    losses = {}
    for name in ("single", "multi"):
        records = [json.loads(line) for line in (tmp_path / name / "metrics-student.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records]
    assert len(losses["single"]) == 6
    np.testing.assert_allclose(losses["multi"], losses["single"], rtol=1e-5, atol=1e-6)
    evals = {name: json.loads((tmp_path / name / "result.json").read_text())["eval"] for name in ("single", "multi")}
    for model in ("teacher", "pruned_only", "student"):
        scores = [evals[name][model]["in_domain"]["metrics"] for name in ("single", "multi")]
        assert scores[0]["acc"] == scores[1]["acc"] and scores[0]["macro_f1"] == pytest.approx(scores[1]["macro_f1"])
    for model in ("teacher", "student"):  # the teacher trained here (2 steps) and the exported student
        single = load_file(str(tmp_path / "single" / model / "model.safetensors"))
        multi = load_file(str(tmp_path / "multi" / model / "model.safetensors"))
        assert set(single) == set(multi)
        for name in single:
            # cross-process all-reduces sum in another order; Adam turns that rounding into ~1e-6 steps
            np.testing.assert_allclose(multi[name], single[name], rtol=1e-4, atol=1e-5)
