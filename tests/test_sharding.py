"""Sharded forward on 8 virtual CPU devices equals the single-device forward; placement follows the rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.models import (
    ModelConfig,
    forward,
    init_params,
    load_pretrained,
    logical_axes,
    logical_to_spec,
    make_mesh,
    shard_params,
)
from jaxdistill.models.sharding import activation_sharding
from tests.tiny_models import pack_batch, random_sequences

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]

# Every dimension divisible by the largest mesh axis (8 on data, 4 on tensor), so nothing falls back.
CONFIG = ModelConfig(model_type="qwen3", vocab_size=128, hidden_size=64, intermediate_size=128,
                     num_layers=2, num_heads=8, num_kv_heads=4, head_dim=16, qk_norm=True)


def _batch():
    rows = [random_sequences([6, 10], seed=s) for s in range(8)]
    tokens, segments = pack_batch(rows, 16)
    return jnp.asarray(tokens), jnp.asarray(segments)


def test_eight_devices_available():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_equals_single_device(shape):
    params = init_params(CONFIG, jax.random.key(0))
    tokens, segments = _batch()
    reference = np.asarray(forward(CONFIG, params, tokens, segment_ids=segments))

    mesh = make_mesh(shape)
    sharded = shard_params(params, logical_axes(CONFIG), mesh)
    batch = activation_sharding(mesh, 2)
    logits = forward(CONFIG, sharded, jax.device_put(tokens, batch),
                     segment_ids=jax.device_put(segments, batch), mesh=mesh)
    # sharded matmuls sum in another order: fp32 noise up to ~1e-5 on logits of |6| (as the parity tests)
    assert np.abs(np.asarray(logits) - reference).max() <= 1e-4
    q = sharded["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == logical_to_spec(("layers", "embed", "q_heads", "head_dim"), q.shape, mesh)
    # The kernel really is split: each device holds 1/(fsdp*tensor) of it.
    assert q.addressable_shards[0].data.size == q.size // (shape[1] * shape[2])


def test_init_params_with_mesh_places_shards():
    mesh = make_mesh((1, 2, 4))
    params = init_params(CONFIG, jax.random.key(0), mesh=mesh)
    gate = params["layers"]["mlp"]["gate"]["kernel"]
    assert gate.sharding.spec == P(None, "fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(gate), np.asarray(
        init_params(CONFIG, jax.random.key(0))["layers"]["mlp"]["gate"]["kernel"]))


def test_load_pretrained_with_mesh(checkpoints):
    mesh = make_mesh((2, 1, 4))
    config, single = load_pretrained(checkpoints["llama3"])
    _, sharded = load_pretrained(checkpoints["llama3"], mesh=mesh)
    axes = logical_axes(config)
    flat_axes = dict(jax.tree_util.tree_flatten_with_path(
        axes, is_leaf=lambda x: isinstance(x, tuple))[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(sharded)[0]:
        assert isinstance(leaf.sharding, NamedSharding)
        assert leaf.sharding.spec == logical_to_spec(flat_axes[path], leaf.shape, mesh)
    # llama3 fixture: 2 kv heads do not divide tensor=4, so k/v fall back to replication there.
    assert sharded["layers"]["attn"]["k"]["kernel"].sharding.spec == P(None, None, None, None)
    assert sharded["layers"]["attn"]["q"]["kernel"].sharding.spec == P(None, None, "tensor", None)
    tokens = jnp.asarray(np.stack(random_sequences([12, 12])))
    np.testing.assert_allclose(np.asarray(forward(config, sharded, tokens)),
                               np.asarray(forward(config, single, tokens)), atol=1e-4, rtol=0)  # summation-order noise


def test_rules_replicate_indivisible_axes():
    mesh = make_mesh((1, 2, 4))
    assert logical_to_spec(("embed", "kv_heads"), (64, 2), mesh) == P("fsdp", None)
    assert logical_to_spec(("batch", "seq"), (8, 16), mesh) == P("fsdp", None)
    with pytest.raises(KeyError, match="no sharding rule"):
        logical_to_spec(("nonsense",), (4,), mesh)


def test_make_mesh_validates_shape():
    assert make_mesh((-1, 2, 2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="needs 12 devices, but 8"):
        make_mesh((3, 2, 2))
    assert make_mesh((1, 2, 1)).devices.size == 2
