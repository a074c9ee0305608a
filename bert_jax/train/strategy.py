"""The one seam between the data-parallel strategies: where state and batches live, how the steps compile, how
metrics come back. Everything else in training is the same code for both.

  mesh  jax.jit over a device Mesh: the state sharded by the logical-axis rules (data, FSDP, tensor parallel),
        each batch one global array split over the data axes; works across hosts (jax.distributed).
  pmap  jax.pmap over the local devices: the state replicated (one copy per device along a leading axis), each
        batch split along its first dimension; metrics and gradients psum'd over the 'batch' axis.

`make_strategy` returns a `Strategy` of plain functions; the pure steps (pretraining's in `train/step.py`,
fine-tuning's in `finetune/train.py`) are built with `axis_name=axis_name(name)` and reduce with `psum`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from bert_jax.parallel.sharding import LOGICAL_RULES, batch_sharding, data_parallel_size, replicated

STRATEGIES = ("mesh", "pmap")
PMAP_AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    place: Callable[[Any], Any]  # a state, wherever it lies (host, one device, sharded) -> as the steps take it
    train: Callable[[Any, dict], tuple[Any, Any]]  # (placed state, host batch) -> (state, device metrics)
    evaluate: Callable[[Any, dict], Any]  # (placed params, host batch) -> device metrics
    metrics: Callable[[Any], Any]  # device metrics (whole-batch: psum'd or gathered by the step) -> host numpy
    read: Callable[[Any], Any]  # placed state -> one logical copy (to checkpoint)


def axis_name(strategy: str) -> str | None:
    """The collective axis the pure steps psum over: pmap's, or none (jit's arrays are already global)."""
    return PMAP_AXIS if strategy == "pmap" else None


def psum(tree, axis_name: str | None):
    """Sum over the devices under pmap; under jit (`axis_name` None) every array is global, sums already whole."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def data_parallel_count(strategy: str, mesh) -> int:
    """How many devices split each global batch: the mesh's data axes, or every device under pmap."""
    return data_parallel_size(mesh) if strategy == "mesh" else jax.device_count()


def _global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v) for k, v in local.items()}


def _split_batch(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = jax.local_device_count()
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in local.items()}


def make_strategy(name: str, train_step: Callable, eval_step: Callable, mesh, shardings, frozen) -> Strategy:
    """`train_step(state, batch, frozen)` and `eval_step(params, batch, frozen)` compiled for `name`; `frozen`
    (inputs that are never trained, e.g. a distillation teacher) is placed once, not per step."""
    if name == "pmap":
        count = jax.local_device_count()
        p_train = jax.pmap(train_step, axis_name=PMAP_AXIS, donate_argnums=(0,))
        p_eval = jax.pmap(eval_step, axis_name=PMAP_AXIS)
        # One copy per local device along a new leading axis; pmap places slice i on device i.
        replicate = lambda tree: jax.tree.map(lambda x: np.stack([np.asarray(x)] * count), tree)  # noqa: E731
        frozen = jax.pmap(lambda x: x)(replicate(frozen)) if frozen else frozen
        # The first device's copy, without compiling an indexing op per leaf shape.
        first = lambda x: np.asarray(x.addressable_shards[0].data if isinstance(x, jax.Array) else x)[0]  # noqa: E731
        return Strategy(
            name, place=lambda state: replicate(jax.device_get(state)),
            train=lambda s, b: p_train(s, _split_batch(b), frozen),
            evaluate=lambda p, b: p_eval(p, _split_batch(b), frozen),
            metrics=lambda m: jax.tree.map(lambda x: x[0], jax.device_get(m)),
            read=lambda s: jax.tree.map(first, s))
    if name == "mesh":
        whole = replicated(mesh)
        frozen = jax.device_put(frozen, whole)
        jit_train = jax.jit(train_step, in_shardings=(shardings, None, whole), out_shardings=(shardings, whole),
                            donate_argnums=(0,))
        jit_eval = jax.jit(eval_step, in_shardings=(shardings.params, None, whole), out_shardings=whole)

        def train(s, b):
            with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
                return jit_train(s, _global_batch(b, mesh), frozen)

        def evaluate(p, b):
            with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
                return jit_eval(p, _global_batch(b, mesh), frozen)

        # A no-op for a state already laid out so (pretraining creates it sharded); anything else is moved.
        return Strategy(name, place=lambda state: jax.device_put(state, shardings), train=train, evaluate=evaluate,
                        metrics=jax.device_get, read=lambda s: s)
    raise ValueError(f"train.strategy={name!r} is unknown; choose one of {', '.join(STRATEGIES)}")
