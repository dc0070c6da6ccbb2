"""Structural masks and their exact emulation of the compacted model.

Masks (float 0/1, kept = 1), for L layers, K kv groups of G query heads, F neurons, d channels:

    heads   [L, K, G]   query heads; a kv group is kept while any of its heads is
    mlp     [L, F]      MLP intermediate neurons
    hidden  [d]         hidden channels, shared by the embedding, every projection, norm and the head
    layers  [L]         whole layers (a pruned layer is an identity on the residual stream)

`apply_masks` zeroes every weight the compacted model does not have, so the residual stream is
exactly zero on pruned hidden channels, pruned heads/neurons/layers add nothing; `masked_forward`
adds the one thing zeroing cannot do: RMSNorm averaging over the surviving channels only.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdistill.models import ModelConfig, forward
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


def apply_masks(config: ModelConfig, params: Params, masks: Masks) -> Params:
    """Params with every pruned structure's weights set to zero (pure, jit-able)."""
    L, d = config.num_layers, config.hidden_size
    dtype = lambda x, m: m.astype(x.dtype)
    hid = masks["hidden"]
    heads = masks["heads"].reshape(L, -1)  # [L, H]; head n belongs to kv group n // G
    groups = group_mask(masks)  # [L, K]
    layer = masks["layers"]
    mlp = masks["mlp"]

    out = {"embed": params["embed"] * dtype(params["embed"], hid[None, :]),
           "final_norm": {"scale": params["final_norm"]["scale"] * dtype(params["final_norm"]["scale"], hid)}}
    if "lm_head" in params:
        k = params["lm_head"]["kernel"]
        out["lm_head"] = {"kernel": k * dtype(k, hid[:, None])}

    lp = params["layers"]
    attn = lp["attn"]
    residual_out = hid[None, :] * layer[:, None]  # [L, d]: what a layer may write to the residual
    m_attn = {
        "q": {"kernel": (hid[None, :, None, None] * heads[:, None, :, None])},
        "k": {"kernel": (hid[None, :, None, None] * groups[:, None, :, None])},
        "v": {"kernel": (hid[None, :, None, None] * groups[:, None, :, None])},
        "o": {"kernel": (heads[:, :, None, None] * residual_out[:, None, None, :])},
    }
    if "bias" in attn["q"]:
        for name, m in (("q", heads), ("k", groups), ("v", groups)):
            m_attn[name]["bias"] = m[:, :, None]
    if "bias" in attn["o"]:
        m_attn["o"]["bias"] = residual_out
    new_attn = {name: {leaf: attn[name][leaf] * dtype(attn[name][leaf], m)
                       for leaf, m in m_attn[name].items()} for name in m_attn}
    for name in ("q_norm", "k_norm"):  # over head_dim, which is never pruned
        if name in attn:
            new_attn[name] = attn[name]
    m_mlp = {"gate": hid[None, :, None] * mlp[:, None, :], "up": hid[None, :, None] * mlp[:, None, :],
             "down": mlp[:, :, None] * residual_out[:, None, :]}
    out["layers"] = {
        "attn": new_attn,
        "attn_norm": {"scale": lp["attn_norm"]["scale"] * dtype(lp["attn_norm"]["scale"], jnp.broadcast_to(hid, (L, d)))},
        "mlp_norm": {"scale": lp["mlp_norm"]["scale"] * dtype(lp["mlp_norm"]["scale"], jnp.broadcast_to(hid, (L, d)))},
        "mlp": {name: {"kernel": lp["mlp"][name]["kernel"] * dtype(lp["mlp"][name]["kernel"], m)}
                for name, m in m_mlp.items()},
    }
    return out


def masked_forward(config: ModelConfig, params: Params, masks: Masks, tokens, **kwargs):
    """Logits of the masked model: equal (to float rounding) to the compacted model's logits."""
    return forward(config, apply_masks(config, params, masks), tokens, hidden_mask=masks["hidden"],
                   **kwargs)
