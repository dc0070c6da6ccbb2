"""One process of a two-process CPU run (see test_multihost.py): load sharded, forward, save."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from jaxdistill.models import forward, initialize_distributed, load_pretrained, make_mesh, save_pretrained  # noqa: E402
from jaxdistill.models.sharding import activation_sharding  # noqa: E402


def main(port: str, process_id: str, checkpoint: str, out: str):
    assert initialize_distributed(f"127.0.0.1:{port}", 2, int(process_id), cpu_collectives="gloo")
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = make_mesh((2, 1, 2))
    config, params = load_pretrained(checkpoint, mesh=mesh)
    tokens = np.load(os.path.join(out, "tokens.npy"))
    sharding = activation_sharding(mesh, 2)
    global_tokens = jax.make_array_from_callback(tokens.shape, sharding, lambda idx: tokens[idx])
    logits = forward(config, params, global_tokens, mesh=mesh)
    gathered = multihost_utils.process_allgather(logits, tiled=True)
    save_pretrained(config, params, os.path.join(out, "saved"))
    if jax.process_index() == 0:
        np.save(os.path.join(out, "logits.npy"), np.asarray(gathered))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
