"""Dynamic masking for MLM-style objectives: BERT token masking, whole-word masking, SpanBERT spans.

Every random number is a counter-based hash (splitmix64) of (seed, epoch, row key, stream, counter).
A row's masks therefore depend only on those numbers -- not on which batch or process builds the row,
nor on anything drawn before -- so a resumed run and a run on a different number of hosts see the same
masks. The row key is the id of the row's (first) example.

Never masked, and never drawn as a random replacement: [PAD] [UNK] [CLS] [SEP] [MASK] (like HF's
collator; BERT's original script could mask [UNK]). Padding is never masked.

Budget per row, as in BERT's create_pretraining_data.py:
    min(max_predictions, max(1, round(rate * real_tokens)))  tokens, and never more than the candidates.
Whole-word masking visits words in random order and takes each one that still fits the token budget.
Span masking (SpanBERT) draws span lengths in words from Geo(p) truncated to [1, span_max_words] and
renormalised (SpanBERT's implementation; mean 3.8 words at p=0.2), a uniform start word, and keeps a span
unless it overlaps or touches an earlier one (so the SBO boundary tokens are never masked) or leaves
its segment; a span that overruns the budget is cut back to the whole words that fit. Mask/random/keep
is decided once per span (SpanBERT) and per token for 'mlm' and 'wwm' (BERT).

kind='none' (left-to-right LM) returns the ids unchanged and masked_* arrays with P = 0.
kind='permutation' (XLNet's factorisation orders, `data/permutation.py`) and kind='t5_spans' (T5's span
corruption, `data/noise_spans.py`) draw from the same counter-based streams; their objectives set their options
(`permutation_k`; `noise_density`, `mean_span_length`), which have no defaults here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from bert_jax.data import noise_spans, permutation

MASK_KINDS = ("mlm", "wwm", "span", "none", "permutation", "t5_spans")
SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask")

# Streams keep the draws of different purposes independent of each other.
_SELECT, _ACTION, _RANDOM_ID, _SPAN_LENGTH, _SPAN_START, _ORDER, _NOISE_CUTS, _KEPT_CUTS = 1, 2, 3, 4, 5, 6, 7, 8
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


class MaskingError(ValueError):
    """A masking setting the user must fix; the message says how."""


@dataclass(frozen=True)
class MaskingConfig:
    kind: str = "mlm"
    rate: float = 0.15
    mask_ratio: float = 0.8  # of the chosen tokens: replaced by [MASK]
    random_ratio: float = 0.1  # replaced by a random non-special token
    keep_ratio: float = 0.1  # left unchanged (still predicted)
    max_predictions: int | None = None  # None: ceil(rate * seq_len), BERT's 20 at 128
    span_p: float = 0.2
    span_max_words: int = 10
    permutation_k: int | None = None  # 'permutation': predict the last 1/K of the order (objective plm's option)
    noise_density: float | None = None  # 't5_spans' (objective span_corruption's options)
    mean_span_length: float | None = None

    def __post_init__(self):
        # Messages name the config keys these fields are read from (pretraining's data section).
        if self.kind not in MASK_KINDS:
            raise MaskingError(f"masking kind {self.kind!r} is unknown; choose one of {', '.join(MASK_KINDS)}")
        if not 0.0 < self.rate <= 1.0:
            raise MaskingError(f"data.mask_rate={self.rate} must be in (0, 1]; BERT uses 0.15")
        ratios = (self.mask_ratio, self.random_ratio, self.keep_ratio)
        if min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise MaskingError(f"data.mask_ratio, data.random_ratio, data.keep_ratio {ratios} must be >= 0 and sum "
                               "to 1; BERT uses 0.8, 0.1, 0.1")
        if self.max_predictions is not None and self.max_predictions < 1:
            raise MaskingError(f"data.max_predictions={self.max_predictions} must be >= 1, or 0 for "
                               "ceil(data.mask_rate * seq_len)")
        if not 0.0 < self.span_p <= 1.0 or self.span_max_words < 1:
            raise MaskingError(f"span_p={self.span_p} must be in (0, 1] and span_max_words={self.span_max_words} >= 1")
        if self.kind == "permutation" and not (isinstance(self.permutation_k, int) and self.permutation_k >= 1):
            raise MaskingError(f"permutation masking needs permutation_k >= 1 (got {self.permutation_k!r}); the plm "
                               "objective's option partial_prediction_k sets it (XLNet: 6 or 7)")
        if self.kind == "t5_spans" and not (self.noise_density is not None and 0.0 < self.noise_density < 1.0
                                            and self.mean_span_length is not None and self.mean_span_length >= 1.0):
            raise MaskingError(f"t5_spans masking needs noise_density in (0, 1) and mean_span_length >= 1 (got "
                               f"{self.noise_density!r}, {self.mean_span_length!r}); the span_corruption "
                               "objective's options set them (T5: 0.15 and 3)")


def num_predictions(config: MaskingConfig, seq_len: int) -> int:
    """P, the width of the masked_* arrays."""
    if config.kind in ("none", "t5_spans"):  # T5's targets have their own width (noise_spans.target_length)
        return 0
    if config.kind == "permutation":
        return permutation.num_targets(seq_len, config.permutation_k)
    if config.max_predictions is not None:
        return int(config.max_predictions)
    return int(math.ceil(config.rate * seq_len - 1e-9))


def span_length_probs(p: float, max_words: int) -> np.ndarray:
    """P(span = 1..max_words words): Geo(p) truncated and renormalised, as SpanBERT samples it."""
    probs = p * (1.0 - p) ** np.arange(max_words)
    return probs / probs.sum()


# ----------------------------------------------------------------------------- counter-based randomness


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64) + _GAMMA
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def row_states(seed: int, epoch: int, row_keys: np.ndarray, salt: int = 0) -> np.ndarray:
    """One 64-bit state per row from (seed, epoch, row key)."""
    base = splitmix64(np.asarray([seed & (2**64 - 1)], np.uint64))
    base = splitmix64(base ^ np.uint64(salt))
    base = splitmix64(base ^ np.uint64(epoch & (2**64 - 1)))
    return splitmix64(base ^ np.asarray(row_keys, dtype=np.int64).astype(np.uint64))


def uniforms(states: np.ndarray, stream: int, count: int) -> np.ndarray:
    """float64 [B, count] in [0, 1): the counter-th draw of `stream` for each row state."""
    counters = splitmix64((np.uint64(stream) << np.uint64(40)) + np.arange(count, dtype=np.uint64))
    bits = splitmix64(states[:, None] ^ counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


# ----------------------------------------------------------------------------- helpers


def _special_array(special_ids: Mapping[str, int]) -> np.ndarray:
    missing = [n for n in SPECIAL_NAMES if n not in special_ids]
    if missing:
        raise MaskingError(f"special_ids lacks {missing}; the dataset manifest must name {list(SPECIAL_NAMES)}")
    return np.asarray(sorted({int(special_ids[n]) for n in SPECIAL_NAMES}), dtype=np.int32)


def _budget(config: MaskingConfig, real: np.ndarray, candidates: np.ndarray, p: int) -> np.ndarray:
    n_real = real.sum(axis=1)
    budget = np.minimum(p, np.maximum(1, np.rint(n_real * config.rate).astype(np.int64)))
    return np.where(n_real > 0, np.minimum(budget, candidates.sum(axis=1)), 0)


def _compact(selected: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Selected columns per row in ascending order, padded with 0 to width p; and the valid mask."""
    b, length = selected.shape
    cols = np.where(selected, np.arange(length, dtype=np.int32)[None, :], length)
    cols = np.sort(cols, axis=1)[:, :p]
    if cols.shape[1] < p:
        cols = np.concatenate([cols, np.full((b, p - cols.shape[1]), length, np.int32)], axis=1)
    valid = cols < length
    return np.where(valid, cols, 0).astype(np.int32), valid


