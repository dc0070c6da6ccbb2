"""LoRA adapters on the stacked projection kernels.

For a projection kernel W [L, *in, *out] the adapter is A [L, n_in, r], B [L, r, n_out]
(n_in, n_out the flattened input/output sizes) and the adapted kernel is

    W' = W + (alpha / r) * (A @ B).reshape(W.shape)

A starts normal(0, 1/sqrt(n_in)), B at zero, so training starts from the base model. `merge`
folds the adapters into the kernels (for the forward pass inside a step, and for export).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdistill.models.config import ModelConfig
from jaxdistill.models.transformer import Params, abstract_params

# adapter name -> (path of the projection in params["layers"], number of input dims of its kernel)
TARGETS = {"q": (("attn", "q"), 1), "k": (("attn", "k"), 1), "v": (("attn", "v"), 1),
           "o": (("attn", "o"), 2), "gate": (("mlp", "gate"), 1), "up": (("mlp", "up"), 1),
           "down": (("mlp", "down"), 1)}


def _kernel_shape(config: ModelConfig, name: str) -> tuple[int, ...]:
    (block, proj), _ = TARGETS[name]
    return abstract_params(config)["layers"][block][proj]["kernel"].shape


def init_lora(config: ModelConfig, key, *, rank: int, targets=("q", "k", "v", "o"),
              dtype=jnp.float32) -> Params:
    """Adapters {name: {"a": [L, n_in, r], "b": [L, r, n_out]}} for each target projection."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; valid: {', '.join(TARGETS)}")
    if rank < 1:
        raise ValueError(f"LoRA rank={rank}: must be >= 1")
    adapters = {}
    for name, k in zip(targets, jax.random.split(key, len(targets))):
        shape = _kernel_shape(config, name)
        n_in_dims = TARGETS[name][1]
        n_in, n_out = math.prod(shape[1:1 + n_in_dims]), math.prod(shape[1 + n_in_dims:])
        adapters[name] = {"a": (jax.random.normal(k, (shape[0], n_in, rank)) / math.sqrt(n_in)).astype(dtype),
                          "b": jnp.zeros((shape[0], rank, n_out), dtype)}
    return adapters


def merge(config: ModelConfig, params: Params, adapters: Params, *, alpha: float) -> Params:
    """params with every adapted kernel replaced by W + (alpha / r) A B (pure, jit-able)."""
    layers = jax.tree.map(lambda x: x, params["layers"])  # shallow structural copy
    for name, ab in adapters.items():
        (block, proj), _ = TARGETS[name]
        kernel = layers[block][proj]["kernel"]
        rank = ab["a"].shape[-1]
        delta = jnp.einsum("lir,lro->lio", ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
        layers[block][proj] = {**layers[block][proj],
                               "kernel": (kernel.astype(jnp.float32) + (alpha / rank) * delta.reshape(kernel.shape)
                                          ).astype(kernel.dtype)}
    return {**params, "layers": layers}
