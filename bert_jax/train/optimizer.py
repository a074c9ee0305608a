"""Optimiser chain (AdamW, BERT's original Adam, LAMB), learning-rate schedules, weight-decay mask and
micro-batch gradient accumulation.

Chain, in order: clip by global norm (if `grad_clip_norm > 0`) -> optimiser core -> learning rate.
Weight decay is decoupled and scaled by the learning rate (update += lr * weight_decay * param), as in
google-research/bert's AdamWeightDecayOptimizer, PyTorch's AdamW and optax.adamw.

Weight-decay mask: decided by each parameter's *leaf name* (the last dict key of its path), never by its
module path, so it holds for scanned layers (a leading layer axis changes shapes, not names):
    decayed:     `kernel` (Dense / attention projections), `embedding` (nn.Embed tables)
    not decayed: `bias` (every bias), `scale` (LayerNorm / RMSNorm gains; their bias is a `bias` leaf),
                 `mix_weights` (the softmax logits of a learned layer mix, fine-tuning's feature-based head)
This matches BERT's exclusion of "LayerNorm", "layer_norm" and "bias". Any other leaf name is an error
(a silent default would decay or spare a new parameter without anyone deciding it).

Schedule: linear warm-up from 0 to `learning_rate` over `warmup_steps`, then `schedule` decays from
`learning_rate` to `end_learning_rate` at `total_steps` (held there afterwards). `schedule_fn(t)` is
the rate of the update applied when `t` updates have already been applied, so the first update has
rate 0 when warming up (as in google-research/bert).

Gradient accumulation: `grad_accum_steps` is for the train step, which splits its global batch with
`split_micro_batches` and calls `accumulate_gradients`; `make_optimizer` does not wrap the chain in
optax.MultiSteps, so one optimiser update is one global batch whatever the accumulation.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZER_NAMES = ("adamw", "bert_adam", "lamb")
SCHEDULE_NAMES = ("linear", "polynomial", "cosine", "constant")
DECAYED_LEAF_NAMES = ("kernel", "embedding")
UNDECAYED_LEAF_NAMES = ("bias", "scale", "mix_weights")  # mix_weights: softmax logits of a layer mix (ELMo), not decayed


class OptimizerConfigError(ValueError):
    """An optimiser setting the user must fix; the message names the key and the valid values."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    learning_rate: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 10_000
    total_steps: int = 1_000_000
    schedule: str = "linear"
    power: float = 1.0  # exponent of the 'polynomial' decay ('linear' is power 1)
    end_learning_rate: float = 0.0
    grad_clip_norm: float = 1.0  # 0 disables clipping
    grad_accum_steps: int = 1

    def __post_init__(self):
        _check(self.name in OPTIMIZER_NAMES, "name", self.name, f"one of {OPTIMIZER_NAMES}")
        _check(self.schedule in SCHEDULE_NAMES, "schedule", self.schedule, f"one of {SCHEDULE_NAMES}")
        _check(self.learning_rate >= 0, "learning_rate", self.learning_rate, ">= 0")
        _check(self.end_learning_rate >= 0, "end_learning_rate", self.end_learning_rate, ">= 0")
        _check(0 <= self.b1 < 1, "b1", self.b1, "in [0, 1)")
        _check(0 <= self.b2 < 1, "b2", self.b2, "in [0, 1)")
        _check(self.eps > 0, "eps", self.eps, "> 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.power > 0, "power", self.power, "> 0")
        _check(self.grad_clip_norm >= 0, "grad_clip_norm", self.grad_clip_norm, ">= 0 (0 = no clipping)")
        # total_steps is set from train.steps (run_setup.optimizer_config): the key a user types names it.
        if self.total_steps < 1:
            raise OptimizerConfigError(f"train.steps={self.total_steps!r} is invalid; it must be >= 1")
        _check(0 <= self.warmup_steps <= self.total_steps, "warmup_steps", self.warmup_steps,
               f"in [0, {self.total_steps}] (train.steps)")
        _check(self.grad_accum_steps >= 1, "grad_accum_steps", self.grad_accum_steps, ">= 1")

    @classmethod
    def from_config(cls, config: Any) -> "OptimizerConfig":
        """Build from an ml_collections ConfigDict or a mapping; unknown keys are an error."""
        values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise OptimizerConfigError(
                    f"unknown optimizer config key {key!r}; valid keys: {', '.join(fields)}")
        for key, value in values.items():
            if fields[key].type == "int" and isinstance(value, float):
                if not value.is_integer():
                    raise OptimizerConfigError(f"optimizer.{key}={value} must be a whole number")
                values[key] = int(value)
        return cls(**values)


def _check(ok: bool, key: str, value: Any, requirement: str) -> None:
    if not ok:
        raise OptimizerConfigError(f"optimizer.{key}={value!r} is invalid; it must be {requirement}")


def make_schedule(cfg: OptimizerConfig) -> Callable[[Any], jax.Array]:
    """Learning rate as a function of the number of updates already applied (see module doc)."""
    peak, end = float(cfg.learning_rate), float(cfg.end_learning_rate)
    warmup, decay_steps = cfg.warmup_steps, cfg.total_steps - cfg.warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup, 1)
        progress = jnp.clip((step - warmup) / max(decay_steps, 1), 0.0, 1.0)
        if cfg.schedule == "constant":
            decayed = jnp.full_like(progress, peak)
        elif cfg.schedule == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        else:
            power = 1.0 if cfg.schedule == "linear" else cfg.power
            decayed = end + (peak - end) * (1.0 - progress) ** power
        return jnp.where(step < warmup, warm, decayed)

    return schedule


