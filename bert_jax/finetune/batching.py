"""Fixed-shape batches from fine-tuning features: rows bucketed by length into a few widths.

Each batch is [batch_size, width] for one of a handful of widths, so the step compiles once per width and
never per batch; a bucket's last batch is filled with weight-0 rows, so eval never drops an example and
training never drops one either (the loss divides by the summed weights). Rows are sliced, never truncated:
a row's width is always >= its length.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

# Arrays with a sequence axis (sliced to the bucket width); everything else is per row.
SEQUENCE_KEYS = ("input_ids", "token_type_ids", "tag_ids", "tag_weights", "word_ids", "offsets", "token_is_max_context")
# Per-row bookkeeping the model never reads.
HOST_ONLY_KEYS = ("example_index", "word_ids", "offsets", "token_is_max_context", "length")


def bucket_widths(max_len: int, num_buckets: int = 4, min_width: int = 16) -> tuple[int, ...]:
    """max_len, max_len/2, ... (at most num_buckets widths, none below min_width), ascending."""
    widths = [int(max_len)]
    while len(widths) < num_buckets and widths[-1] // 2 >= min_width:
        widths.append(widths[-1] // 2)
    return tuple(sorted(widths))


def assign_buckets(lengths: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """Index of the narrowest width that holds each row."""
    if len(lengths) and int(lengths.max()) > widths[-1]:
        raise ValueError(f"a row of length {int(lengths.max())} exceeds the widest bucket {widths[-1]}; "
                         "featurize with max_seq_len <= the bucket width")
    return np.searchsorted(np.asarray(widths), lengths, side="left")


def _take(features: Mapping[str, np.ndarray], rows: np.ndarray, width: int, batch_size: int) -> dict:
    """Rows `rows` cut to `width`, padded with weight-0 copies of row rows[0] up to batch_size."""
    real = len(rows)
    padded = np.concatenate([rows, np.full(batch_size - real, rows[0], rows.dtype)])
    batch = {}
    for key, value in features.items():
        value = value[padded]
        if key in SEQUENCE_KEYS:
            value = value[:, :width]
        batch[key] = np.ascontiguousarray(value)
    batch["input_mask"] = (np.arange(width)[None, :] < batch["length"][:, None]).astype(np.int32)
    weight = np.zeros(batch_size, np.float32)
    weight[:real] = 1.0
    batch["weight"] = weight
    if "tag_weights" in batch:
        batch["tag_weights"] = batch["tag_weights"] * weight[:, None]
    batch["row_index"] = padded.astype(np.int64)
    return batch


def iterate_batches(features: Mapping[str, np.ndarray], batch_size: int, widths: tuple[int, ...],
                    shuffle_seed: int | None = None) -> Iterator[dict]:
    """All rows once, in fixed-shape batches. With `shuffle_seed`, rows are shuffled within buckets and the
    batch order is shuffled too (the same seed gives the same order); without it, rows keep their order
    within each bucket (eval). `row_index` says which feature row each batch row is (padding repeats one)."""
    lengths = np.asarray(features["length"])
    buckets = assign_buckets(lengths, widths)
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    plan = []
    for b, width in enumerate(widths):
        rows = np.flatnonzero(buckets == b)
        if rng is not None:
            rows = rng.permutation(rows)
        plan.extend((width, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size))
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    for width, rows in plan:
        yield _take(features, rows, width, batch_size)


def num_batches(features: Mapping[str, np.ndarray], batch_size: int, widths: tuple[int, ...]) -> int:
    counts = np.bincount(assign_buckets(np.asarray(features["length"]), widths), minlength=len(widths))
    return int(sum(-(-c // batch_size) for c in counts))


def model_inputs(batch: Mapping[str, np.ndarray]) -> dict:
    """The arrays the jitted step takes (host bookkeeping left out, so it never triggers a recompile)."""
    return {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS and k != "row_index"}
