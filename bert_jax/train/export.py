"""`bert-jax export --workdir RUN --out params.msgpack [--step N]`: params only, for fine-tuning and interop.

Writes the encoder with BERT's pretraining heads (the tree of `BertForPreTraining`, readable by
`bert_jax.interop.load_params` and convertible to transformers). Heads the run did not train (an MLM head
for ELECTRA's discriminator, the NSP head of a run without NSP) are freshly initialised, with a warning;
networks that only serve pretraining (ELECTRA's generator, a distillation teacher) are left out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.interop.convert_cli import save_params
from bert_jax.model.config import ModelConfig
from bert_jax.model.pretraining import BertForPreTraining
from bert_jax.train import checkpoint as ckpt

# Our head name -> the BertForPreTraining head it becomes (SOP's classifier is the same shape as NSP's).
HEAD_ALIASES = {"nsp_head": ("nsp_head", "sop_head")}


def read_checkpoint(workdir: str, step: int | None = None) -> tuple[dict, dict, dict | None, int]:
    """(params, saved config, data manifest, step) of a pretraining workdir's newest complete checkpoint (or
    `step`), in one restore."""
    directory = os.path.join(workdir, "checkpoints")
    steps = ckpt.complete_steps(directory)
    if not steps:
        raise FileNotFoundError(f"{workdir!r} holds no complete checkpoint in {directory}; point at a pretraining "
                                "workdir (bert-jax pretrain --workdir ...)")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"step {step} is not a complete checkpoint in {directory}; complete: {steps}")
    manager = ckpt.open_manager(directory, async_save=False)
    meta = manager.item_metadata(step)["state"]
    # An explicit single-device sharding: restore onto this process's devices whatever topology saved it.
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), meta)
    restored = manager.restore(step, args=ckpt.ocp.args.Composite(
        state=ckpt.ocp.args.StandardRestore(target), config=ckpt.ocp.args.JsonRestore(),
        manifest=ckpt.ocp.args.JsonRestore()))
    return jax.device_get(restored["state"]["params"]), restored["config"], restored["manifest"], step


def read_checkpoint_params(workdir: str, step: int | None = None) -> tuple[dict, dict, int]:
    """(params, saved config, step): `read_checkpoint` without the manifest."""
    params, config, _, step = read_checkpoint(workdir, step)
    return params, config, step


def model_config_from_saved(saved: dict) -> ModelConfig:
    values = dict(saved["model"])
    objectives = saved.get("objectives", "")
    if "ltr" in objectives.replace(" ", "").split("+"):
        values["causal"] = True
    return ModelConfig.from_dict(values)


def pretraining_params(params: dict, config: ModelConfig, seed: int = 0) -> dict:
    """Map a PretrainModel param tree onto BertForPreTraining's, initialising the heads it lacks."""
    fresh = nn.unbox(BertForPreTraining(config).init(jax.random.key(seed), jnp.zeros((1, 2), jnp.int32)))["params"]
    out = {}
    for name, value in fresh.items():
        source = next((alias for alias in HEAD_ALIASES.get(name, (name,)) if alias in params), None)
        if source is None:
            if name == "encoder":
                raise ValueError("the checkpoint has no 'encoder' params; is it a bert_jax pretraining checkpoint?")
            warnings.warn(f"export: the run trained no {name!r}; writing a freshly initialised one", stacklevel=2)
            out[name] = value
        else:
            out[name] = params[source]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert-jax export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a pretraining workdir")
    parser.add_argument("--out", required=True, help="the params file to write (msgpack)")
    parser.add_argument("--step", type=int, default=None, help="a checkpoint step (default: the newest complete)")
    args = parser.parse_args(argv)
    try:
        params, saved, step = read_checkpoint_params(args.workdir, args.step)
        config = model_config_from_saved(saved)
        save_params(args.out, config, pretraining_params(params, config))
    except (FileNotFoundError, ValueError) as e:
        print(f"bert-jax export: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"exported": args.out, "step": step, "model": config.to_dict()}))
    return 0