def _leaf_name(path: tuple) -> str | None:
    # Flax boxes (nn.Partitioned) keep the array in a `.value` attribute; the name is the key above it.
    for key in reversed(path):
        if isinstance(key, jax.tree_util.DictKey):
            return str(key.key)
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            return key.name
    return None


def weight_decay_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True where the leaf is weight-decayed (see module doc)."""
    def decide(path, _):
        name = _leaf_name(path)
        if name in DECAYED_LEAF_NAMES:
            return True
        if name in UNDECAYED_LEAF_NAMES:
            return False
        raise OptimizerConfigError(
            f"parameter {jax.tree_util.keystr(path)} has leaf name {name!r}, which the weight-decay mask "
            f"does not know; name it one of {DECAYED_LEAF_NAMES + UNDECAYED_LEAF_NAMES}")

    return jax.tree_util.tree_map_with_path(decide, params)


class BertAdamState(NamedTuple):
    mu: Any
    nu: Any


def scale_by_bert_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam moments *without* bias correction: update = m / (sqrt(v) + eps), as in BERT's optimizer."""
    def init(params):
        return BertAdamState(mu=jax.tree.map(jnp.zeros_like, params), nu=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, BertAdamState(mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
    """The full update chain and its learning-rate schedule (for logging)."""
    schedule = make_schedule(cfg)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=weight_decay_mask)
    elif cfg.name == "lamb":
        core = optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                          mask=weight_decay_mask)
    else:
        core = optax.chain(scale_by_bert_adam(cfg.b1, cfg.b2, cfg.eps),
                           optax.add_decayed_weights(cfg.weight_decay, mask=weight_decay_mask),
                           optax.scale_by_learning_rate(schedule))
    clip = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
    return optax.chain(*clip, core), schedule


# ---------------------------------------------------------------------------------------------------
# Gradient accumulation


def split_micro_batches(batch: Any, num_micro_batches: int) -> Any:
    """[B, ...] leaves -> [k, B // k, ...]; micro-batch i holds global rows i, i + k, i + 2k, ...

    Strided rather than contiguous because the global batch is sharded along its first axis: each
    device's contiguous block then contributes equally to every micro-batch, so the split needs no
    communication and every device works in every micro-step.
    """
    def split(x):
        if x.shape[0] % num_micro_batches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps="
                             f"{num_micro_batches}; change the batch size or grad_accum_steps")
        return jnp.swapaxes(x.reshape(x.shape[0] // num_micro_batches, num_micro_batches, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_and_grad_fn: Callable, params: Any, micro_batches: Any, *, rng: jax.Array | None = None):
    """Gradient of the global-batch loss, computed one micro-batch at a time (`lax.scan`).

    Contract:
      `loss_and_grad_fn(params, micro_batch)` -- or `(params, micro_batch, rng)` when `rng` is given,
      with an independent key per micro-batch -- returns `(grads, sums)`:
        grads: gradient w.r.t. `params` of the micro-batch's share of the global loss: each term's sum over
               the micro-batch divided by that term's count over the *whole global batch* (computed from the
               full batch before splitting: MLM tokens, NSP examples), NOT the micro-batch's own mean;
        sums:  dict of scalar sums over the micro-batch (loss sums, correct predictions), summed too.
      `micro_batches`: pytree whose leaves have a leading axis of size k (see `split_micro_batches`).

    Returns `(grads, sums)` = (sum_i grads_i, sum_i sums_i): the gradient of one big batch, exactly, however
    unevenly the counts fall between micro-batches.

    Gradients are accumulated in float32 (or wider) and returned in the dtype `loss_and_grad_fn` gives.
    """
    num_micro = jax.tree.leaves(micro_batches)[0].shape[0]
    keys = None if rng is None else jax.random.split(rng, num_micro)

    def call(batch, key):
        return loss_and_grad_fn(params, batch) if key is None else loss_and_grad_fn(params, batch, key)

    first = jax.tree.map(lambda x: x[0], micro_batches)
    grad_shapes, sum_shapes = jax.eval_shape(call, first, None if keys is None else keys[0])

    def acc_dtype(s):
        return jnp.promote_types(s.dtype, jnp.float32)

    def step(carry, xs):
        grad_acc, sum_acc = carry
        batch, key = xs
        grads, sums = call(batch, key)
        grad_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grad_acc, grads)
        sum_acc = jax.tree.map(lambda a, s: a + s.astype(a.dtype), sum_acc, sums)
        return (grad_acc, sum_acc), None

    init = (jax.tree.map(lambda s: jnp.zeros(s.shape, acc_dtype(s)), grad_shapes),
            jax.tree.map(lambda s: jnp.zeros(s.shape, acc_dtype(s)), sum_shapes))
    (grad_sum, sums), _ = jax.lax.scan(step, init, (micro_batches, keys))
    grads = jax.tree.map(lambda g, s: g.astype(s.dtype), grad_sum, grad_shapes)
    return grads, sums
