"""One fine-tuning run: one learning rate, one seed. The protocol over settings lives in main.py.

Linear: init the task model, copy the pretrained encoder (and pooler) in, AdamW with 10% linear warm-up and
linear decay to zero, `epochs` passes over bucketed fixed-shape batches, then the trained model's outputs on
each split (and after each epoch when asked), gathered per feature row. Metrics are computed from them on the host,
in main.py, after they are saved.

The steps compile and run through pretraining's seam (train/strategy.py), `--strategy mesh` or `pmap`. The state
is small, so it is replicated either way and only the batch is split: over a mesh of the most devices that divide
`batch_size` (mesh), or over every local device (pmap, which needs the batch to divide evenly).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax.finetune.batching import iterate_batches, model_inputs, num_batches
from bert_jax.finetune.model import FineTuneModel, masked_optimizer, merge_pretrained, task_loss
from bert_jax.parallel.sharding import make_mesh, replicated
from bert_jax.train import strategy as strategy_lib
from bert_jax.train.optimizer import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True)
class Setting:
    learning_rate: float
    seed: int
    epochs: int = 3
    batch_size: int = 32
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip_norm: float = 1.0

    @property
    def name(self) -> str:
        return f"lr{self.learning_rate:g}_seed{self.seed}"


@flax.struct.dataclass
class FineTuneState:
    step: jax.Array  # int32: updates applied; step t's dropout key is fold_in(seed key, t + 1)
    params: Any
    opt_state: Any
    rng: jax.Array  # the seed's key as raw uint32[2] (pmap's placement stacks plain arrays, not typed keys)
    # The peak rate, a float32 input rather than a constant: every learning rate runs the same compiled step.
    learning_rate: jax.Array


def optimizer_config(setting: Setting, total_steps: int) -> OptimizerConfig:
    """Pretraining's AdamW (0.9, 0.999, eps 1e-6) with `warmup_fraction` linear warm-up and linear decay to zero,
    at a *unit* peak: the train step multiplies the updates by the setting's learning rate, an input, so the
    update is optax.adamw(learning_rate * schedule)'s and every learning rate runs the same compiled step."""
    warmup = max(int(round(setting.warmup_fraction * total_steps)), 1)
    return OptimizerConfig(name="adamw", learning_rate=1.0, b1=0.9, b2=0.999, eps=1e-6,
                           weight_decay=setting.weight_decay, warmup_steps=min(warmup, total_steps),
                           total_steps=total_steps, schedule="linear", end_learning_rate=0.0,
                           grad_clip_norm=setting.grad_clip_norm)


def data_parallel_devices(strategy: str, batch_size: int) -> int:
    """How many devices split each batch. mesh: the most that divide `batch_size` evenly, so a batch keeps its
    rows (no padding rows to pay for) whatever the device count; pmap: every local device (check_args refuses
    a batch that does not divide over them)."""
    if strategy == "pmap":
        return jax.local_device_count()
    return math.gcd(batch_size, jax.device_count())


