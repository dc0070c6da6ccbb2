"""Structured pruning as mask transforms over parameter pytrees: importance, targets, schedules,
compaction. Masks (`masks.py`) emulate the compacted model exactly; `compact` slices to it."""

from jaxdistill.pruning.compact import compact
from jaxdistill.pruning.importance import METHODS, importance
from jaxdistill.pruning.masks import GRANULARITIES, Masks, apply_masks, full_masks, masked_forward
from jaxdistill.pruning.schedules import PruningSchedule
from jaxdistill.pruning.targets import (
    PruningError,
    Targets,
    compression_ratio,
    mask_widths,
    param_count,
    prune_to,
    widths_for_ratio,
)

__all__ = ["GRANULARITIES", "METHODS", "Masks", "PruningError", "PruningSchedule", "Targets",
           "apply_masks", "compact", "compression_ratio", "full_masks", "importance", "mask_widths",
           "masked_forward", "param_count", "prune_to", "widths_for_ratio"]
