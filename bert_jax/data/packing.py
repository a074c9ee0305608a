"""Which examples make up each row of an epoch (shuffle, optional packing), and building those rows.

Unpacked, row r of epoch e is example perm_e(r), where perm_e is a keyed Feistel bijection of
[0, N) evaluated lazily for just the rows of a batch: nothing of size N is ever materialised.

Packed (single-segment modes), the epoch's shuffled order is cut greedily into rows (next fit: an
example joins the current row if it fits in seq_len, else starts a new one), so examples are never
split and their order is preserved. This plan needs the lengths of all N examples once per epoch.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from bert_jax.data.masking import splitmix64
from bert_jax.data.shards import Examples

_FEISTEL_ROUNDS = 4  # even, so the unbalanced halves end where they started
_SHUFFLE_SALT = 0x5EED5EED


def permute(indices: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """perm(indices) for a pseudo-random permutation of [0, n) keyed by (seed, epoch).

    A Feistel network on the k-bit domain, 2**k >= n > 2**(k-1) (unbalanced halves when k is odd; an
    even number of rounds restores the split), with cycle walking for values that land outside [0, n):
    fewer than 2 passes expected. Vectorised over `indices`.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(indices)
    bits = int(n - 1).bit_length()
    high_bits = bits // 2
    low_bits = bits - high_bits
    with np.errstate(over="ignore"):
        key = splitmix64(np.asarray([seed & (2**64 - 1)], np.uint64) ^ np.uint64(_SHUFFLE_SALT))
        key = splitmix64(key ^ np.uint64(epoch & (2**64 - 1)))
        round_keys = splitmix64(key + np.arange(_FEISTEL_ROUNDS, dtype=np.uint64))

        def encrypt(x: np.ndarray) -> np.ndarray:
            a_bits, b_bits = high_bits, low_bits
            a, b = x >> np.uint64(b_bits), x & np.uint64((1 << b_bits) - 1)
            for k in round_keys:  # (a, b) -> (b, a ^ F(b)): a bijection whatever the widths
                a, b = b, a ^ (splitmix64(b ^ k) & np.uint64((1 << a_bits) - 1))
                a_bits, b_bits = b_bits, a_bits
            return (a << np.uint64(b_bits)) | b

        out = encrypt(indices.astype(np.uint64))
        outside = out >= np.uint64(n)
        while outside.any():
            out[outside] = encrypt(out[outside])
            outside = out >= np.uint64(n)
    return out.astype(np.int64)


@dataclass(frozen=True)
class EpochRows:
    """The rows of one epoch. Packed plans hold `order` and `row_starts`; unpacked ones compute lazily."""

    num_examples: int
    num_rows: int
    seed: int
    epoch: int
    shuffle: bool
    order: np.ndarray | None = None  # packed: example ids in epoch order
    row_starts: np.ndarray | None = None  # packed: row r holds order[row_starts[r]:row_starts[r + 1]]


def plan_epoch(num_examples: int, seed: int, epoch: int, shuffle: bool, lengths: np.ndarray | None = None,
               seq_len: int | None = None) -> EpochRows:
    """Rows of one epoch; pass `lengths` and `seq_len` to pack."""
    if lengths is None:
        return EpochRows(num_examples, num_examples, seed, epoch, shuffle)
    order = np.arange(num_examples, dtype=np.int64)
    if shuffle:
        order = permute(order, num_examples, seed, epoch)
    ends = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64)[order])]).tolist()
    starts, start = [], 0
    while start < num_examples:  # next fit; one bisect per row
        starts.append(start)
        start = max(start + 1, bisect.bisect_right(ends, ends[start] + seq_len, lo=start + 1) - 1)
    starts.append(num_examples)
    return EpochRows(num_examples, len(starts) - 1, seed, epoch, shuffle, order, np.asarray(starts, np.int64))


def row_examples(plan: EpochRows, rows: np.ndarray) -> np.ndarray:
    """int64 [R, K]: example ids of each requested row in row order, -1 where there is none.

    Rows outside [0, num_rows) come back as all -1 (padding rows).
    """
    rows = np.asarray(rows, dtype=np.int64)
    inside = (rows >= 0) & (rows < plan.num_rows)
    safe = np.where(inside, rows, 0)
    if plan.order is None:
        ids = permute(safe, plan.num_examples, plan.seed, plan.epoch) if plan.shuffle else safe
        return np.where(inside, ids, -1)[:, None]
    first, stop = plan.row_starts[safe], plan.row_starts[safe + 1]
    count = np.where(inside, stop - first, 0)
    k = max(int(count.max(initial=0)), 1)
    slot = np.arange(k)[None, :]
    present = slot < count[:, None]
    ids = plan.order[np.where(present, first[:, None] + slot, 0)]
    return np.where(present, ids, -1)


def assemble_rows(examples: Examples, example_ids: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """Rows of the batch contract (before masking) from [R, K] example ids (-1 = none).

    Packed examples follow each other; input_mask numbers them 1, 2, ... and position_ids restart at 0.
    Also returns word_start (for masking) and row_keys (the first example id per row, -1 for padding).
    """
    example_ids = np.asarray(example_ids, dtype=np.int64)
    n_rows, _ = example_ids.shape
    seq_len = examples.seq_len
    present = example_ids >= 0
    row_of, slot_of = np.nonzero(present)
    data = examples.take(example_ids[present])
    lengths = data["length"].astype(np.int64)
    grid = np.zeros(example_ids.shape, np.int64)
    grid[row_of, slot_of] = lengths
    offset = (np.cumsum(grid, axis=1) - grid)[row_of, slot_of]
    if np.any(offset + lengths > seq_len):
        raise ValueError(f"packed rows overflow seq_len={seq_len}; the packing plan does not match {examples.path}")
    ex, tok = np.nonzero(np.arange(seq_len)[None, :] < lengths[:, None])
    dest_row, dest_col = row_of[ex], offset[ex] + tok

    out = {
        "input_ids": np.full((n_rows, seq_len), pad_id, np.int32),
        "token_type_ids": np.zeros((n_rows, seq_len), np.int32),
        "input_mask": np.zeros((n_rows, seq_len), np.int32),
        "position_ids": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (n_rows, seq_len)).copy(),
        "word_start": np.zeros((n_rows, seq_len), bool),
        "sentence_label": np.full((n_rows,), -1, np.int32),
    }
    out["input_ids"][dest_row, dest_col] = data["input_ids"][ex, tok]
    out["token_type_ids"][dest_row, dest_col] = data["token_type_ids"][ex, tok]
    out["word_start"][dest_row, dest_col] = data["word_start"][ex, tok]
    out["input_mask"][dest_row, dest_col] = slot_of[ex] + 1
    out["position_ids"][dest_row, dest_col] = tok
    if example_ids.shape[1] == 1:  # sentence-level labels only make sense for one example per row
        out["sentence_label"][row_of] = data["sentence_label"]
    out["row_keys"] = np.where(present[:, 0], example_ids[:, 0], -1)
    return out
