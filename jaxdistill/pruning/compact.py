"""Compaction: slice a masked model to the smaller dense model it emulates.

Every leaf is sliced along each of its axes to the indices its structure keeps
(`models.structure`): layers [L'], hidden [d'], and per kept layer heads [L', K' G'],
kv groups [L', K'] and neurons [L', F']."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdistill.models import ModelConfig, structure
from jaxdistill.models.structure import along
from jaxdistill.models.transformer import Params
from jaxdistill.pruning.masks import Masks
from jaxdistill.pruning.widths import PruningError, mask_widths


def _uniform(name: str, counts) -> int:
    counts = np.atleast_1d(np.asarray(counts)).ravel()
    if counts.size and not np.all(counts == counts[0]):
        raise PruningError(f"{name} widths differ across layers ({sorted(set(counts.tolist()))}): "
                           "compaction needs the same width in every layer")
    return int(counts[0])


def _kept(mask_row) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask_row) > 0)


def compact(config: ModelConfig, params: Params, masks: Masks) -> tuple[ModelConfig, Params]:
    """(smaller config, its params): the pruned structures sliced away. Masks must be concrete and
    give uniform widths across the kept layers (as `prune_to` does)."""
    layers = _kept(masks["layers"])
    if layers.size == 0:
        raise PruningError("every layer is masked: a model needs at least one layer")
    heads = np.asarray(masks["heads"])[layers]  # [L', K, G]
    group_kept = heads.max(-1) > 0              # [L', K]
    widths = mask_widths({k: (v[layers] if k in ("heads", "mlp") else v) for k, v in masks.items()})
    kv = _uniform("kv group", widths["kv_heads"])
    per_group = _uniform("query heads per kv group",
                         [heads[l][group_kept[l]].sum(-1) for l in range(len(layers))])
    mlp = _uniform("mlp", widths["mlp"])
    hidden = _kept(masks["hidden"])
    if kv == 0 or per_group == 0 or mlp == 0 or hidden.size == 0:
        raise PruningError(f"masks remove a whole axis (kv groups {kv}, heads per group {per_group}, "
                           f"mlp {mlp}, hidden {hidden.size}): keep at least one of each")
    G = config.num_heads // config.num_kv_heads
    group_idx = [np.flatnonzero(g) for g in group_kept]
    kept = {"layers": layers, "hidden": hidden,
            "groups": np.stack(group_idx),                                                  # [L', K']
            "heads": np.stack([np.concatenate([k * G + _kept(heads[l, k]) for k in group_idx[l]])
                               for l in range(len(layers))]),                               # [L', K' G']
            "mlp": np.stack([_kept(np.asarray(masks["mlp"])[l]) for l in layers])}          # [L', F']
    small = config.replace(num_layers=len(layers), num_kv_heads=kv, num_heads=kv * per_group,
                           intermediate_size=mlp, hidden_size=int(hidden.size))
    return small, structure.map_with_axes(lambda axes, w: _slice(w, axes, kept), config, params)


def _slice(w, axes, kept: dict[str, np.ndarray]):
    """w sliced along each axis to its structure's kept indices: layers first (so per-layer
    indices [L', n'] line up with the kept layers), then heads/groups/neurons per layer, hidden."""
    for name, dims in sorted(structure.pruned_by(axes), key=lambda entry: entry[0] != "layers"):
        idx = kept[name]
        if len(dims) == 1:
            w = jnp.take(w, jnp.asarray(idx), axis=dims[0])
        else:
            w = jnp.take_along_axis(w, jnp.asarray(along(idx, dims, w.ndim)), axis=dims[-1])
    return w
