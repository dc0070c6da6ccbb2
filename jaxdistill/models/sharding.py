"""Logical-axis sharding: one rules table from logical axis names to the mesh axes data/fsdp/tensor.

Every parameter carries a tuple of logical axis names (`transformer.logical_axes`). `RULES` maps each
name to a mesh axis (or a tuple of them, or None for replicated). A dimension whose size the mesh
axes do not divide is replicated instead (e.g. 2 kv heads on a tensor axis of 4), a mesh axis is
never used twice in one spec, and mesh axes of size 1 are left out.

The default layout is FSDP over `fsdp` (hidden dim), Megatron-style tensor parallelism over `tensor`
(heads, MLP neurons, vocab), and data parallelism over `data` + `fsdp` for activations.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

RULES: Mapping[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "seq": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
}

log = logging.getLogger(__name__)


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES, devices=None) -> Mesh:
    """A device mesh of `shape` over `axis_names`; one entry may be -1 (takes the remaining devices).
    On a single host a mesh smaller than the device count uses the first devices."""
    devices = jax.devices() if devices is None else list(devices)
    shape = list(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {tuple(shape)} needs one size per axis {tuple(axis_names)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one axis may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) < len(devices) and jax.process_count() == 1:
        devices = devices[:math.prod(shape)]  # a smaller mesh on one host: the first devices
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, but {len(devices)} are "
            f"available: the sizes must multiply to the device count")
    device_grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(device_grid, tuple(axis_names))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, object] = RULES) -> PartitionSpec:
    """PartitionSpec for one array with logical `axes` and `shape` under `rules` on `mesh`."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        target = rules.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if mesh.shape.get(a, 1) > 1 and a not in used)
        n = math.prod(mesh.shape[a] for a in mesh_axes)
        if n > 1 and size % n:
            log.info("replicating logical axis %r (size %d) not divisible by mesh axes %s (%d)",
                     name, size, mesh_axes, n)
            mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def tree_shardings(axes_tree, shapes_tree, mesh: Mesh, rules: Mapping[str, object] = RULES):
    """NamedShardings for a tree, from its logical-axes tree and a matching tree of shaped leaves."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
    return jax.tree.map(
        lambda axes, leaf: NamedSharding(mesh, logical_to_spec(axes, np.shape(leaf), mesh, rules)),
        axes_tree, shapes_tree, is_leaf=is_axes)


def shard_params(params, axes_tree, mesh: Mesh, rules: Mapping[str, object] = RULES):
    """Place every leaf of `params` on `mesh` according to its logical axes."""
    return jax.device_put(params, tree_shardings(axes_tree, params, mesh, rules))


def activation_sharding(mesh: Mesh, ndim: int, rules: Mapping[str, object] = RULES) -> NamedSharding:
    """Batch-sharded placement for an activation [B, ...] of rank `ndim`."""
    target = rules["batch"]
    batch_axes = tuple(a for a in ((target,) if isinstance(target, str) else target)
                       if mesh.shape.get(a, 1) > 1)
    return NamedSharding(mesh, PartitionSpec(batch_axes or None, *([None] * (ndim - 1))))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, local_device_ids=None,
                           cpu_collectives: str | None = None) -> bool:
    """Join a multi-host run (`jax.distributed.initialize`); call once per process, before any mesh.

    Arguments default to the environment variables JAXDISTILL_COORDINATOR_ADDRESS,
    JAXDISTILL_NUM_PROCESSES and JAXDISTILL_PROCESS_ID. With none of them set, JAX's own cluster
    detection runs (TPU pods, SLURM, Open MPI, Kubernetes); on a plain single machine nothing is
    initialised. `cpu_collectives="gloo"` enables cross-process collectives between CPU processes.
    Returns True when this process is part of a multi-process run.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAXDISTILL_COORDINATOR_ADDRESS")
    if num_processes is None and "JAXDISTILL_NUM_PROCESSES" in env:
        num_processes = int(env["JAXDISTILL_NUM_PROCESSES"])
    if process_id is None and "JAXDISTILL_PROCESS_ID" in env:
        process_id = int(env["JAXDISTILL_PROCESS_ID"])
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address is None and num_processes is None and process_id is None:
        try:
            jax.distributed.initialize(local_device_ids=local_device_ids)
        except (ValueError, RuntimeError) as err:
            log.info("no multi-host cluster detected, running single-process: %s", err)
            return False
    else:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id,
                                   local_device_ids=local_device_ids)
    return jax.process_count() > 1
