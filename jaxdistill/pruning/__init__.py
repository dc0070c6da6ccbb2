"""Structured pruning as mask transforms over parameter pytrees: importance, target widths,
schedules, compaction. Masks (`masks.py`) emulate the compacted model exactly; `compact` slices to
it. Which structure each parameter axis belongs to comes from one table, `models.structure`."""

from jaxdistill.pruning.compact import compact, compaction_plan, slice_adapter, slice_leaf, slice_lora, slice_params
from jaxdistill.pruning.importance import IMPORTANCE_METHODS, importance
from jaxdistill.pruning.masks import GRANULARITIES, Masks, apply_masks, full_masks, masked_forward
from jaxdistill.pruning.schedules import PruningSchedule
from jaxdistill.pruning.widths import (
    PruningError,
    Widths,
    axis_step,
    compression_ratio,
    mask_widths,
    param_count,
    prune_to,
    widths_for_ratio,
)

__all__ = ["GRANULARITIES", "IMPORTANCE_METHODS", "Masks", "PruningError", "PruningSchedule", "Widths",
           "apply_masks", "axis_step", "compact", "compaction_plan", "slice_adapter", "slice_leaf", "slice_lora",
           "slice_params", "compression_ratio", "full_masks", "importance", "mask_widths",
           "masked_forward", "param_count", "prune_to", "widths_for_ratio"]
