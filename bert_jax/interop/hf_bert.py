"""Conversion between transformers' PyTorch BERT checkpoints and bert_jax `BertForPreTraining` params.

Params here are the plain (unboxed) `params` collection of `BertForPreTraining(config).init(...)`, i.e. what
`model.apply({"params": params}, ...)` takes, as host numpy arrays. One table of links (flax leaf <-> HF keys,
with the transform each way) drives both directions, so import and export cannot drift apart.

Key mapping is strict: every checkpoint key is consumed exactly once or is one of the named harmless
aliases (position/token-type id buffers, the tied MLM decoder weight and bias, whose tie is verified).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bert_jax.interop.params_file import (check_param_tree, expected_param_shapes, host_params, relayout,
                                         write_atomically)
from bert_jax.model import BertForPreTraining, ModelConfig
from bert_jax.model.params import is_scanned


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted exactly; the message names the offending key/field."""


HEAD_CHOICES = ("init", "require")
BASE = "{base}"  # stands for the encoder's prefix in a key: "bert." (task models) or "" (a bare BertModel)
# transformers.BertConfig defaults, used for fields an older config.json leaves out.
HF_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                   attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
                   initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
                   position_embedding_type="absolute")
# Buffers some transformers versions save; they carry no learned state.
BUFFER_KEYS = (BASE + "embeddings.position_ids", BASE + "embeddings.token_type_ids")
TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"
TIED_DECODER_BIAS = "cls.predictions.decoder.bias"
TASK_HEAD_KEYS = ("classifier.weight", "classifier.bias")  # BertForSequenceClassification's own layer


# ----------------------------------------------------------------------------------------------- configs

def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> ModelConfig:
    """ModelConfig of a transformers BERT config.json dict; `overrides` set non-architecture fields
    (dtype, param_dtype, ...)."""
    hf = {**HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}

    def require(ok: bool, field: str, fix: str):
        if not ok:
            raise ConversionError(f"HF config {field}={hf.get(field)!r} has no bert_jax equivalent: {fix}")

    require(hf.get("model_type", "bert") == "bert", "model_type", "only BERT checkpoints (model_type 'bert') "
            "convert; RoBERTa/ALBERT/ELECTRA differ in positions or embeddings")
    require(hf["hidden_act"] == "gelu", "hidden_act", "bert_jax uses the exact (erf) GELU, HF 'gelu'")
    require(hf["position_embedding_type"] == "absolute", "position_embedding_type", "only 'absolute' converts")
    require(not hf.get("is_decoder", False), "is_decoder", "convert an encoder (is_decoder false)")
    require(not hf.get("add_cross_attention", False), "add_cross_attention", "cross-attention is not supported")
    require(hf.get("tie_word_embeddings", True) is not False, "tie_word_embeddings",
            "bert_jax ties the MLM decoder to the word embeddings")
    require("embedding_size" not in hf or hf["embedding_size"] in (None, hf["hidden_size"]), "embedding_size",
            "factorised embeddings are not BERT")
    require(hf["hidden_size"] % hf["num_attention_heads"] == 0, "num_attention_heads",
            f"must divide hidden_size {hf['hidden_size']}")
    config = ModelConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]), num_heads=int(hf["num_attention_heads"]),
        intermediate_size=int(hf["intermediate_size"]), max_position_embeddings=int(hf["max_position_embeddings"]),
        type_vocab_size=int(hf["type_vocab_size"]), layer_norm_eps=float(hf["layer_norm_eps"]),
        initializer_range=float(hf["initializer_range"]), dropout_rate=float(hf["hidden_dropout_prob"]),
        attention_dropout_rate=float(hf["attention_probs_dropout_prob"]), pad_token_id=int(hf["pad_token_id"]),
        activation="gelu", norm="post", position_embedding="learned")
    unknown = sorted(set(overrides) - set(config.to_dict()))
    if unknown:
        raise ConversionError(f"unknown ModelConfig override(s) {unknown}; valid: {sorted(config.to_dict())}")
    return config.replace(**overrides)


def check_hf_compatible(config: ModelConfig) -> None:
    """Raise ConversionError unless `config` describes a model transformers' BertForPreTraining can hold."""
    problems = [
        (config.share_layers, "share_layers=True (ALBERT sharing): HF BERT has one weight set per layer"),
        (config.factorized, f"embedding_size={config.embedding_size} (factorised embeddings) is not BERT"),
        (config.position_embedding != "learned",
         f"position_embedding={config.position_embedding!r}: HF BERT has learned absolute positions only"),
        (config.activation != "gelu", f"activation={config.activation!r}: HF BERT uses 'gelu'"),
        (config.norm != "post", f"norm={config.norm!r}: HF BERT is post-LN"),
        (config.causal, "causal=True: HF BertForPreTraining is bidirectional"),
    ]
    found = [message for bad, message in problems if bad]
    if found:
        raise ConversionError("model cannot be expressed as a transformers BERT checkpoint: " + "; ".join(found))


