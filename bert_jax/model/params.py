"""Param-tree utilities: unboxing, counting, and converting between the scanned and the unrolled layer stack."""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

_LAYER = re.compile(r"^layer_(\d+)$")


def unbox(tree: Any) -> Any:
    return nn.unbox(tree)


def count_params(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(unbox(tree))))


def is_scanned(params: Any) -> bool:
    """Whether a params tree holds a layer stack in the scanned layout (`layers/layer/...`): saved params carry their
    layout, so a reader needs no record of the `speed.scan_layers` they were trained with."""
    return any("layers" in path for path in flatten_dict(dict(unbox(params))))


def to_scanned(params: dict) -> dict:
    """`.../encoder/layer_{i}/...` -> `.../encoder/layers/layer/...` with a leading layer axis (for scan_layers)."""
    flat = flatten_dict(unbox(params))
    stacked: dict[tuple, dict[int, Any]] = {}
    out = {}
    for path, value in flat.items():
        idx = next((i for i, p in enumerate(path) if _LAYER.match(p)), None)
        if idx is None:
            out[path] = value
            continue
        key = path[:idx] + ("layers", "layer") + path[idx + 1:]
        stacked.setdefault(key, {})[int(_LAYER.match(path[idx]).group(1))] = value
    for key, by_layer in stacked.items():
        if sorted(by_layer) != list(range(len(by_layer))):
            raise ValueError(f"layers {sorted(by_layer)} of {'/'.join(key)} are not 0..n-1")
        out[key] = jnp.stack([by_layer[i] for i in range(len(by_layer))])
    return unflatten_dict(out)


def to_unscanned(params: dict) -> dict:
    """Inverse of `to_scanned`."""
    flat = flatten_dict(unbox(params))
    out = {}
    for path, value in flat.items():
        idx = next((i for i in range(len(path) - 1) if path[i:i + 2] == ("layers", "layer")), None)
        if idx is None:
            out[path] = value
            continue
        for i in range(value.shape[0]):
            out[path[:idx] + (f"layer_{i}",) + path[idx + 2:]] = value[i]
    return unflatten_dict(out)
