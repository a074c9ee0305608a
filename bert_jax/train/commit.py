"""The commit of a checkpoint step: its checksums are written with the commit marker, never after it.

orbax (0.12) commits a step in `TemporaryPath.finalize`, run once on the primary process after every process has
written its files (and after each item's own finalize): the local class writes `commit_success.txt` into
`<step>.orbax-checkpoint-tmp` and renames that to `<step>`; the bucket class (gs://) writes the marker into `<step>`
itself. Subclassing both to write `checksums.json` first means a step that carries the marker carries its
checksums, for a crash at any moment: there is no window in which a committed step could be read unverified.

Which files are checked: every file of the step except two that orbax writes after our checksums, in the same
finalize: the marker itself and the step's `_CHECKPOINT_METADATA` (stamped with the commit time). orbax hands the
same class to each item's temporary directory; those (named 'state', 'config', ...) are committed unchanged.
"""
from __future__ import annotations

import asyncio

from etils import epath
from orbax.checkpoint._src.path import atomicity, atomicity_defaults

from bert_jax.checksums import write_directory_checksums
from bert_jax.weights import COMMIT_MARKER

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
