"""Parameter counts, compression ratios, target widths and `prune_to` (importance -> masks).

The compression ratio is the fraction of parameters removed, 1 - P_pruned / P_original, over all
parameters ("total", the default) or over the non-embedding ones ("non_embedding": without the
token embedding and an untied LM head); `compression_ratio` reports both. Widths stay uniform
across layers, so the compacted model is a standard dense config.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jaxdistill.models import ModelConfig, structure
from jaxdistill.pruning.masks import Masks, full_masks

RATIO_OF = ("total", "non_embedding")
SPLITS = ("width", "depth", "mixed")
HEAD_PRUNING = ("auto", "query", "groups", "none")
# widths within this of the target ratio (a fraction of all parameters) count as reaching it
RATIO_TOLERANCE = 0.005


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


def axis_step(size: int, multiple: int) -> int:
    """The rounding step of an axis `size` long: `multiple`, or for an axis shorter than 8 multiples
    the largest power of two <= size / 8 (so a small axis still has about 8 widths to choose from
    instead of staying whole; 1 for an axis shorter than 16)."""
    return max(1, min(multiple, 1 << max((size // 8).bit_length() - 1, 0)))


def _grid(step: int, cap: int) -> list[int]:
    """The widths an axis may take: multiples of `step` up to `cap`, and `cap` itself (the axis
    as it is now)."""
    return sorted({*range(step, cap + 1, step), cap})


def _nearest(grid: list[int], value: float) -> set[int]:
    """The grid values either side of `value` (one at the ends)."""
    i = bisect.bisect_left(grid, value)
    return {grid[j] for j in (i - 1, i) if 0 <= j < len(grid)}


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


def _check_reference(config: ModelConfig, reference: ModelConfig) -> None:
    """`config` must be `reference` narrowed (a compacted student of it): same everything but the
    widths compaction changes, each at most the reference's."""
    sizes = ("num_layers", "num_heads", "num_kv_heads", "intermediate_size", "hidden_size")
    if config.replace(**{k: getattr(reference, k) for k in sizes}) != reference or any(
            getattr(config, k) > getattr(reference, k) for k in sizes) or (
            config.num_heads // config.num_kv_heads > reference.num_heads // reference.num_kv_heads):
        raise PruningError(f"reference: {reference} is not a wider version of the model being pruned, {config}")


def widths_for_ratio(config: ModelConfig, ratio: float, *, ratio_of: str = "total",
                     split: str = "width", multiple: int = 64, head_pruning: str = "auto",
                     within: Widths | None = None, reference: ModelConfig | None = None) -> Widths:
    """Uniform widths whose compression ratio is closest to `ratio`.

    The ratio is measured against `reference` (default `config`): after a student was compacted
    (`config` is the smaller model), pass the original model so that every stage's ratio stays a
    fraction of the original parameter count. The search depends only on the reference, `ratio`
    and the widths allowed now (`within`, else `config`'s), so pruning a masked original and its
    compacted student give the same widths.

    split: "width" (default) shrinks hidden size, heads and MLP width; "depth" drops layers only;
    "mixed" takes half the ratio from depth, then the rest from width. Width search: every head
    count (head_pruning: "query" drops query heads within every kv group, "groups" whole kv groups,
    "auto" query when groups hold more than one head, "none" keeps all heads) times every hidden
    size (a multiple of `axis_step(hidden, multiple)`), each with the MLP width (a multiple of
    `axis_step(mlp, multiple)`) either side of the exact solution. Among the candidates within
    `RATIO_TOLERANCE` of the target (or, if none is, the closest) the most uniform one wins: the
    least spread between the keep-fractions of hidden, MLP and heads. `within`: current widths no
    axis may exceed (iterative pruning only ever narrows).
    """
    _check_ratio_settings(ratio, ratio_of, split, multiple, head_pruning)
    c = config
    ref = c if reference is None else reference
    if reference is not None:
        _check_reference(c, ref)
    group = ref.num_heads // ref.num_kv_heads
    cap = within or Widths(c.num_kv_heads, c.num_heads // c.num_kv_heads, c.intermediate_size, c.hidden_size,
                           c.num_layers)
    if head_pruning == "auto":
        head_pruning = "query" if group > 1 else "groups"
    original = param_count(ref)[ratio_of]
    target = (1.0 - ratio) * original

    def count(t: Widths) -> int:
        return param_count(t.config(c))[ratio_of]

    def achieved(t: Widths) -> float:
        return 1.0 - count(t) / original

    def depth_widths(r: float) -> Widths:
        cands = [dataclasses.replace(cap, layers=n) for n in range(1, cap.layers + 1)]  # widths as now
        return min(cands, key=lambda t: abs(achieved(t) - r))

    if split == "depth":
        return depth_widths(ratio)
    layers = depth_widths(ratio / 2).layers if split == "mixed" else cap.layers
    heads = [(cap.kv_heads, cap.heads_per_group)]
    if head_pruning == "query":
        heads = [(cap.kv_heads, g) for g in range(1, cap.heads_per_group + 1)]
    elif head_pruning == "groups":
        heads = [(k, cap.heads_per_group) for k in range(1, cap.kv_heads + 1)]
    mlp_grid = _grid(axis_step(ref.intermediate_size, multiple), cap.mlp)
    candidates = []
    for kv, per_group in heads:
        for hidden in _grid(axis_step(ref.hidden_size, multiple), cap.hidden):
            base = Widths(kv, per_group, 1, hidden, layers)
            if not base.exportable(c):
                continue
            # the count is affine in the MLP width: solve for the target, round both ways
            p1, p2 = count(base), count(dataclasses.replace(base, mlp=2))
            exact = 1 + (target - p1) / (p2 - p1)
            candidates += [dataclasses.replace(base, mlp=m) for m in _nearest(mlp_grid, exact)]
    if not candidates:
        raise PruningError(f"no {split} widths with multiple={multiple} give an exportable "
                           f"{c.model_type} config; try a smaller multiple")
    error = {t: abs(achieved(t) - ratio) for t in candidates}
    tolerance = max(min(error.values()), RATIO_TOLERANCE)

    def spread(t: Widths) -> float:
        keep = [t.hidden / ref.hidden_size, t.mlp / ref.intermediate_size]
        if head_pruning != "none":
            keep.append(t.heads / ref.num_heads)
        return max(keep) - min(keep)

    return min(candidates, key=lambda t: (error[t] > tolerance + 1e-12, round(spread(t), 9),
                                          round(error[t], 12), -t.hidden, -t.mlp, -t.heads))


def _top_mask(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
    """1 for the `keep` highest scores along the last axis (ties: lower index first), else 0."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return (ranks < keep).astype(jnp.float32)


def prune_to(config: ModelConfig, importance: dict[str, jnp.ndarray], target: float | Widths, *,
             masks: Masks | None = None, ratio_of: str = "total", split: str = "width",
             multiple: int = 64, head_pruning: str = "auto",
             reference: ModelConfig | None = None) -> tuple[Masks, Widths]:
    """Masks keeping the most important structures at the target widths (or compression ratio).

    importance: {"heads" [L, K, G], "groups" [L, K], "mlp" [L, F], "hidden" [d], "layers" [L]}
    (higher = more important), e.g. from `pruning.importance`. Structures already pruned in `masks`
    stay pruned (iterative pruning never revives). Query heads are ranked within their kv group.
    A ratio target is a fraction of `reference`'s parameters (default `config`; pass the original
    model when `config` is an already compacted student, see `widths_for_ratio`).
    """
    masks = full_masks(config) if masks is None else masks
    current = Widths.from_masks(masks)
    if isinstance(target, Widths):
        target.check_within(current)
        widths = target
    else:
        widths = widths_for_ratio(config, target, ratio_of=ratio_of, split=split, multiple=multiple,
                                  head_pruning=head_pruning, within=current, reference=reference)
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
