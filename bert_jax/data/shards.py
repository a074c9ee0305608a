"""On-disk format of pretraining examples: a directory of shards plus a manifest.

    out_dir/
      manifest.json          written last, atomically: its presence means the dataset is complete
      shard-00000/           one directory per shard, renamed into place only when complete
        input_ids.npy        int32 [N, L]   [CLS] A [SEP] (B [SEP]) then [PAD]
        token_type_ids.npy   int8  [N, L]
        word_start.npy       bool  [N, L]   True where a token begins a word (whole-word/span masking)
        length.npy           int32 [N]      number of real tokens
        sentence_label.npy   int8  [N]      NSP: 1 = random B; SOP: 1 = swapped; -1 = no label
        meta.json            counts for this shard (examples, documents, skipped by reason) and the checksums

Every shard records a sha256 of each .npy file ("checksums" in its meta.json and in its manifest entry);
`open_examples` verifies them before handing the shard out (once per process for a file unchanged since), so a
damaged shard is an error naming it, never trained on. Datasets built before checksums are read unverified.
Shards are memory-mapped on read; verifying reads each file once, sequentially (about 1 GB/s).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from bert_jax.checksums import file_digest, verify_files

FIELDS: dict[str, tuple[np.dtype, bool]] = {
    # name: (dtype, per-token)
    "input_ids": (np.dtype(np.int32), True),
    "token_type_ids": (np.dtype(np.int8), True),
    "word_start": (np.dtype(np.bool_), True),
    "length": (np.dtype(np.int32), False),
    "sentence_label": (np.dtype(np.int8), False),
}
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class DataError(ValueError):
    """Bad or incomplete data on disk; the message names the path and the fix."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def write_json_atomic(path: str, obj: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(final: str, prefix: str):
    """Yields a temporary directory beside `final`; on success it replaces `final` in one rename, on any error
    it is removed, so readers only ever see a complete directory."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{prefix}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_shard(out_dir: str, index: int, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict:
    """Write one shard under a temporary name, then rename it into place (atomic on POSIX); returns the checksums
    ({file name: sha256}) it recorded in its meta.json."""
    n = len(arrays["input_ids"])
    for name, (dtype, per_token) in FIELDS.items():
        if name not in arrays:
            raise DataError(f"shard {index}: missing field {name!r}")
        a = arrays[name]
        if a.shape[0] != n or (per_token and a.shape != arrays["input_ids"].shape):
            raise DataError(f"shard {index}: field {name!r} has shape {a.shape}, expected [{n}{', L' if per_token else ''}]")
    final = os.path.join(out_dir, shard_name(index))
    checksums = {}
    with atomic_directory(final, shard_name(index)) as tmp:
        for name, (dtype, _) in FIELDS.items():
            path = os.path.join(tmp, f"{name}.npy")
            with open(path, "wb") as f:
                np.save(f, np.ascontiguousarray(arrays[name], dtype=dtype))
                f.flush()
                os.fsync(f.fileno())
            checksums[f"{name}.npy"] = file_digest(path)  # read back from the page cache
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"examples": int(n), **meta, "checksums": checksums}, f, indent=2, sort_keys=True)
    return checksums


def damaged_files(shard_dir: str, checksums: Mapping[str, str] | None) -> list[str]:
    """The files of `shard_dir` that differ from `checksums` ({file name: sha256}); none to check: []."""
    if not checksums:
        return []
    return [os.path.basename(p) for p in verify_files({os.path.join(shard_dir, k): v for k, v in checksums.items()})]


def damaged_shards(out_dir: str, manifest: Mapping[str, Any]) -> list[str]:
    """Names of the manifest's shards that are missing or whose files differ from their checksums."""
    return [entry["name"] for entry in manifest["shards"]
            if not os.path.isdir(os.path.join(out_dir, entry["name"]))
            or damaged_files(os.path.join(out_dir, entry["name"]), entry.get("checksums"))]


def shard_is_complete(out_dir: str, index: int) -> bool:
    """Finished (its meta.json is written last) and its files match the checksums that meta.json records."""
    meta_path = os.path.join(out_dir, shard_name(index), "meta.json")
    if not os.path.isfile(meta_path):
        return False
    try:
        with open(meta_path) as f:
            checksums = json.load(f).get("checksums")
    except ValueError:  # a damaged meta.json: the shard is built again
        return False
    return not damaged_files(os.path.dirname(meta_path), checksums)


@dataclass(frozen=True)
class Examples:
    """Random access over all shards of a dataset; `take` gathers rows with vectorised numpy."""

    path: str
    manifest: dict
    shards: tuple[dict[str, np.ndarray], ...]
    offsets: np.ndarray  # offsets[i] = index of the first example of shard i; offsets[-1] = total

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"example index out of range [0, {len(self)}) in {self.path}")
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        out = {}
        for name, (dtype, per_token) in FIELDS.items():
            shape = (len(indices), self.seq_len) if per_token else (len(indices),)
            out[name] = np.empty(shape, dtype=dtype)
        for s in np.unique(shard_of):
            rows = np.nonzero(shard_of == s)[0]
            local = indices[rows] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # sorted reads are kinder to mmap
            for name in FIELDS:
                out[name][rows[order]] = self.shards[s][name][local[order]]
        return out


def read_manifest(path: str) -> dict:
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise DataError(
            f"{path} has no {MANIFEST}: the dataset is missing or was not finished; rerun `bert-jax make-data` "
            "with the same arguments (finished shards are kept)"
        )
    with open(manifest_path) as f:
        return json.load(f)


def open_examples(path: str, manifest: dict | None = None, verify: bool = True) -> Examples:
    """All shards of a finished dataset, each verified against its checksums (`verify`); the builder passes the
    manifest it is about to write, to read its own output before the manifest marks it finished."""
    manifest = read_manifest(path) if manifest is None else manifest
    shards, offsets = [], [0]
    for entry in manifest["shards"]:
        shard_dir = os.path.join(path, entry["name"])
        arrays = {}
        for name in FIELDS:
            file = os.path.join(shard_dir, f"{name}.npy")
            if not os.path.isfile(file):
                raise DataError(f"{file} is missing; rebuild the dataset with `bert-jax make-data`")
        damaged = damaged_files(shard_dir, entry.get("checksums")) if verify else []
        if damaged:
            raise DataError(f"{os.path.join(shard_dir, damaged[0])} does not match its checksum in "
                            f"{os.path.join(path, MANIFEST)}: the shard is damaged; rebuild it by running the "
                            f"`bert-jax make-data` command that built {path} again (it rebuilds damaged shards only)")
        for name in FIELDS:
            arrays[name] = np.load(os.path.join(shard_dir, f"{name}.npy"), mmap_mode="r")
        if len(arrays["input_ids"]) != entry["examples"]:
            raise DataError(f"{shard_dir} holds {len(arrays['input_ids'])} examples, the manifest says {entry['examples']}; rebuild it")
        shards.append(arrays)
        offsets.append(offsets[-1] + entry["examples"])
    return Examples(path=path, manifest=manifest, shards=tuple(shards), offsets=np.asarray(offsets, np.int64))