def hf_config_from_model(config: ModelConfig) -> dict[str, Any]:
    """The config.json dict of transformers' BertForPreTraining for `config`."""
    check_hf_compatible(config)
    return dict(
        architectures=["BertForPreTraining"], model_type="bert", vocab_size=config.vocab_size,
        hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=config.dropout_rate, attention_probs_dropout_prob=config.attention_dropout_rate,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range, layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id, position_embedding_type="absolute", tie_word_embeddings=True,
        is_decoder=False, add_cross_attention=False, dtype="float32")


# ------------------------------------------------------------------------------------------- link table

@dataclasses.dataclass(frozen=True)
class ParamLink:
    """One flax leaf and the HF key(s) it is made of; `group` says which head (or the encoder) owns it."""

    path: tuple[str, ...]
    hf_keys: tuple[str, ...]
    group: str  # "encoder", "pooler", "mlm", "nsp"
    to_flax: Callable[..., np.ndarray]
    to_hf: Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _copy_link(path, hf_key, group) -> ParamLink:
    return ParamLink(path, (hf_key,), group, lambda w: w, lambda p: (p,))


def _linear_links(path, hf_module, group) -> list[ParamLink]:
    # torch Linear weight is [out, in]; a flax Dense kernel is [in, out].
    return [ParamLink(path + ("kernel",), (hf_module + ".weight",), group, lambda w: w.T, lambda k: (k.T,)),
            _copy_link(path + ("bias",), hf_module + ".bias", group)]


def _norm_links(path, hf_module, group) -> list[ParamLink]:
    return [_copy_link(path + ("scale",), hf_module + ".weight", group),
            _copy_link(path + ("bias",), hf_module + ".bias", group)]


def _layer_links(config: ModelConfig, i: int) -> list[ParamLink]:
    h, heads, head_dim = config.hidden_size, config.num_heads, config.head_dim
    path, hf = ("encoder", f"layer_{i}"), f"{BASE}encoder.layer.{i}."
    qkv = tuple(f"{hf}attention.self.{name}" for name in ("query", "key", "value"))
    return [
        ParamLink(path + ("attention", "qkv", "kernel"), tuple(m + ".weight" for m in qkv), "encoder",
                  lambda *ws: np.stack([w.T.reshape(h, heads, head_dim) for w in ws], axis=1),
                  lambda k: tuple(k[:, j].reshape(h, h).T for j in range(3))),
        ParamLink(path + ("attention", "qkv", "bias"), tuple(m + ".bias" for m in qkv), "encoder",
                  lambda *bs: np.stack([b.reshape(heads, head_dim) for b in bs], axis=0),
                  lambda b: tuple(b[j].reshape(h) for j in range(3))),
        ParamLink(path + ("attention", "out", "kernel"), (f"{hf}attention.output.dense.weight",), "encoder",
                  lambda w: w.T.reshape(heads, head_dim, h), lambda k: (k.reshape(h, h).T,)),
        _copy_link(path + ("attention", "out", "bias"), f"{hf}attention.output.dense.bias", "encoder"),
        *_norm_links(path + ("attention_norm",), f"{hf}attention.output.LayerNorm", "encoder"),
        *_linear_links(path + ("mlp", "wi"), f"{hf}intermediate.dense", "encoder"),
        *_linear_links(path + ("mlp", "wo"), f"{hf}output.dense", "encoder"),
        *_norm_links(path + ("mlp_norm",), f"{hf}output.LayerNorm", "encoder"),
    ]


def param_links(config: ModelConfig) -> list[ParamLink]:
    """The full table for the unscanned layout (`encoder/layer_{i}`)."""
    check_hf_compatible(config)
    emb, hf_emb = ("encoder", "embeddings"), BASE + "embeddings."
    links = [
        _copy_link(emb + ("token", "embedding"), hf_emb + "word_embeddings.weight", "encoder"),
        _copy_link(emb + ("position", "embedding"), hf_emb + "position_embeddings.weight", "encoder"),
        _copy_link(emb + ("segment", "embedding"), hf_emb + "token_type_embeddings.weight", "encoder"),
        *_norm_links(emb + ("layer_norm",), hf_emb + "LayerNorm", "encoder"),
    ]
    for i in range(config.num_layers):
        links += _layer_links(config, i)
    links += _linear_links(("pooler", "dense"), BASE + "pooler.dense", "pooler")
    links += _linear_links(("mlm_head", "transform"), "cls.predictions.transform.dense", "mlm")
    links += _norm_links(("mlm_head", "layer_norm"), "cls.predictions.transform.LayerNorm", "mlm")
    links += [_copy_link(("mlm_head", "bias"), "cls.predictions.bias", "mlm")]
    links += _linear_links(("nsp_head", "dense"), "cls.seq_relationship", "nsp")
    return links