def _words(ids: np.ndarray, word_start: np.ndarray, candidate: np.ndarray):
    """Word structure per row; every non-candidate token (special, padding) is a word of its own.

    Returns word_id [B, L], word_len [B, L+1], word_first [B, L+1] (first token, L for absent words),
    word_candidate [B, L+1]; word axes are padded by one absent word so index L is always valid.
    """
    b, length = ids.shape
    starts = word_start.astype(bool) | ~candidate
    starts[:, 1:] |= ~candidate[:, :-1]
    starts[:, 0] = True
    word_id = np.cumsum(starts, axis=1) - 1
    flat = (np.arange(b)[:, None] * (length + 1) + word_id).ravel()
    word_len = np.bincount(flat, minlength=b * (length + 1)).reshape(b, length + 1)
    rows, cols = np.nonzero(starts)
    word_first = np.full((b, length + 1), length, np.int64)
    word_first[rows, word_id[rows, cols]] = cols
    word_candidate = np.zeros((b, length + 1), bool)
    word_candidate[rows, word_id[rows, cols]] = candidate[rows, cols]
    return word_id, word_len, word_first, word_candidate


def _replace(ids, selected, action_u, random_u, config, special, vocab_size, mask_id):
    """Apply mask/random/keep to the selected tokens given per-token uniforms for the decision."""
    special = special[special < vocab_size]
    n_allowed = vocab_size - special.size
    if n_allowed <= 0:
        raise MaskingError(f"vocab_size={vocab_size} leaves no non-special token to draw random replacements from")
    # the r-th non-special id is r plus the number of specials s_j with s_j - j <= r
    rank = np.minimum((random_u * n_allowed).astype(np.int64), n_allowed - 1)
    random_ids = rank + np.searchsorted(special - np.arange(special.size), rank, side="right")
    to_mask = selected & (action_u < config.mask_ratio)
    to_random = selected & ~to_mask & (action_u < config.mask_ratio + config.random_ratio)
    out = np.where(to_mask, np.int32(mask_id), ids)
    return np.where(to_random, random_ids, out).astype(np.int32)


