"""Importance estimators: which heads, neurons, hidden channels and layers matter least.

All return the same tree (higher = more important):

    heads [L, K, G]   groups [L, K]   mlp [L, F]   hidden [d]   layers [L]

- "activation" (Minitron, arXiv:2407.14679): for an activation a[b, t, i], the per-example mean
  |a| over valid tokens, then the L2 norm over all calibration examples. Hidden channels: the
  attention- and MLP-norm outputs, summed over layers; neurons: the input of the down projection;
  heads: the L2 norm over head_dim of the input of the output projection (groups: the sum over
  their heads); layers: Block Influence (ShortGPT), BI = 1 - mean_t cos(layer input, layer output).
- "magnitude": the L2 norm of all weights belonging to a structure.
- "taylor": first-order Taylor, sum over a structure's weights of |w * dL/dw|, L the next-token
  cross-entropy on the calibration data, accumulated over batches.

Estimators run jitted, batch by batch over a calibration iterable of dicts with `tokens` [B, T]
and optionally `segment_ids` [B, T] (0 = padding), on the masked model when masks are given, and
are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.models import ModelConfig, as_module, forward, structure
from jaxdistill.models.transformer import Params
from jaxdistill.pruning.masks import Masks, apply_masks, full_masks

IMPORTANCE_METHODS = ("activation", "magnitude", "taylor")


def _valid(batch) -> jnp.ndarray:
    seg = batch.get("segment_ids")
    return jnp.ones(batch["tokens"].shape, jnp.float32) if seg is None else (seg != 0).astype(jnp.float32)


def _example_mean_abs(x, valid):
    """mean over valid tokens of |x| per example: [B, T, ...] -> [B, ...]."""
    w = valid.reshape(valid.shape + (1,) * (x.ndim - 2))
    return jnp.sum(jnp.abs(x.astype(jnp.float32)) * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


@partial(jax.jit, static_argnames=("config",))
def _activation_batch(config: ModelConfig, params: Params, masks: Masks, batch):
    """Per-layer sums over this batch's examples of squared per-example means, and BI sums."""
    valid = _valid(batch)

    def probe(name, value):
        if name in ("attn_norm", "mlp_norm", "mlp_act"):
            return jnp.sum(_example_mean_abs(value, valid) ** 2, axis=0)
        if name == "attn_heads":
            per_head = jnp.linalg.norm(value.astype(jnp.float32), axis=-1)  # [B, T, H]
            return jnp.sum(_example_mean_abs(per_head, valid) ** 2, axis=0)
        x_in, x_out = (v.astype(jnp.float32) for v in value)
        cos = jnp.sum(x_in * x_out, -1) / jnp.maximum(
            jnp.linalg.norm(x_in, axis=-1) * jnp.linalg.norm(x_out, axis=-1), 1e-12)
        return jnp.stack([jnp.sum(cos * valid), jnp.sum(valid)])

    model = as_module(config, apply_masks(config, params, masks))
    _, stats = model.hidden_states(batch["tokens"], batch.get("segment_ids"),
                                   hidden_mask=masks["hidden"], layer_probe=probe)
    return stats


def _structure_sums(config: ModelConfig, elem: Params) -> dict[str, jnp.ndarray]:
    """Sum an elementwise score tree over each structure's weights (`models.structure`).

    S_s = sum over leaves with an axis of structure s of the leaf summed over its other dims:
    heads [L, H] (q_heads leaves), mlp [L, F], hidden [d] (embed or norm leaves), layers [L]
    (every stacked leaf); a kv group scores its own weights (kv_heads leaves) plus its heads."""
    sums: dict[str, jnp.ndarray] = {}
    for axes, x in structure.leaves_with_axes(config, elem):
        for name, dims in structure.pruned_by(axes):
            part = x.sum(tuple(d for d in range(x.ndim) if d not in dims))
            sums[name] = part if name not in sums else sums[name] + part
    heads = sums["heads"].reshape(config.num_layers, config.num_kv_heads, -1)
    return {"heads": heads, "groups": heads.sum(-1) + sums["groups"], "mlp": sums["mlp"],
            "hidden": sums["hidden"], "layers": sums["layers"]}


@partial(jax.jit, static_argnames=("config",))
def _taylor_batch(config: ModelConfig, params: Params, masks: Masks, batch):
    """|w * dL/dw| elementwise for this batch's next-token cross-entropy on the masked model."""
    tokens = batch["tokens"]
    valid = _valid(batch)
    seg = batch.get("segment_ids")
    same = valid[:, 1:] if seg is None else valid[:, 1:] * (seg[:, 1:] == seg[:, :-1])

    def loss(p):
        logits = forward(config, apply_masks(config, p, masks), tokens, segment_ids=seg,
                         hidden_mask=masks["hidden"])
        return losses.cross_entropy(logits[:, :-1], tokens[:, 1:], same)

    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda w, g: jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32)), params, grads)


def importance(config: ModelConfig, params: Params, batches: Iterable[dict] | None = None, *,
               method: str = "activation", masks: Masks | None = None) -> dict[str, jnp.ndarray]:
    """Importance scores of every prunable structure (see the module docstring)."""
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"unknown importance method {method!r}; valid: {', '.join(IMPORTANCE_METHODS)}")
    masks = full_masks(config) if masks is None else masks
    if method == "magnitude":
        squares = jax.tree.map(lambda w: jnp.square(w.astype(jnp.float32)), apply_masks(config, params, masks))
        return jax.tree.map(jnp.sqrt, _structure_sums(config, squares))
    if batches is None:
        raise ValueError(f"importance method {method!r} needs calibration batches")
    total = None
    step = _activation_batch if method == "activation" else _taylor_batch
    for batch in batches:
        out = step(config, params, masks, dict(batch))
        total = out if total is None else jax.tree.map(jnp.add, total, out)
    if total is None:
        raise ValueError("the calibration iterable yielded no batches")
    if method == "taylor":
        return _structure_sums(config, total)
    L, K = config.num_layers, config.num_kv_heads
    heads = jnp.sqrt(total["attn_heads"]).reshape(L, K, -1)
    return {"heads": heads, "groups": heads.sum(-1), "mlp": jnp.sqrt(total["mlp_act"]),
            "hidden": jnp.sqrt(total["attn_norm"]).sum(0) + jnp.sqrt(total["mlp_norm"]).sum(0),
            "layers": 1.0 - total["block_io"][:, 0] / jnp.maximum(total["block_io"][:, 1], 1.0)}
