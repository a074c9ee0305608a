"""Where fine-tuning starts: `--init PATH` read into (model config, pretrained params, vocab, fingerprint).

PATH is one of
  - a pretraining workdir (its newest complete checkpoint; `workdir@STEP` picks a step),
  - a params file written by `bert-jax export` / `bert-jax convert` (`bert_jax.interop.save_params`),
  - a directory holding one params file (*.msgpack) and its vocab.txt,
  - a transformers checkpoint directory (config.json + model.safetensors / pytorch_model.bin),
  - `random:SOURCE`: the architecture of SOURCE (a pretraining workdir, or a pretraining config such as
    `configs/pretrain.py:mini`) with fresh weights drawn from seed 0 — the random-init floor a pretrained model
    must beat, fine-tuned with the same protocol and seeds.
Anything else is an error: fine-tuning never silently starts from random weights; `random:` says so.

The fingerprint is a sha256 over every parameter's path, dtype, shape and bytes, so the metrics of a fine-tuning
run name exactly which weights they came from, whatever file format carried them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np

from bert_jax.model.config import ModelConfig


class InitError(ValueError):
    """A --init path that cannot be used; the message says why and what to pass instead."""


@dataclasses.dataclass(frozen=True)
class PretrainedInit:
    kind: str  # 'workdir' | 'params' | 'hf' | 'random'
    path: str
    config: ModelConfig
    # A BertForPreTraining-style tree ('encoder', and 'pooler' etc. where the source has them) in the per-layer
    # layout: fine-tuning reads hidden states per layer.
    params: dict
    vocab_path: str | None  # the vocab.txt the weights were trained with, when the source records it
    fingerprint: str
    step: int | None = None
    saved_config: dict | None = None  # a workdir's run config (objectives, data, ...)
    manifest: dict | None = None  # a workdir's pretraining-data manifest (token counts for the unigram floor)

    def describe(self) -> dict:
        return {"init": self.path, "init_kind": self.kind, "init_fingerprint": self.fingerprint,
                "init_step": self.step, "vocab": self.vocab_path}


def params_fingerprint(params) -> str:
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _unscanned(params: dict) -> dict:
    from bert_jax.model.params import is_scanned, to_unscanned

    return to_unscanned(params) if is_scanned(params) else params


def _from_workdir(path: str, step: int | None) -> PretrainedInit:
    from bert_jax.train.export import model_config_from_saved, read_checkpoint

    params, saved, manifest, step = read_checkpoint(path, step)
    config = model_config_from_saved(saved)
    vocab = (manifest or {}).get("vocab_path")
    # Pretraining-only networks (ELECTRA's generator, a distillation projection) stay behind; the discriminator /
    # student is 'encoder' whatever the objective.
    heads = ("pooler", "mlm_head", "nsp_head", "sop_head", "lm_head")
    params = {k: v for k, v in params.items() if k == "encoder" or k in heads}
    params = _unscanned(params)
    return PretrainedInit("workdir", os.path.abspath(path), config, params, vocab, params_fingerprint(params), step,
                          saved, manifest)


def _from_params_file(path: str) -> PretrainedInit:
    from bert_jax.interop import load_params

    config, params = load_params(path, scan_layers=False)
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), "vocab.txt")
    return PretrainedInit("params", os.path.abspath(path), config, params,
                          sibling if os.path.exists(sibling) else None, params_fingerprint(params))


def _from_hf(path: str) -> PretrainedInit:
    from bert_jax.interop import load_hf_checkpoint

    config, params = load_hf_checkpoint(path, heads="init")
    vocab = os.path.join(path, "vocab.txt")
    return PretrainedInit("hf", os.path.abspath(path), config, params,
                          vocab if os.path.exists(vocab) else None, params_fingerprint(params))


def _random(source: str, vocab: str | None) -> PretrainedInit:
    """Fresh weights in the architecture of a pretraining workdir or config (`random:SOURCE`)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from bert_jax.model.pretraining import BertForPreTraining
    from bert_jax.train.export import model_config_from_saved

    saved, manifest, vocab_path = None, None, None
    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "checkpoints")) and _has_checkpoint(source):
            base = _from_workdir(source, None)
            saved, manifest, vocab_path = base.saved_config, base.manifest, base.vocab_path
        elif os.path.isfile(os.path.join(source, "config.json")):
            with open(os.path.join(source, "config.json")) as f:
                saved = json.load(f)
        else:
            raise InitError(f"--init random:{source} is a directory with neither checkpoints nor config.json; pass a "
                            "pretraining workdir or a config such as random:configs/pretrain.py:mini")
    else:
        from bert_jax import configlib

        try:
            saved = configlib.load_config_file(source).to_dict()
        except configlib.ConfigError as e:
            raise InitError(f"--init random:{source}: {e}") from None
    values = dict(saved["model"])
    vocab_path = vocab or vocab_path
    if not values.get("vocab_size"):  # taken from the data at pretraining time: the vocab decides it here
        if not vocab_path:
            raise InitError(f"--init random:{source} leaves the vocab size to the data; pass --vocab PATH/vocab.txt")
        from bert_jax.data.tokenizer import load_tokenizer

        values["vocab_size"] = load_tokenizer(vocab_path).vocab_size
    config = model_config_from_saved({**saved, "model": values})
    params = nn.unbox(BertForPreTraining(config).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))["params"]
    params = jax.device_get(params)
    return PretrainedInit("random", f"random:{os.path.abspath(source) if os.path.exists(source) else source}",
                          config, params, vocab_path, params_fingerprint(params), None, saved, manifest)