# ----------------------------------------------------------------------------- selection per kind


def _select_tokens(states, candidate, budget):
    length = candidate.shape[1]
    scores = np.where(candidate, uniforms(states, _SELECT, length), 2.0)
    order = np.argsort(scores, axis=1, kind="stable")
    chosen = np.zeros_like(candidate)
    np.put_along_axis(chosen, order, np.arange(length)[None, :] < budget[:, None], axis=1)
    return chosen & candidate


def _select_whole_words(states, words, budget):
    """BERT's greedy: visit words in random order, take each that fits the remaining token budget.

    Done as repeated vectorised passes: each pass takes the longest prefix of still-eligible words that
    fits; the first word that does not fit can never fit later (the budget only shrinks), so the next
    pass drops it and continues -- the same result as the sequential greedy.
    """
    word_id, word_len, _, word_candidate = words
    n_words = word_len.shape[1]
    scores = np.where(word_candidate, uniforms(states, _SELECT, n_words), 2.0)
    order = np.argsort(scores, axis=1, kind="stable")
    lengths = np.take_along_axis(word_len, order, axis=1)
    undecided = np.take_along_axis(word_candidate, order, axis=1)
    taken = np.zeros_like(undecided)
    remaining = budget.astype(np.int64).copy()
    while True:
        undecided &= lengths <= remaining[:, None]
        running = np.cumsum(np.where(undecided, lengths, 0), axis=1)
        take = undecided & (running <= remaining[:, None])
        if not take.any():
            break
        taken |= take
        undecided &= ~take
        remaining -= np.where(take, lengths, 0).sum(axis=1)
    chosen_words = np.zeros_like(taken)
    np.put_along_axis(chosen_words, order, taken, axis=1)
    return np.take_along_axis(chosen_words, word_id, axis=1)


