"""Hugging Face checkpoint import/export: `config.json` + `*.safetensors`, no torch.

`load_pretrained(dir)` checks every expected tensor's name and shape from the safetensors headers
before reading any data, then streams tensors one at a time (memory-mapped) into their final
placement: each device receives only its own shard (`jax.make_array_from_single_device_arrays`),
so host memory holds at most one stacked parameter's local shards beyond the mmap'd files.
`save_pretrained(config, params, dir)` writes the inverse, sharded by size with an index file,
each file written atomically.

Name and layout map (transformers `nn.Linear` weights are [out, in]; ours are [in..., out...]):

    model.embed_tokens.weight [V, d]              -> embed [V, d]
    model.layers.{i}.self_attn.q_proj.weight [H*D, d] -> layers.attn.q.kernel[i] [d, H, D]
    model.layers.{i}.self_attn.o_proj.weight [d, H*D] -> layers.attn.o.kernel[i] [H, D, d]
    model.layers.{i}.mlp.down_proj.weight [d, F]  -> layers.mlp.down.kernel[i] [F, d]
    lm_head.weight [V, d]                         -> lm_head.kernel [d, V]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from safetensors.numpy import save_file

from jaxdistill.atomic_files import atomic_write, write_json
from jaxdistill.models import sharding as sharding_lib
from jaxdistill.models import structure
from jaxdistill.models.config import ModelConfig
from jaxdistill.models.safetensors_files import CheckpointError, Reader, checkpoint_files
from jaxdistill.models.transformer import Params, abstract_params, logical_axes

_GLOBAL_NAMES = {
    ("embed",): "model.embed_tokens.weight",
    ("final_norm", "scale"): "model.norm.weight",
    ("lm_head", "kernel"): "lm_head.weight",
}
_LAYER_NAMES = {
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
    **{("attn", p, kind): f"self_attn.{p}_proj.{'weight' if kind == 'kernel' else 'bias'}"
       for p in "qkvo" for kind in ("kernel", "bias")},
    ("attn", "q_norm", "scale"): "self_attn.q_norm.weight",
    ("attn", "k_norm", "scale"): "self_attn.k_norm.weight",
    **{("mlp", p, "kernel"): f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
}
# Tensors some checkpoints carry that the model recomputes or shares.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclass(frozen=True)
class TensorSpec:
    """One parameter leaf and the Hugging Face tensor(s) it comes from (one per layer if stacked)."""

    path: tuple[str, ...]
    shape: tuple[int, ...]  # our full shape, with the leading layer axis when stacked
    stacked: bool
    # input dims of a kernel (`structure.input_dims`), transposed on import/export; None: reshape only
    n_in: int | None

    def hf_name(self, layer: int | None) -> str:
        if self.stacked:
            return f"model.layers.{layer}.{_LAYER_NAMES[self.path[1:]]}"
        return _GLOBAL_NAMES[self.path]

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.stacked else self.shape

    @property
    def hf_shape(self) -> tuple[int, ...]:
        s = self.layer_shape
        if self.path == ("embed",):
            return s
        if self.n_in is None:
            return (math.prod(s),)
        return (math.prod(s[self.n_in:]), math.prod(s[:self.n_in]))

    def to_ours(self, hf: np.ndarray) -> np.ndarray:
        if self.path == ("embed",):
            return hf
        return (hf.T if self.n_in is not None else hf).reshape(self.layer_shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        if self.path == ("embed",):
            return np.ascontiguousarray(ours)
        if self.n_in is None:
            return np.ascontiguousarray(ours.reshape(self.hf_shape))
        s = self.layer_shape
        return np.ascontiguousarray(ours.reshape(math.prod(s[:self.n_in]), -1).T)

    def hf_names(self, num_layers: int) -> list[str]:
        return [self.hf_name(i) for i in range(num_layers)] if self.stacked else [self.hf_name(None)]


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every parameter leaf of `config`'s model with its Hugging Face name and layout."""
    axes = structure.leaf_axes(config)
    specs = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]:
        path = tuple(k.key for k in key_path)
        n_in = structure.input_dims(axes[path]) if path[-1] == "kernel" else None
        specs.append(TensorSpec(path, tuple(leaf.shape), path[0] == "layers", n_in))
    return specs


# ------------------------------------------------------------------------------------ load


def read_config(path: str | os.PathLike, **overrides) -> ModelConfig:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a Hugging Face model directory")
    try:
        hf = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from err
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, got {type(hf).__name__}")
    return ModelConfig.from_hf_dict(hf, **overrides)


