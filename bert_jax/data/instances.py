"""Documents -> fixed-length pretraining instances (no masking: that happens per step in the pipeline).

One work unit (a block of documents) is tokenised in a single batch call and turned into the arrays of
one shard. Every instance is first described by token ranges into the unit's flat id array; the arrays
are then filled by one vectorised gather, so Python only loops over documents and sentences.

Modes (layout `[CLS] A [SEP] (B [SEP]) [PAD]...`, token types 0 up to the first [SEP], 1 after):
  segment-pair    BERT with NSP. Per document a target length (max_len - 3, or with probability
                  short_seq_prob a uniform shorter one); sentences are gathered until the target, A is a
                  random prefix of whole sentences, B is the rest (label 0) or, with probability 0.5,
                  sentences from another document (label 1; the unused sentences are put back). The
                  longer segment is trimmed at a random end until it fits. Unlike BERT, a chunk of one
                  sentence (a document's tail, a very long sentence) is not forced to a random B, which
                  skews labels towards 1 on short documents: its "next" B is the rest of the sentence,
                  cut at a random token, so labels stay at 50% (a one-token chunk is forced random).
  sentence-order  ALBERT SOP: as above, but B always follows A; swapped with probability 0.5 (label 1).
                  A one-sentence chunk is cut at a random token as above (a one-token chunk is dropped).
  sentence-pair   RoBERTa's SENTENCE-PAIR (+NSP): A is one natural sentence, B the next sentence of the same
                  document (label 0) or, with probability 0.5, one sentence of another document (label 1; A's
                  successor is put back and starts the next pair). A document's last unpaired sentence is dropped.
  full-sentences  RoBERTa: contiguous sentences packed up to max_len - 2, crossing document boundaries
                  with a [SEP] between documents; one segment, label -1.
  doc-sentences   as full-sentences but never crossing a document boundary.
  single          each document cut into consecutive windows of max_len - 2 tokens (sentence boundaries
                  ignored); one segment, label -1 (left-to-right LM, SpanBERT).
A sentence longer than the room left is cut at the room (single-segment modes) or trimmed (pair modes).
Random B documents come from the same work unit (preferring another source document), as BERT draws
them from the documents it holds in memory.
"""
from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bert_jax.data.corpus import RawDocument, document_sentences
from bert_jax.data.tokenizer import WordPieceTokenizer

MODES = ("segment-pair", "sentence-order", "sentence-pair", "full-sentences", "doc-sentences", "single")
PAIR_MODES = ("segment-pair", "sentence-order", "sentence-pair")
MIN_SEQ_LEN = 8


class InstanceError(ValueError):
    """Builder arguments that cannot work; the message names the argument and the fix."""


