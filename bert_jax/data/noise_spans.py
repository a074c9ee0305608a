"""T5's span corruption, built on the host: masking kind 't5_spans' (objective `span_corruption`).

Noise (T5's random_spans_noise_mask, written here from its description): of a row's n candidate tokens (real,
not special) num_noise = round(n * density) (at least 1, at most n - 1) are noise, in num_spans =
round(num_noise / mean_span_length) spans (at least 1); the noise and the non-noise tokens are each cut into
num_spans non-empty runs at uniformly random places, and the runs alternate non-noise, noise, ..., so a row starts
with kept text and ends with a noise span, exactly num_spans of them. Rounding is half-to-even, as tf.round.
Candidates skip special tokens, so where a span would run across one ([SEP] between segments, an example
boundary in a packed row) the part after it is kept instead: each span stays one run of adjacent tokens and a
row never holds more than num_spans sentinels (at 0.15 / 3 this trims at most one span per segment boundary).

Encoder input: each span becomes one sentinel slot (`input_ids` holds [MASK] there, `input_sentinels` k + 1 for
the row's k-th span, 0 elsewhere), the span's other tokens are removed and the row is compacted to the left (its
input_mask, token types and positions follow; padding fills the end). Targets, `target_ids` /
`target_sentinels` / `target_weights` [B, T]: sentinel 0, span 0's tokens, sentinel 1, span 1's tokens, ...,
then [SEP] as the end token (target_ids is 0 at sentinel slots, target_sentinels k + 1 there).
T = target_length(L): the most a row of L tokens can need, so every batch has the same shapes.
"""
from __future__ import annotations

import numpy as np


def noise_counts(n, density: float, mean_span_length: float) -> tuple[np.ndarray, np.ndarray]:
    """(num_noise, num_spans) for rows of n candidate tokens (0 and 0 where n < 2: nothing to corrupt)."""
    n = np.asarray(n, np.int64)
    noise = np.clip(np.rint(n * density).astype(np.int64), 1, np.maximum(n - 1, 1))
    spans = np.maximum(np.rint(noise / mean_span_length).astype(np.int64), 1)
    # a span needs a kept run before it (noise spans never touch): rare, only at densities above 1/2
    spans = np.minimum(spans, np.maximum(n - noise, 1))
    return np.where(n >= 2, noise, 0), np.where(n >= 2, spans, 0)


def target_length(seq_len: int, density: float, mean_span_length: float) -> int:
    """T: sentinels + span tokens + the end token of the fullest row of seq_len tokens (counts grow with n)."""
    noise, spans = noise_counts(seq_len, density, mean_span_length)
    return int(noise + spans + 1)


