"""One weight loader: a pretraining checkpoint, a params file or a transformers directory -> `Weights`.

    weights = load_weights("runs/base@20000", "--init")
    weights.config, weights.params, weights.vocab_path, weights.fingerprint

`name` is how the user passed the path (a flag such as `--init`, or a config field such as `train.init_from`);
every error is one ValueError line (WeightsError) naming it, the path as typed, and what to pass instead.

What a path is, decided in this order (the first rule that matches wins; later rules are not looked at):
  1. `PATH@STEP`, when nothing is called `PATH@STEP` itself: checkpoint STEP of PATH, which must then be a
     checkpoint source (rules 3-5). `step=` does the same.
  2. A file: a params file (`bert-jax convert` / `bert-jax export`, `bert_jax.interop.save_params`).
  3. A directory holding `checkpoints/`: a pretraining workdir, read at its newest complete checkpoint.
  4. A directory named by a number that holds `state/` or the commit marker: one checkpoint step directory
     (`<workdir>/checkpoints/<step>`).
  5. A directory holding step directories: a run's `checkpoints/` directory, at its newest complete checkpoint.
  6. A directory holding `config.json`: a transformers checkpoint directory (config.json + model.safetensors
     or pytorch_model.bin, sharded or not); heads it lacks are initialised freshly, with a warning.
  7. A directory holding `*.msgpack` files: the one params file in it (several are an error: pass one).
A pretraining workdir also holds config.json; rule 3 comes first, so it is never read as a transformers
directory. The vocab is the checkpoint's data manifest's `vocab_path`, or the `vocab.txt` beside a params file
or inside a transformers directory, when there is one. Checkpoint sources may sit in a bucket (gs://..., read
through epath as orbax does); params files and transformers directories are read from local disk.

Params are host numpy arrays named as in `BertForPreTraining` ('encoder', 'pooler', 'mlm_head', 'nsp_head') plus
the other heads a checkpoint trained (`MODEL_HEADS`). Networks that serve pretraining only (ELECTRA's generator,
a distillation projection, ...) are dropped unless `pretraining_networks=True` (continued pretraining). The
fingerprint is a hash of the params returned, so the same model has the same fingerprint whatever carried it.

This module also owns the read-only side of the checkpoint layout written by `bert_jax.train.checkpoint`: which
step directories exist and are complete, whether a step's files match the checksums committed with it, and reading
one step's params, config and data manifest. A step is verified before its params are read: a damaged one is an
error naming it and the other complete steps, never read (steps written before checksums are read unverified, with
a warning). A params file is verified by `bert_jax.interop.load_params`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bert_jax.checksums import CHECKSUMS_FILE, ChecksumError, mismatches, recorded_checksums, tree_digest
from bert_jax.interop import config_from_hf, load_hf_checkpoint, load_params
from bert_jax.model.config import ModelConfig
from bert_jax.model.heads import ENCODER, HEAD_ALIASES, MODEL_HEADS
from bert_jax.model.params import is_scanned, to_scanned, to_unscanned

# One step directory of a run's checkpoints: the items `bert_jax.train.checkpoint` writes, the marker written last.
ITEM_NAMES = ("state", "data_iter", "config", "manifest")
COMMIT_MARKER = "commit_success.txt"
SOURCES = "a pretraining workdir[@STEP], a params file or a transformers checkpoint directory"

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights path that cannot be used; the message names it as the user passed it and what to pass instead."""


@dataclasses.dataclass(frozen=True)
class Weights:
    kind: str  # 'workdir' (a pretraining checkpoint), 'params' (a params file) or 'hf' (a transformers directory)
    path: str  # absolute: the workdir, checkpoint step directory, params file or transformers directory read
    config: ModelConfig  # the params' layer layout is their own (model.params.is_scanned)
    params: dict | None  # numpy, see the module docstring; None when loaded with params=False
    vocab_path: str | None  # the vocab.txt the weights were trained with, when the source records one
    fingerprint: str | None  # params_fingerprint(params); None without params
    step: int | None = None  # a checkpoint's step
    saved_config: dict | None = None  # a checkpoint's run config (objectives, data, ...)
    manifest: dict | None = None  # a checkpoint's pretraining-data manifest


