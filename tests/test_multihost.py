"""Two local processes (2 virtual CPU devices each) form one 4-device mesh through
`initialize_distributed`; sharded load, forward and save agree with the single-process path."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from jaxdistill.models import forward, load_pretrained

TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_mesh(checkpoints, tmp_path):
    checkpoint = checkpoints["qwen3"]
    tokens = np.random.default_rng(0).integers(3, 97, (4, 10)).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    port = str(_free_port())
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", port, str(i),
                               str(checkpoint), str(tmp_path)],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace"))
    finally:
        for p in procs:
            p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{outputs[i][-3000:]}"

    config, params = load_pretrained(checkpoint)
    reference = np.asarray(forward(config, params, jnp.asarray(tokens)))
    assert np.abs(np.load(tmp_path / "logits.npy") - reference).max() <= 1e-5
    original = load_file(str(checkpoint / "model.safetensors"))
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert set(saved) == set(original)
    for name in original:
        np.testing.assert_array_equal(saved[name], original[name])
