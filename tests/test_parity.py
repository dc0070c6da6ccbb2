"""Logits match Hugging Face transformers (PyTorch, CPU, float32) on the same weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.models import forward, load_pretrained
from tests.tiny_models import FAMILIES, hf_logits, pack_batch, pad_batch, random_sequences

TOL = 1e-4
LENGTHS = [7, 12, 3, 9]


@pytest.fixture(scope="module")
def references(checkpoints):
    """family -> (sequences, transformers logits of each sequence run alone)."""
    seqs = random_sequences(LENGTHS)
    return {name: (seqs, hf_logits(checkpoints[name], seqs)) for name in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_unsegmented_batch(family, checkpoints, references):
    seqs, ref = references[family]
    config, params = load_pretrained(checkpoints[family])
    logits = np.asarray(forward(config, params, jnp.asarray(np.stack([seqs[1]]))))
    assert logits.dtype == np.float32
    assert np.abs(logits[0] - ref[1]).max() <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch(family, checkpoints, references):
    seqs, ref = references[family]
    config, params = load_pretrained(checkpoints[family])
    tokens, segments = pad_batch(seqs, 12)
    logits = np.asarray(forward(config, params, jnp.asarray(tokens), segment_ids=jnp.asarray(segments)))
    for row, seq in enumerate(seqs):
        assert np.abs(logits[row, :len(seq)] - ref[row]).max() <= TOL, f"row {row}"


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batch(family, checkpoints, references):
    """Packed rows [7+3 | 12 | 9] equal each example run separately: no attention across segments,
    positions restart per segment."""
    seqs, ref = references[family]
    config, params = load_pretrained(checkpoints[family])
    layout = [[0, 2], [1], [3]]
    tokens, segments = pack_batch([[seqs[i] for i in row] for row in layout], 12)
    logits = np.asarray(forward(config, params, jnp.asarray(tokens), segment_ids=jnp.asarray(segments)))
    for r, row in enumerate(layout):
        start = 0
        for i in row:
            n = len(seqs[i])
            assert np.abs(logits[r, start:start + n] - ref[i]).max() <= TOL, f"example {i}"
            start += n


@pytest.mark.parametrize("family, change", [
    ("mistral", dict(sliding_window=None)),  # the window (5) is shorter than the sequences
    ("llama3", dict(rope_scaling=None)),      # llama3 RoPE scaling changes every band but the fastest
    ("qwen3", dict(qk_norm=False)),
])
def test_parity_detects_a_wrong_architecture(family, change, checkpoints, references):
    """The comparison is sharp enough to see each family feature: switching it off breaks parity."""
    seqs, ref = references[family]
    config, params = load_pretrained(checkpoints[family])
    if change.get("qk_norm") is False:
        params = {**params, "layers": {**params["layers"], "attn": {
            k: v for k, v in params["layers"]["attn"].items() if k not in ("q_norm", "k_norm")}}}
    logits = np.asarray(forward(config.replace(**change), params, jnp.asarray(seqs[1][None])))
    assert np.abs(logits[0] - ref[1]).max() > 100 * TOL
