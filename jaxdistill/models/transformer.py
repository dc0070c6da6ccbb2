"""The decoder-only transformer shared by the Llama, Mistral, Qwen2 and Qwen3 families.

Flax NNX modules define the parameters (each carrying its logical axis names as `logical_axes`
metadata) and the math. Training code never holds a module: it holds `params`, a plain nested dict
of arrays (`init_params`, `load_pretrained`), and calls the pure function `forward`, which merges
them into the module graph inside the trace. Per-layer parameters are stacked on a leading
`layers` axis and the layer body runs under `jax.lax.scan`, so compile time does not grow with depth.
(The whole model reads top to bottom in one file, as in jax-llm-examples; RoPE and packed positions are
in `rope.py`.)

Per layer (pre-norm residual, SwiGLU MLP):

    h = x + Attention(RMSNorm(x))        Attention: GQA, RoPE, optional q/k/v/o bias, q/k RMSNorm
    y = h + W_down(silu(W_gate n) * W_up n),  n = RMSNorm(h)

Parameter layout (L layers, d hidden, H query heads, K kv heads, D head dim, F mlp, V vocab):

    embed                   [V, d]          ("vocab", "embed")
    layers.attn_norm.scale  [L, d]          ("layers", "norm")
    layers.attn.q.kernel    [L, d, H, D]    ("layers", "embed", "q_heads", "head_dim")   (+ bias [L, H, D])
    layers.attn.k.kernel    [L, d, K, D]    ("layers", "embed", "kv_heads", "head_dim")  (+ bias [L, K, D])
    layers.attn.v.kernel    [L, d, K, D]    same as k
    layers.attn.o.kernel    [L, H, D, d]    ("layers", "q_heads", "head_dim", "embed")   (+ bias [L, d])
    layers.attn.q_norm.scale, k_norm.scale  [L, D] (Qwen3)
    layers.mlp_norm.scale   [L, d]
    layers.mlp.gate.kernel, up.kernel [L, d, F] ("layers", "embed", "mlp");  down.kernel [L, F, d]
    final_norm.scale        [d]
    lm_head.kernel          [d, V]          ("embed", "vocab")   (absent with tied embeddings)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.attention import causal_attention
from jaxdistill.models.config import ModelConfig, remat_for
from jaxdistill.models.rope import apply_rope, rope_tables, segment_positions
from jaxdistill.models.sharding import activation_sharding, tree_shardings

Params = dict[str, Any]

_INIT_STD = 0.02  # transformers' default initializer_range


def _ignore(name, value):
    """The default activation observer: does nothing (and costs nothing in the trace)."""


# ----------------------------------------------------------------------------------- modules


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, normalised in fp32 then cast back (as transformers).

    With a channel mask [dim] (pruned hidden channels, which must hold zeros), the mean runs over
    the surviving channels only: sum(x^2) / sum(mask), exactly what the compacted model computes."""

    def __init__(self, dim: int, eps: float, *, axis: str, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=(axis,))
        self.eps = eps

    def __call__(self, x, channel_mask=None):
        x32 = x.astype(jnp.float32)
        if channel_mask is None:
            mean_sq = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        else:
            mean_sq = jnp.sum(x32 * x32, axis=-1, keepdims=True) / jnp.maximum(jnp.sum(channel_mask), 1)
        normed = x32 * jax.lax.rsqrt(mean_sq + self.eps)
        return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Projection(nnx.Module):
    """A dense map contracting the last len(in_shape) input dims: y = x . kernel (+ bias)."""

    def __init__(self, in_shape, out_shape, in_axes, out_axes, *, bias: bool, rngs: nnx.Rngs,
                 param_dtype):
        shape = (*in_shape, *out_shape)
        kernel = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
        self.kernel = nnx.Param(kernel.astype(param_dtype), logical_axes=(*in_axes, *out_axes))
        self.bias = nnx.Param(jnp.zeros(out_shape, param_dtype), logical_axes=tuple(out_axes)) if bias else None
        self.n_in = len(in_shape)

    def __call__(self, x):
        # One 2-D GEMM [tokens, in] @ [in, out]: the weight gradient then contracts one axis (no transposed copies)
        kernel = self.kernel[...].astype(x.dtype)
        lead, in_shape, out_shape = x.shape[:x.ndim - self.n_in], kernel.shape[:self.n_in], kernel.shape[self.n_in:]
        y = jnp.dot(x.reshape(math.prod(lead), math.prod(in_shape)),
                    kernel.reshape(math.prod(in_shape), math.prod(out_shape))).reshape(*lead, *out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class Attention(nnx.Module):
    """Grouped-query causal self-attention with RoPE: by default in causal query blocks
    (`attention.causal_attention`); `attention_impl` "xla" or "cudnn" (and decoding with a cache) go
    through `jax.nn.dot_product_attention`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c, pd = config, config.jnp_param_dtype
        d, H, K, D = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        self.q = Projection((d,), (H, D), ("embed",), ("q_heads", "head_dim"), bias=c.qkv_bias,
                            rngs=rngs, param_dtype=pd)
        self.k = Projection((d,), (K, D), ("embed",), ("kv_heads", "head_dim"), bias=c.qkv_bias,
                            rngs=rngs, param_dtype=pd)
        self.v = Projection((d,), (K, D), ("embed",), ("kv_heads", "head_dim"), bias=c.qkv_bias,
                            rngs=rngs, param_dtype=pd)
        self.o = Projection((H, D), (d,), ("q_heads", "head_dim"), ("embed",), bias=c.o_bias,
                            rngs=rngs, param_dtype=pd)
        if c.qk_norm:
            self.q_norm = RMSNorm(D, c.rms_norm_eps, axis="head_dim", param_dtype=pd)
            self.k_norm = RMSNorm(D, c.rms_norm_eps, axis="head_dim", param_dtype=pd)
        else:
            self.q_norm = self.k_norm = None
        self.sliding_window = c.sliding_window
        self.implementation = c.attention_impl

    def __call__(self, x, cos, sin, mask, observe=_ignore, cache=None):
        """x [B, T, d]; cos, sin [B, T, D]; mask [B, 1, T, T] | None.

        cache (decoding): (k [B, S, K, D], v [B, S, K, D], index, kv_valid [B, S]); the new keys and
        values are written at [index, index + T), the queries attend to every valid cache slot up to
        their own, and (out, (k, v)) is returned."""
        q, k, v = self.q(x), self.k(x), self.v(x)  # [B, T, H|K, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None and self.implementation is None:  # causal query blocks (`attention.py`)
            out = causal_attention(q, k, v, mask=mask, sliding_window=self.sliding_window)
        elif cache is None:
            window = None if self.sliding_window is None else (self.sliding_window - 1, 0)
            out = jax.nn.dot_product_attention(
                q, k, v, mask=mask, is_causal=True, local_window_size=window,
                implementation=self.implementation)
        else:
            cache_k, cache_v, index, kv_valid = cache
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
            q_idx = index + jnp.arange(x.shape[1])[:, None]
            k_idx = jnp.arange(k.shape[1])[None, :]
            allowed = k_idx <= q_idx
            if self.sliding_window is not None:
                allowed &= q_idx - k_idx < self.sliding_window
            mask = allowed[None, None] & kv_valid[:, None, None, :]
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
        observe("attn_heads", out)  # [B, T, H, D]: the input of the output projection
        return self.o(out) if cache is None else (self.o(out), (k, v))


class MLP(nnx.Module):
    """SwiGLU: W_down(silu(W_gate x) * W_up x)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, F, pd = config.hidden_size, config.intermediate_size, config.jnp_param_dtype
        self.gate = Projection((d,), (F,), ("embed",), ("mlp",), bias=False, rngs=rngs, param_dtype=pd)
        self.up = Projection((d,), (F,), ("embed",), ("mlp",), bias=False, rngs=rngs, param_dtype=pd)
        self.down = Projection((F,), (d,), ("mlp",), ("embed",), bias=False, rngs=rngs, param_dtype=pd)

    def __call__(self, x, observe=_ignore):
        act = jax.nn.silu(self.gate(x)) * self.up(x)
        observe("mlp_act", act)  # [B, T, F]: the input of the down projection
        return self.down(act)


class Block(nnx.Module):
    """One pre-norm decoder layer."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, eps, pd = config.hidden_size, config.rms_norm_eps, config.jnp_param_dtype
        self.attn_norm = RMSNorm(d, eps, axis="norm", param_dtype=pd)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(d, eps, axis="norm", param_dtype=pd)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, mask, hidden_mask=None, observe=_ignore, cache=None):
        normed = self.attn_norm(x, hidden_mask)
        observe("attn_norm", normed)
        attn = self.attn(normed, cos, sin, mask, observe, cache)
        attn, new_cache = attn if cache is not None else (attn, None)
        h = x + attn
        normed = self.mlp_norm(h, hidden_mask)
        observe("mlp_norm", normed)
        out = h + self.mlp(normed, observe)
        observe("block_io", (x, out))
        return out if cache is None else (out, new_cache)


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nnx.Module):
    """Embedding, L scanned blocks (parameters stacked on a leading axis), final norm, LM head."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c, pd = config, config.jnp_param_dtype
        self.config = config
        embed = _INIT_STD * jax.random.normal(rngs.params(), (c.vocab_size, c.hidden_size), jnp.float32)
        self.embed = nnx.Param(embed.astype(pd), logical_axes=("vocab", "embed"))
        block_def = nnx.graphdef(nnx.eval_shape(lambda: Block(c, rngs=nnx.Rngs(0))))

        def init_block(key):
            return nnx.state(Block(c, rngs=nnx.Rngs(key)))

        stacked = jax.vmap(init_block)(jax.random.split(rngs.params(), c.num_layers))
        self.layers = nnx.merge(block_def, stacked)
        self.final_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, axis="norm", param_dtype=pd)
        self.lm_head = None if c.tie_word_embeddings else Projection(
            (c.hidden_size,), (c.vocab_size,), ("embed",), ("vocab",), bias=False, rngs=rngs,
            param_dtype=pd)

    def hidden_states(self, tokens, segment_ids=None, positions=None, mesh=None, hidden_mask=None,
                      layer_probe=None):
        """Final-normed hidden states [B, T, d] in the compute dtype.

        hidden_mask [d]: surviving hidden channels of a masked (pruned) model; norms average over them.
        layer_probe(name, value) -> summary: called inside each layer on named activations
        (attn_norm, attn_heads, mlp_norm, mlp_act, block_io); with it, returns (hidden, summaries
        stacked over layers) — activation statistics without materialising [L, B, T, ...].
        """
        c = self.config
        if positions is None:
            positions = segment_positions(segment_ids, tokens.shape[1]) if segment_ids is not None \
                else jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        cos, sin = rope_tables(c, positions)
        mask = None if segment_ids is None else (
            segment_ids[:, None, :, None] == segment_ids[:, None, None, :])  # [B, 1, T, T]
        x = jnp.take(self.embed[...], tokens, axis=0).astype(c.jnp_compute_dtype)
        x = _constrain_batch(x, mesh)
        block_def, block_state = nnx.split(self.layers)

        def body(h, layer_state):
            summaries = {}
            observe = _ignore if layer_probe is None else (
                lambda name, value: summaries.__setitem__(name, layer_probe(name, value)))
            h = nnx.merge(block_def, layer_state)(h, cos, sin, mask, hidden_mask, observe)
            return _constrain_batch(h, mesh), summaries

        policy = remat_for(c, tokens.size, tokens.shape[-1])
        if policy != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[policy], prevent_cse=False)
        x, summaries = jax.lax.scan(body, x, block_state)
        out = self.final_norm(x, hidden_mask)
        return out if layer_probe is None else (out, summaries)

    def decode(self, tokens, positions, cache, index, kv_valid, last_only: bool = False):
        """One cached step over tokens [B, T] at RoPE `positions` [B, T], written to cache slots
        [index, index + T): returns (fp32 logits [B, T, V], new cache). cache = {"k", "v"}, each
        [L, B, S, K, D]; kv_valid [B, S] marks the slots holding real tokens. `last_only`: logits of
        the last position only ([B, 1, V]; a prefill needs no more, and the head costs 2 d V per position)."""
        c = self.config
        cos, sin = rope_tables(c, positions)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(c.jnp_compute_dtype)
        block_def, block_state = nnx.split(self.layers)

        def body(h, layer):
            layer_state, k, v = layer
            h, (k, v) = nnx.merge(block_def, layer_state)(h, cos, sin, None, cache=(k, v, index, kv_valid))
            return h, (k, v)

        x, (k, v) = jax.lax.scan(body, x, (block_state, cache["k"], cache["v"]))
        return self.logits(self.final_norm(x[:, -1:] if last_only else x)), {"k": k, "v": v}

    def head_kernel(self):
        """LM-head weight [d, V] in the stored dtype (the embedding, transposed, when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head.kernel[...]

    def logits(self, h):
        """fp32 logits [B, T, V] from final-normed hidden states [B, T, d]."""
        return jnp.einsum("btd,dv->btv", h, self.head_kernel().astype(h.dtype),
                          preferred_element_type=jnp.float32)

    def __call__(self, tokens, segment_ids=None, positions=None, mesh=None, hidden_mask=None):
        return self.logits(self.hidden_states(tokens, segment_ids, positions, mesh, hidden_mask))


def _constrain_batch(x, mesh):
    """Pin activations [B, ...] to batch sharding over (data, fsdp) when a mesh is given."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, activation_sharding(mesh, x.ndim))


