"""Fine ratio grids on SmolLM2-135M's shape: `prune_to` reaches every total-parameter ratio of the grid
within 2 percentage points for the width, depth and mixed splits, from widths and parameter counts
alone (random importance scores of the right shapes; no model is built). Iterative stages on a
compacted student, measured against the original, pick what the masked original would."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.models import ModelConfig
from jaxdistill.pruning import (PruningError, Widths, axis_step, compression_ratio, full_masks, prune_to,
                               widths_for_ratio)
from jaxdistill.pruning.compact import compaction_plan

SMOLLM2_135M = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                           num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)
RATIOS = (0.05, 0.1, 0.2, 0.3, 0.5)


def _scores(config: ModelConfig, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    c, G = config, config.num_heads // config.num_kv_heads
    shapes = {"heads": (c.num_layers, c.num_kv_heads, G), "groups": (c.num_layers, c.num_kv_heads),
              "mlp": (c.num_layers, c.intermediate_size), "hidden": (c.hidden_size,), "layers": (c.num_layers,)}
    return {k: jnp.asarray(rng.random(shape)) for k, shape in shapes.items()}


@pytest.mark.parametrize("multiple", [32, 64])
@pytest.mark.parametrize("split", ["width", "depth", "mixed"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_grid_reached_within_two_points(ratio, split, multiple):
    masks, widths = prune_to(SMOLLM2_135M, _scores(SMOLLM2_135M), ratio, split=split, multiple=multiple)
    small, _ = compaction_plan(SMOLLM2_135M, masks)  # the shape the masks compact to
    assert small == widths.config(SMOLLM2_135M)
    achieved = compression_ratio(SMOLLM2_135M, small)["total"]
    assert abs(achieved - ratio) <= 0.02, (widths, achieved)
    assert small.hidden_size % small.num_heads == 0  # transformers' Llama config accepts it
    if split == "depth":
        assert (small.hidden_size, small.intermediate_size, small.num_heads) == (576, 1536, 9)
    else:
        assert small.hidden_size % axis_step(576, multiple) == 0
        assert small.intermediate_size % axis_step(1536, multiple) == 0
    if split == "width":
        assert small.num_layers == 30


def test_axis_step_keeps_small_axes_prunable():
    assert axis_step(576, 32) == 32 and axis_step(1536, 64) == 64 and axis_step(256, 32) == 32
    assert axis_step(32, 32) == 4 and axis_step(64, 32) == 8 and axis_step(12, 32) == 1


@pytest.mark.parametrize("split", ["width", "depth", "mixed"])
def test_iterative_stages_on_the_compacted_student_match_the_masked_original(split):
    """Stage 2 on the compacted student (reference = the original) picks the widths stage 2 picks on
    the masked original, and both reach the schedule's ratio of the ORIGINAL parameter count."""
    masks, _ = prune_to(SMOLLM2_135M, _scores(SMOLLM2_135M, 1), 0.2, split=split, multiple=32)
    small, kept = compaction_plan(SMOLLM2_135M, masks)
    masked, masked_widths = prune_to(SMOLLM2_135M, _scores(SMOLLM2_135M, 2), 0.5, masks=masks, split=split,
                                     multiple=32)
    compacted, compacted_widths = prune_to(small, _scores(small, 3), 0.5, masks=full_masks(small), split=split,
                                           multiple=32, reference=SMOLLM2_135M)
    assert compacted_widths == masked_widths
    achieved = compression_ratio(SMOLLM2_135M, compaction_plan(small, compacted)[0])["total"]
    assert abs(achieved - 0.5) <= 0.02
    # without the reference the ratio would be taken of the already smaller student: far more removed
    alone = widths_for_ratio(small, 0.5, split=split, multiple=32)
    assert compression_ratio(SMOLLM2_135M, alone.config(small))["total"] > 0.55


def test_reference_must_be_a_wider_model():
    with pytest.raises(PruningError, match="is not a wider version"):
        widths_for_ratio(SMOLLM2_135M, 0.3, reference=SMOLLM2_135M.replace(hidden_size=512))
    assert Widths.of(SMOLLM2_135M, mlp=1024).config(SMOLLM2_135M).intermediate_size == 1024