def _check_tensors(specs: list[TensorSpec], reader: Reader, config: ModelConfig, path: Path):
    for spec in specs:
        for name in spec.hf_names(config.num_layers):
            if name not in reader:
                raise CheckpointError(
                    f"{path}: missing tensor {name!r} (expected shape {list(spec.hf_shape)}) "
                    f"for a {config.model_type} model with this config.json")
            if reader.shape(name) != spec.hf_shape:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has shape {list(reader.shape(name))}, expected "
                    f"{list(spec.hf_shape)} from config.json")


FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _check_dtypes(reader: Reader, config: ModelConfig, path: Path) -> None:
    """Every weight a safetensors checkpoint holds for the model is a float tensor."""
    for spec in tensor_specs(config):
        for name in spec.hf_names(config.num_layers):
            if name in reader and reader.dtype(name).upper() not in FLOAT_DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {reader.dtype(name)}; weights must be one of "
                                      f"{', '.join(sorted(FLOAT_DTYPES))}")


def check_pretrained(path: str | os.PathLike) -> ModelConfig:
    """Validate a Hugging Face model directory without reading its weights: config.json, the
    safetensors headers, every tensor's presence, shape and dtype (a `CheckpointError` or
    `ConfigError` naming what is wrong). A `.gguf` file is checked when it is loaded."""
    path = Path(path)
    config = read_config(path)
    with contextlib.ExitStack() as stack:
        reader = Reader(checkpoint_files(path), stack)
        _check_tensors(tensor_specs(config), reader, config, path)
        _check_dtypes(reader, config, path)
    return config


def _place(spec: TensorSpec, reader: Reader, sharding, dtype, num_layers: int) -> jax.Array:
    """Build one parameter directly in its sharded placement, reading each source tensor once.

    sharding None: one host buffer, put uncommitted on the default device (as `init_params` does)."""
    if sharding is None:
        index_map = {None: tuple(slice(None) for _ in spec.shape)}
    else:
        index_map = sharding.addressable_devices_indices_map(spec.shape)
    key = lambda idx: tuple(s.indices(n) for s, n in zip(idx, spec.shape))
    shards = {key(idx): idx for idx in index_map.values()}
    buffers = {k: np.empty([len(range(*r)) for r in k], dtype) for k in shards}
    if spec.stacked:
        for layer in range(num_layers):
            tensor = spec.to_ours(reader.read(spec.hf_name(layer))).astype(dtype)
            for k, idx in shards.items():
                if layer in range(*k[0]):
                    buffers[k][layer - k[0][0]] = tensor[idx[1:]]
            del tensor
    else:
        tensor = spec.to_ours(reader.read(spec.hf_name(None))).astype(dtype)
        for k, idx in shards.items():
            buffers[k][...] = tensor[idx]
        del tensor
    if sharding is None:
        return jax.device_put(buffers.popitem()[1])
    arrays = [jax.device_put(buffers[key(idx)], device) for device, idx in index_map.items()]
    return jax.make_array_from_single_device_arrays(spec.shape, sharding, arrays)


def load_pretrained(path: str | os.PathLike, *, mesh: Mesh | None = None, dtype=None,
                    compute_dtype=None, rules=sharding_lib.RULES) -> tuple[ModelConfig, Params]:
    """Read a local Hugging Face checkpoint directory (or a llama.cpp `.gguf` file, through
    `models.gguf.load_gguf`) into (config, params).

    dtype: parameter dtype (default: the checkpoint's own). compute_dtype: matmul dtype (default:
    dtype when that is float32 or bfloat16, else float32). With `mesh`, every tensor goes straight to its sharded placement under `rules`;
    without, to the default device.
    """
    path = Path(path)
    if path.suffix == ".gguf" and not path.is_dir():
        from jaxdistill.models.gguf import load_gguf  # imports this module

        return load_gguf(path, mesh=mesh, dtype=dtype, compute_dtype=compute_dtype, rules=rules)
    config = read_config(path)
    with contextlib.ExitStack() as stack:
        reader = Reader(checkpoint_files(path), stack)
        _check_dtypes(reader, config, path)
        return load_tensors(config, reader, path, mesh=mesh, dtype=dtype, compute_dtype=compute_dtype,
                            rules=rules)


