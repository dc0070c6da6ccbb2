"""Steady state does not recompile; bad configs and checkpoints fail with a message naming the problem."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdistill.models import CheckpointError, ConfigError, ModelConfig, forward, init_params, load_pretrained


def test_second_call_with_same_shapes_does_not_recompile(no_persistent_cache):
    config = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    params = init_params(config, jax.random.key(0))
    tokens = jnp.zeros((2, 8), jnp.int32)
    segments = jnp.ones((2, 8), jnp.int32)
    # Other values, same shapes, made before counting starts.
    new_params = jax.block_until_ready(jax.tree.map(lambda x: x * 2, params))
    new_tokens, new_segments = jax.block_until_ready((tokens + 1, segments * 2))
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *a, **k: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    forward(config, params, tokens, segment_ids=segments).block_until_ready()
    first = len(compiles)
    assert first >= 1  # the listener sees compilations at all
    forward(config, new_params, new_tokens, segment_ids=new_segments).block_until_ready()
    forward(config, params, tokens, segment_ids=segments).block_until_ready()
    assert len(compiles) == first


def _write_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_unsupported_model_type_names_supported_families(checkpoints, tmp_path):
    bad = tmp_path / "gpt2"
    shutil.copytree(checkpoints["llama3"], bad)
    _write_config(bad, model_type="gpt2")
    with pytest.raises(ConfigError, match="'gpt2'.*llama, mistral, qwen2, qwen3"):
        load_pretrained(bad)


def _rewrite_tensors(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_names_tensor_and_shape(checkpoints, tmp_path):
    name = "model.layers.1.self_attn.k_proj.weight"
    _rewrite_tensors(checkpoints["llama3"], tmp_path / "ck", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{name}' \(expected shape \[16, 32\]\)"):
        load_pretrained(tmp_path / "ck")


def test_misshaped_tensor_names_tensor_and_shape(checkpoints, tmp_path):
    name = "model.layers.0.mlp.down_proj.weight"

    def edit(t):
        t[name] = np.zeros((32, 60), np.float32)

    _rewrite_tensors(checkpoints["qwen3"], tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=rf"'{name}' has shape \[32, 60\], expected \[32, 64\]"):
        load_pretrained(tmp_path / "ck")


@pytest.mark.parametrize("field, value, message", [
    ("num_heads", 6, "not a multiple of num_kv_heads=4"),
    ("remat_policy", "sometimes", "valid values are auto, none, full"),
    ("rope_scaling", (("rope_type", "yarn"),), "unsupported rope_type 'yarn'"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "needs low_freq_factor, high_freq_factor"),
    ("rope_scaling", {"rope_type": "linear"}, "'linear' needs factor"),
    ("attention_impl", "cudnn", "needs compute_dtype bfloat16"),
    ("compute_dtype", "float16", "valid values are float32, bfloat16"),
])
def test_invalid_config_values(field, value, message):
    fields = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8)
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**fields, field: value})


def test_rope_scaling_dict_is_stored_hashable():
    config = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                         rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert config.rope_scaling == (("factor", 2.0), ("rope_type", "linear"))
    hash(config)


def test_missing_config_json(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path)


def test_export_refuses_a_config_its_family_cannot_express(tmp_path):
    from jaxdistill.models import save_pretrained

    config = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=False)
    with pytest.raises(ConfigError, match=r"cannot be expressed as a qwen2 config.json"):
        save_pretrained(config, init_params(config, jax.random.key(0)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
