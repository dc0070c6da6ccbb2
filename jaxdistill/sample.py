"""Jitted KV-cache sampling for any model of the family: a pure sampler (token ids in, token ids
out; no files, no data formats — `data.traces.generate_traces` turns it into a trace writer).

`generate` left-pads a batch of prompts of different lengths, fills the cache with one prefill
pass, then samples `max_new_tokens` tokens in a `lax.scan` (one compiled program: no recompilation
per step or per batch of the same shape). Sampling: greedy (temperature 0) or temperature with
optional top-k and top-p (nucleus) filtering, deterministic under a seed; rows stop at any of
`stop_tokens` (the stop token is kept, then `pad_id`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.models import ModelConfig, as_module
from jaxdistill.models.transformer import Params


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0   # 0: greedy
    top_k: int = 0             # 0: off
    top_p: float = 1.0         # 1: off
    stop_tokens: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"temperature={self.temperature} (>= 0), top_p={self.top_p} (in (0, 1]), "
                             f"top_k={self.top_k} (>= 0): out of range")


def sample_logits(key, logits, temperature: float, top_k: int, top_p: float):
    """Token ids [B] from logits [B, V]."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "settings", "pad_id"))
def _generate(config: ModelConfig, params: Params, prompts, prompt_valid, row_ids, settings: SamplingSettings,
              pad_id: int):
    model = as_module(config, params)
    B, P = prompts.shape
    N = settings.max_new_tokens
    S = P + N
    shape = (config.num_layers, B, S, config.num_kv_heads, config.head_dim)
    cache = {"k": jnp.zeros(shape, config.jnp_compute_dtype), "v": jnp.zeros(shape, config.jnp_compute_dtype)}
    kv_valid = jnp.concatenate([prompt_valid, jnp.zeros((B, N), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(prompt_valid, axis=1) - 1, 0).astype(jnp.int32)
    logits, cache = model.decode(prompts, positions, cache, 0, kv_valid)
    stops = jnp.asarray(settings.stop_tokens or (-1,), jnp.int32)
    # One key per (row id, step): a prompt's samples do not depend on the rest of its batch.
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(settings.seed),
                                                               row_ids.astype(jnp.uint32))

    def step(carry, i):
        last_logits, cache, kv_valid, position, done = carry
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, i)
        token = jax.vmap(lambda k, z: sample_logits(k, z[None], settings.temperature, settings.top_k,
                                                    settings.top_p)[0])(keys, last_logits)
        token = jnp.where(done, pad_id, token)
        kv_valid = kv_valid.at[:, P + i].set(~done)
        logits, cache = model.decode(token[:, None], position[:, None], cache, P + i, kv_valid)
        done = done | jnp.isin(token, stops)
        return (logits[:, 0], cache, kv_valid, position + 1, done), (token, done)

    init = (logits[:, -1], cache, kv_valid, positions[:, -1] + 1, jnp.zeros((B,), bool))
    _, (tokens, done) = jax.lax.scan(step, init, jnp.arange(N))
    tokens, done = tokens.T, done.T  # [B, N]
    lengths = jnp.where(done.any(1), jnp.argmax(done, axis=1) + 1, N)
    return tokens, lengths


def generate(config: ModelConfig, params: Params, prompts: Sequence[Sequence[int]],
             settings: SamplingSettings = SamplingSettings(), *, pad_id: int = 0,
             pad_to_multiple: int = 64, row_ids: Sequence[int] | None = None) -> list[list[int]]:
    """Sampled continuations (token ids, cut after a stop token) for prompts of any lengths.
    Prompt batches are left-padded to a multiple of `pad_to_multiple` so similar batches share
    one compiled program. `row_ids` (default 0..B-1, e.g. example ids) seed each row's sampling,
    so a prompt's continuation is the same in any batch."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if settings.top_k > config.vocab_size:
        raise ValueError(f"top_k={settings.top_k} exceeds the vocabulary ({config.vocab_size})")
    row_ids = np.arange(len(prompts)) if row_ids is None else np.asarray(row_ids)
    longest = max(len(p) for p in prompts)
    P = -(-longest // pad_to_multiple) * pad_to_multiple
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    valid = np.zeros((len(prompts), P), bool)
    for r, p in enumerate(prompts):
        tokens[r, P - len(p):] = p
        valid[r, P - len(p):] = True
    out, lengths = jax.device_get(_generate(config, params, jnp.asarray(tokens), jnp.asarray(valid),
                                            jnp.asarray(row_ids), settings, pad_id))
    return [row[:n].tolist() for row, n in zip(out, lengths)]