def load_tensors(config: ModelConfig, reader, source: Path, *, mesh: Mesh | None = None, dtype=None,
                 compute_dtype=None, rules=sharding_lib.RULES) -> tuple[ModelConfig, Params]:
    """`load_pretrained` from any `reader` of Hugging Face-named tensors in Hugging Face layout
    (`name in reader`, `reader.shape(name)`, `reader.dtype(name)` -> "F32" | "F16" | "BF16" | other,
    `reader.read(name)` -> numpy); `source` names the checkpoint in errors."""
    embed_name = _GLOBAL_NAMES[("embed",)]
    if embed_name not in reader:
        raise CheckpointError(f"{source}: missing tensor {embed_name!r}")
    stored = _DTYPES.get(reader.dtype(embed_name), "float32")
    param_dtype = str(np.dtype(dtype)) if dtype is not None else stored
    if compute_dtype is None:
        compute_dtype = param_dtype if param_dtype in ("float32", "bfloat16") else "float32"
    config = config.replace(param_dtype=param_dtype, compute_dtype=str(np.dtype(compute_dtype)))
    specs = tensor_specs(config)
    _check_tensors(specs, reader, config, source)
    axes = logical_axes(config)
    params: Params = {}
    for spec in specs:
        if mesh is not None:
            leaf_axes = _get(axes, spec.path)
            placement = NamedSharding(mesh, sharding_lib.logical_to_spec(
                leaf_axes, spec.shape, mesh, rules))
        else:
            placement = None
        _set(params, spec.path,
             _place(spec, reader, placement, config.jnp_param_dtype, config.num_layers))
    return config, params


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


# ------------------------------------------------------------------------------------ save


def to_host(x: jax.Array) -> np.ndarray:
    """A global array as one host numpy array (gathered across processes when it spans them)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _host_tensor(spec: TensorSpec, params: Params, layer: int | None, dtype) -> np.ndarray:
    """One Hugging Face tensor on the host: only that layer's slice leaves the devices."""
    x = _get(params, spec.path)
    if layer is not None:
        x = x[layer]
    return spec.to_hf(to_host(x).astype(dtype, copy=False))


def save_pretrained(config: ModelConfig, params: Params, path: str | os.PathLike, *,
                    max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `config.json` and safetensors that `transformers.AutoModelForCausalLM.from_pretrained(path)`
    loads, in files of at most `max_shard_bytes` (one tensor may exceed it alone) with
    `model.safetensors.index.json` when there are several. Every file is written atomically
    (temporary name, then rename) and safetensors files of an earlier save that are not part of
    this one are removed last. Host memory holds one file's tensors at a time. In a multi-host run
    every process must call this; process 0 writes."""
    path = Path(path)
    hf_config = config.to_hf_dict()  # fails before anything is written if the family can't express it
    specs = tensor_specs(config)
    for spec in specs:
        actual = tuple(np.shape(_get(params, spec.path)))
        if actual != spec.shape:
            raise CheckpointError(
                f"params[{'.'.join(spec.path)}] has shape {list(actual)}, expected {list(spec.shape)} "
                "for this config")
    writer = jax.process_index() == 0
    if writer:
        path.mkdir(parents=True, exist_ok=True)
    dtype = config.jnp_param_dtype

    # Plan files by size first (one entry per HF tensor), so names can carry the file count.
    entries = [(spec, layer) for spec in specs
               for layer in (range(config.num_layers) if spec.stacked else [None])]
    shards: list[list[tuple[TensorSpec, int | None]]] = [[]]
    size = 0
    for spec, layer in entries:
        nbytes = math.prod(spec.layer_shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((spec, layer))
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for file_name, shard in zip(names, shards):
        tensors = {spec.hf_name(layer): _host_tensor(spec, params, layer, dtype) for spec, layer in shard}
        weight_map.update({name: file_name for name in tensors})
        if writer:
            atomic_write(path / file_name,
                         lambda tmp, t=tensors: save_file(t, str(tmp), metadata={"format": "pt"}))
        del tensors
    if not writer:
        return
    index_file = path / "model.safetensors.index.json"
    if len(shards) > 1:
        total = sum(math.prod(s.shape) * dtype.itemsize for s in specs)
        write_json(index_file, {"metadata": {"total_size": total}, "weight_map": weight_map})
    else:
        index_file.unlink(missing_ok=True)
    write_json(path / "config.json", hf_config)
    for stale in set(path.glob("*.safetensors")) - {path / name for name in names}:
        stale.unlink()