@dataclass(frozen=True)
class InstanceConfig:
    mode: str = "segment-pair"
    seq_len: int = 128
    short_seq_prob: float = 0.1
    random_next_prob: float = 0.5  # NSP
    swap_prob: float = 0.5  # SOP
    dupe_factor: int = 1  # passes over the data with fresh random splits (BERT used 10 with static masks)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InstanceError(f"--mode {self.mode!r} is not one of {MODES}")
        if self.seq_len < MIN_SEQ_LEN:
            raise InstanceError(f"--seq_len {self.seq_len} is too small; use at least {MIN_SEQ_LEN} (BERT uses 128 or 512)")
        for name in ("short_seq_prob", "random_next_prob", "swap_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InstanceError(f"--{name} {getattr(self, name)} must lie in [0, 1]")
        if self.dupe_factor < 1:
            raise InstanceError(f"--dupe_factor {self.dupe_factor} must be at least 1")


@dataclass(frozen=True)
class TokenizedUnit:
    ids: np.ndarray  # int32 [T]: all sentences of the unit back to back
    word_start: np.ndarray  # bool [T]
    sent_start: list[int]  # token range of each non-empty sentence
    sent_end: list[int]
    doc_first: list[int]  # sentences doc_first[d] .. doc_first[d+1]-1 belong to document d (non-empty docs only)
    origins: list[int]


def tokenize_unit(docs: Sequence[RawDocument], tokenizer: WordPieceTokenizer, stats: collections.Counter) -> TokenizedUnit:
    sentences: list[str] = []
    per_doc = np.zeros(len(docs), dtype=np.int64)
    for d, doc in enumerate(docs):
        doc_sentences = document_sentences(doc)
        per_doc[d] = len(doc_sentences)
        sentences.extend(doc_sentences)
    ids, word_start, offsets = tokenizer.encode_flat(sentences)
    lengths = np.diff(offsets)
    keep = lengths > 0  # sentences of only control characters or spaces vanish
    doc_of = np.repeat(np.arange(len(docs)), per_doc)[keep]
    counts = np.bincount(doc_of, minlength=len(docs))
    nonempty = counts > 0
    stats["empty_documents"] += int((~nonempty).sum())
    stats["empty_sentences"] += int((~keep).sum())
    stats["tokens"] += int(ids.size)
    doc_first = np.zeros(int(nonempty.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[nonempty], out=doc_first[1:])
    return TokenizedUnit(
        ids=ids,
        word_start=word_start,
        sent_start=offsets[:-1][keep].tolist(),
        sent_end=offsets[1:][keep].tolist(),
        doc_first=doc_first.tolist(),
        origins=[docs[d].origin for d in np.nonzero(nonempty)[0]],
    )


# A pair instance is (a_start, a_end, b_start, b_end, label) in the unit's flat token array; a
# single-segment instance is its list of token ranges, joined by [SEP] (several only when
# full-sentences crosses documents).
PairInstance = tuple[int, int, int, int, int]
SegmentInstance = list[tuple[int, int]]


def _random_other_document(d: int, unit: TokenizedUnit, rnd: random.Random) -> int:
    n = len(unit.origins)
    for _ in range(10):
        r = rnd.randrange(n)
        if unit.origins[r] != unit.origins[d]:
            return r
    if n > 1:  # every sampled document came from the same source: settle for another piece of it
        r = rnd.randrange(n - 1)
        return r + (r >= d)
    return d


def _pair_instances(unit: TokenizedUnit, config: InstanceConfig, rnd: random.Random, stats) -> list[PairInstance]:
    max_tokens = config.seq_len - 3
    nsp = config.mode == "segment-pair"
    s0, s1, first = unit.sent_start, unit.sent_end, unit.doc_first
    out: list[PairInstance] = []
    for d in range(len(first) - 1):
        lo, hi = first[d], first[d + 1]
        if hi - lo < 2:  # counted once in build_unit; still a source of random B segments
            continue
        target = max_tokens if rnd.random() >= config.short_seq_prob else rnd.randint(2, max_tokens)
        chunk_start, i = lo, lo
        while i < hi:
            if i == hi - 1 or s1[i] - s0[chunk_start] >= target:
                n = i + 1 - chunk_start
                a_end = chunk_start + (rnd.randint(1, n - 1) if n >= 2 else 1)  # first sentence of B
                a = (s0[chunk_start], s1[a_end - 1])
                long_enough = n >= 2 or a[1] - a[0] >= 2
                if nsp and (not long_enough or rnd.random() < config.random_next_prob):
                    r = _random_other_document(d, unit, rnd)
                    j = rnd.randrange(first[r], first[r + 1])
                    k = j
                    while k < first[r + 1] - 1 and s1[k] - s0[j] < target - (a[1] - a[0]):
                        k += 1
                    out.append((a[0], a[1], s0[j], s1[k], 1))
                    i = a_end - 1  # the sentences after A go back for the next chunk
                elif n >= 2:
                    b = (s0[a_end], s1[i])
                    swap = not nsp and rnd.random() < config.swap_prob
                    out.append((b[0], b[1], a[0], a[1], 1) if swap else (a[0], a[1], b[0], b[1], 0))
                elif long_enough:  # a one-sentence chunk (a document's tail, a long sentence): cut it at a token
                    cut = rnd.randint(a[0] + 1, a[1] - 1)
                    swap = not nsp and rnd.random() < config.swap_prob
                    out.append((cut, a[1], a[0], cut, 1) if swap else (a[0], cut, cut, a[1], 0))
                else:
                    stats["unsplittable_chunks"] += 1
                chunk_start = i + 1
            i += 1
    return out


def _sentence_pair_instances(unit: TokenizedUnit, config: InstanceConfig, rnd: random.Random,
                              stats) -> list[PairInstance]:
    s0, s1, first = unit.sent_start, unit.sent_end, unit.doc_first
    out: list[PairInstance] = []
    for d in range(len(first) - 1):
        lo, hi = first[d], first[d + 1]
        i = lo
        while i < hi - 1:
            if rnd.random() < config.random_next_prob:
                r = _random_other_document(d, unit, rnd)
                j = rnd.randrange(first[r], first[r + 1])
                out.append((s0[i], s1[i], s0[j], s1[j], 1))
                i += 1
            else:
                out.append((s0[i], s1[i], s0[i + 1], s1[i + 1], 0))
                i += 2
        stats["unpaired_sentences"] += int(i == hi - 1)
    return out


def _packed_instances(unit: TokenizedUnit, config: InstanceConfig, stats) -> list[SegmentInstance]:
    budget = config.seq_len - 2
    cross = config.mode == "full-sentences"
    out: list[SegmentInstance] = []
    cur: list[list[int]] = []
    cur_len = 0

    def flush():
        nonlocal cur, cur_len
        if cur:
            out.append([(s, e) for s, e in cur])
        cur, cur_len = [], 0

    first = unit.doc_first
    for d in range(len(first) - 1):
        if not cross:
            flush()
        new_doc = True
        for i in range(first[d], first[d + 1]):
            s, e = unit.sent_start[i], unit.sent_end[i]
            sep = 1 if (new_doc and cur) else 0
            if cur and cur_len + sep + (e - s) > budget:
                flush()
                sep = 0
            while e - s > budget:  # a sentence longer than a whole instance is cut
                out.append([(s, s + budget)])
                stats["sentences_cut"] += 1
                s += budget
            if sep or not cur:
                cur.append([s, e])
            else:
                cur[-1][1] = e  # the next sentence of the same document is contiguous in the flat ids
            cur_len += sep + (e - s)
            new_doc = False
    flush()
    return out


def _single_instances(unit: TokenizedUnit, config: InstanceConfig) -> list[SegmentInstance]:
    budget = config.seq_len - 2
    out: list[SegmentInstance] = []
    first = unit.doc_first
    for d in range(len(first) - 1):
        lo, hi = unit.sent_start[first[d]], unit.sent_end[first[d + 1] - 1]
        out.extend([(s, min(s + budget, hi))] for s in range(lo, hi, budget))
    return out


def _truncate_pairs(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator):
    """BERT's truncate_seq_pair in closed form: trim the longer segment (B on ties) one token at a time,
    each token from the front or the back with probability 1/2. a, b: int64 [N, 2] ranges, edited in place."""
    la, lb = a[:, 1] - a[:, 0], b[:, 1] - b[:, 0]
    excess = np.maximum(la + lb - max_tokens, 0)
    first_cut = np.minimum(excess, np.abs(la - lb))
    rest = excess - first_cut
    cut_a = np.where(la > lb, first_cut, 0) + rest // 2
    cut_b = np.where(la > lb, 0, first_cut) + (rest - rest // 2)
    for r, cut in ((a, cut_a), (b, cut_b)):
        front = rng.binomial(cut, 0.5)
        r[:, 0] += front
        r[:, 1] -= cut - front


def assemble(ranges: dict[str, np.ndarray], labels: np.ndarray, unit: TokenizedUnit, seq_len: int,
             tokenizer: WordPieceTokenizer) -> dict[str, np.ndarray]:
    """Fill the shard arrays with one gather. `ranges` holds row, start, end, segment (int64 [R]) of every
    token range, grouped by row in order; each row becomes [CLS] range [SEP] (range [SEP])... [PAD]."""
    n = len(labels)
    row, start, end, segment = ranges["row"], ranges["start"], ranges["end"], ranges["segment"]
    first = np.ones(row.size, dtype=bool)
    first[1:] = row[1:] != row[:-1]
    # Pieces: [CLS] before the first range of a row, then each range and a [SEP] after it.
    per_range = 2 + first.astype(np.int64)
    piece_range = np.repeat(np.arange(row.size), per_range)
    kind = np.arange(piece_range.size) - np.repeat(np.cumsum(per_range) - per_range, per_range) - first[piece_range]
    is_range = kind == 0  # kind -1: [CLS], 0: the range, 1: [SEP]
    length = np.where(is_range, (end - start)[piece_range], 1)
    value = np.where(is_range, start[piece_range], np.where(kind < 0, tokenizer.cls_id, tokenizer.sep_id))
    piece_type = np.where(kind < 0, 0, segment[piece_range]).astype(np.int8)
    piece_row = row[piece_range]
    # Tokens: expand every piece to its length.
    token_piece = np.repeat(np.arange(length.size), length)
    within = np.arange(token_piece.size) - np.repeat(np.cumsum(length) - length, length)
    token_is_range = is_range[token_piece]
    src = np.where(token_is_range, value[token_piece] + within, 0)
    tokens = np.where(token_is_range, unit.ids[src], value[token_piece])
    # A range cut out of running text may begin inside a word; it still starts a maskable word.
    word_start = np.where(token_is_range, unit.word_start[src] | (within == 0), True)
    row_len = np.bincount(piece_row, weights=length, minlength=n).astype(np.int64)
    if n and row_len.max() > seq_len:
        raise AssertionError(f"instance of {row_len.max()} tokens exceeds seq_len {seq_len}")
    token_row = piece_row[token_piece]
    col = np.arange(token_piece.size) - np.repeat(np.cumsum(row_len) - row_len, row_len)
    out = {
        "input_ids": np.full((n, seq_len), tokenizer.pad_id, np.int32),
        "token_type_ids": np.zeros((n, seq_len), np.int8),
        "word_start": np.zeros((n, seq_len), bool),
        "length": row_len.astype(np.int32),
        "sentence_label": labels.astype(np.int8),
    }
    out["input_ids"][token_row, col] = tokens
    out["token_type_ids"][token_row, col] = piece_type[token_piece]
    out["word_start"][token_row, col] = word_start
    return out


def _pair_ranges(instances: list[PairInstance], config: InstanceConfig, rng: np.random.Generator):
    table = np.array(instances, dtype=np.int64).reshape(len(instances), 5)[rng.permutation(len(instances))]
    a, b = table[:, 0:2].copy(), table[:, 2:4].copy()
    _truncate_pairs(a, b, config.seq_len - 3, rng)
    n = len(table)
    ranges = {"row": np.repeat(np.arange(n), 2), "start": np.stack([a[:, 0], b[:, 0]], 1).ravel(),
              "end": np.stack([a[:, 1], b[:, 1]], 1).ravel(), "segment": np.tile(np.array([0, 1]), n)}
    return ranges, table[:, 4]


def _segment_ranges(instances: list[SegmentInstance], rng: np.random.Generator):
    order = rng.permutation(len(instances)).tolist()
    flat = [(i, s, e) for i, k in enumerate(order) for s, e in instances[k]]
    table = np.array(flat, dtype=np.int64).reshape(len(flat), 3)
    ranges = {"row": table[:, 0], "start": table[:, 1], "end": table[:, 2], "segment": np.zeros(len(flat), np.int64)}
    return ranges, np.full(len(instances), -1)


def build_unit(docs: Sequence[RawDocument], tokenizer: WordPieceTokenizer, config: InstanceConfig, seed: int,
               unit_index: int) -> tuple[dict[str, np.ndarray], dict]:
    """One work unit -> (shard arrays, counts). Seeded from (seed, unit_index) only."""
    stats: collections.Counter = collections.Counter()
    seeds = np.random.SeedSequence([seed, unit_index]).generate_state(2)
    rnd = random.Random(int(seeds[0]))  # scalar draws: Python's generator is far cheaper per call
    rng = np.random.default_rng(int(seeds[1]))
    unit = tokenize_unit(docs, tokenizer, stats)
    if config.mode in PAIR_MODES:
        stats["one_sentence_documents"] += int((np.diff(unit.doc_first) == 1).sum())
    pairs: list[PairInstance] = []
    segments: list[SegmentInstance] = []
    for _ in range(config.dupe_factor):
        if config.mode == "sentence-pair":
            pairs += _sentence_pair_instances(unit, config, rnd, stats)
        elif config.mode in PAIR_MODES:
            pairs += _pair_instances(unit, config, rnd, stats)
        elif config.mode == "single":
            segments += _single_instances(unit, config)
        else:
            segments += _packed_instances(unit, config, stats)
    ranges, labels = _pair_ranges(pairs, config, rng) if config.mode in PAIR_MODES else _segment_ranges(segments, rng)
    arrays = assemble(ranges, labels, unit, config.seq_len, tokenizer)
    stats["documents"] += len(unit.origins)
    stats["sentences"] += len(unit.sent_start)
    return arrays, dict(stats)
