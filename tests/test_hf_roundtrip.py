"""Hugging Face import/export: round trips through transformers, sharded checkpoints, dtypes."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxdistill.models import forward, load_pretrained, save_pretrained
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
    assert all((tmp_path / "out" / f).is_file() for f in files)
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left behind
    seqs = random_sequences([9])
    np.testing.assert_array_equal(hf_logits(tmp_path / "out", seqs)[0],
                                  hf_logits(checkpoints["llama3"], seqs)[0])


def test_bfloat16_round_trip(checkpoints, tmp_path):
    """dtype=bfloat16 casts on load; the saved bf16 checkpoint holds exactly those values."""
    from safetensors.numpy import load_file

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