def _step_fns(model: FineTuneModel, optimizer, axis_name: str | None):
    """train_step(state, batch, frozen) and eval_step(params, batch, frozen), pure, in the seam's signatures
    (fine-tuning has no frozen inputs); under pmap (`axis_name`) each device holds a slice of the batch."""
    head = model.head

    def loss_fn(params, batch, key):
        outputs = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": key})
        loss_sum, count = task_loss(head, outputs, batch)
        # The mean over the whole batch: every device's slice divides by the global count (it holds no parameter).
        total = strategy_lib.psum(jax.lax.stop_gradient(count), axis_name)
        return loss_sum / jnp.maximum(total, 1.0), (loss_sum, count)

    def train_step(state: FineTuneState, batch, frozen=None):
        del frozen
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step + 1)
        if axis_name is not None:  # each device's slice of the batch draws its own dropout masks
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        (_, (loss_sum, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        grads = strategy_lib.psum(grads, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: state.learning_rate * u, updates)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        return new, strategy_lib.psum({"loss_sum": loss_sum, "count": count}, axis_name)

    def eval_step(params, batch, frozen=None):
        del frozen
        outputs = model.apply({"params": params}, batch, deterministic=True)
        if axis_name is None:
            return outputs
        # Per-row outputs, not sums: every device gathers the whole batch's, as the seam reads one device's.
        return jax.tree.map(lambda x: jax.lax.all_gather(x, axis_name, tiled=True), outputs)

    return train_step, eval_step


def compiled_steps(model: FineTuneModel, setting: Setting, total_steps: int, params, cache: dict | None,
                   strategy: str = "mesh") -> tuple[optax.GradientTransformation, strategy_lib.Strategy]:
    """(optimizer, strategy): the steps compiled through the seam, shared through `cache` by settings that differ
    only in learning rate and seed: one compilation per bucket width for a whole protocol, not one per setting."""
    devices = data_parallel_devices(strategy, setting.batch_size)
    key = (model, total_steps, setting.warmup_fraction, setting.weight_decay, setting.grad_clip_norm,
           jax.tree.structure(params), strategy, devices)
    if cache is not None and key in cache:
        return cache[key]
    chain, _ = make_optimizer(optimizer_config(setting, total_steps))
    optimizer = masked_optimizer(chain, params, model.head)  # a frozen encoder (feature-based) gets no update or state
    mesh = make_mesh({"data": devices, "fsdp": 1, "tensor": 1}, jax.devices()[:devices])
    whole = replicated(mesh)  # a prefix of the state's tree: every leaf replicated
    shardings = FineTuneState(step=whole, params=whole, opt_state=whole, rng=whole, learning_rate=whole)
    train_step, eval_step = _step_fns(model, optimizer, strategy_lib.axis_name(strategy))
    built = (optimizer, strategy_lib.make_strategy(strategy, train_step, eval_step, mesh, shardings, frozen=None))
    if cache is not None:
        cache[key] = built
    return built


def gather_outputs(steps: strategy_lib.Strategy, params, features: Mapping[str, np.ndarray], batch_size: int,
                   widths: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The model's outputs for every feature row, in row order; sequence outputs padded to the features' width
    (logits beyond a row's bucket width are -1e9, never a candidate)."""
    n, full_width = features["input_ids"].shape
    out: dict[str, np.ndarray] = {}
    for batch in iterate_batches(features, batch_size, widths):
        result = steps.metrics(steps.evaluate(params, model_inputs(batch)))
        real = batch["weight"] > 0
        rows = batch["row_index"][real]
        width = batch["input_ids"].shape[1]
        for key, value in result.items():
            value = np.asarray(value, np.float32)[real]
            sequence = value.ndim >= 2 and value.shape[1] == width
            if key not in out:
                shape = (n, full_width) + value.shape[2:] if sequence else (n,) + value.shape[1:]
                out[key] = np.full(shape, -1e9 if sequence else 0.0, np.float32)
            if sequence:
                out[key][rows, :width] = value
            else:
                out[key][rows] = value
    return out


def run_setting(model: FineTuneModel, pretrained: Mapping[str, Any], train: Mapping[str, np.ndarray],
                splits: Mapping[str, Mapping[str, np.ndarray]], setting: Setting, widths: tuple[int, ...],
                each_epoch: Sequence[str] = (), log: Callable[[str], None] = print, progress: bool = False,
                step_cache: dict | None = None, strategy: str = "mesh") -> dict:
    """Train one setting; returns {'setting', 'epochs': [{'epoch', 'train_loss'}], 'loaded', 'seconds', 'steps',
    'outputs': {epoch: {split: outputs}}}: the trained model's outputs on every split of `splits` after the last
    epoch, and on the `each_epoch` splits after each earlier one.

    Nothing is scored here: scoring runs on the host after the outputs are saved (main.py), so that no failure
    in it can cost the training."""
    key = jax.random.key(setting.seed)
    example = model_inputs(next(iterate_batches(train, setting.batch_size, widths)))
    fresh = model.init({"params": jax.random.fold_in(key, 0), "dropout": key}, example, deterministic=True)
    params, report = merge_pretrained(fresh["params"], pretrained)
    steps_per_epoch = num_batches(train, setting.batch_size, widths)
    total = steps_per_epoch * setting.epochs
    optimizer, steps = compiled_steps(model, setting, total, params, step_cache, strategy)
    state = steps.place(FineTuneState(step=np.zeros((), np.int32), params=params, opt_state=optimizer.init(params),
                                      rng=jax.random.key_data(key), learning_rate=np.float32(setting.learning_rate)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=setting.name, leave=False)
    start, history, outputs = time.perf_counter(), [], {}
    for epoch in range(1, setting.epochs + 1):
        loss_sum, count = 0.0, 0.0
        pending = []
        for batch in iterate_batches(train, setting.batch_size, widths, shuffle_seed=setting.seed * 1009 + epoch - 1):
            state, metrics = steps.train(state, model_inputs(batch))
            pending.append(metrics)  # read back lazily: no host sync inside the loop
            if bar is not None:
                bar.update(1)
        for m in steps.metrics(pending):
            loss_sum, count = loss_sum + float(m["loss_sum"]), count + float(m["count"])
        record = {"epoch": epoch, "train_loss": loss_sum / max(count, 1.0)}
        if not math.isfinite(record["train_loss"]):
            raise FloatingPointError(f"{setting.name}: train loss is {record['train_loss']} in epoch {epoch}; "
                                     "lower the learning rate")
        names = list(splits) if epoch == setting.epochs else [name for name in each_epoch if name in splits]
        if names:
            outputs[epoch] = {name: gather_outputs(steps, state.params, splits[name], setting.batch_size, widths)
                              for name in names}
        history.append(record)
        log(f"{setting.name} epoch {epoch}: train_loss={record['train_loss']:.4f}")
    if bar is not None:
        bar.close()
    return {"setting": dataclasses.asdict(setting), "epochs": history, "loaded": dataclasses.asdict(report),
            "seconds": time.perf_counter() - start, "steps": total, "outputs": outputs}
