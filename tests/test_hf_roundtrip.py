"""Hugging Face import/export: round trips through transformers, sharded checkpoints, dtypes."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdistill.models import ConfigError, forward, load_pretrained, save_pretrained
from tests.tiny_models import FAMILIES, hf_logits, make_hf_checkpoint, random_sequences


@pytest.mark.parametrize("family", FAMILIES)
def test_load_save_transformers_identical(family, checkpoints, tmp_path):
    """load -> save_pretrained -> transformers loads it -> bit-identical logits to the original."""
    seqs = random_sequences([11])
    config, params = load_pretrained(checkpoints[family])
    save_pretrained(config, params, tmp_path / "out")
    original = hf_logits(checkpoints[family], seqs)[0]
    reloaded = hf_logits(tmp_path / "out", seqs)[0]
    np.testing.assert_array_equal(reloaded, original)
    ours = np.asarray(forward(config, params, jnp.asarray(seqs[0][None])))[0]
    assert np.abs(ours - original).max() <= 1e-4
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == family.split("_")[0].replace("llama3", "llama")


def test_transformers_sharded_checkpoint_loads(tmp_path):
    """A checkpoint transformers wrote in several files with model.safetensors.index.json loads."""
    import torch
    from transformers import AutoModelForCausalLM

    src = make_hf_checkpoint("qwen3", tmp_path / "single")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    files = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(files) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    seqs = random_sequences([10])
    config, params = load_pretrained(tmp_path / "sharded")
    ours = np.asarray(forward(config, params, jnp.asarray(seqs[0][None])))[0]
    assert np.abs(ours - hf_logits(src, seqs)[0]).max() <= 1e-4


def test_save_sharded_by_size(checkpoints, tmp_path):
    config, params = load_pretrained(checkpoints["llama3"])
    save_pretrained(config, params, tmp_path / "out", max_shard_bytes=30_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2
    for f in files:  # each file within the limit, unless a single tensor alone exceeds it
        sizes = [v.nbytes for v in load_file(str(tmp_path / "out" / f)).values()]
        assert sum(sizes) <= 30_000 or len(sizes) == 1, (f, sizes)
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left behind
    seqs = random_sequences([9])
    np.testing.assert_array_equal(hf_logits(tmp_path / "out", seqs)[0],
                                  hf_logits(checkpoints["llama3"], seqs)[0])


def test_resave_replaces_earlier_files(checkpoints, tmp_path):
    """Saving single-file over an earlier sharded save leaves no stale index or shards behind."""
    config, params = load_pretrained(checkpoints["qwen3"])
    save_pretrained(config, jax.tree.map(lambda x: x * 0.5, params), tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    save_pretrained(config, params, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    _, reloaded = load_pretrained(tmp_path)
    for a, b in zip(jax.tree.leaves(reloaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_base_model_names_without_prefix(checkpoints, tmp_path):
    """A checkpoint whose tensors lack the `model.` prefix (saved from the base model) loads."""
    tensors = load_file(str(checkpoints["qwen2"] / "model.safetensors"))
    (tmp_path / "base").mkdir()
    save_file({k.removeprefix("model."): v for k, v in tensors.items()},
              str(tmp_path / "base" / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(checkpoints["qwen2"] / "config.json", tmp_path / "base" / "config.json")
    seqs = random_sequences([9])
    config, params = load_pretrained(tmp_path / "base")
    ours = np.asarray(forward(config, params, jnp.asarray(seqs[0][None])))[0]
    assert np.abs(ours - hf_logits(checkpoints["qwen2"], seqs)[0]).max() <= 1e-4


def test_float16_checkpoint_computes_in_float32(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    src = make_hf_checkpoint("llama3", tmp_path / "fp32")
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float16).save_pretrained(tmp_path / "fp16")
    config, params = load_pretrained(tmp_path / "fp16")
    assert (config.param_dtype, config.compute_dtype) == ("float16", "float32")
    seqs = random_sequences([10])
    ours = np.asarray(forward(config, params, jnp.asarray(seqs[0][None])))[0]
    reference = hf_logits(tmp_path / "fp16", seqs, dtype="float32")[0]  # fp16 weights, fp32 compute
    assert np.abs(ours - reference).max() <= 1e-4


@pytest.mark.parametrize("max_window_layers, expect", [(0, "sliding"), (3, "full"), (2, "mixed")])
def test_qwen2_sliding_window_layers(max_window_layers, expect, tmp_path):
    """transformers slides layers i >= max_window_layers (when config.json has no layer_types)."""
    path = make_hf_checkpoint("qwen2", tmp_path / "q", use_sliding_window=True, sliding_window=4,
                              max_window_layers=max_window_layers)
    raw = json.loads((path / "config.json").read_text())
    raw.pop("layer_types", None)  # the transformers v4 layout
    (path / "config.json").write_text(json.dumps(raw))
    if expect == "mixed":
        with pytest.raises(ConfigError, match="mix sliding and full attention"):
            load_pretrained(path)
        return
    config, params = load_pretrained(path)
    assert config.sliding_window == (4 if expect == "sliding" else None)
    seqs = random_sequences([14])
    ours = np.asarray(forward(config, params, jnp.asarray(seqs[0][None])))[0]
    assert np.abs(ours - hf_logits(path, seqs)[0]).max() <= 1e-4


def test_bfloat16_round_trip(checkpoints, tmp_path):
    """dtype=bfloat16 casts on load; the saved bf16 checkpoint holds exactly those values."""
    config, params = load_pretrained(checkpoints["qwen2"], dtype=jnp.bfloat16)
    assert config.param_dtype == config.compute_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    save_pretrained(config, params, tmp_path / "bf16")
    reference = load_file(str(checkpoints["qwen2"] / "model.safetensors"))
    saved = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert set(saved) == set(reference)
    for name, value in reference.items():
        assert saved[name].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(saved[name], value.astype(ml_dtypes.bfloat16))
    # bf16 compute stays close to the fp32 reference logits (bf16 has ~3 significant digits).
    seqs = random_sequences([8])
    logits = np.asarray(forward(config, params, jnp.asarray(seqs[0][None])))[0]
    ref = hf_logits(checkpoints["qwen2"], seqs)[0]
    assert logits.dtype == np.float32
    assert np.abs(logits - ref).max() <= 0.05 * np.abs(ref).max()