# ----------------------------------------------------------------------------------- HF -> bert_jax

@dataclasses.dataclass(frozen=True)
class HFConversion:
    params: dict  # unboxed numpy `params` collection of BertForPreTraining(config)
    initialised: tuple[str, ...]  # head groups ("pooler", "mlm", "nsp") absent from the checkpoint, freshly init
    task_head: dict | None  # BertForSequenceClassification's classifier as {"dense": {"kernel", "bias"}}


def _normalise_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the TF-era LayerNorm.gamma/beta (old hub checkpoints) to weight/bias; a clash is an error."""
    out = {}
    for key, value in state.items():
        new = key
        if key.endswith("LayerNorm.gamma"):
            new = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            new = key[: -len("beta")] + "bias"
        if new in out:
            raise ConversionError(f"checkpoint holds both {key!r} and its alias {new!r}; keep one")
        out[new] = value
    return out


def _name_keys(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:12]) + (f" (and {len(keys) - 12} more)" if len(keys) > 12 else "")


def convert_hf_state_dict(state: Mapping[str, Any], config: ModelConfig, heads: str = "init",
                          seed: int = 0, scan_layers: bool = False) -> HFConversion:
    """Map a BertForPreTraining / BertForMaskedLM / BertModel / BertForSequenceClassification state dict
    (numpy arrays) to bert_jax params (the layers stacked for nn.scan with `scan_layers`). Missing heads are freshly
    initialised (heads='init', with a warning) or an error (heads='require'); the encoder must be complete and no
    key may be left over."""
    if heads not in HEAD_CHOICES:
        raise ConversionError(f"heads={heads!r} is invalid; choose one of {HEAD_CHOICES}")
    state = _normalise_keys(state)
    base = "bert." if any(k.startswith("bert.") for k in state) else ""
    remaining = set(state)

    def take(key: str) -> np.ndarray:
        remaining.discard(key)
        return np.asarray(state[key], dtype=np.float32)

    for key in BUFFER_KEYS:
        remaining.discard(key.format(base=base))
    task_head = None
    if base and all(k in state for k in TASK_HEAD_KEYS):
        weight, bias = (take(k) for k in TASK_HEAD_KEYS)
        task_head = {"dense": {"kernel": weight.T.copy(), "bias": bias}}

    links = param_links(config)
    leaf_shapes = {k: v.shape for k, v in traverse_util.flatten_dict(expected_param_shapes(config)).items()}
    flat, absent = {}, {}
    for link in links:
        keys = tuple(k.format(base=base) for k in link.hf_keys)
        missing = [k for k in keys if k not in state]
        if missing:
            absent.setdefault(link.group, []).extend(missing)
            continue
        arrays = [take(k) for k in keys]
        want = [a.shape for a in link.to_hf(np.empty(leaf_shapes[link.path], np.float32))]
        got = [a.shape for a in arrays]
        if got != want:
            raise ConversionError(f"checkpoint key(s) {list(keys)} have shape(s) {got}, config.json implies {want}")
        flat[link.path] = link.to_flax(*arrays)

    present_groups = {link.group for link in links if link.path in flat}
    # The encoder is always required; a head with only some of its keys is a damaged checkpoint.
    damaged = [k for g, keys in absent.items() if g == "encoder" or g in present_groups for k in keys]
    initialised = sorted(g for g in absent if g != "encoder" and g not in present_groups)
    _check_tie(state, remaining, TIED_DECODER_WEIGHT, flat.get(("encoder", "embeddings", "token", "embedding")))
    _check_tie(state, remaining, TIED_DECODER_BIAS, flat.get(("mlm_head", "bias")))
    if damaged or remaining:
        raise ConversionError(
            f"checkpoint does not match a BERT of its config.json (layers={config.num_layers}): "
            + "; ".join(([f"missing key(s) {_name_keys(damaged)}"] if damaged else [])
                        + ([f"unexpected key(s) {_name_keys(remaining)}"] if remaining else [])))
    if initialised and heads == "require":
        missing = [k for g in initialised for k in absent[g]]
        raise ConversionError(f"checkpoint has no {', '.join(initialised)} head(s) (missing key(s) "
                              f"{_name_keys(missing)}); pass heads='init' to initialise them freshly")

    if initialised:
        warnings.warn(f"checkpoint has no {', '.join(initialised)} head(s); initialising them freshly "
                      f"(seed {seed})", stacklevel=2)
        fresh = _fresh_params(config, seed)
        for link in links:
            if link.group in initialised:
                flat[link.path] = fresh[link.path]

    dtype = jnp.dtype(config.param_dtype)
    params = traverse_util.unflatten_dict({k: np.asarray(v, dtype) for k, v in flat.items()})
    params = relayout(params, config.num_layers, False, scan_layers)
    check_param_tree(params, config, "converted params")
    return HFConversion(params=params, initialised=tuple(initialised), task_head=task_head)


def _check_tie(state, remaining: set, key: str, tied_to: np.ndarray | None) -> None:
    """A tied alias is accepted only when it equals what it is tied to (else the checkpoint is untied)."""
    if key not in state:
        return
    remaining.discard(key)
    value = np.asarray(state[key], np.float32)
    if tied_to is None or value.shape != tied_to.shape or not np.array_equal(value, tied_to):
        raise ConversionError(f"checkpoint key {key!r} is not tied to its source (word embeddings / "
                              "cls.predictions.bias); untied MLM decoders cannot be converted")


def _fresh_params(config: ModelConfig, seed: int) -> dict:
    ids = jnp.zeros((1, 2), jnp.int32)
    variables = jax.jit(BertForPreTraining(config).init)(jax.random.key(seed), ids)
    return traverse_util.flatten_dict(host_params(variables))


# ---------------------------------------------------------------------------------------------- files

def _tensor_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16 of its own; widening is exact
        tensor = tensor.float()
    return tensor.numpy()


def _read_torch_file(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"reading {path} needs torch (the CPU build is enough); install it or convert "
                              "the checkpoint to model.safetensors") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: _tensor_to_numpy(v) for k, v in state.items()}


def _read_weight_file(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    return _read_torch_file(path)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def read_hf_checkpoint(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, state dict of numpy arrays) of a transformers checkpoint directory (sharded too)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{directory!r} has no config.json; pass a transformers checkpoint directory")
    with open(config_path) as f:
        hf_config = json.load(f)
    found = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(directory, name))]
    if not found:
        raise ConversionError(f"{directory!r} has none of {WEIGHT_FILES}; save the model with save_pretrained")
    path = os.path.join(directory, found[0])
    if not path.endswith(".index.json"):
        return hf_config, _read_weight_file(path)
    with open(path) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state: dict[str, np.ndarray] = {}
    for shard in shards:
        part = _read_weight_file(os.path.join(directory, shard))
        clash = set(part) & set(state)
        if clash:
            raise ConversionError(f"shard {shard} repeats key(s) {_name_keys(clash)}")
        state.update(part)
    return hf_config, state


def load_hf_checkpoint(directory: str, heads: str = "init", seed: int = 0, scan_layers: bool = False,
                       **overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from a transformers BERT checkpoint directory (the layers stacked for nn.scan with
    `scan_layers`); `overrides` as in config_from_hf.
    A BertForSequenceClassification classifier is not part of BertForPreTraining: it is dropped with a
    warning (use read_hf_checkpoint + convert_hf_state_dict to get it as `task_head`)."""
    hf_config, state = read_hf_checkpoint(directory)
    config = config_from_hf(hf_config, **overrides)
    result = convert_hf_state_dict(state, config, heads=heads, seed=seed, scan_layers=scan_layers)
    if result.task_head is not None:
        warnings.warn(f"{directory}: dropping the sequence-classification layer {TASK_HEAD_KEYS}; "
                      "only the encoder and pretraining heads are returned", stacklevel=2)
    return config, result.params


