"""The structural table: what each logical axis of the parameter tree is, and what prunes it.

Every parameter leaf carries its logical axis names (`logical_axes`, e.g. layers.attn.q.kernel ->
("layers", "embed", "q_heads", "head_dim")). `AXES` maps each name to the prunable structure that
indexes it and to the `ModelConfig` field giving its length (L layers, d hidden, H query heads,
K kv heads in groups of G = H / K, D head dim, F mlp, V vocab):

    axis       structure  its keep mask                     length
    embed      hidden     hidden [d]                        d  hidden_size
    norm       hidden     hidden [d]                        d  hidden_size
    q_heads    heads      heads [L, K, G], seen as [L, H]   H  num_heads
    kv_heads   groups     [L, K] = max over G of heads      K  num_kv_heads
    mlp        mlp        mlp [L, F]                        F  intermediate_size
    layers     layers     layers [L]                        L  num_layers
    head_dim   -          never pruned                      D  head_dim
    vocab      -          never pruned                      V  vocab_size

heads, groups and mlp are chosen in each layer: their masks are [L, n], indexing a leaf's
(layers, axis) dims; hidden and layers masks index the one axis. Pruning masks, compaction,
importance sums and parameter counts (`jaxdistill.pruning`), the Hugging Face kernel layout
(`models.hf`), LoRA adapter shapes (`models.lora`) and the weight-decay mask (`decay_mask`) all
iterate over the leaves with this table; none spells the tree by hand.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from jaxdistill.models.config import ModelConfig
from jaxdistill.models.transformer import Params, logical_axes

Axes = tuple[str, ...]
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Axis:
    """One row of the table: what prunes a logical axis and how long it is."""

    structure: str | None    # the structure whose mask prunes this axis; None: never pruned
    size: str                # the ModelConfig field giving its length
    per_layer: bool = False  # the mask is [L, n]: chosen independently in each layer


AXES: dict[str, Axis] = {
    "embed": Axis("hidden", "hidden_size"),
    "norm": Axis("hidden", "hidden_size"),
    "q_heads": Axis("heads", "num_heads", per_layer=True),
    "kv_heads": Axis("groups", "num_kv_heads", per_layer=True),
    "mlp": Axis("mlp", "intermediate_size", per_layer=True),
    "layers": Axis("layers", "num_layers"),
    "head_dim": Axis(None, "head_dim"),
    "vocab": Axis(None, "vocab_size"),
}


def axis(name: str) -> Axis:
    """The table row of logical axis `name`."""
    if name not in AXES:
        raise ValueError(f"logical axis {name!r} is not in the structure table; known axes: "
                         f"{', '.join(AXES)}")
    return AXES[name]


def axis_size(config: ModelConfig, name: str) -> int:
    """The length of logical axis `name` in `config`'s model."""
    return getattr(config, axis(name).size)


def _is_axes(x) -> bool:
    return isinstance(x, tuple)


def _path(key_path) -> Path:
    return tuple(k.key for k in key_path)


def _shape_free(config: ModelConfig) -> ModelConfig:
    """`config` with every size set to 2: the leaves (and their axes) depend only on the flags
    (qkv_bias, o_bias, qk_norm, tie_word_embeddings), never on the sizes."""
    return config.replace(**{row.size: 2 for row in AXES.values()})


@functools.lru_cache(maxsize=None)
def _leaves(shape_free: ModelConfig) -> tuple[Params, dict[Path, Axes]]:
    tree = logical_axes(shape_free)
    flat = {_path(kp): axes for kp, axes in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_axes)[0]}
    for path, axes in flat.items():
        for i, name in enumerate(axes):
            if name not in AXES:
                raise ValueError(f"parameter {'.'.join(path)} has logical axis {name!r}, which the "
                                 f"structure table does not know; known axes: {', '.join(AXES)}")
            if name == "layers" and i != 0:
                raise ValueError(f"parameter {'.'.join(path)} has axes {axes}: the layers axis must "
                                 "lead a stacked leaf")
    return tree, flat


def axes_tree(config: ModelConfig) -> Params:
    """`logical_axes(config)`, every name checked against `AXES`; cached per flag combination,
    so cheap for many sizes (do not mutate)."""
    return _leaves(_shape_free(config))[0]


