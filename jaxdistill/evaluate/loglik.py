"""Log-likelihoods of continuations after a context, with the context computed once.

A `Request` is a context and one or more continuations (token ids). For each continuation c of
length n after context x, `score` returns

    log p(c | x) = sum_{t < n} log softmax(z_t)[c_t],   z_0 from the context's last position,
                                                         z_t (t > 0) from c_{t-1}
    greedy       = every c_t is the argmax of z_t (lm-evaluation-harness's `is_greedy`)

One jitted program per (batch rows, context bucket, continuation bucket, choices): the contexts
of a batch are left-padded (to a power of two up to 16, then a multiple of 16; continuations: 8) and prefilled once
into a KV cache (logits of the last position only); then the continuations of every choice of every
row run as one cached decode over that prefix ([rows x choices, C], the cache repeated per choice),
so a prompt is never recomputed per choice and no [B, T, V] logits of the context exist. Requests are sorted by length so batches pad little, and come back in order.
Contexts longer than `max_length` minus the continuation lose tokens from the left.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdistill.models import ModelConfig, as_module
from jaxdistill.models.sharding import activation_sharding
from jaxdistill.models.transformer import Params


class EvaluationError(ValueError):
    """Evaluation inputs that cannot be scored (empty requests, a vocabulary mismatch, a bad suite)."""


@dataclasses.dataclass(frozen=True)
class Request:
    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if not self.context or not self.continuations or any(not c for c in self.continuations):
            raise EvaluationError(f"a request needs a non-empty context and non-empty continuations, got "
                                  f"{len(self.context)} context tokens and continuation lengths "
                                  f"{[len(c) for c in self.continuations]}")


@dataclasses.dataclass(frozen=True)
class Scores:
    logprobs: np.ndarray   # [n_continuations] float64: log p(continuation | context)
    greedy: np.ndarray     # [n_continuations] bool
    lengths: np.ndarray    # [n_continuations] int: tokens per continuation


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("config",))
def _score_batch(config: ModelConfig, params: Params, context, context_valid, choices, choice_valid):
    """context [B, P] (left-padded), choices [B, J, C] (right-padded) -> (logprob, greedy) [B, J]."""
    model = as_module(config, params)
    B, P = context.shape
    J, C = choices.shape[1:]
    shape = (config.num_layers, B, P + C, config.num_kv_heads, config.head_dim)
    cache = {"k": jnp.zeros(shape, config.jnp_compute_dtype), "v": jnp.zeros(shape, config.jnp_compute_dtype)}
    kv_valid = jnp.concatenate([context_valid, jnp.zeros((B, C), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(context_valid, axis=1) - 1, 0).astype(jnp.int32)
    last, cache = model.decode(context, positions, cache, 0, kv_valid, last_only=True)  # [B, 1, V]
    # Every choice of every row in one decode over the prefix, repeated per choice: [B * J, C].
    per_choice = lambda x, axis: jnp.repeat(x, J, axis=axis)
    cache = {k: per_choice(v, 1) for k, v in cache.items()}
    tokens, valid = choices.reshape(B * J, C), choice_valid.reshape(B * J, C)
    kv_valid = per_choice(kv_valid, 0).at[:, P:].set(valid)
    continuation_positions = per_choice(positions[:, -1:], 0) + 1 + jnp.arange(C, dtype=jnp.int32)
    logits, _ = model.decode(tokens, continuation_positions, cache, P, kv_valid)
    predicting = jnp.concatenate([per_choice(last, 0), logits[:, :-1]], axis=1)  # z_t predicts tokens[:, t]
    log_p = jax.nn.log_softmax(predicting, axis=-1)
    token_log_p = jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(predicting, axis=-1) == tokens
    log_p = jnp.sum(jnp.where(valid, token_log_p, 0.0), -1)
    return log_p.reshape(B, J), jnp.all(greedy | ~valid, -1).reshape(B, J)


def _bucket(n: int, multiple: int) -> int:
    """Powers of two up to `multiple`, then multiples of it: few shapes, little padding."""
    return 1 << max(n - 1, 0).bit_length() if n <= multiple else _round_up(n, multiple)


def _batch_arrays(requests: Sequence[Request], rows: int, choices: int, max_length: int, pad_id: int):
    """Padded numpy arrays for one batch (missing rows are a one-token dummy context, no choices)."""
    C = _bucket(max(len(c) for r in requests for c in r.continuations), 8)
    contexts = [r.context[-max(max_length - C, 1):] for r in requests]
    P = _bucket(max(len(c) for c in contexts), 16)
    context = np.full((rows, P), pad_id, np.int32)
    context_valid = np.zeros((rows, P), bool)
    context_valid[len(requests):, -1] = True
    cont = np.full((rows, choices, C), pad_id, np.int32)
    cont_valid = np.zeros((rows, choices, C), bool)
    for i, (r, ctx) in enumerate(zip(requests, contexts)):
        context[i, P - len(ctx):], context_valid[i, P - len(ctx):] = ctx, True
        for j, c in enumerate(r.continuations):
            cont[i, j, :len(c)], cont_valid[i, j, :len(c)] = c, True
    return context, context_valid, cont, cont_valid


def score(config: ModelConfig, params: Params, requests: Sequence[Request], *, batch_size: int = 8,
          max_length: int = 2048, pad_id: int = 0, progress: str | None = None, mesh=None) -> list[Scores]:
    """`Scores` for every request, in order (see the module docstring). With `mesh`, each batch is
    sharded over the mesh's batch axes (data, fsdp; `batch_size` rounded up to a multiple of them)
    and the step runs SPMD with the parameters where they are."""
    requests = list(requests)
    if not requests:
        return []
    top = max(t for r in requests for t in (*r.context, *(x for c in r.continuations for x in c)))
    if top >= config.vocab_size:
        raise EvaluationError(f"token id {top} is outside the model's vocabulary ({config.vocab_size}): the "
                              "tokenizer does not belong to this model")
    choices = max(len(r.continuations) for r in requests)
    if mesh is not None:
        shards = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
        batch_size = _round_up(batch_size, shards)
    place = (lambda x: jnp.asarray(x)) if mesh is None else (
        lambda x: jax.device_put(x, activation_sharding(mesh, x.ndim)))
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context))
    out: list[Scores | None] = [None] * len(requests)
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None, leave=False):
        idx = order[start:start + batch_size]
        arrays = _batch_arrays([requests[i] for i in idx], batch_size, choices, max_length, pad_id)
        log_p, greedy = jax.device_get(_score_batch(config, params, *map(place, arrays)))
        for row, i in enumerate(idx):
            n = len(requests[i].continuations)
            out[i] = Scores(log_p[row, :n].astype(np.float64), greedy[row, :n],
                            np.array([len(c) for c in requests[i].continuations]))
    return out