def _select_spans(states, words, budget, config: MaskingConfig, p: int):
    """SpanBERT spans on word boundaries; returns the token mask and per-token span start/end/decision."""
    word_id, word_len, word_first, word_candidate = words
    b, n_words = word_len.shape
    rows = np.arange(b)
    max_w = config.span_max_words
    cdf = np.cumsum(span_length_probs(config.span_p, max_w))
    tries = 2 * max(p, 1)
    span_words = np.searchsorted(cdf, uniforms(states, _SPAN_LENGTH, tries), side="right") + 1
    span_words = np.minimum(span_words, max_w)
    start_u = uniforms(states, _SPAN_START, tries)
    action_u = uniforms(states, _ACTION, tries)
    # candidate word indices compacted to the front, and the first non-candidate word at or after each word
    n_cand = word_candidate.sum(axis=1)
    cand_words = np.sort(np.where(word_candidate, np.arange(n_words)[None, :], n_words), axis=1)
    idx = np.where(~word_candidate, np.arange(n_words)[None, :], n_words)
    stop_at = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
    cum_tokens = np.concatenate([np.zeros((b, 1), np.int64), np.cumsum(word_len, axis=1)], axis=1)

    chosen = np.zeros((b, n_words + 2), bool)  # word-level, +2 so start-1 .. end+1 gathers stay in range
    span_of_word = np.full((b, n_words), -1, np.int64)
    remaining = budget.astype(np.int64).copy()
    n_spans = np.zeros(b, np.int64)
    window = np.arange(max_w)
    for t in range(tries):
        active = (remaining > 0) & (n_cand > 0)
        if not active.any():
            break
        pick = np.minimum((start_u[:, t] * n_cand).astype(np.int64), np.maximum(n_cand - 1, 0))
        start = cand_words[rows, pick].clip(max=n_words - 1)
        # the k-th kept span uses the k-th length draw, so rejected tries do not bias lengths to short
        wanted = np.minimum(start + span_words[rows, n_spans], stop_at[rows, start])
        offs = start[:, None] + window[None, :]
        tokens = cum_tokens[rows[:, None], np.minimum(offs + 1, n_words)] - cum_tokens[rows, start][:, None]
        fits = (offs < wanted[:, None]) & (tokens <= remaining[:, None])
        end = start + fits.sum(axis=1)  # fits is a prefix: token counts grow with the window
        near = start[:, None] - 1 + np.arange(max_w + 2)[None, :]  # start-1 .. start+max_w
        touching = (chosen[rows[:, None], np.minimum(near + 1, n_words + 1)] & (near <= end[:, None])).any(axis=1)
        accept = active & (end > start) & ~touching
        new = fits & accept[:, None]
        r_idx, w_off = np.nonzero(new)
        chosen[r_idx, start[r_idx] + w_off + 1] = True
        span_of_word[r_idx, start[r_idx] + w_off] = n_spans[r_idx]
        remaining -= np.where(accept, cum_tokens[rows, end] - cum_tokens[rows, start], 0)
        n_spans += accept
        # as in SpanBERT, the span that reaches the budget is the last one (cut back to whole words here);
        # refilling the leftover with more cut spans would skew lengths towards 1 word
        remaining[active & (end < wanted) & ~touching] = 0

    token_span = np.take_along_axis(span_of_word, word_id, axis=1)  # [B, L], -1 outside spans
    selected = token_span >= 0
    safe = np.maximum(token_span, 0)
    # a span's first and one-past-last tokens, from its first and one-past-last words
    span_start_word = np.full((b, tries), n_words - 1, np.int64)
    span_end_word = np.zeros((b, tries), np.int64)
    r_idx, w_idx = np.nonzero(span_of_word >= 0)
    k_idx = span_of_word[r_idx, w_idx]
    np.minimum.at(span_start_word, (r_idx, k_idx), w_idx)
    np.maximum.at(span_end_word, (r_idx, k_idx), w_idx + 1)
    first_tok = np.take_along_axis(word_first, span_start_word, axis=1)
    end_tok = np.take_along_axis(word_first, span_end_word, axis=1)
    per_token = lambda a: np.take_along_axis(a, safe, axis=1)  # noqa: E731
    return selected, per_token(first_tok), per_token(end_tok), per_token(action_u)


def _no_predictions(b: int) -> dict[str, np.ndarray]:
    return {"masked_positions": np.zeros((b, 0), np.int32), "masked_ids": np.zeros((b, 0), np.int32),
            "masked_weights": np.zeros((b, 0), np.float32)}