# ----------------------------------------------------------------------------------- bert_jax -> HF

def hf_state_dict(config: ModelConfig, params: Mapping) -> dict[str, np.ndarray]:
    """transformers BertForPreTraining state dict (float32 numpy, tied decoder keys left out as
    save_pretrained does) of bert_jax params in either layer layout."""
    params = host_params(params)
    check_param_tree(params, config)
    flat = traverse_util.flatten_dict(relayout(params, config.num_layers, is_scanned(params), False))
    state = {}
    for link in param_links(config):
        for key, array in zip(link.hf_keys, link.to_hf(np.asarray(flat[link.path], np.float32))):
            state[key.format(base="bert.")] = np.ascontiguousarray(array)
    return state


def save_hf_checkpoint(directory: str, config: ModelConfig, params: Mapping) -> None:
    """Write config.json and model.safetensors loadable by transformers.BertForPreTraining.from_pretrained.
    Weights are written first and each file is replaced atomically, so a reader never sees a partial file."""
    from safetensors.numpy import save_file

    hf_config = hf_config_from_model(config)
    state = hf_state_dict(config, params)
    os.makedirs(directory, exist_ok=True)
    write_atomically(os.path.join(directory, "model.safetensors"),
                     lambda p: save_file(state, p, metadata={"format": "pt"}))

    def write_config(p):
        with open(p, "w") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)

    write_atomically(os.path.join(directory, "config.json"), write_config)