@dataclasses.dataclass(frozen=True)
class _Source:
    kind: str  # 'workdir' | 'params' | 'hf'
    path: str  # absolute: what the user pointed at (the params file itself for a directory holding one)
    checkpoints: str | None = None  # 'workdir': the directory holding the step directories
    step: int | None = None  # 'workdir': the step asked for; None: the newest complete


def load_weights(path: str, name: str = "path", *, step: int | None = None, scan_layers: bool | None = None,
                 pretraining_networks: bool = False, params: bool = True) -> Weights:
    """Read `path` (see the module docstring for what it may be and the order of the checks).

    `step` picks a checkpoint step (as `path@STEP` does); `scan_layers` re-lays the layer stack out (stacked for
    nn.scan, or one subtree per layer) when it differs from the stored layout (None: as stored);
    `pretraining_networks` keeps networks that serve pretraining only; `params=False` reads the config, vocab and
    a checkpoint's run config and manifest without the params."""
    label = f"{name} {path}" if name.startswith("-") else f"{name}={path!r}"
    source = _locate(path, step, label)
    try:
        if source.kind == "workdir":
            weights = _from_checkpoint(source, label, params)
        elif source.kind == "hf":
            weights = _from_hf(source.path, params)
        else:
            weights = _from_params_file(source.path)
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError) as e:  # incl. ParamsFileError, ConversionError, JSONDecodeError
        reason = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(f"{label} could not be read ({type(e).__name__}: {reason}); pass a complete pretraining "
                           "workdir, params file or transformers checkpoint directory") from e
    if not params:
        return dataclasses.replace(weights, params=None)
    tree = weights.params if pretraining_networks else model_subtrees(weights.params)
    tree = _relayout(tree, scan_layers)
    return dataclasses.replace(weights, params=tree, fingerprint=params_fingerprint(tree))


def _locate(path: str, step: int | None, label: str) -> _Source:
    if not path:
        raise WeightsError(f"{label.rstrip()} is empty; pass {SOURCES}")
    if "@" in path and not storage_path(path).exists():
        path, _, step_text = path.rpartition("@")
        if not step_text.isdigit():
            raise WeightsError(f"{label}: the part after @ must be a checkpoint step number")
        if step is not None and step != int(step_text):
            raise WeightsError(f"{label} names step {step_text} but step {step} was asked for too; give one")
        step = int(step_text)
    if not storage_path(path).exists():  # checked before anything opens it: no reader may create a mistyped path
        raise WeightsError(f"{label} does not exist; point it at {SOURCES}")
    source = _classify(storage_path(path), step, label)
    if step is not None and source.kind != "workdir":
        raise WeightsError(f"{label}: a step applies to a pretraining workdir's checkpoints, and {path} is a "
                           f"{'transformers checkpoint directory' if source.kind == 'hf' else 'params file'}; "
                           "drop the step")
    return source


def _classify(path: epath.Path, step: int | None, label: str) -> _Source:
    # epath: a workdir in a bucket (gs://...) is found like a local one; params files and transformers
    # directories are read from local disk.
    if path.is_file():
        return _Source("params", str(path))
    if (path / "checkpoints").is_dir():
        return _Source("workdir", str(path), str(path / "checkpoints"), step)
    if path.name.isdigit() and ((path / "state").is_dir() or (path / COMMIT_MARKER).is_file()):
        if step is not None:
            raise WeightsError(f"{label} is one checkpoint step directory already; drop the step or point it at "
                               "the workdir")
        return _Source("workdir", str(path), str(path.parent), int(path.name))
    if step_directories(str(path)):
        return _Source("workdir", str(path), str(path), step)
    if (path / "config.json").is_file():
        return _Source("hf", str(path))
    files = sorted(p.name for p in path.iterdir() if p.name.endswith(".msgpack"))
    if len(files) > 1:
        raise WeightsError(f"{label} holds several params files ({', '.join(files)}); pass one of them")
    if files:
        return _Source("params", str(path / files[0]))
    raise WeightsError(f"{label} is neither a pretraining workdir (no checkpoints/), a checkpoint step directory, "
                       "a transformers checkpoint directory (no config.json), a directory with a params file (no "
                       "*.msgpack) nor a params file; check the path")


