"""Checkpoint checksums: written with the commit marker, verified before a step is restored or called good.

orbax (0.12) commits a step in `TemporaryPath.finalize`, run once on the primary process after every process has
written its files (and after each item's own finalize): the local class writes `commit_success.txt` into
`<step>.orbax-checkpoint-tmp` and renames that to `<step>`; the bucket class (gs://) writes the marker into `<step>`
itself. Subclassing both to write `checksums.json` first means a step that carries the marker carries its
checksums, for a crash at any moment: there is no window in which a committed step could be read unverified.

Which files are checked: every file of the step except two that orbax writes after our checksums, in the same
finalize: the marker itself and the step's `_CHECKPOINT_METADATA` (stamped with the commit time). orbax hands the
same class to each item's temporary directory; those (named 'state', 'config', ...) are committed unchanged.

Steps written before checksums existed carry none: they are restored unverified, with a warning, and never
called good by `last_verified_step` (the step a NaN stop names).
"""
from __future__ import annotations

import asyncio
import logging

import jax
import numpy as np
from etils import epath
from orbax.checkpoint._src.path import atomicity, atomicity_defaults

from bert_jax.checksums import write_directory_checksums
from bert_jax.weights import (COMMIT_MARKER, checksum_problem, has_checksums, incomplete_reason,
                              step_directories)

log = logging.getLogger(__name__)
STEP_METADATA = "_CHECKPOINT_METADATA"
NOT_CHECKSUMMED = (COMMIT_MARKER, STEP_METADATA)


class _WithChecksums:
    async def finalize(self) -> None:
        if self.get_final().name.isdigit():  # a step; items are named by what they hold
            await asyncio.to_thread(write_directory_checksums, self.get(), NOT_CHECKSUMMED)
        await super().finalize()


class ChecksummedRename(_WithChecksums, atomicity.AtomicRenameTemporaryPath):
    """Local disks: checksums, the marker, then the rename that makes the step visible."""


class ChecksummedCommitFile(_WithChecksums, atomicity.CommitFileTemporaryPath):
    """Buckets (gs://), where renaming a directory is not atomic: checksums, then the marker."""


def temporary_path_class(directory: str) -> type:
    """The class orbax would choose for `directory`, with checksums."""
    chosen = atomicity_defaults.get_default_temporary_path_class(epath.Path(directory))
    return ChecksummedCommitFile if issubclass(chosen, atomicity.CommitFileTemporaryPath) else ChecksummedRename


def unusable_reason(path: str) -> str | None:
    """Why step `path` cannot be restored (no commit marker, an item missing, a file that fails its checksum), agreed
    by every process: each reads a share of the files, and each calls the one collective for every step."""
    reason = incomplete_reason(path) or checksum_problem(path, (jax.process_index(), jax.process_count()))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        failed = np.asarray(multihost_utils.process_allgather(np.int32(reason is not None)))
        if failed.any() and reason is None:
            reason = f"damaged or incomplete on process {int(np.argmax(failed))} (its log says which file)"
    if reason is None and not has_checksums(path):
        log.warning("checkpoint %s was written before checkpoints carried checksums; restored unverified", path)
    return reason


def last_verified_step(directory: str) -> int | None:
    """The newest complete step whose files all match their checksums (never one written without them)."""
    for step, path in reversed(step_directories(directory)):
        if incomplete_reason(path) is None and has_checksums(path) and checksum_problem(path) is None:
            return step
    return None
