"""Compaction: slice a masked model to the smaller dense model it emulates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params
from jaxdistill.pruning.masks import Masks
from jaxdistill.pruning.targets import PruningError, mask_widths


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
    group_idx = np.stack([np.flatnonzero(g) for g in group_kept])              # [L', K']
    head_idx = np.stack([np.concatenate([k * G + np.flatnonzero(heads[l, k] > 0) for k in group_idx[l]])
                         for l in range(len(layers))])                         # [L', K' G']
    mlp_idx = np.stack([_kept(np.asarray(masks["mlp"])[l]) for l in layers])   # [L', F']

    take = lambda x, idx, axis: jnp.take(x, jnp.asarray(idx), axis=axis)
    per_layer = lambda x, idx, axis: jnp.take_along_axis(
        x, jnp.asarray(idx).reshape(idx.shape[0], *([1] * (axis - 1)), idx.shape[1],
                                    *([1] * (x.ndim - axis - 1))), axis=axis)

    lp = jax.tree.map(lambda x: take(x, layers, 0), params["layers"])
    attn = lp["attn"]
    new_attn = {
        "q": {"kernel": per_layer(take(attn["q"]["kernel"], hidden, 1), head_idx, 2)},
        "k": {"kernel": per_layer(take(attn["k"]["kernel"], hidden, 1), group_idx, 2)},
        "v": {"kernel": per_layer(take(attn["v"]["kernel"], hidden, 1), group_idx, 2)},
        "o": {"kernel": take(per_layer(attn["o"]["kernel"], head_idx, 1), hidden, 3)},
    }
    if "bias" in attn["q"]:
        new_attn["q"]["bias"] = per_layer(attn["q"]["bias"], head_idx, 1)
        new_attn["k"]["bias"] = per_layer(attn["k"]["bias"], group_idx, 1)
        new_attn["v"]["bias"] = per_layer(attn["v"]["bias"], group_idx, 1)
    if "bias" in attn["o"]:
        new_attn["o"]["bias"] = take(attn["o"]["bias"], hidden, 1)
    for name in ("q_norm", "k_norm"):
        if name in attn:
            new_attn[name] = attn[name]
    new = {
        "embed": take(params["embed"], hidden, 1),
        "final_norm": {"scale": take(params["final_norm"]["scale"], hidden, 0)},
        "layers": {
            "attn": new_attn,
            "attn_norm": {"scale": take(lp["attn_norm"]["scale"], hidden, 1)},
            "mlp_norm": {"scale": take(lp["mlp_norm"]["scale"], hidden, 1)},
            "mlp": {"gate": {"kernel": per_layer(take(lp["mlp"]["gate"]["kernel"], hidden, 1), mlp_idx, 2)},
                    "up": {"kernel": per_layer(take(lp["mlp"]["up"]["kernel"], hidden, 1), mlp_idx, 2)},
                    "down": {"kernel": take(per_layer(lp["mlp"]["down"]["kernel"], mlp_idx, 1), hidden, 2)}},
        },
    }
    if "lm_head" in params:
        new["lm_head"] = {"kernel": take(params["lm_head"]["kernel"], hidden, 0)}
    small = config.replace(num_layers=len(layers), num_kv_heads=kv, num_heads=kv * per_group,
                           intermediate_size=mlp, hidden_size=int(hidden.size))
    return small, new

