"""Compaction: slice a masked model to the smaller dense model it emulates.

Every leaf is sliced along each of its axes to the indices its structure keeps
(`models.structure`): layers [L'], hidden [d'], and per kept layer heads [L', K' G'],
kv groups [L', K'] and neurons [L', F']. `compaction_plan` computes those indices once; `slice_params`
applies them to any params-shaped tree (weights, optimizer moments) and `slice_lora` to LoRA
adapters, so a train state compacts with the same slicer as the export."""

from __future__ import annotations

import jax
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


def compaction_plan(config: ModelConfig, masks: Masks) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(smaller config, kept indices): what compaction keeps of each structure — layers [L'],
    hidden [d'], and per kept layer groups [L', K'], heads [L', K' G'], mlp [L', F']. Masks must be
    concrete and give uniform widths across the kept layers (as `prune_to` does)."""
    masks = {k: np.asarray(v) for k, v in masks.items()}
    layers = _kept(masks["layers"])
    if layers.size == 0:
        raise PruningError("every layer is masked: a model needs at least one layer")
    heads = masks["heads"][layers]  # [L', K, G]
    group_kept = heads.max(-1) > 0  # [L', K]
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
            "mlp": np.stack([_kept(masks["mlp"][l]) for l in layers])}                      # [L', F']
    small = config.replace(num_layers=len(layers), num_kv_heads=kv, num_heads=kv * per_group,
                           intermediate_size=mlp, hidden_size=int(hidden.size))
    return small, kept


def compact(config: ModelConfig, params: Params, masks: Masks) -> tuple[ModelConfig, Params]:
    """(smaller config, its params): the pruned structures sliced away. Masks must be concrete and
    give uniform widths across the kept layers (as `prune_to` does)."""
    small, kept = compaction_plan(config, masks)
    return small, jax.tree.map(jnp.asarray, slice_params(config, params, kept))


def slice_params(config: ModelConfig, tree: Params, kept: dict[str, np.ndarray]) -> Params:
    """A tree laid out as `config`'s params (the weights, or an optimizer moment of them) sliced to
    the indices `compaction_plan` kept. Host (numpy) leaves are sliced on the host."""
    return structure.map_with_axes(lambda axes, w: slice_leaf(w, axes, kept), config, tree)


def slice_lora(config: ModelConfig, adapters: Params, kept: dict[str, np.ndarray]) -> Params:
    """LoRA adapters {module: {"a": [L, n_in, r], "b": [L, r, n_out]}} (or a tree laid out the same,
    e.g. their optimizer moments) sliced with their kernels (`slice_adapter`)."""
    return {module: {factor: slice_adapter(config, module, factor, x, kept) for factor, x in ab.items()}
            for module, ab in adapters.items()}


def slice_adapter(config: ModelConfig, module: str, factor: str, x, kept: dict[str, np.ndarray]):
    """One LoRA factor sliced with its kernel [L, *in, *out] (`models.lora`): a [L, n_in, r] along the
    kernel's input axes (its rows, flattened), b [L, r, n_out] along the output axes (its columns),
    so a' @ b' is a @ b sliced as the kernel is: the merged compacted kernel is the compacted merged
    kernel."""
    axes = structure.leaf_axes(config)[structure.projections(config)[module]]   # (layers, *in, *out)
    n_in = structure.input_dims(axes)
    names = axes[1:1 + n_in] if factor == "a" else axes[1 + n_in:]
    sizes = [structure.axis_size(config, name) for name in names]
    xp = np if isinstance(x, np.ndarray) else jnp
    if factor == "a":                               # [L, *in, r]: the trailing rank axis stays whole
        x = slice_leaf(x.reshape(x.shape[0], *sizes, x.shape[-1]), ("layers", *names), kept)
        return x.reshape(x.shape[0], -1, x.shape[-1])
    x = xp.moveaxis(x.reshape(*x.shape[:2], *sizes), 1, -1)                    # [L, *out, r]
    x = xp.moveaxis(slice_leaf(x, ("layers", *names), kept), -1, 1)
    return x.reshape(*x.shape[:2], -1)


def slice_leaf(w, axes, kept: dict[str, np.ndarray]):
    """w sliced along each axis to its structure's kept indices: layers first (so per-layer
    indices [L', n'] line up with the kept layers), then heads/groups/neurons per layer, hidden.
    `axes` names w's leading dims; trailing dims beyond them are kept whole."""
    xp = np if isinstance(w, np.ndarray) else jnp
    for name, dims in sorted(structure.pruned_by(axes), key=lambda entry: entry[0] != "layers"):
        idx = kept[name]
        if len(dims) == 1:
            w = xp.take(w, xp.asarray(idx), axis=dims[0])
        else:
            w = xp.take_along_axis(w, xp.asarray(along(idx, dims, w.ndim)), axis=dims[-1])
    return w
