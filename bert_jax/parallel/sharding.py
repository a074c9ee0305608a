"""Logical axis names -> mesh axes (the pjit way), and the mesh itself.

Parameters are named by what their dimensions mean (`embed`, `heads`, `mlp`, `vocab`, ...) and activations by
`act_*` names; this one table decides how both are laid out on a (data, fsdp, tensor) mesh:
  data   - pure data parallelism: batch split, params replicated;
  fsdp   - batch split *and* params/optimizer state split along their `embed` dimension (ZeRO-3 style);
  tensor - Megatron-style model parallelism over heads, MLP width and vocab.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed_factor", None),
    ("kv", None), ("qkv", None), ("gate", None), ("classes", None),
    ("type_vocab", None), ("position", None), ("relpos_buckets", None), ("layers", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `devices` (default: all) with sizes for data/fsdp/tensor; one size may be -1 (fills the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = set(axes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} are unknown; use {MESH_AXES}")
    sizes = [int(axes.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(axes)}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(axes)}: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}; set mesh sizes whose product is {len(devices)} (or use -1)")
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)


def mesh_shardings(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for a boxed variable tree (from `jax.eval_shape(model.init)`), by the logical rules."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_tree), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch arrays are split over every data-parallel mesh axis along their first dimension."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    return int(mesh.shape["data"] * mesh.shape["fsdp"])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (step counter, rng, metrics, frozen inputs)."""
    return NamedSharding(mesh, PartitionSpec())
