"""Remat policies, explicit positions and left padding: same numbers as the plain path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.models import ModelConfig, forward, init_params, load_pretrained
from jaxdistill.models.rope import segment_positions
from tests.tiny_models import hf_logits, random_sequences

CONFIG = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                     num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_keep_values_and_gradients(policy):
    params = init_params(CONFIG, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, 64)

    def loss(config, p):
        return jnp.mean(jax.nn.log_softmax(forward(config, p, tokens))[..., 0])

    value, grads = jax.value_and_grad(loss, argnums=1)(CONFIG, params)
    value_r, grads_r = jax.value_and_grad(loss, argnums=1)(CONFIG.replace(remat_policy=policy), params)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-7)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_segment_positions_restart():
    segments = jnp.array([[0, 0, 1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(segment_positions(segments, 8),
                                  [[0, 1, 0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5, 6, 7]])


def test_left_padding_and_explicit_positions(checkpoints):
    """Left padding (segment 0 first) matches transformers on the unpadded sequence; passing the
    same positions explicitly gives the same logits; stretched positions do not (a uniform shift
    would: RoPE sees only relative positions)."""
    seq = random_sequences([8])[0]
    ref = hf_logits(checkpoints["llama3"], [seq])[0]
    config, params = load_pretrained(checkpoints["llama3"])
    tokens = jnp.asarray(np.concatenate([np.zeros(4, np.int32), seq])[None])
    segments = jnp.asarray(np.array([[0] * 4 + [1] * 8]))
    logits = np.asarray(forward(config, params, tokens, segment_ids=segments))[0, 4:]
    assert np.abs(logits - ref).max() <= 1e-4
    positions = segment_positions(segments, 12)
    explicit = np.asarray(forward(config, params, tokens, segment_ids=segments, positions=positions))
    np.testing.assert_array_equal(explicit[0, 4:], logits)
    stretched = np.asarray(forward(config, params, tokens, segment_ids=segments, positions=positions * 2))
    assert np.abs(stretched[0, 4:] - ref).max() > 1e-2
