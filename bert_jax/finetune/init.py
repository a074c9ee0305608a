"""Where fine-tuning starts: `--init PATH` read into `bert_jax.weights.Weights` (model config, pretrained params,
vocab, fingerprint), in the unscanned layout (fine-tuning reads hidden states per layer).

PATH is anything `bert_jax.weights.load_weights` reads (a pretraining workdir[@STEP], a params file, a directory
holding one params file and its vocab.txt, a transformers checkpoint directory; its docstring gives the order in
which they are told apart), or
  - `random:SOURCE`: the architecture of SOURCE (a pretraining workdir, or a pretraining config such as
    `configs/pretrain.py:mini`) with fresh weights drawn from seed 0 — the random-init floor a pretrained model
    must beat, fine-tuned with the same protocol and seeds (kind 'random').
Anything else is an error: fine-tuning never silently starts from random weights; `random:` says so.

The fingerprint (`bert_jax.weights.params_fingerprint`) names exactly which weights the metrics of a fine-tuning
run came from, whatever file format carried them.
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import configlib
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.model.pretraining import BertForPreTraining
from bert_jax.weights import (SOURCES, Weights, WeightsError, complete_steps, load_weights, model_config_from_saved,
                              params_fingerprint)


class InitError(ValueError):
    """A --init path that cannot be used; the message says why and what to pass instead."""


def describe(init: Weights) -> dict:
    """What a fine-tuning run's metrics record about where it started."""
    return {"init": init.path, "init_kind": init.kind, "init_fingerprint": init.fingerprint,
            "init_step": init.step, "vocab": init.vocab_path}


def _random(source: str, vocab: str | None, name: str) -> Weights:
    """Fresh weights in the architecture of a pretraining workdir or config (`random:SOURCE`)."""
    saved, manifest, vocab_path = None, None, None
    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "checkpoints")) and complete_steps(os.path.join(source, "checkpoints")):
            base = _load(source, name, params=False)
            saved, manifest, vocab_path = base.saved_config, base.manifest, base.vocab_path
        elif os.path.isfile(os.path.join(source, "config.json")):
            with open(os.path.join(source, "config.json")) as f:
                saved = json.load(f)
        else:
            raise InitError(f"{name} random:{source} is a directory with neither checkpoints nor config.json; pass a "
                            "pretraining workdir or a config such as random:configs/pretrain.py:mini")
    else:
        try:
            saved = configlib.load_config_file(source).to_dict()
        except configlib.ConfigError as e:
            raise InitError(f"{name} random:{source}: {e}") from None
    values = dict(saved["model"])
    vocab_path = vocab or vocab_path
    if not values.get("vocab_size"):  # taken from the data at pretraining time: the vocab decides it here
        if not vocab_path:
            raise InitError(f"{name} random:{source} leaves the vocab size to the data; pass --vocab PATH/vocab.txt")
        values["vocab_size"] = load_tokenizer(vocab_path).vocab_size
    config = model_config_from_saved({**saved, "model": values})
    params = nn.unbox(BertForPreTraining(config).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))["params"]
    params = jax.device_get(params)
    return Weights("random", f"random:{os.path.abspath(source) if os.path.exists(source) else source}",
                   config, params, vocab_path, params_fingerprint(params), None, saved, manifest)


def _load(path: str, name: str, params: bool = True) -> Weights:
    try:
        return load_weights(path, name, scan_layers=False, params=params)
    except WeightsError as e:
        raise InitError(str(e)) from None


def load_init(path: str, vocab: str | None = None, name: str = "--init") -> Weights:
    """Read --init (see the module docstring); `vocab` is needed only by `random:` over a config that takes its vocab
    size from the data; `name` is the flag the user passed the path with, for the errors."""
    if path.startswith("random:"):
        if not path[len("random:"):]:
            raise InitError(f"{name} random: needs the architecture, e.g. random:RUN_WORKDIR or "
                            "random:configs/pretrain.py:mini")
        return _random(path[len("random:"):], vocab, name)
    if path == "random":
        raise InitError(f"{name} random needs the architecture: random:RUN_WORKDIR or random:configs/pretrain.py:mini")
    if not path:
        raise InitError(f"{name} is required: {SOURCES}; fine-tuning never starts from random weights")
    return _load(path, name)