# ------------------------------------------------------------------------------------------ the sources


def _from_checkpoint(source: _Source, label: str, with_params: bool) -> Weights:
    directory, step = source.checkpoints, source.step
    complete = complete_steps(directory)
    if not complete:
        raise WeightsError(f"{label} holds no complete checkpoint in {directory}; point it at a pretraining workdir "
                           "whose run saved one (bert-jax pretrain --workdir ...)")
    step = complete[-1] if step is None else step
    if step not in complete:
        raise WeightsError(f"{label}: step {step} is not a complete checkpoint in {directory}; pick one of the "
                           f"complete steps {complete}")
    step_dir = str(storage_path(directory) / str(step))
    damaged = checksum_problem(step_dir) if with_params else None
    if damaged:
        others = [s for s in complete if s != step]
        raise WeightsError(f"{label}: checkpoint step {step} in {directory} is {damaged}; pass another step "
                           f"({'one of ' + str(others) if others else 'none is complete'}), or resume its pretraining "
                           "run, which sets the damaged step aside")
    if with_params and not has_checksums(step_dir):
        log.warning("%s: checkpoint step %d was written before checkpoints carried checksums; read unverified",
                    label, step)
    params, saved, manifest = read_checkpoint(step_dir, with_params)
    config = model_config_from_saved(saved)
    vocab = _moved_vocab((manifest or {}).get("vocab_path"), directory)
    return Weights("workdir", source.path, config, params, vocab, None, step, saved, manifest)


def _moved_vocab(recorded: str | None, checkpoints: str) -> str | None:
    """The vocab path the run's data recorded; when it is gone because the workdir moved (and the built-in data
    inside it moved along), the same file under this workdir, found by the longest tail of the recorded path."""
    if not recorded or os.path.exists(recorded) or "://" in str(checkpoints):
        return recorded
    workdir = os.path.dirname(os.path.abspath(str(checkpoints)))
    parts = [p for p in recorded.split(os.sep) if p]
    for i in range(len(parts) - 1):  # a tail of at least a folder and the file, never a bare vocab.txt
        candidate = os.path.join(workdir, *parts[i:])
        if os.path.isfile(candidate):
            return candidate
    return recorded


def _from_hf(directory: str, with_params: bool) -> Weights:
    if with_params:
        config, params = load_hf_checkpoint(directory, heads="init")
    else:
        with open(os.path.join(directory, "config.json")) as f:
            config, params = config_from_hf(json.load(f)), None
    return Weights("hf", directory, config, params, _beside(directory, "vocab.txt"), None)


def _from_params_file(path: str) -> Weights:
    config, params = load_params(path)
    return Weights("params", path, config, params, _beside(os.path.dirname(path), "vocab.txt"), None)


def _beside(directory: str, name: str) -> str | None:
    path = os.path.join(directory, name)
    return path if os.path.exists(path) else None


def model_config_from_saved(saved: dict) -> ModelConfig:
    """The ModelConfig of a pretraining run's saved config (its `model` section, a preset under its fields, as
    ModelConfig.from_dict reads it; causal when it trained LTR)."""
    values = dict(saved["model"])
    # Pretraining makes the model causal for LTR (run_setup.resolve_model) without recording it in `model`.
    terms = [t.rpartition("*")[2] for t in str(saved.get("objectives", "")).replace(" ", "").split("+")]
    if "ltr" in terms:
        values["causal"] = True
    return ModelConfig.from_dict(values)


