"""The bert_jax params file (what `bert-jax convert` and `export` write) and the params-tree utilities it uses.

Params file format ("bert_jax.params/1"): ONE msgpack file (flax.serialization) holding a dict
    {"format": "bert_jax.params/1", "model_config": <JSON of ModelConfig.to_dict()>, "params": <tree>,
     "checksum": "sha256:<hex>"}
where the tree is the unboxed `params` collection of `BertForPreTraining(config)` as numpy arrays, in either layer
layout (per layer, or stacked for `speed.scan_layers`; the tree shows which, see `bert_jax.model.params.is_scanned`).
It is written to a temporary name and renamed, so a reader never sees a partial file. Task models reuse the
encoder subtree (`params["encoder"]`).

The checksum (`bert_jax.checksums.content_digest`) covers the model config and every array's path, dtype, shape and
bytes; `load_params` checks it, so a bit flip that leaves the file readable is an error naming the file, as is a
truncated file. Files written before the checksum existed have none and load unverified (older readers ignore it).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from bert_jax.checksums import content_digest
from bert_jax.model import BertForPreTraining, ModelConfig, SpeedConfig
from bert_jax.model.params import is_scanned

PARAMS_FORMAT = "bert_jax.params/1"


class ParamsFileError(ValueError):
    """A params file that is missing, of another format, or inconsistent with its model config."""


def expected_param_shapes(config: ModelConfig, scanned: bool = False) -> dict:
    """ShapeDtypeStructs of the unboxed `params` collection of BertForPreTraining(config) (in the scanned layout if
    `scanned`), without allocating."""
    ids = jnp.zeros((1, 2), jnp.int32)
    model = BertForPreTraining(config, SpeedConfig(scan_layers=scanned))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
    return nn.meta.unbox(shapes)["params"]


def host_params(params: Mapping) -> dict:
    """Unboxed numpy copy of `params`; accepts boxed trees and a {'params': ...} variables dict."""
    params = nn.meta.unbox(params)
    if set(params) == {"params"}:
        params = params["params"]
    return jax.tree_util.tree_map(np.asarray, jax.device_get(dict(params)))


def check_param_tree(params: Mapping, config: ModelConfig, what: str = "params") -> None:
    """Raise ParamsFileError unless `params` has exactly the paths and shapes BertForPreTraining(config) has (in the
    layout `params` is in)."""
    scanned = is_scanned(params)
    want = {k: v.shape for k, v in traverse_util.flatten_dict(expected_param_shapes(config, scanned), sep="/").items()}
    have = {k: np.shape(v) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(f"{k} {have[k]} (want {want[k]})" for k in set(want) & set(have) if have[k] != want[k])
    if missing or extra or wrong:
        raise ParamsFileError(f"{what} do not match model config ({'scanned' if scanned else 'per-layer'} layout): "
                              f"missing {missing[:8]}, unexpected {extra[:8]}, wrong shape {wrong[:8]}")


def to_scanned_layout(params: Mapping, num_layers: int) -> dict:
    """`encoder/layer_{i}/...` -> `encoder/layers/layer/...` with a leading layer axis (speed.scan_layers=True)."""
    encoder = dict(params["encoder"])
    layers = [encoder.pop(f"layer_{i}") for i in range(num_layers)]
    encoder["layers"] = {"layer": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)}
    return {**params, "encoder": encoder}


def to_unscanned_layout(params: Mapping, num_layers: int) -> dict:
    """Inverse of `to_scanned_layout`."""
    encoder = dict(params["encoder"])
    stacked = encoder.pop("layers")["layer"]
    for i in range(num_layers):
        encoder[f"layer_{i}"] = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), stacked)
    return {**params, "encoder": encoder}


def relayout(params: Mapping, num_layers: int, from_scanned: bool, to_scanned: bool) -> dict:
    if from_scanned == to_scanned:
        return dict(params)
    if to_scanned:
        return to_scanned_layout(params, num_layers)
    return to_unscanned_layout(params, num_layers)


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_params(path: str, config: ModelConfig, params: Mapping) -> None:
    """Write `params` (boxed or not, on device or host) with `config` to one atomically-replaced file."""
    params = host_params(params)
    check_param_tree(params, config)
    config_json = json.dumps(config.to_dict())
    payload = serialization.msgpack_serialize({"format": PARAMS_FORMAT, "model_config": config_json, "params": params,
                                               "checksum": content_digest(config_json, params)})
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(payload)

    write_atomically(path, write)


def _checksum_matches(payload: dict) -> bool:
    try:
        return payload["checksum"] == content_digest(payload["model_config"], payload["params"])
    except (KeyError, TypeError, AttributeError, ValueError):  # a damaged tree or config: not what was written
        return False


def load_params(path: str, scan_layers: bool = False) -> tuple[ModelConfig, dict]:
    """(ModelConfig, numpy params) from a file written by `save_params`, with the layers one subtree each, or
    stacked for nn.scan with `scan_layers`, whichever layout the file holds."""
    if not os.path.isfile(path):
        raise ParamsFileError(f"params file {path!r} does not exist; write it with `bert-jax convert` or save_params")
    damaged = f"params file {path!r} is damaged"
    fix = "write it again (`bert-jax export` or `bert-jax convert`) or copy it again from where it came from"
    with open(path, "rb") as f:
        data = f.read()
    try:
        payload = serialization.msgpack_restore(data)
    except Exception as e:  # noqa: BLE001 -- msgpack raises ValueError, ExtraData, TypeError... for a cut file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ParamsFileError(f"{damaged} or not a params file ({len(data)} bytes; msgpack: {reason}); {fix}") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != PARAMS_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ParamsFileError(f"{path!r} is not a {PARAMS_FORMAT} file (format {found!r}); "
                              "convert it with `bert-jax convert`")
    if "checksum" in payload and not _checksum_matches(payload):
        raise ParamsFileError(f"{damaged}: its contents do not match the checksum it was written with; {fix}")
    config = ModelConfig.from_dict(json.loads(payload["model_config"]))
    params = payload["params"]
    check_param_tree(params, config, f"params in {path!r}")
    params = relayout(params, config.num_layers, is_scanned(params), scan_layers)
    return config, params
