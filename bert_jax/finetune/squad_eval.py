"""SQuAD metrics with the official evaluate-v2.0.py semantics (which agree with v1.1's on every non-empty answer).

Answers are compared after normalisation: lower-case, drop ASCII punctuation, drop the articles a/an/the,
collapse whitespace. EM and F1 take the max over the gold answers; an unanswerable question's only gold
answer is ''. Scores are percentages, like the official scripts'.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


class SquadMetricsError(ValueError):
    """Predictions that do not cover the examples being scored; the message names what is missing."""


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _exact(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def _f1(gold: str, pred: str) -> float:
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_tokens or not pred_tokens:  # an empty answer is right only against an empty gold
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer, else 0.0."""
    return max(_exact(g, pred) for g in golds)


def f1(pred: str, golds: Sequence[str]) -> float:
    """Best bag-of-tokens F1 (in [0, 1]) of the normalised prediction against any gold answer."""
    return max(_f1(g, pred) for g in golds)


def gold_answers(example) -> list[str]:
    """The texts scored against: answers that survive normalisation, or [''] when there are none."""
    golds = [text for text, _ in example.answers if normalize_answer(text)]
    return golds or [""]


def _check_covered(examples, mapping: dict, what: str) -> None:
    missing = [e.qid for e in examples if e.qid not in mapping]
    if missing:
        raise SquadMetricsError(f"{what} lack {len(missing)} of {len(examples)} question ids (first: {missing[0]}); "
                                "postprocess every example, or score only the examples that were predicted")


def _raw_scores(examples, predictions: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check_covered(examples, predictions, "predictions")
    exact = np.array([exact_match(predictions[e.qid], gold_answers(e)) for e in examples], np.float64)
    f1s = np.array([f1(predictions[e.qid], gold_answers(e)) for e in examples], np.float64)
    has_answer = np.array([bool(e.answers) for e in examples], bool)
    return exact, f1s, has_answer


def squad_metrics(examples, predictions: dict[str, str], version_2: bool | None = None) -> dict[str, float]:
    """{'exact_match', 'f1', 'total'} in percent; for v2.0 (default: when any example is_impossible) also
    'HasAns_*' / 'NoAns_*' exact, f1 and total, a group's scores only when it is non-empty (as the official
    script)."""
    if not examples:
        raise SquadMetricsError("squad_metrics got no examples; pass the examples that were predicted")
    exact, f1s, has_answer = _raw_scores(examples, predictions)
    out: dict[str, float] = {"exact_match": float(100.0 * exact.mean()), "f1": float(100.0 * f1s.mean()),
                             "total": len(examples)}
    if version_2 is None:
        version_2 = any(e.is_impossible for e in examples)
    if version_2:
        for name, group in (("HasAns", has_answer), ("NoAns", ~has_answer)):
            out[f"{name}_total"] = int(group.sum())
            if group.any():
                out[f"{name}_exact"] = float(100.0 * exact[group].mean())
                out[f"{name}_f1"] = float(100.0 * f1s[group].mean())
    return out


def best_null_threshold(examples, predictions: dict[str, str], null_odds: dict[str, float]) -> tuple[float, float]:
    """(best F1 in percent, threshold) over null thresholds, as evaluate-v2.0's find_best_thresh.

    Starting from "every question answered ''" (all unanswerable ones right), questions are switched to their
    predicted text in increasing null odds; the threshold is the odds where the running F1 peaked (0.0 when
    answering nothing is best). Predictions at odds <= threshold keep their text, the rest become ''.
    """
    _check_covered(examples, null_odds, "null_odds")
    _, f1s, has_answer = _raw_scores(examples, predictions)
    odds = np.array([null_odds[e.qid] for e in examples], np.float64)
    answered = np.array([bool(predictions[e.qid]) for e in examples], bool)
    # Switching a question from '' to its prediction gains its F1 if it has an answer, and loses the free
    # point an unanswerable question had iff the prediction is non-empty.
    gain = np.where(has_answer, f1s, np.where(answered, -1.0, 0.0))
    order = np.argsort(odds, kind="stable")
    running = (~has_answer).sum() + np.cumsum(gain[order])
    best = int(np.argmax(running)) if len(running) else 0
    if not len(running) or running[best] <= (~has_answer).sum():
        return float(100.0 * (~has_answer).sum() / max(len(examples), 1)), 0.0
    return float(100.0 * running[best] / len(examples)), float(odds[order][best])