# ------------------------------------------------------------------------------------------ params trees


def model_subtrees(params: dict) -> dict:
    """The encoder and MODEL_HEADS of `params`, without networks that serve pretraining only."""
    return {k: v for k, v in params.items() if k == ENCODER or k in MODEL_HEADS}


def find_head(params: dict, name: str) -> str | None:
    """The name under which `params` holds head `name` (itself, else its alias), or None."""
    for candidate in (name, HEAD_ALIASES.get(name)):
        if candidate in params:
            return candidate
    return None


def params_fingerprint(params: Any) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes: names the weights whatever file carried them."""
    return tree_digest(params)[:16]


def _relayout(params: dict, scan_layers: bool | None) -> dict:
    """The stored tree, not any run config, says how its layers are laid out (ALBERT's shared layer has one)."""
    if scan_layers is None or scan_layers == is_scanned(params):
        return params
    return jax.tree.map(np.asarray, to_scanned(params) if scan_layers else to_unscanned(params))


# ------------------------------------------------------------------------------------------ checkpoints, read-only


def storage_path(directory: Any) -> epath.Path:
    # epath so that gs:// directories work like local ones (orbax uses it too).
    text = str(directory)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def list_children(directory: Any) -> list[epath.Path]:
    path = storage_path(directory)
    return sorted(path.iterdir(), key=lambda p: p.name) if path.is_dir() else []


def step_directories(directory: str) -> list[tuple[int, str]]:
    """(step, path) of every finished-looking step directory, oldest first (may still be corrupt)."""
    return sorted((int(p.name), str(p)) for p in list_children(directory) if p.name.isdigit())


def complete_steps(directory: str) -> list[int]:
    """Steps whose directory carries the commit marker, oldest first (contents are not verified)."""
    return [step for step, path in step_directories(directory) if incomplete_reason(path) is None]


def incomplete_reason(path: str) -> str | None:
    """Why the step directory `path` is not a complete checkpoint, or None when it is."""
    if not (storage_path(path) / COMMIT_MARKER).is_file():
        return f"missing commit marker {COMMIT_MARKER}"
    missing = [name for name in ITEM_NAMES if not (storage_path(path) / name).is_dir()]
    return f"missing items {missing}" if missing else None


def has_checksums(path: str) -> bool:
    """Whether step directory `path` carries checksums (steps written before they existed do not)."""
    return (storage_path(path) / CHECKSUMS_FILE).exists()


def checksum_problem(path: str, share: tuple[int, int] = (0, 1)) -> str | None:
    """Why step directory `path` fails its checksums ('damaged: state/d/1f2e does not match its checksum'), or None
    when every file checked matches or the step carries no checksums (see `has_checksums`). `share` (i, n): check
    every n-th file from the i-th, for n processes verifying one step together."""
    try:
        expected = recorded_checksums(storage_path(path))
        problems = mismatches(storage_path(path), expected, share) if expected is not None else []
    except ChecksumError as e:
        problems = [str(e)]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"damaged: {problems[0]}{more}"


def read_checkpoint(step_dir: str, with_params: bool = True) -> tuple[dict | None, dict, dict | None]:
    """(numpy params or None, run config, data manifest) of one step
    directory. Only the params are read of the train state, onto this process's first device, whatever topology
    wrote them."""
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "data_iter": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(), "manifest": ocp.JsonCheckpointHandler()}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler(**handlers)) as checkpointer:
        state = checkpointer.metadata(step_dir).item_metadata["state"]
        stored = getattr(state, "tree", state)["params"]
        args = {"config": ocp.args.JsonRestore(), "manifest": ocp.args.JsonRestore()}
        if with_params:
            one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device),
                                             stored)}
            restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=one_device), target)
            args["state"] = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        restored = checkpointer.restore(step_dir, args=ocp.args.Composite(**args))
    params = jax.device_get(restored["state"]["params"]) if with_params else None
    return params, restored["config"], restored["manifest"]
