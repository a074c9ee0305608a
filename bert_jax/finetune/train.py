"""One fine-tuning run: one learning rate, one seed. The protocol over settings lives in main.py.

Linear: init the task model, copy the pretrained encoder (and pooler) in, AdamW with 10% linear warm-up and
linear decay to zero, `epochs` passes over bucketed fixed-shape batches, then the trained model's outputs on
each split (and after each epoch when asked), gathered per feature row. Metrics are computed from them on the host,
in main.py, after they are saved.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax.finetune.batching import iterate_batches, model_inputs, num_batches
from bert_jax.finetune.model import FineTuneModel, masked_optimizer, merge_pretrained, task_loss
from bert_jax.train.optimizer import weight_decay_mask


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


def make_optimizer(setting: Setting, total_steps: int, params, head) -> optax.GradientTransformation:
    """AdamW with 10% linear warm-up and linear decay, its *peak* rate left out: the train step multiplies the
    updates by the setting's learning rate, an argument, so every learning rate of a protocol (and every seed)
    runs the same compiled step. Equal to optax.adamw(peak * schedule)."""
    warmup = max(int(round(setting.warmup_fraction * total_steps)), 1)
    fraction = optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup),
                                     optax.linear_schedule(1.0, 0.0, max(total_steps - warmup, 1))], [warmup])
    core = optax.chain(
        optax.clip_by_global_norm(setting.grad_clip_norm) if setting.grad_clip_norm > 0 else optax.identity(),
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
        optax.add_decayed_weights(setting.weight_decay, mask=weight_decay_mask(params)),
        optax.scale_by_schedule(lambda count: -fraction(count)))
    return masked_optimizer(core, params, head)  # a frozen encoder (feature-based) gets no update and no state


def _step_fns(model: FineTuneModel, optimizer):
    head = model.head

    def loss_fn(params, batch, key):
        outputs = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": key})
        loss_sum, count = task_loss(head, outputs, batch)
        return loss_sum / jnp.maximum(count, 1.0), (loss_sum, count)

    def train_step(params, opt_state, batch, key, learning_rate):
        (_, (loss_sum, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: learning_rate * u, updates)
        return optax.apply_updates(params, updates), opt_state, {"loss_sum": loss_sum, "count": count}

    def eval_step(params, batch):
        return model.apply({"params": params}, batch, deterministic=True)

    return jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step)


def compiled_steps(model: FineTuneModel, setting: Setting, total_steps: int, params, cache: dict | None):
    """(optimizer, train_step, eval_step), shared through `cache` by settings that differ only in learning rate
    and seed: one compilation per bucket width for a whole protocol instead of one per setting."""
    key = (model, total_steps, setting.warmup_fraction, setting.weight_decay, setting.grad_clip_norm,
           jax.tree.structure(params))
    if cache is not None and key in cache:
        return cache[key]
    optimizer = make_optimizer(setting, total_steps, params, model.head)
    built = (optimizer, *_step_fns(model, optimizer))
    if cache is not None:
        cache[key] = built
    return built


def gather_outputs(eval_step, params, features: Mapping[str, np.ndarray], batch_size: int,
                   widths: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The model's outputs for every feature row, in row order; sequence outputs padded to the features' width
    (logits beyond a row's bucket width are -1e9, never a candidate)."""
    n, full_width = features["input_ids"].shape
    out: dict[str, np.ndarray] = {}
    for batch in iterate_batches(features, batch_size, widths):
        result = jax.device_get(eval_step(params, model_inputs(batch)))
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
                step_cache: dict | None = None) -> dict:
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
    optimizer, train_step, eval_step = compiled_steps(model, setting, total, params, step_cache)
    opt_state = optimizer.init(params)
    learning_rate = jnp.float32(setting.learning_rate)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=setting.name, leave=False)
    start, step, history, outputs = time.perf_counter(), 0, [], {}
    for epoch in range(1, setting.epochs + 1):
        loss_sum, count = 0.0, 0.0
        pending = []
        for batch in iterate_batches(train, setting.batch_size, widths, shuffle_seed=setting.seed * 1009 + epoch - 1):
            params, opt_state, metrics = train_step(params, opt_state, model_inputs(batch),
                                                    jax.random.fold_in(key, step + 1), learning_rate)
            pending.append(metrics)  # read back lazily: no host sync inside the loop
            step += 1
            if bar is not None:
                bar.update(1)
        for m in jax.device_get(pending):
            loss_sum, count = loss_sum + float(m["loss_sum"]), count + float(m["count"])
        record = {"epoch": epoch, "train_loss": loss_sum / max(count, 1.0)}
        if not math.isfinite(record["train_loss"]):
            raise FloatingPointError(f"{setting.name}: train loss is {record['train_loss']} in epoch {epoch}; "
                                     "lower the learning rate")
        names = list(splits) if epoch == setting.epochs else [name for name in each_epoch if name in splits]
        if names:
            outputs[epoch] = {name: gather_outputs(eval_step, params, splits[name], setting.batch_size, widths)
                              for name in names}
        history.append(record)
        log(f"{setting.name} epoch {epoch}: train_loss={record['train_loss']:.4f}")
    if bar is not None:
        bar.close()
    return {"setting": dataclasses.asdict(setting), "epochs": history, "loaded": dataclasses.asdict(report),
            "seconds": time.perf_counter() - start, "steps": total, "outputs": outputs}
