"""The pure training and evaluation steps, shared by the mesh (jit) and pmap strategies.

Losses are normalised by counts over the *whole global batch* (computed from the batch before the forward
pass), so gradient accumulation and data parallelism give exactly the big-batch update. Under pmap
(`axis_name` set) the counts, sums and gradients are psum'd across devices; under jit the batch is a global
array and plain sums are already global.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives.base import ObjectiveSet
from bert_jax.train.optimizer import accumulate_gradients, split_micro_batches
from bert_jax.train.strategy import psum


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key; the step's key is fold_in(rng, step), so nothing to carry over


def make_train_step(model: PretrainModel, objectives: ObjectiveSet, optimizer: optax.GradientTransformation,
                    schedule: Callable, grad_accum_steps: int = 1, axis_name: str | None = None,
                    skip_nonfinite: bool = True) -> Callable:
    """Returns train_step(state, batch, frozen=None) -> (state, metrics); metrics hold sums and counts (divide
    on host). `frozen`: variable collections that are inputs, not trained (`objectives.load_frozen()`, e.g. a
    distillation teacher): an argument rather than a closed-over constant, which jit would bake into the program.

    Every step reports `nonfinite` (1 when its loss or gradient is not finite). With `skip_nonfinite`, such a
    step leaves params and optimiser state untouched (`train.on_nonfinite=skip`). Without it (`stop`, the
    default) the update is applied unguarded and the caller must stop before saving that state: the guard is a
    select over every parameter and optimiser slot, which costs a pass over the state and, at BERT-base,
    ~450 MiB of XLA temporaries (benchmarks/NOTES.md)."""

    def summed_loss(params, batch, denominators, key, frozen):
        # 'sample': draws that are part of the objective (ELECTRA's generator), apart from dropout's
        rngs = {"dropout": key, "sample": jax.random.fold_in(key, 1)}
        sums = model.apply({"params": params, **(frozen or {})}, batch, deterministic=False, rngs=rngs)
        return objectives.total_loss(sums, denominators), sums

    def train_step(state: TrainState, batch, frozen=None):
        key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        denominators = {k: psum(v, axis_name) for k, v in objectives.denominators(batch).items()}
        grad_fn = jax.grad(summed_loss, has_aux=True)
        if grad_accum_steps == 1:
            grads, sums = grad_fn(state.params, batch, denominators, key, frozen)
        else:
            micro = split_micro_batches(batch, grad_accum_steps)
            grads, sums = accumulate_gradients(lambda p, b, k: grad_fn(p, b, denominators, k, frozen),
                                               state.params, micro, rng=key)
        grads = psum(grads, axis_name)
        sums = {k: psum(v, axis_name) for k, v in sums.items()}
        loss = objectives.total_loss(sums, denominators)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        metrics.update({f"sum/{k}": v for k, v in sums.items()})
        metrics.update({f"count/{k}": v for k, v in denominators.items()})
        return new_state, metrics

    return train_step


def make_eval_step(model: PretrainModel, objectives: ObjectiveSet, axis_name: str | None = None) -> Callable:
    """eval_step(params, batch, frozen=None) -> sums and counts (padding rows carry zero weights, so they count
    for nothing); `frozen` as for the train step. Draws an objective makes ('sample') use a fixed key here."""

    def eval_step(params, batch, frozen=None):
        sums = model.apply({"params": params, **(frozen or {})}, batch, deterministic=True)
        denominators = objectives.denominators(batch)
        metrics = {f"sum/{k}": psum(v, axis_name) for k, v in sums.items()}
        metrics.update({f"count/{k}": psum(v, axis_name) for k, v in denominators.items()})
        return metrics

    return eval_step


def summarize(metrics: dict) -> dict[str, float]:
    """Host side: turn sums/counts into means; other entries pass through as floats."""
    out = {}
    for key, value in metrics.items():
        if key.startswith("sum/"):
            term = key[4:]
            count = float(metrics.get(f"count/{term}", 0.0))
            if count > 0:
                out[term] = float(value) / count
        elif not key.startswith("count/"):
            out[key] = float(value)
    return out