def example_fields(config: MaskingConfig, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """Zeros of the shapes of the fields a kind adds to the batch contract, for tracing a model's init."""
    if config.kind == "permutation":
        return {"perm_rank": np.zeros((batch, seq_len), np.int32)}
    if config.kind == "t5_spans":
        t = noise_spans.target_length(seq_len, config.noise_density, config.mean_span_length)
        return {"input_sentinels": np.zeros((batch, seq_len), np.int32), "target_ids": np.zeros((batch, t), np.int32),
                "target_sentinels": np.zeros((batch, t), np.int32), "target_weights": np.zeros((batch, t), np.float32)}
    return {}


# ----------------------------------------------------------------------------- entry point


def apply_masking(
    rows: Mapping[str, np.ndarray],
    config: MaskingConfig,
    special_ids: Mapping[str, int],
    vocab_size: int,
    seed: int,
    example_ids: np.ndarray,
    epoch: int = 0,
) -> dict[str, np.ndarray]:
    """Mask a batch of rows.

    rows: input_ids [B, L] int, input_mask [B, L] (non-zero on real tokens), word_start [B, L] bool
      (needed for 'wwm' and 'span').
    example_ids: [B] the row keys (id of each row's first example); rows with a negative key are padding
      and get no predictions.
    Returns input_ids (after replacement), masked_positions, masked_ids, masked_weights [B, P]; 'span'
    also span_left, span_right, span_offset [B, P]; 'permutation' also perm_rank [B, L]; 't5_spans' its corrupted
    input_ids, input_mask, token_type_ids, position_ids, input_sentinels [B, L] and target_* [B, T] (P = 0).
    """
    ids = np.asarray(rows["input_ids"], dtype=np.int32)
    b, length = ids.shape
    p = num_predictions(config, length)
    example_ids = np.asarray(example_ids, dtype=np.int64)
    if example_ids.shape != (b,):
        raise MaskingError(f"example_ids has shape {example_ids.shape}, expected ({b},): one key per row")
    special = _special_array(special_ids)
    real = (np.asarray(rows["input_mask"]) != 0) & (example_ids >= 0)[:, None]
    candidate = real & ~np.isin(ids, special)
    out: dict[str, np.ndarray] = {}
    if config.kind == "none":
        return {"input_ids": ids.copy(), **_no_predictions(b)}

    with np.errstate(over="ignore"):
        states = row_states(seed, epoch, example_ids)
        if config.kind == "t5_spans":
            noise = noise_spans.noise_mask(candidate, config.noise_density, config.mean_span_length,
                                           uniforms(states, _NOISE_CUTS, length), uniforms(states, _KEPT_CUTS, length))
            target_len = noise_spans.target_length(length, config.noise_density, config.mean_span_length)
            types = rows.get("token_type_ids", np.zeros_like(ids))
            out = noise_spans.corrupt(ids, np.asarray(rows["input_mask"]), np.asarray(types), noise, special_ids,
                                      target_len, real.any(axis=1))
            return {**out, **_no_predictions(b)}
        if config.kind == "permutation":
            rank, selected = permutation.factorisation_order(real, candidate, uniforms(states, _ORDER, length),
                                                             config.permutation_k, p)
            positions, valid = _compact(selected, p)
            return {"input_ids": ids.copy(), "perm_rank": rank, "masked_positions": positions,
                    "masked_ids": np.where(valid, np.take_along_axis(ids, positions, axis=1), 0).astype(np.int32),
                    "masked_weights": valid.astype(np.float32)}
        budget = _budget(config, real, candidate, p)
        if config.kind == "mlm":
            selected = _select_tokens(states, candidate, budget)
            action_u = uniforms(states, _ACTION, length)
        elif config.kind == "wwm":
            word_start = np.asarray(rows["word_start"], dtype=bool)
            selected = _select_whole_words(states, _words(ids, word_start, candidate), budget)
            action_u = uniforms(states, _ACTION, length)
        else:
            word_start = np.asarray(rows["word_start"], dtype=bool)
            words = _words(ids, word_start, candidate)
            selected, span_first, span_end, action_u = _select_spans(states, words, budget, config, p)
        random_u = uniforms(states, _RANDOM_ID, length)

    out["input_ids"] = _replace(ids, selected, action_u, random_u, config, special, vocab_size, special_ids["mask"])
    positions, valid = _compact(selected, p)
    out["masked_positions"] = positions
    out["masked_ids"] = np.where(valid, np.take_along_axis(ids, positions, axis=1), 0).astype(np.int32)
    out["masked_weights"] = valid.astype(np.float32)
    if config.kind == "span":
        first = np.take_along_axis(span_first, positions, axis=1)
        out["span_left"] = np.where(valid, first - 1, 0).astype(np.int32)
        out["span_right"] = np.where(valid, np.take_along_axis(span_end, positions, axis=1), 0).astype(np.int32)
        out["span_offset"] = np.where(valid, positions - first, 0).astype(np.int32)
    return out
