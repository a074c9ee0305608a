"""The bert_jax side of benchmarks/train_step.py: the step compiled as bert_jax/train/pretrain.py wires it (state
created sharded on a 1-device mesh, jit with explicit shardings, the state donated), and the remat memory sweep."""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from _bench_common import OPTIMIZER, SHAPES, Runner, Shape, make_inputs

def model_config(shape: Shape, overrides: dict):
    """The shape's ModelConfig with a variant's ModelConfig overrides (its SpeedConfig ones go to speed_config)."""
    from bert_jax.model.config import ModelConfig
    overrides = {k: v for k, v in overrides.items() if k not in _speed_fields()}
    return ModelConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_layers=shape.layers,
                       num_heads=shape.heads, intermediate_size=shape.ffn,
                       max_position_embeddings=max(512, shape.seq), **overrides)


def speed_config(overrides: dict):
    """The SpeedConfig of a variant's overrides (scan_layers, remat_policy, ...)."""
    from bert_jax.model.config import SpeedConfig
    return SpeedConfig(**{k: v for k, v in overrides.items() if k in _speed_fields()})


def _speed_fields() -> set[str]:
    from bert_jax.model.config import SpeedConfig
    return {f.name for f in dataclasses.fields(SpeedConfig)}


def memory_dict(compiled) -> dict | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k: int(getattr(mem, k)) for k in keys if hasattr(mem, k)}


def compile_bert_jax(shape: Shape, overrides: dict, seed: int, batch_np: dict, materialise: bool = True):
    """(compiled step, state or None, batch on device, info) wired as bert_jax/train/pretrain.py does: state
    created sharded on a 1-device mesh, jit with explicit shardings and the state donated."""
    import flax.linen as nn
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from bert_jax.model.pretraining import PretrainModel
    from bert_jax.objectives import ObjectiveSet
    from bert_jax.parallel.sharding import LOGICAL_RULES, batch_sharding, make_mesh
    from bert_jax.train.optimizer import OptimizerConfig, make_optimizer
    from bert_jax.train.state import create_sharded_state, state_shardings
    from bert_jax.train.step import make_train_step

    overrides = dict(overrides)
    # Neither a ModelConfig nor a SpeedConfig field: the train step's guard (pretrain.py sets it only for train.on_nonfinite=skip).
    skip_nonfinite = bool(overrides.pop("skip_nonfinite", False))
    cfg = model_config(shape, overrides)
    objectives = ObjectiveSet.parse("mlm+nsp")
    model = PretrainModel(cfg, objectives, speed_config(overrides))
    optimizer, schedule = make_optimizer(OptimizerConfig(
        name="adamw", learning_rate=OPTIMIZER["lr"], weight_decay=OPTIMIZER["weight_decay"], eps=OPTIMIZER["eps"],
        warmup_steps=0, schedule="constant", grad_clip_norm=0.0))
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    if materialise:
        state, abstract, shardings = create_sharded_state(model, optimizer, batch_np, mesh, seed)
    else:
        abstract, shardings = state_shardings(model, optimizer, batch_np, mesh)
        state = None
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {k: batch_sharding(mesh, v.ndim) for k, v in batch_np.items()}
    step = make_train_step(model, objectives, optimizer, schedule, skip_nonfinite=skip_nonfinite)
    jitted = jax.jit(step, in_shardings=(shardings, batch_shardings, replicated),
                     out_shardings=(shardings, replicated), donate_argnums=(0,))
    batch = jax.device_put(batch_np, batch_shardings) if materialise else {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k]) for k, v in batch_np.items()}
    state_arg = state if materialise else jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        start = time.perf_counter()
        lowered = jitted.lower(state_arg, batch, {})
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    info = {"params": params, "lower_s": lower_s, "compile_s": compile_s, "memory": memory_dict(compiled),
            "model_overrides": overrides}
    return compiled, state, batch, info


def start_bert_jax(shape: Shape, overrides: dict, seed: int, inputs: dict) -> Runner:
    import jax

    batch_np = {k: v for k, v in inputs.items() if k != "mlm_labels"}
    compiled, state, batch, info = compile_bert_jax(shape, overrides, seed, batch_np)
    holder = {"state": state}

    def run(n: int):
        times, metrics = [], None
        for _ in range(n):
            start = time.perf_counter()
            holder["state"], metrics = compiled(holder["state"], batch, {})
            jax.block_until_ready((holder["state"], metrics))
            times.append(time.perf_counter() - start)
            if "loss0" not in info:
                host = jax.device_get(metrics)
                info["loss0"] = float(host["loss"])
                info["mlm_loss0"] = float(host["sum/mlm_loss"]) / max(float(host["count/mlm_loss"]), 1.0)
        return times, float(metrics["loss"]) if metrics is not None else math.nan

    return Runner(variant_name(overrides), info, run, lambda: holder.clear(), compiled.as_text)


def variant_name(overrides: dict) -> str:
    return "bert_jax" + ("[" + ",".join(f"{k}={v}" for k, v in overrides.items()) + "]" if overrides else "")


def memory_sweep(seq: int, batch: int) -> list[dict]:
    """Compile (never run) the base shape at `seq` for each remat policy; XLA's peak temporary memory."""
    from bert_jax.model.config import REMAT_POLICIES

    shape = dataclasses.replace(SHAPES["base"], name=f"base-seq{seq}", seq=seq, batch=batch)
    batch_np = {k: v for k, v in make_inputs(shape, 0).items() if k != "mlm_labels"}
    rows = []
    for scan in (False, True):
        for policy in REMAT_POLICIES:
            overrides = {"remat_policy": policy, "scan_layers": scan}
            print(f"[memory] compiling {shape.name} {overrides} ...", flush=True)
            _, _, _, info = compile_bert_jax(shape, overrides, 0, batch_np, materialise=False)
            rows.append({"shape": shape.name, "batch": batch, "seq": seq, "remat_policy": policy,
                         "scan_layers": scan, **info})
    return rows
