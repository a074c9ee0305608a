"""Content checksums: a sha256 of everything written, checked before anything reads it back.

A bit flip or a truncation that leaves a file readable would otherwise be trained on, exported or fine-tuned from
as if it were good (an array file with 64 flipped bytes restores without complaint and turns into NaN params).
Where each writer keeps them:
  - a checkpoint step: `<step>/checksums.json` ({"algorithm": "sha256", "files": {relative path: hex}}), written
    by the commit right before the commit marker (`bert_jax/train/commit.py`), verified before a restore
    (`bert_jax/train/checkpoint.py`) and before `bert_jax.weights` reads a step;
  - a make-data shard: "checksums" ({file name: hex}) in its meta.json and in the manifest's entry for it,
    verified when the shard is opened (`bert_jax/data/shards.py`);
  - a params file: a "checksum" entry inside it, over its model config and every array (`content_digest`).
Things written before checksums existed carry none and are read unverified (the readers say so).

sha256 rather than crc32 or blake2b: hashlib's sha256 runs on the CPU's SHA instructions, measured at ~1.0 GB/s
here against crc32's ~1.5 GB/s and blake2b's ~0.55 GB/s, and a 256-bit digest needs no argument about which
corruptions it can miss. Files are streamed in 1 MiB chunks, so memory stays flat whatever their size.

This module imports nothing else of bert_jax: the checkpoint, weights, params-file and data code all use it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

ALGORITHM = "sha256"
CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file whose contents differ from the checksum recorded when it was written; the message names it."""


def file_digest(path: Any) -> str:
    """Hex sha256 of a file's bytes; `path` may be a str or an etils.epath.Path (a bucket, as orbax reads)."""
    digest = hashlib.sha256()
    opener = path.open if hasattr(path, "open") and not isinstance(path, str) else lambda mode: open(path, mode)
    with opener("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(tree: Any) -> str:
    """Hex sha256 over every leaf's path, dtype, shape and bytes (leaves in path order): names an array tree
    whatever file carried it. `bert_jax.weights.params_fingerprint` is its first 16 characters."""
    import jax  # here: the data pipeline's readers of this module never need jax

    digest = hashlib.sha256()
    leaves = sorted(jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda kv: jax.tree_util.keystr(kv[0]))
    for path, leaf in leaves:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def content_digest(config_json: str, params: Any) -> str:
    """The checksum a params file carries: its model config (as stored) and its params tree."""
    return f"{ALGORITHM}:" + hashlib.sha256(config_json.encode() + tree_digest(params).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ directories


def _files(root: Any, exclude: Iterable[str]) -> list[str]:
    """Relative '/'-joined paths of the files under `root` (an epath.Path), sorted, without `exclude`."""
    out, skip = [], set(exclude)

    def walk(directory, prefix):
        for child in directory.iterdir():
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            elif rel not in skip:
                out.append(rel)

    walk(root, "")
    return sorted(out)


def write_directory_checksums(root: Any, exclude: Iterable[str] = ()) -> dict[str, str]:
    """Write `root/checksums.json` over every file under `root` (an epath.Path) but `exclude`; returns the map."""
    files = {rel: file_digest(root / rel) for rel in _files(root, {CHECKSUMS_FILE, *exclude})}
    (root / CHECKSUMS_FILE).write_text(json.dumps({"algorithm": ALGORITHM, "files": files}, indent=1,
                                                  sort_keys=True))
    return files


def recorded_checksums(root: Any) -> dict[str, str] | None:
    """The {relative path: hex} that `root/checksums.json` records; None when there is no such file (written before
    checksums); ChecksumError when it cannot be read (a damaged checksums file is a damaged directory)."""
    path = root / CHECKSUMS_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
        files = recorded["files"]
        if recorded.get("algorithm") != ALGORITHM or not isinstance(files, dict):
            raise ValueError(f"algorithm {recorded.get('algorithm')!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ChecksumError(f"{CHECKSUMS_FILE} is unreadable ({type(e).__name__})") from None
    return files


def mismatches(root: Any, expected: Mapping[str, str], share: tuple[int, int] = (0, 1)) -> list[str]:
    """The files under `root` whose bytes differ from `expected` ({relative path: hex}), each with why. `share`
    (i, n): only every n-th file from the i-th, so n processes can verify one directory together."""
    index, count = share
    problems = []
    for rel in sorted(expected)[index::count]:
        path = root / rel
        if not path.exists():
            problems.append(f"{rel} is missing")
        elif file_digest(path) != expected[rel]:
            problems.append(f"{rel} does not match its checksum")
    return problems


# ------------------------------------------------------------------------------------------ plain files


# Files verified by this process, by (path, size, mtime, expected digest): a dataset reopened for each in-run eval
# is read once, not at every eval. A file rewritten since changes its mtime and is verified again.
_VERIFIED: set[tuple] = set()


def verify_files(expected: Mapping[str, str]) -> list[str]:
    """The paths of `expected` ({local path: hex}) whose bytes differ (or that are missing)."""
    bad = []
    for path, want in expected.items():
        try:
            stat = os.stat(path)
        except OSError:
            bad.append(path)
            continue
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, want)
        if key in _VERIFIED:
            continue
        if file_digest(path) != want:
            bad.append(path)
        else:
            _VERIFIED.add(key)
    return bad
