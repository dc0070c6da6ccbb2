"""Parameter counts, compression ratios, target widths and `prune_to` (importance -> masks).

The compression ratio is the fraction of parameters removed, 1 - P_pruned / P_original, over all
parameters ("total", the default) or over the non-embedding ones ("non_embedding": without the
token embedding and an untied LM head); `compression_ratio` reports both. Widths stay uniform
across layers, so the compacted model is a standard dense config.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jaxdistill.models import ModelConfig, structure
from jaxdistill.pruning.masks import Masks, full_masks

RATIO_OF = ("total", "non_embedding")
SPLITS = ("width", "depth", "mixed")
HEAD_PRUNING = ("auto", "query", "groups", "none")


class PruningError(ValueError):
    """A pruning target or schedule outside what the model allows."""


def param_count(config: ModelConfig) -> dict[str, int]:
    """Parameter counts from the structural table: P = sum over leaves of prod over the leaf's
    logical axes of the axis length (V, d, H, K, D, F, L); "embedding" = the leaves with a vocab
    axis (token embedding + untied head), "non_embedding" the rest. Cheap: no model is built."""
    sizes = [(axes, math.prod(structure.axis_size(config, name) for name in axes))
             for axes in structure.leaf_axes(config).values()]
    embedding = sum(n for axes, n in sizes if "vocab" in axes)
    total = sum(n for _, n in sizes)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def compression_ratio(original: ModelConfig, pruned: ModelConfig) -> dict[str, float]:
    """Fraction of parameters removed, over all parameters and over non-embedding parameters."""
    a, b = param_count(original), param_count(pruned)
    return {k: 1.0 - b[k] / a[k] for k in RATIO_OF}


@dataclasses.dataclass(frozen=True)
class Widths:
    """Uniform target widths: kv groups, query heads per group, MLP width, hidden size, layers."""

    kv_heads: int
    heads_per_group: int
    mlp: int
    hidden: int
    layers: int

    @property
    def heads(self) -> int:
        return self.kv_heads * self.heads_per_group

    @classmethod
    def of(cls, config: ModelConfig, *, heads: int | None = None, kv_heads: int | None = None,
           mlp: int | None = None, hidden: int | None = None, layers: int | None = None) -> Widths:
        """Explicit widths (unset = unchanged), checked against the model and GQA grouping."""
        c = config
        kv_heads = c.num_kv_heads if kv_heads is None else kv_heads
        group = c.num_heads // c.num_kv_heads
        heads = kv_heads * group if heads is None else heads
        checks = [("kv_heads", kv_heads, c.num_kv_heads), ("mlp", mlp, c.intermediate_size),
                  ("hidden", hidden, c.hidden_size), ("layers", layers, c.num_layers)]
        for name, value, limit in checks:
            if value is not None and not 1 <= value <= limit:
                raise PruningError(f"target {name}={value} is outside the valid range [1, {limit}] "
                                   "of this model")
        if heads % kv_heads or not 1 <= heads // kv_heads <= group:
            raise PruningError(
                f"target heads={heads} breaks GQA grouping: with kv_heads={kv_heads} it must be a "
                f"multiple of {kv_heads} between {kv_heads} and {kv_heads * group} "
                f"(each of the {kv_heads} kept groups keeps 1..{group} of its query heads)")
        widths = cls(kv_heads, heads // kv_heads, mlp or c.intermediate_size, hidden or c.hidden_size,
                     layers or c.num_layers)
        if not widths.exportable(c):
            raise PruningError(
                f"target hidden={widths.hidden} is not a multiple of heads={widths.heads}: "
                f"transformers' {c.model_type} config requires hidden_size % num_attention_heads == 0")
        return widths

    def exportable(self, config: ModelConfig) -> bool:
        """Whether transformers accepts the compacted config (Llama checks hidden % heads == 0)."""
        return config.model_type != "llama" or self.hidden % self.heads == 0

    def check_within(self, current: Widths) -> None:
        """Pruning only narrows: every width at most what the current masks keep."""
        for name in ("kv_heads", "heads_per_group", "mlp", "hidden", "layers"):
            if getattr(self, name) > getattr(current, name):
                raise PruningError(f"target {name}={getattr(self, name)} is wider than the current masks "
                                   f"keep ({getattr(current, name)}): pruning never revives structures")

    @classmethod
    def from_masks(cls, masks) -> Widths:
        """The widths masks keep (the widest layer's, where layers differ)."""
        w = mask_widths(masks)
        return cls(int(np.max(w["kv_heads"])), int(np.max(w["heads_per_group"])), int(np.max(w["mlp"])),
                   w["hidden"], w["layers"])

    def config(self, config: ModelConfig) -> ModelConfig:
        return config.replace(num_kv_heads=self.kv_heads, num_heads=self.heads,
                              intermediate_size=self.mlp, hidden_size=self.hidden,
                              num_layers=self.layers)


def _neighbours(value: float, multiple: int, limit: int) -> set[int]:
    """The multiples of `multiple` just below and above `value`, within [multiple, limit]
    (a dim no larger than `multiple` stays whole)."""
    if limit <= multiple:
        return {limit}
    below = multiple * math.floor(value / multiple)
    return {int(min(limit, max(multiple, w))) for w in (below, below + multiple)}


def _check_ratio_settings(ratio: float, ratio_of: str, split: str, multiple: int, head_pruning: str):
    if not 0.0 < ratio < 1.0:
        raise PruningError(f"compression ratio {ratio} is outside the valid range (0, 1)")
    if ratio_of not in RATIO_OF:
        raise PruningError(f"ratio_of={ratio_of!r}; valid: {', '.join(RATIO_OF)}")
    if split not in SPLITS:
        raise PruningError(f"split={split!r}; valid: {', '.join(SPLITS)}")
    if head_pruning not in HEAD_PRUNING:
        raise PruningError(f"head_pruning={head_pruning!r}; valid: {', '.join(HEAD_PRUNING)}")
    if multiple < 1:
        raise PruningError(f"multiple={multiple}: must be >= 1")


def widths_for_ratio(config: ModelConfig, ratio: float, *, ratio_of: str = "total",
                     split: str = "width", multiple: int = 64, head_pruning: str = "auto",
                     within: Widths | None = None) -> Widths:
    """Uniform widths whose compression ratio is closest to `ratio`.

    split: "width" (default) shrinks MLP width, hidden size and heads around one keep-fraction k,
    each to a multiple of `multiple` next to k * width (heads to whole heads), taking the
    combination closest to the ratio; "depth" drops layers only; "mixed" takes half the
    ratio from depth, then the rest from width. `within`: current widths no axis may exceed
    (iterative pruning only ever narrows). head_pruning: "query" drops query heads within every
    kv group, "groups" drops whole kv groups, "auto" picks query when groups hold more than one head,
    "none" keeps all heads.
    """
    _check_ratio_settings(ratio, ratio_of, split, multiple, head_pruning)
    c = config
    group = c.num_heads // c.num_kv_heads
    cap = within or Widths(c.num_kv_heads, group, c.intermediate_size, c.hidden_size, c.num_layers)
    if head_pruning == "auto":
        head_pruning = "query" if group > 1 else "groups"

    def achieved(t: Widths) -> float:
        return compression_ratio(c, t.config(c))[ratio_of]

    def depth_widths(r: float) -> Widths:
        cands = [dataclasses.replace(cap, layers=n) for n in range(1, cap.layers + 1)]  # widths as now
        return min(cands, key=lambda t: abs(achieved(t) - r))

    def width_candidates(k: float, layers: int) -> set[Widths]:
        """Every combination of the widths one rounding step either side of keep-fraction k."""
        kv, per_group = {cap.kv_heads}, {cap.heads_per_group}
        if head_pruning == "query":
            per_group = _neighbours(group * k, 1, cap.heads_per_group)
        elif head_pruning == "groups":
            kv = _neighbours(c.num_kv_heads * k, 1, cap.kv_heads)
        return {Widths(a, b, m, h, layers) for a in kv for b in per_group
                for m in _neighbours(c.intermediate_size * k, multiple, cap.mlp)
                for h in _neighbours(c.hidden_size * k, multiple, cap.hidden)}

    if split == "depth":
        return depth_widths(ratio)
    layers = depth_widths(ratio / 2).layers if split == "mixed" else cap.layers
    candidates = {t for k in np.linspace(0.0, 1.0, 401)[1:] for t in width_candidates(k, layers)
                  if t.exportable(c)}
    if not candidates:
        raise PruningError(f"no {split} widths with multiple={multiple} give an exportable "
                           f"{c.model_type} config; try a smaller multiple")
    return min(candidates, key=lambda t: (round(abs(achieved(t) - ratio), 12), -t.hidden, -t.mlp,
                                          -t.heads))


def _top_mask(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
    """1 for the `keep` highest scores along the last axis (ties: lower index first), else 0."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return (ranks < keep).astype(jnp.float32)


def prune_to(config: ModelConfig, importance: dict[str, jnp.ndarray], target: float | Widths, *,
             masks: Masks | None = None, ratio_of: str = "total", split: str = "width",
             multiple: int = 64, head_pruning: str = "auto") -> tuple[Masks, Widths]:
    """Masks keeping the most important structures at the target widths (or compression ratio).

    importance: {"heads" [L, K, G], "groups" [L, K], "mlp" [L, F], "hidden" [d], "layers" [L]}
    (higher = more important), e.g. from `pruning.importance`. Structures already pruned in `masks`
    stay pruned (iterative pruning never revives). Query heads are ranked within their kv group.
    """
    masks = full_masks(config) if masks is None else masks
    current = Widths.from_masks(masks)
    if isinstance(target, Widths):
        target.check_within(current)
        widths = target
    else:
        widths = widths_for_ratio(config, target, ratio_of=ratio_of, split=split, multiple=multiple,
                                  head_pruning=head_pruning, within=current)
    alive = lambda scores, m: jnp.where(m > 0, scores, -jnp.inf)
    group_alive = jnp.max(masks["heads"], axis=-1)
    groups = _top_mask(alive(importance["groups"], group_alive), widths.kv_heads)  # [L, K]
    heads = _top_mask(alive(importance["heads"], masks["heads"]), widths.heads_per_group) * groups[..., None]
    new = {"heads": heads,
           "mlp": _top_mask(alive(importance["mlp"], masks["mlp"]), widths.mlp),
           "hidden": _top_mask(alive(importance["hidden"], masks["hidden"]), widths.hidden),
           "layers": _top_mask(alive(importance["layers"], masks["layers"]), widths.layers)}
    return new, widths


def mask_widths(masks: Masks) -> dict[str, object]:
    """Kept counts per structure (host numpy), for reports and uniformity checks."""
    heads = np.asarray(masks["heads"]) > 0
    return {"kv_heads": heads.any(-1).sum(-1), "heads_per_group": heads.sum(-1),
            "mlp": (np.asarray(masks["mlp"]) > 0).sum(-1), "hidden": int((np.asarray(masks["hidden"]) > 0).sum()),
            "layers": int((np.asarray(masks["layers"]) > 0).sum())}
