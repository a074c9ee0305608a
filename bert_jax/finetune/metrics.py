"""Evaluation metrics in numpy: classification, correlation, and entity-level NER scoring as conlleval does it.

Undefined values (no positives, constant predictions) are 0.0 rather than NaN so that model selection and
averaging over seeds never propagate NaN. All scores are fractions in [0, 1] (conlleval prints percentages).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _pair(pred, label, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, label = np.asarray(pred).reshape(-1), np.asarray(label).reshape(-1)
    if pred.shape != label.shape:
        raise ValueError(f"{name}: {pred.size} predictions for {label.size} labels; pass one prediction per example")
    if pred.size == 0:
        raise ValueError(f"{name}: no examples to score; pass a non-empty evaluation set")
    return pred, label


def accuracy(pred, label) -> float:
    pred, label = _pair(pred, label, "accuracy")
    return float(np.mean(pred == label))


def binary_f1(pred, label, positive=1) -> float:
    """F1 of the `positive` class: 2tp / (2tp + fp + fn); 0.0 when there are no positives at all."""
    pred, label = _pair(pred, label, "binary_f1")
    p, t = pred == positive, label == positive
    tp = np.sum(p & t)
    denominator = 2 * tp + np.sum(p & ~t) + np.sum(~p & t)
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(pred, label) -> float:
    """Matthews correlation; for more than two classes Gorodkin's R_K (GLUE's R3). 0.0 when undefined."""
    pred, label = _pair(pred, label, "matthews_corrcoef")
    classes, index = np.unique(np.concatenate([label, pred]), return_inverse=True)
    k, n = len(classes), len(label)
    confusion = np.bincount(index[:n] * k + index[n:], minlength=k * k).reshape(k, k).astype(np.float64)
    true_counts, pred_counts = confusion.sum(1), confusion.sum(0)
    s = float(n)
    numerator = np.trace(confusion) * s - true_counts @ pred_counts
    denominator = np.sqrt((s * s - pred_counts @ pred_counts) * (s * s - true_counts @ true_counts))
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(x, y) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    x, y = _pair(x, y, "pearson")
    x = x.astype(np.float64) - np.mean(x, dtype=np.float64)
    y = y.astype(np.float64) - np.mean(y, dtype=np.float64)
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.dot(x, y) / denominator) if denominator > 0 else 0.0


def rank(x) -> np.ndarray:
    """1-based ranks, tied values sharing the average of their ranks."""
    x = np.asarray(x).reshape(-1)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    new_group = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(x))  # exclusive
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # mean of ranks start+1 .. end
    return ranks


def spearman(x, y) -> float:
    x, y = _pair(x, y, "spearman")
    return pearson(rank(x), rank(y))


def chunk_spans(tags: np.ndarray, sentence_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(type, start, end inclusive) of every chunk in a flat tag array; conlleval's chunk rules.

    A chunk starts at B-X, or at I-X unless the previous token (same sentence) is inside an X chunk;
    it continues over I-X tokens of the same type. So a stray I- after O or another type starts an entity.
    """
    if tags.size == 0:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, dtype=str), empty, empty
    prefix, dash, kind = np.strings.partition(tags, "-")
    is_b, is_i = (prefix == "B") & (dash == "-"), (prefix == "I") & (dash == "-")
    inside = is_b | is_i
    bad = ~(inside | (tags == "O")) | (inside & (kind == ""))
    if bad.any():
        raise ValueError(f"tag {str(tags[np.argmax(bad)])!r} is not O, B-<type> or I-<type>; pass IOB2 tags "
                         "(read_conll converts IOB1)")
    prev_inside = np.concatenate([[False], inside[:-1]]) & ~sentence_start
    prev_kind = np.concatenate([[""], kind[:-1]])
    continues = is_i & prev_inside & (prev_kind == kind)
    starts = inside & ~continues
    next_continues = np.concatenate([continues[1:], [False]])
    ends = inside & ~next_continues
    start_idx, end_idx = np.flatnonzero(starts), np.flatnonzero(ends)
    return kind[start_idx], start_idx, end_idx


def flatten_tags(tag_seqs: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(all tags as one str array, bool mask of each sentence's first position) for `chunk_spans`."""
    lengths = np.array([len(s) for s in tag_seqs], dtype=np.int64)
    flat = np.array([t for s in tag_seqs for t in s], dtype=str)
    sentence_start = np.zeros(len(flat), dtype=bool)
    sentence_start[np.cumsum(lengths)[:-1][lengths[1:] > 0]] = True
    return flat.reshape(-1), sentence_start


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entities of one IOB2 tag sequence as (type, start, end) with `end` inclusive."""
    kinds, starts, ends = chunk_spans(np.array(list(tags), dtype=str).reshape(-1), np.zeros(len(tags), dtype=bool))
    return {(str(k), int(s), int(e)) for k, s, e in zip(kinds, starts, ends)}


def entity_f1(true_tag_seqs: Sequence[Sequence[str]], pred_tag_seqs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 over entities (exact span and type), summed over all sentences."""
    if len(true_tag_seqs) != len(pred_tag_seqs):
        raise ValueError(f"entity_f1: {len(pred_tag_seqs)} predicted sentences for {len(true_tag_seqs)} gold ones; "
                         "pass one tag sequence per sentence")
    mismatch = [i for i, (t, p) in enumerate(zip(true_tag_seqs, pred_tag_seqs)) if len(t) != len(p)]
    if mismatch:
        i = mismatch[0]
        raise ValueError(f"entity_f1: sentence {i} has {len(pred_tag_seqs[i])} predicted tags for "
                         f"{len(true_tag_seqs[i])} words; pass one tag per word")
    # Positions are global in the flattened corpus, so (type, start, end) identifies an entity across sentences.
    gold = set(zip(*map(np.ndarray.tolist, chunk_spans(*flatten_tags(true_tag_seqs)))))
    found = set(zip(*map(np.ndarray.tolist, chunk_spans(*flatten_tags(pred_tag_seqs)))))
    correct = len(gold & found)
    precision = correct / len(found) if found else 0.0
    recall = correct / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
