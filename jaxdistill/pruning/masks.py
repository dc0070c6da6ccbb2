"""Structural masks and their exact emulation of the compacted model.

Masks (float 0/1, kept = 1), for L layers, K kv groups of G query heads, F neurons, d channels:

    heads   [L, K, G]   query heads; a kv group is kept while any of its heads is
    mlp     [L, F]      MLP intermediate neurons
    hidden  [d]         hidden channels, shared by the embedding, every projection, norm and the head
    layers  [L]         whole layers (a pruned layer is an identity on the residual stream)

`apply_masks` zeroes every weight the compacted model does not have (each leaf times the masks of
its axes' structures, `models.structure`; every weight of a pruned layer), so the residual stream
is exactly zero on pruned hidden channels and pruned heads/neurons/layers add nothing;
`masked_forward` adds the one thing zeroing cannot do: RMSNorm averaging over the surviving
channels only.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from jaxdistill.models import ModelConfig, forward, structure
from jaxdistill.models.structure import along
from jaxdistill.models.transformer import Params

Masks = dict[str, jnp.ndarray]
GRANULARITIES = ("heads", "mlp", "hidden", "layers")


def full_masks(config: ModelConfig) -> Masks:
    """Masks that keep everything."""
    c = config
    groups = c.num_heads // c.num_kv_heads
    return {"heads": jnp.ones((c.num_layers, c.num_kv_heads, groups), jnp.float32),
            "mlp": jnp.ones((c.num_layers, c.intermediate_size), jnp.float32),
            "hidden": jnp.ones((c.hidden_size,), jnp.float32),
            "layers": jnp.ones((c.num_layers,), jnp.float32)}


def group_mask(masks: Masks) -> jnp.ndarray:
    """kv groups kept [L, K]: those with at least one kept query head."""
    return jnp.max(masks["heads"], axis=-1)


def structure_masks(masks: Masks) -> dict[str, jnp.ndarray]:
    """Each structure's keep mask as `models.structure` indexes it: hidden [d], layers [L],
    heads [L, H] (head n in kv group n // G), groups [L, K], mlp [L, F]."""
    L = masks["layers"].shape[0]
    return {"hidden": masks["hidden"], "layers": masks["layers"], "heads": masks["heads"].reshape(L, -1),
            "groups": group_mask(masks), "mlp": masks["mlp"]}


def apply_masks(config: ModelConfig, params: Params, masks: Masks) -> Params:
    """Params with every pruned structure's weights set to zero (pure, jit-able).

    w' = w * prod over the leaf's axes of its structure's mask, broadcast along the leaf: e.g.
    q.kernel [L, d, H, D] * layers[:, None, None, None] * hidden[None, :, None, None] * heads[:, None, :, None]."""
    per_structure = structure_masks(masks)

    def leaf(axes, w):
        keep = [along(per_structure[s], dims, w.ndim) for s, dims in structure.pruned_by(axes)]
        return w * functools.reduce(jnp.multiply, keep).astype(w.dtype)

    return structure.map_with_axes(leaf, config, params)


def masked_forward(config: ModelConfig, params: Params, masks: Masks, tokens, **kwargs):
    """Logits of the masked model: equal (to float rounding) to the compacted model's logits."""
    return forward(config, apply_masks(config, params, masks), tokens, hidden_mask=masks["hidden"],
                   **kwargs)