# --------------------------------------------------------------------------- pure interface


@functools.lru_cache(maxsize=64)
def _abstract_model(config: ModelConfig):
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def graphdef(config: ModelConfig):
    """The module graph for `config` (cached), to merge with a params dict."""
    return _abstract_model(config)[0]


def abstract_params(config: ModelConfig) -> Params:
    """The params tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
    return nnx.to_pure_dict(_abstract_model(config)[1])


def logical_axes(config: ModelConfig) -> Params:
    """The params tree with each leaf replaced by its tuple of logical axis names."""
    axes = nnx.to_pure_dict(_abstract_model(config)[1],
                            extract_fn=lambda var: var.get_metadata()["logical_axes"])
    axes["layers"] = jax.tree.map(lambda names: ("layers", *names), axes["layers"],
                                  is_leaf=lambda x: isinstance(x, tuple))
    return axes


def init_params(config: ModelConfig, key: jax.Array, *, mesh=None) -> Params:
    """Random parameters (normal(0, 0.02) kernels, unit norms, zero biases) as a plain dict.

    Runs under jit; with `mesh`, each device materialises only its own shard (sharding rules)."""
    def init(k):
        return nnx.to_pure_dict(nnx.state(Transformer(config, rngs=nnx.Rngs(k))))

    out_shardings = None
    if mesh is not None:
        out_shardings = tree_shardings(logical_axes(config), abstract_params(config), mesh)
    return jax.jit(init, out_shardings=out_shardings)(key)


def as_module(config: ModelConfig, params: Params) -> Transformer:
    """The NNX module view of a params dict (shares the arrays)."""
    return nnx.merge(graphdef(config), params)


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def forward(config: ModelConfig, params: Params, tokens, *, segment_ids=None, positions=None,
            mesh=None, hidden_mask=None):
    """Logits [B, T, V] in fp32 for tokens [B, T].

    segment_ids [B, T] (int): tokens attend only within their own segment, and positions restart
    at 0 at each segment start (packing). Padding is a segment of its own (e.g. id 0).
    positions [B, T] (int): explicit RoPE positions; overrides the per-segment default.
    mesh: when given, activations are constrained to batch sharding over (data, fsdp).
    hidden_mask [d]: for params masked by `jaxdistill.pruning.apply_masks` with pruned hidden
    channels; RMSNorm then averages over the surviving channels, as the compacted model does.
    """
    return as_module(config, params)(tokens, segment_ids, positions, mesh, hidden_mask)


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def hidden_states(config: ModelConfig, params: Params, tokens, *, segment_ids=None, positions=None,
                  mesh=None, hidden_mask=None):
    """Final-normed hidden states [B, T, d] (compute dtype): the input of a fused head + loss."""
    return as_module(config, params).hidden_states(tokens, segment_ids, positions, mesh, hidden_mask)
