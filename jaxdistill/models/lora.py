"""LoRA adapters on the stacked projection kernels.

For a projection kernel W [L, *in, *out] the adapter is A [L, n_in, r], B [L, r, n_out]
(n_in, n_out the flattened input/output sizes; which kernel dims are inputs comes from their
logical axes, `structure.input_dims`) and the adapted kernel is

    W' = W + (alpha / r) * (A @ B).reshape(W.shape)

A starts normal(0, 1/sqrt(n_in)), B at zero, so training starts from the base model. `merge`
folds the adapters into the kernels (for the forward pass inside a step, and for export).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdistill.models import structure
from jaxdistill.models.config import ModelConfig
from jaxdistill.models.transformer import Params

# PEFT's "target modules": every per-layer projection (`structure.projections`) by name.
MODULES = ("q", "k", "v", "o", "gate", "up", "down")


def _adapter_shape(config: ModelConfig, name: str) -> tuple[int, int, int]:
    """(L, n_in, n_out) of projection `name`'s kernel [L, *in, *out]."""
    axes = structure.leaf_axes(config)[structure.projections(config)[name]]
    sizes = [structure.axis_size(config, a) for a in axes]
    n_in_dims = structure.input_dims(axes)
    return sizes[0], math.prod(sizes[1:1 + n_in_dims]), math.prod(sizes[1 + n_in_dims:])


def init_lora(config: ModelConfig, key, *, rank: int, modules=("q", "k", "v", "o"),
              dtype=jnp.float32) -> Params:
    """Adapters {name: {"a": [L, n_in, r], "b": [L, r, n_out]}} for each adapted module."""
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        raise ValueError(f"unknown LoRA module(s) {unknown}; valid: {', '.join(MODULES)}")
    if rank < 1:
        raise ValueError(f"LoRA rank={rank}: must be >= 1")
    adapters = {}
    for name, k in zip(modules, jax.random.split(key, len(modules))):
        layers, n_in, n_out = _adapter_shape(config, name)
        adapters[name] = {"a": (jax.random.normal(k, (layers, n_in, rank)) / math.sqrt(n_in)).astype(dtype),
                          "b": jnp.zeros((layers, rank, n_out), dtype)}
    return adapters


def _replace(tree: Params, path: tuple[str, ...], value) -> Params:
    """A copy of `tree` with the leaf at `path` replaced (the dicts along the path are new)."""
    if not path:
        return value
    return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def merge(config: ModelConfig, params: Params, adapters: Params, *, alpha: float) -> Params:
    """params with every adapted kernel replaced by W + (alpha / r) A B (pure, jit-able)."""
    paths = structure.projections(config)
    for name, ab in adapters.items():
        kernel = params
        for key in paths[name]:
            kernel = kernel[key]
        rank = ab["a"].shape[-1]
        delta = jnp.einsum("lir,lro->lio", ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
        merged = kernel.astype(jnp.float32) + (alpha / rank) * delta.reshape(kernel.shape)
        params = _replace(params, paths[name], merged.astype(kernel.dtype))
    return params
