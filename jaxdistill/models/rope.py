"""Rotary position embeddings (rotate-half, as transformers; default, linear and llama3 scaling) and
the positions of packed rows (restarting at each segment)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.models.config import ModelConfig


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [D/2] in float32, with llama3 or linear scaling applied (as transformers)."""
    D = config.head_dim
    inv_freq = (1.0 / (np.float32(config.rope_theta) **
                       (np.arange(0, D, 2, dtype=np.float32) / np.float32(D)))).astype(np.float32)
    rope = config.rope_params
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / np.float32(rope["factor"])
    elif rope_type == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope.get("original_max_position_embeddings", config.max_position_embeddings)
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(config: ModelConfig, positions):
    """cos, sin [B, T, D] (fp32) for integer positions [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(config))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE on x [B, T, N, D], computed in fp32."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def segment_positions(segment_ids, length: int):
    """Positions that restart at 0 wherever the segment id changes: [B, T] int32."""
    idx = jnp.arange(length, dtype=jnp.int32)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - start_idx