def leaf_axes(config: ModelConfig) -> dict[Path, Axes]:
    """{path: logical axes} of every leaf, in tree order; cached as `axes_tree` (do not mutate)."""
    return _leaves(_shape_free(config))[1]


def leaves_with_axes(config: ModelConfig, tree: Params) -> list[tuple[Axes, Any]]:
    """[(logical axes, leaf)] for a tree laid out as `config`'s params, in tree order."""
    axes, treedef = jax.tree.flatten(axes_tree(config), is_leaf=_is_axes)
    return list(zip(axes, treedef.flatten_up_to(tree)))


def map_with_axes(fn, config: ModelConfig, tree: Params) -> Params:
    """The tree of fn(logical axes, leaf) over a tree laid out as `config`'s params."""
    return jax.tree.map(fn, axes_tree(config), tree, is_leaf=_is_axes)


def pruned_by(axes: Axes) -> list[tuple[str, tuple[int, ...]]]:
    """[(structure, the leaf dims its mask indexes)] for a leaf with these axes, in axis order
    (a per-layer mask indexes (0, i): the layers axis leads every stacked leaf).

    q kernel (layers, embed, q_heads, head_dim) -> [(layers, (0,)), (hidden, (1,)), (heads, (0, 2))]"""
    out = []
    for i, name in enumerate(axes):
        row = axis(name)
        if row.structure is not None:
            out.append((row.structure, (0, i) if row.per_layer else (i,)))
    return out


def along(values, dims: tuple[int, ...], ndim: int):
    """values [n_0, .., n_k] reshaped to broadcast against an ndim-array, indexing its dims `dims`
    (ascending): a mask [L, H] along dims (0, 2) of a [L, d, H, D] leaf becomes [L, 1, H, 1]."""
    shape = [1] * ndim
    for dim, n in zip(dims, values.shape):
        shape[dim] = n
    return values.reshape(shape)


def input_dims(axes: Axes) -> int:
    """How many leading non-layer axes of a kernel are its inputs (contracted with activations).

    A kernel whose last axis is `embed` writes the residual stream from all its other axes
    (o: (q_heads, head_dim) -> embed, 2; down: mlp -> embed, 1); any other reads its first axis
    (q: embed -> (q_heads, head_dim); lm_head: embed -> vocab): 1."""
    rest = [name for name in axes if name != "layers"]
    return len(rest) - 1 if rest[-1] == "embed" else 1


def is_matrix(axes: Axes) -> bool:
    """Whether a leaf maps the residual stream (embed) to or from another space: the embedding and
    every projection kernel; norms and biases (o bias: (layers, embed) alone) are not."""
    rest = [name for name in axes if name != "layers"]
    return "embed" in rest and len(rest) >= 2


def projections(config: ModelConfig) -> dict[str, Path]:
    """{module name: path} of every per-layer projection kernel (q, k, v, o, gate, up, down)."""
    return {path[-2]: path for path in leaf_axes(config)
            if path[0] == "layers" and path[-1] == "kernel"}


# Every leaf any config can have: all flags on, untied.
_EVERY_LEAF = ModelConfig(model_type="llama", vocab_size=2, hidden_size=2, intermediate_size=2, num_layers=2,
                          num_heads=2, num_kv_heads=2, head_dim=2, qkv_bias=True, o_bias=True, qk_norm=True)


def decay_mask(tree: Params) -> Params:
    """Weight decay or not, per leaf: True for matrices (`is_matrix`: the embedding and projection
    kernels, by their logical axes) and for LoRA factors {module: {"a", "b"}}; False for norms and
    biases. `tree` is a params tree or a LoRA adapter tree (arrays or shapes)."""
    known = leaf_axes(_EVERY_LEAF)
    modules = projections(_EVERY_LEAF)

    def leaf(key_path, _):
        path = _path(key_path)
        if path in known:
            return is_matrix(known[path])
        if len(path) == 2 and path[0] in modules and path[1] in ("a", "b"):
            return True
        raise ValueError(f"decay_mask: leaf {'.'.join(map(str, path))} is neither a parameter "
                         f"({', '.join('.'.join(p) for p in known)}) nor a LoRA factor (<module>.a, <module>.b)")

    return jax.tree_util.tree_map_with_path(leaf, tree)