def _segment_lengths(num_items: np.ndarray, num_segments: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[B, W]: num_items cut into num_segments non-empty runs at uniformly chosen places (0 past the last run).

    The cuts are the num_segments - 1 lowest-scored of the num_items - 1 gaps between items."""
    b, width = u.shape
    gap = np.arange(width)[None, :]
    scores = np.where(gap < num_items[:, None] - 1, u, 2.0)
    order = np.argsort(scores, axis=1, kind="stable")
    cut = np.zeros((b, width), bool)
    np.put_along_axis(cut, order, gap < num_segments[:, None] - 1, axis=1)  # cut[g]: a run starts after item g
    first = np.concatenate([np.ones((b, 1), bool), cut[:, :-1]], axis=1)
    segment = np.cumsum(first, axis=1) - 1
    valid = gap < num_items[:, None]
    flat = (np.arange(b)[:, None] * width + segment)[valid]
    return np.bincount(flat, minlength=b * width).reshape(b, width)


def noise_mask(candidate: np.ndarray, density: float, mean_span_length: float, u_noise: np.ndarray,
               u_kept: np.ndarray) -> np.ndarray:
    """bool [B, L]: the noise tokens of each row (only candidates), from per-row uniforms [B, L] for each cut."""
    b, length = candidate.shape
    n = candidate.sum(axis=1)
    num_noise, num_spans = noise_counts(n, density, mean_span_length)
    noise_runs = _segment_lengths(num_noise, num_spans, u_noise)
    kept_runs = _segment_lengths(n - num_noise, num_spans, u_kept)
    runs = np.stack([kept_runs, noise_runs], axis=2).reshape(b, 2 * length)  # kept, noise, kept, noise, ...
    ends = np.cumsum(runs, axis=1)
    # run index of candidate t = how many runs end at or before it; odd runs are noise
    flat = (np.arange(b)[:, None] * (length + 1) + np.minimum(ends, length)).ravel()
    run_of = np.cumsum(np.bincount(flat, minlength=b * (length + 1)).reshape(b, length + 1), axis=1)[:, :length]
    t = np.arange(length)[None, :]
    noisy = (run_of % 2 == 1) & (t < n[:, None])  # over candidate indices
    # candidate index -> row position; a span that reaches past a non-candidate keeps its head only
    where = np.sort(np.where(candidate, t, length), axis=1)
    prev = np.concatenate([np.zeros((b, 1), bool), noisy[:, :-1]], axis=1)
    adjacent = np.concatenate([np.ones((b, 1), bool), where[:, 1:] == where[:, :-1] + 1], axis=1)
    broken = np.cumsum(noisy & prev & ~adjacent, axis=1)
    at_span_start = np.maximum.accumulate(np.where(noisy & ~prev, broken, 0), axis=1)
    noisy &= broken == at_span_start
    out = np.zeros((b, length + 1), bool)
    np.put_along_axis(out, where, noisy, axis=1)  # column `length` collects the non-candidate tail
    return out[:, :length]


def corrupt(ids: np.ndarray, input_mask: np.ndarray, token_type_ids: np.ndarray, noise: np.ndarray,
            special_ids, target_len: int, real_rows: np.ndarray) -> dict[str, np.ndarray]:
    """The encoder input with one sentinel per noise span and the decoder targets (see the module docstring)."""
    b, length = ids.shape
    t = np.arange(length)[None, :]
    prev = np.concatenate([np.zeros((b, 1), bool), noise[:, :-1]], axis=1)
    first, later = noise & ~prev, noise & prev
    span = np.cumsum(first, axis=1) - 1  # the span a noise token belongs to
    keep = (input_mask != 0) & ~later
    order = np.argsort(~keep, axis=1, kind="stable")  # kept positions first, in order
    kept = np.take_along_axis(keep, order, axis=1)
    take = lambda a, fill: np.where(kept, np.take_along_axis(a, order, axis=1), fill).astype(np.int32)  # noqa: E731
    example = take(input_mask, 0)
    # positions restart at each packed example, as the pipeline numbers them
    starts = (example != np.concatenate([np.full((b, 1), -1), example[:, :-1]], axis=1))
    positions = np.where(kept, t - np.maximum.accumulate(np.where(starts, t, 0), axis=1), 0)
    out = {"input_ids": take(np.where(first, special_ids["mask"], ids), special_ids["pad"]),
           "input_sentinels": take(np.where(first, span + 1, 0), 0), "input_mask": example,
           "token_type_ids": take(token_type_ids, 0), "position_ids": positions.astype(np.int32)}

    # targets: a noise token goes after the noise before it and one sentinel per span so far (its own included)
    before = np.cumsum(noise, axis=1) - noise
    rows, cols = np.nonzero(noise)
    target_ids = np.zeros((b, target_len), np.int32)
    target_sentinels = np.zeros((b, target_len), np.int32)
    target_ids[rows, before[rows, cols] + span[rows, cols] + 1] = ids[rows, cols]
    rows, cols = np.nonzero(first)
    target_sentinels[rows, before[rows, cols] + span[rows, cols]] = span[rows, cols] + 1
    used = noise.sum(axis=1) + first.sum(axis=1)  # the end token's slot
    target_ids[np.arange(b), used] = special_ids["sep"]
    out["target_ids"] = target_ids
    out["target_sentinels"] = target_sentinels
    out["target_weights"] = ((np.arange(target_len)[None, :] <= used[:, None]) & real_rows[:, None]).astype(np.float32)
    return out


def span_token_weights(target_sentinels, target_weights):
    """The target weights of span tokens alone (not sentinels, not the end token: the last weighted slot); numpy or
    jax arrays. What the unigram floor can score: sentinels and the end token are not vocab frequencies."""
    count = (target_weights > 0).sum(axis=1, keepdims=True)
    slot = np.arange(target_weights.shape[1])[None, :]
    return target_weights * ((target_sentinels == 0) & (slot < count - 1))