def _has_checkpoint(workdir: str) -> bool:
    from bert_jax.train import checkpoint as ckpt

    return bool(ckpt.complete_steps(os.path.join(workdir, "checkpoints")))


def _params_in_dir(path: str) -> str | None:
    files = sorted(f for f in os.listdir(path) if f.endswith(".msgpack"))
    if len(files) > 1:
        raise InitError(f"--init {path} holds several params files ({', '.join(files)}); pass one of them")
    return os.path.join(path, files[0]) if files else None


def load_init(path: str, vocab: str | None = None) -> PretrainedInit:
    """Read --init (see the module docstring); `workdir@STEP` selects a checkpoint step; `vocab` is needed only by
    `random:` over a config that takes its vocab size from the data."""
    if path.startswith("random:"):
        if not path[len("random:"):]:
            raise InitError("--init random: needs the architecture, e.g. random:RUN_WORKDIR or "
                            "random:configs/pretrain.py:mini")
        return _random(path[len("random:"):], vocab)
    if path == "random":
        raise InitError("--init random needs the architecture: random:RUN_WORKDIR or random:configs/pretrain.py:mini")
    if not path:
        raise InitError("--init is required: a pretraining workdir, a params file (bert-jax export) or a "
                        "transformers checkpoint directory; fine-tuning never starts from random weights")
    step = None
    if "@" in path and not os.path.exists(path):
        path, _, step_text = path.rpartition("@")
        if not step_text.isdigit():
            raise InitError(f"--init {path}@{step_text}: the part after @ must be a checkpoint step number")
        step = int(step_text)
    if not os.path.exists(path):
        raise InitError(f"--init {path} does not exist; pass a pretraining workdir, a params file or a "
                        "transformers checkpoint directory")
    try:
        if os.path.isdir(os.path.join(path, "checkpoints")):
            return _from_workdir(path, step)
        if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(path):
            return _from_hf(path)
        if os.path.isdir(path) and _params_in_dir(path):
            return _from_params_file(_params_in_dir(path))
        if os.path.isfile(path):
            return _from_params_file(path)
    except InitError:
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise InitError(f"--init {path} could not be read ({type(e).__name__}: {e}); pass a complete pretraining "
                        "workdir, params file or transformers checkpoint directory") from e
    raise InitError(f"--init {path} is neither a pretraining workdir (no checkpoints/), a transformers checkpoint "
                    "directory (no config.json), a directory with a params file (no *.msgpack) nor a params file; "
                    "for the random-init floor pass random:RUN_WORKDIR")
