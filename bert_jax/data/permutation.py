"""XLNet's factorisation orders, drawn on the host: masking kind 'permutation' (objective `plm`).

Per row, `perm_rank` [B, L] (0 = first in the order): the special tokens first (context for everyone, never
predicted; by position among themselves), then the row's candidate tokens (real, not special) in a uniformly
random order, then padding. The targets are the last round(n / K) candidates of the order (n: the row's
candidates; at least one when it has any, never the first of the order): XLNet's partial prediction, K = 6 or 7
in the paper. They are written as masked_positions / masked_ids / masked_weights [B, ceil(L / K)], MLM's
fields, so the unigram floor scores them alike; input_ids are unchanged (PLM hides tokens with attention masks,
never by replacing them).
A packed row has one order over all its examples (attention stays inside each example).
"""
from __future__ import annotations

import math

import numpy as np


def num_targets(seq_len: int, k: int) -> int:
    """P, the width of the targets' arrays: the most a row of seq_len candidates predicts."""
    return int(math.ceil(seq_len / k - 1e-9))


def factorisation_order(real: np.ndarray, candidate: np.ndarray, u: np.ndarray, k: int,
                        p: int) -> tuple[np.ndarray, np.ndarray]:
    """(perm_rank int32 [B, L], targets bool [B, L]) from per-row uniforms u [B, L] in [0, 1)."""
    length = real.shape[1]
    # specials sort below every candidate (their ties broken by position: a stable sort), padding above
    key = np.where(candidate, u, np.where(real, -1.0, 2.0))
    order = np.argsort(key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(length)[None, :], axis=1)
    n = candidate.sum(axis=1)
    budget = np.where(n > 0, np.minimum(p, np.maximum(1, np.rint(n / k).astype(np.int64))), 0)
    first_candidate = (real & ~candidate).sum(axis=1)  # candidates hold ranks [first, first + n)
    # a target's query stream needs something earlier to attend to (an empty row would average every key, its own
    # included): pipeline rows start with [CLS], so this only trims rows made without special tokens
    budget = np.maximum(np.minimum(budget, first_candidate + n - 1), 0)
    targets = candidate & (rank >= (first_candidate + n - budget)[:, None])
    return rank.astype(np.int32), targets
