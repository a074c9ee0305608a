"""CoNLL-2003 NER: reader (IOB1 or IOB2 in, IOB2 out), word-aligned tagging featurizer, predictions back to words.

Each word is tokenised on its own (as the words are given, never re-split across words); the label sits on
its first sub-token. A sentence longer than a row is split into several rows on word boundaries, so every
word gets exactly one prediction and `word_predictions` reassembles them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bert_jax.finetune.metrics import chunk_spans, flatten_tags

log = logging.getLogger(__name__)

ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")
CONLL2003_LABELS = ("O",) + tuple(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I"))
DOCSTART = "-DOCSTART-"
SCHEMES = ("auto", "iob1", "iob2")


class ConllFormatError(ValueError):
    """A CoNLL file or tag set that cannot be used; the message names the file/line and the fix."""


@dataclass(frozen=True)
class TaggedSentence:
    guid: str
    words: tuple[str, ...]
    tags: tuple[str, ...]
    lines: tuple[int, ...] = field(default=(), compare=False, repr=False)  # each word's line, for errors


def _valid_tag(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[1] == "-" and tag[0] in "BI")


def read_conll(path: str, scheme: str = "auto") -> list[TaggedSentence]:
    """Sentences of a CoNLL-2003 style file (word ... tag per line; the tag is the last column).

    Blank lines end sentences and `-DOCSTART-` lines separate documents. Tags come back in IOB2. `iob1` and
    `auto` convert entities that begin with I- (the original CoNLL-2003 files) to B-; `iob2` rejects them.
    """
    if scheme not in SCHEMES:
        raise ConllFormatError(f"scheme={scheme!r} is not one of {SCHEMES}")
    if not os.path.isfile(path):
        raise ConllFormatError(f"{path} does not exist; pass a CoNLL-2003 file (word POS chunk NER per line)")
    sentences: list[tuple[list[str], list[str], list[int]]] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush():
        nonlocal words, tags, lines
        if words:
            sentences.append((words, tags, lines))
        words, tags, lines = [], [], []

    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                columns = line.split()
                if not columns or columns[0] == DOCSTART:
                    flush()
                    continue
                if len(columns) < 2 or not _valid_tag(columns[-1]):
                    raise ConllFormatError(f"{path}:{number}: {line.strip()!r} is not 'word ... tag' with tag O, "
                                           "B-<type> or I-<type>; fix that line (CoNLL-2003: word POS chunk NER)")
                words.append(columns[0])
                tags.append(columns[-1])
                lines.append(number)
    except UnicodeDecodeError as e:
        raise ConllFormatError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-encode it as UTF-8") from e
    flush()
    if not sentences:
        return []

    flat, sentence_start = flatten_tags([t for _, t, _ in sentences])
    kinds, starts, _ = chunk_spans(flat, sentence_start)
    stray = starts[np.strings.startswith(flat[starts], "I-")]
    if stray.size and scheme == "iob2":
        line = [n for _, _, ns in sentences for n in ns][stray[0]]
        raise ConllFormatError(f"{path}:{line}: entity starts with {flat[stray[0]]} (IOB1); pass scheme='iob1' "
                               "or 'auto' to convert it")
    if stray.size:
        log.info("%s: %d entities start with I- (IOB1); converted to IOB2", path, stray.size)
        flat = flat.astype(object)
        flat[starts] = np.char.add("B-", kinds.astype(str))
    bounds = np.cumsum([len(w) for w, _, _ in sentences])[:-1]
    name = os.path.splitext(os.path.basename(path))[0]
    return [TaggedSentence(f"{name}-{i}", tuple(w), tuple(str(t) for t in iob2), tuple(ns))
            for i, ((w, _, ns), iob2) in enumerate(zip(sentences, np.split(flat, bounds)))]


def label_set(sentences: Sequence[TaggedSentence]) -> tuple[str, ...]:
    """O first, then B-/I- of every entity type seen, sorted by type (both prefixes even if one is unseen)."""
    kinds = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ("O",) + tuple(f"{p}-{k}" for k in kinds for p in ("B", "I"))


def featurize_tagging(sentences: Sequence[TaggedSentence], tokenizer, labels: Sequence[str],
                      max_seq_len: int) -> dict[str, np.ndarray]:
    """Rows `[CLS] sub-tokens [SEP]` per the fine-tuning contract, plus `word_ids` int32 [N, L]."""
    if max_seq_len < 3:
        raise ValueError(f"--max_seq_len {max_seq_len} leaves no room for words after [CLS]/[SEP]; pass 128 or so")
    capacity = max_seq_len - 2
    label_index = {t: i for i, t in enumerate(labels)}
    for s in sentences:
        if len(s.words) != len(s.tags):
            raise ConllFormatError(f"sentence {s.guid} has {len(s.words)} words but {len(s.tags)} tags")
        unknown = [t for t in s.tags if t not in label_index]
        if unknown:
            raise ConllFormatError(f"tag {unknown[0]!r} of sentence {s.guid} is not in labels {list(labels)}; "
                                   "pass labels=label_set(train_sentences) covering every tag")
    num_sentences = len(sentences)
    words_per_sentence = np.array([len(s.words) for s in sentences], dtype=np.int64)
    first_word = np.concatenate([[0], np.cumsum(words_per_sentence)])
    num_words = int(first_word[-1])
    word_tag = np.fromiter((label_index[t] for s in sentences for t in s.tags), dtype=np.int32, count=num_words)
    sentence_of_word = np.repeat(np.arange(num_sentences), words_per_sentence)

    ids, _, offsets = tokenizer.encode_flat([w for s in sentences for w in s.words])
    raw_len = np.diff(offsets)
    # A word the tokenizer drops (e.g. a control character) still needs a position: it becomes one [UNK].
    word_len = np.clip(raw_len, 1, capacity)
    before = np.concatenate([[0], np.cumsum(word_len)])  # sub-tokens before word w, over the whole corpus

    # Rows: greedy packing of whole words, all sentences advanced together (one pass per row of the longest).
    row_sentence, row_w0, row_w1 = [], [], []
    cursor, sentence_end = first_word[:-1].copy(), first_word[1:]
    active = np.arange(num_sentences)
    while active.size:
        w0 = cursor[active]
        fits = np.searchsorted(before, before[w0] + capacity, side="right") - 1
        w1 = np.minimum(sentence_end[active], fits)
        row_sentence.append(active), row_w0.append(w0), row_w1.append(w1)
        cursor[active] = w1
        active = active[w1 < sentence_end[active]]
    row_sentence, row_w0, row_w1 = (np.concatenate(a) if a else np.zeros(0, np.int64)
                                    for a in (row_sentence, row_w0, row_w1))
    order = np.lexsort((row_w0, row_sentence))
    row_sentence, row_w0, row_w1 = row_sentence[order], row_w0[order], row_w1[order]
    n = len(row_sentence)

    nonempty = np.flatnonzero(row_w1 > row_w0)
    word = np.arange(num_words)
    word_row = nonempty[np.searchsorted(row_w0[nonempty], word, side="right") - 1] if num_words else word
    word_col = 1 + before[word] - before[row_w0[word_row]]

    token_word = np.repeat(word, word_len)
    within = np.arange(int(before[-1])) - before[token_word]
    padded_ids = np.append(ids, tokenizer.unk_id).astype(np.int32)  # keeps the index valid for empty words
    token_id = np.where(raw_len[token_word] > 0, padded_ids[offsets[token_word] + within], tokenizer.unk_id)

    input_ids = np.full((n, max_seq_len), tokenizer.pad_id, dtype=np.int32)
    input_ids[:, 0] = tokenizer.cls_id
    input_ids[word_row[token_word], word_col[token_word] + within] = token_id
    row_tokens = before[row_w1] - before[row_w0]
    input_ids[np.arange(n), row_tokens + 1] = tokenizer.sep_id
    tag_ids = np.zeros((n, max_seq_len), dtype=np.int32)
    tag_ids[word_row, word_col] = word_tag
    tag_weights = np.zeros((n, max_seq_len), dtype=np.float32)
    tag_weights[word_row, word_col] = 1.0
    word_ids = np.full((n, max_seq_len), -1, dtype=np.int32)
    word_ids[word_row, word_col] = word - first_word[sentence_of_word]
    return {
        "input_ids": input_ids,
        "token_type_ids": np.zeros((n, max_seq_len), dtype=np.int32),
        "length": (row_tokens + 2).astype(np.int32),
        "example_index": row_sentence.astype(np.int32),
        "tag_ids": tag_ids,
        "tag_weights": tag_weights,
        "word_ids": word_ids,
    }


def word_predictions(features: dict[str, np.ndarray], logits_or_pred_ids: np.ndarray, num_sentences: int,
                     labels: Sequence[str]) -> list[list[str]]:
    """One predicted tag per word per sentence from per-token label ids [N, W] or logits [N, W, C].

    Rows must be in the featurizer's order; W may be narrower than the featurized length (a bucket width)
    as long as it covers every row's words.
    """
    pred = np.asarray(logits_or_pred_ids)
    if pred.ndim == 3:
        pred = pred.argmax(-1)
    word_ids, example_index = features["word_ids"], features["example_index"]
    if pred.ndim != 2 or pred.shape[0] != word_ids.shape[0] or pred.shape[1] > word_ids.shape[1]:
        raise ValueError(f"predictions of shape {pred.shape} do not match features of shape {word_ids.shape}; "
                         "pass per-token predictions for every featurized row, in order")
    width = pred.shape[1]
    if (word_ids[:, width:] >= 0).any():
        raise ValueError(f"predictions are {width} wide but some words sit beyond that; pass wider predictions")
    rows, cols = np.nonzero(word_ids[:, :width] >= 0)
    sentence, word, label_id = example_index[rows].astype(np.int64), word_ids[rows, cols], pred[rows, cols]
    if sentence.size and (sentence.max() >= num_sentences or label_id.min() < 0 or label_id.max() >= len(labels)):
        raise ValueError(f"features name sentences up to {sentence.max()} (num_sentences={num_sentences}) or "
                         f"label ids outside 0..{len(labels) - 1}; pass the featurizer's own sentences and labels")
    order = np.lexsort((word, sentence))
    sentence, word, label_id = sentence[order], word[order], label_id[order]
    counts = np.bincount(sentence, minlength=num_sentences)
    starts = np.concatenate([[0], np.cumsum(counts)])
    if not np.array_equal(word, np.arange(len(word)) - np.repeat(starts[:-1], counts)):
        raise ValueError("word_ids do not cover each sentence's words exactly once; pass unmodified features")
    tags = np.asarray(labels, dtype=object)[label_id]
    return [list(t) for t in np.split(tags, starts[1:-1])]
