"""SQuAD v1.1 / v2.0 on the host: read the official JSON, featurize into sliding windows, map logits back to text.

Spans are mapped through the Rust tokenizer's character offsets, which always refer to the original context
string (even though the uncased normalizer lower-cases and strips accents), so a predicted answer is an exact
slice `context[char_start:char_end]` of the original text: no detokenisation heuristics are needed.
Windowing and the max-context rule follow google-research/bert's run_squad.py. Metrics live in squad_eval.py
and are re-exported here.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np



class SquadError(ValueError):
    """A SQuAD file, feature set or logits array that cannot be used; the message says what and how to fix it."""


@dataclass(frozen=True)
class SquadExample:
    qid: str
    title: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, answer_start char offset into context)
    is_impossible: bool
    plausible_answers: tuple[tuple[str, int], ...] = ()  # v2.0 only: what an unanswerable question seems to ask


# ----------------------------------------------------------------------------------------- reading


def _answers(raw, where: str, path: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, list):
        raise SquadError(f"{path}: {where} is not a list; fix the file (each answer is {{'text', 'answer_start'}})")
    out = []
    for j, a in enumerate(raw):
        if not (isinstance(a, dict) and isinstance(a.get("text"), str) and isinstance(a.get("answer_start"), int)):
            raise SquadError(f"{path}: {where}[{j}] needs a string 'text' and an int 'answer_start'; fix the file")
        out.append((a["text"], a["answer_start"]))
    return tuple(out)


def answer_matches(context: str, answer: tuple[str, int]) -> bool:
    """True when the answer text is exactly the context at its answer_start (what training targets need)."""
    text, start = answer
    return bool(text) and 0 <= start and context[start:start + len(text)] == text


def read_squad(path: str) -> tuple[list[SquadExample], str]:
    """Read an official SQuAD JSON file; returns (examples in file order, version '1.1' / '2.0' / the file's).

    Answers whose text does not match the context at answer_start are kept (evaluation uses only the text) but
    counted in one warning; featurize_squad gives them no training targets.
    """
    if not os.path.isfile(path):
        raise SquadError(f"SQuAD file {path} does not exist; pass the path of e.g. train-v1.1.json or dev-v2.0.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SquadError(f"SQuAD file {path} is not valid UTF-8 JSON ({e}); pass the official JSON file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise SquadError(f"{path} has no top-level 'data' list; pass an official SQuAD JSON file")
    examples: list[SquadExample] = []
    seen: set[str] = set()
    mismatched: list[str] = []
    has_impossible_field = False
    for a, article in enumerate(raw["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise SquadError(f"{path}: data[{a}] has no 'paragraphs' list; fix the file")
        title = str(article.get("title", ""))
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not (isinstance(para, dict) and isinstance(para.get("context"), str)
                    and isinstance(para.get("qas"), list)):
                raise SquadError(f"{path}: {where} needs a string 'context' and a 'qas' list; fix the file")
            context = para["context"]
            for q, qa in enumerate(para["qas"]):
                qwhere = f"{where}.qas[{q}]"
                if not (isinstance(qa, dict) and isinstance(qa.get("id"), str) and isinstance(qa.get("question"), str)):
                    raise SquadError(f"{path}: {qwhere} needs a string 'id' and 'question'; fix the file")
                qid = qa["id"]
                if qid in seen:
                    raise SquadError(f"{path}: {qwhere} repeats question id {qid!r}; ids must be unique, fix the file")
                seen.add(qid)
                answers = _answers(qa.get("answers", []), f"{qwhere}.answers", path)
                has_impossible_field |= "is_impossible" in qa
                impossible = bool(qa.get("is_impossible", False))
                if impossible and answers:
                    raise SquadError(f"{path}: {qwhere} ({qid}) is_impossible but has answers; drop one of them")
                plausible = _answers(qa.get("plausible_answers", []), f"{qwhere}.plausible_answers", path)
                if any(not answer_matches(context, ans) for ans in answers):
                    mismatched.append(qid)
                examples.append(SquadExample(qid, title, qa["question"], context, answers, impossible, plausible))
    if mismatched:
        warnings.warn(f"{path}: {len(mismatched)} of {len(examples)} questions have an answer whose text is not "
                      f"the context at its answer_start (first: {mismatched[0]}); they are evaluated on the text "
                      "but those answers give no training targets", stacklevel=2)
    version = str(raw["version"]).lstrip("vV") if "version" in raw else ("2.0" if has_impossible_field else "1.1")
    if any(e.is_impossible for e in examples) and not version.startswith("2"):
        raise SquadError(f"{path} says version {version} but has unanswerable questions (a v2.0 feature); "
                         "fix its 'version' field")
    return examples, version


# ----------------------------------------------------------------------------------------- featurizing


def window_starts(num_tokens: int, max_doc_tokens: int, doc_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of run_squad's doc spans: a window every min(max_doc_tokens, doc_stride) tokens until
    one reaches the end; always at least one window (an empty one for an empty context)."""
    step = min(max_doc_tokens, doc_stride)
    count = 1 if num_tokens <= max_doc_tokens else 1 + -(-(num_tokens - max_doc_tokens) // step)
    starts = np.arange(count, dtype=np.int64) * step
    return starts, np.minimum(num_tokens - starts, max_doc_tokens)


def max_context_window(starts: np.ndarray, lengths: np.ndarray, num_tokens: int) -> np.ndarray:
    """For each context token, the window where it has the most context on both sides (run_squad's rule:
    score = min(left, right) + 0.01 * window length, the first window wins ties). int [num_tokens]."""
    pos = np.arange(num_tokens)[None, :]
    first, last = starts[:, None], (starts + lengths - 1)[:, None]
    score = np.minimum(pos - first, last - pos) + 0.01 * lengths[:, None]
    score = np.where((pos >= first) & (pos <= last), score, -np.inf)
    return score.argmax(axis=0)


def answer_token_span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last context token overlapping [char_start, char_end), or None when no token does."""
    first = int(np.searchsorted(offsets[:, 1], char_start, side="right"))
    last = int(np.searchsorted(offsets[:, 0], char_end, side="left")) - 1
    return (first, last) if first <= last and first < len(offsets) and last >= 0 else None


def _encode(tokenizer, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    encodings = tokenizer.backend.encode_batch(list(texts), add_special_tokens=False)
    return [(np.asarray(e.ids, np.int32), np.asarray(e.offsets, np.int32).reshape(-1, 2)) for e in encodings]


def _target_span(example: SquadExample, offsets: np.ndarray) -> tuple[int, int] | None:
    for text, start in example.answers:  # the first answer that is usable (train files have exactly one)
        if answer_matches(example.context, (text, start)):
            span = answer_token_span(offsets, start, start + len(text))
            if span is not None:
                return span
    return None


def featurize_squad(examples: Sequence[SquadExample], tokenizer, max_seq_len: int = 384, doc_stride: int = 128,
                    max_query_len: int = 64, *, training: bool) -> dict[str, np.ndarray]:
    """Rows `[CLS] question [SEP] context-window [SEP]` per the fine-tuning contract, several per long context.

    Extra arrays for postprocessing: `offsets` int32 [N, L, 2] (char span in the context of each context token,
    -1 elsewhere) and `token_is_max_context` bool [N, L]. `start_position`/`end_position` hold the first usable
    answer's tokens when it lies wholly inside the window, else 0/0 ([CLS]); impossible questions are 0/0.
    With `training=True`, answerable questions with no usable answer (text not at answer_start) get no rows.
    """
    if max_query_len < 1 or max_seq_len < max_query_len + 4:
        raise SquadError(f"--max_seq_len {max_seq_len} leaves no room for context after a {max_query_len}-token "
                         "question and 3 special tokens; raise --max_seq_len or lower --max_query_len")
    if doc_stride < 1:
        raise SquadError(f"--doc_stride {doc_stride} must be positive; pass e.g. 128 (BERT's default)")
    context_index: dict[str, int] = {}
    for ex in examples:
        context_index.setdefault(ex.context, len(context_index))
    contexts = _encode(tokenizer, list(context_index))  # questions share paragraphs: tokenise each once
    questions = _encode(tokenizer, [ex.question for ex in examples])
    length_of = np.arange(max_seq_len)
    blocks: list[dict[str, np.ndarray]] = []
    unusable = 0
    for i, ex in enumerate(examples):
        ids, offsets = contexts[context_index[ex.context]]
        q_ids = questions[i][0][:max_query_len]
        q = len(q_ids)
        max_doc = max_seq_len - q - 3
        starts, lengths = window_starts(len(ids), max_doc, doc_stride)
        span = None if ex.is_impossible else _target_span(ex, offsets)
        if training and span is None and not ex.is_impossible:
            unusable += 1
            continue
        w = len(starts)
        slot = np.arange(max_doc)[None, :]
        in_window = slot < lengths[:, None]
        doc_pos = np.minimum(starts[:, None] + slot, len(ids))  # index len(ids) = the padding entry appended below
        ctx = slice(q + 2, q + 2 + max_doc)
        rows = np.arange(w)
        input_ids = np.full((w, max_seq_len), tokenizer.pad_id, np.int32)
        input_ids[:, 0] = tokenizer.cls_id
        input_ids[:, 1:q + 1] = q_ids
        input_ids[:, q + 1] = tokenizer.sep_id
        input_ids[:, ctx] = np.where(in_window, np.append(ids, tokenizer.pad_id)[doc_pos], tokenizer.pad_id)
        input_ids[rows, q + 2 + lengths] = tokenizer.sep_id
        length = (q + 3 + lengths).astype(np.int32)
        token_type_ids = ((length_of >= q + 2) & (length_of < length[:, None])).astype(np.int32)
        row_offsets = np.full((w, max_seq_len, 2), -1, np.int32)
        row_offsets[:, ctx] = np.where(in_window[..., None], np.append(offsets, [[-1, -1]], axis=0)[doc_pos], -1)
        is_max = np.zeros((w, max_seq_len), bool)
        best_window = np.append(max_context_window(starts, lengths, len(ids)), -1)
        is_max[:, ctx] = in_window & (best_window[doc_pos] == rows[:, None])
        start_position = np.zeros(w, np.int32)
        end_position = np.zeros(w, np.int32)
        if span is not None:
            inside = (span[0] >= starts) & (span[1] < starts + lengths)
            start_position[inside] = (span[0] - starts[inside] + q + 2)
            end_position[inside] = (span[1] - starts[inside] + q + 2)
        blocks.append({"input_ids": input_ids, "token_type_ids": token_type_ids, "length": length,
                       "example_index": np.full(w, i, np.int32), "start_position": start_position,
                       "end_position": end_position, "offsets": row_offsets, "token_is_max_context": is_max})
    if unusable:
        answerable = sum(not ex.is_impossible for ex in examples)
        warnings.warn(f"featurize_squad: {unusable} of {answerable} answerable questions have no answer that "
                      "matches their context at answer_start; they give no training rows", stacklevel=2)
    if not blocks:
        raise SquadError("featurize_squad got no examples with usable rows; pass a non-empty SQuAD split")
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


# ----------------------------------------------------------------------------------------- postprocessing


def _row_best_spans(start: np.ndarray, end: np.ndarray, is_context: np.ndarray, is_max: np.ndarray, n_best: int,
                    max_answer_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best (score, start, end) per row over the top-n_best starts x top-n_best ends; score -inf when none."""
    start = np.where(is_context & is_max, start, -np.inf)
    end = np.where(is_context, end, -np.inf)
    k = min(n_best, start.shape[1])
    top_start = np.argpartition(-start, k - 1, axis=1)[:, :k]
    top_end = np.argpartition(-end, k - 1, axis=1)[:, :k]
    span_len = top_end[:, None, :] - top_start[:, :, None] + 1
    score = np.take_along_axis(start, top_start, 1)[:, :, None] + np.take_along_axis(end, top_end, 1)[:, None, :]
    score = np.where((span_len >= 1) & (span_len <= max_answer_len), score, -np.inf).reshape(len(start), -1)
    best = score.argmax(axis=1)
    rows = np.arange(len(start))
    return score[rows, best], top_start[rows, best // k], top_end[rows, best % k]


def postprocess_squad(examples: Sequence[SquadExample], features: dict[str, np.ndarray], start_logits, end_logits,
                      n_best: int = 20, max_answer_len: int = 30, *, version_2: bool,
                      null_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, float]]:
    """Logits per feature row -> (predicted answer text per qid, null odds per qid; {} for v1.1).

    Logits are [N, W] for the N feature rows, W between the longest row and max_seq_len (padding columns are
    ignored). A span must lie in the context, start on a token whose max-context window this is, have
    start <= end and at most max_answer_len tokens; the best start+end logit over all windows wins. For v2.0,
    null odds = min over windows of (start[0] + end[0]) minus the best span score, and the answer is '' when
    the odds exceed null_threshold (or when no span qualifies: odds +inf). To tune the threshold, postprocess
    with null_threshold=inf and pass the result to best_null_threshold.
    """
    example_index = np.asarray(features["example_index"])
    offsets = np.asarray(features["offsets"])
    n_rows, max_len = offsets.shape[:2]
    start, end = np.asarray(start_logits, np.float64), np.asarray(end_logits, np.float64)
    longest = int(np.max(features["length"], initial=0))
    for name, arr in (("start_logits", start), ("end_logits", end)):
        if arr.ndim != 2 or arr.shape[0] != n_rows or not longest <= arr.shape[1] <= max_len:
            raise SquadError(f"{name} has shape {arr.shape}; expected [{n_rows}, W] with {longest} <= W <= {max_len} "
                             "(one row per feature row, padded to a common width)")
        if not np.isfinite(arr).all():
            raise SquadError(f"{name} holds NaN or inf; the model diverged, check the learning rate / loss scaling")
    if n_best < 1 or max_answer_len < 1:
        raise SquadError(f"--n_best {n_best} and --max_answer_len {max_answer_len} must be positive; pass 20 and 30")
    width = start.shape[1]
    if n_rows and (example_index.min() < 0 or example_index.max() >= len(examples)):
        raise SquadError(f"features name examples up to {example_index.max()} but {len(examples)} examples were "
                         "passed; pass the same example list that was featurized")
    score, best_start, best_end = _row_best_spans(start, end, offsets[:, :width, 0] >= 0,
                                                  np.asarray(features["token_is_max_context"])[:, :width],
                                                  n_best, max_answer_len)
    null_score = start[:, 0] + end[:, 0]
    order = np.argsort(example_index, kind="stable")
    bounds = np.searchsorted(example_index[order], np.arange(len(examples) + 1))
    missing = np.flatnonzero(bounds[1:] == bounds[:-1])
    if missing.size:
        raise SquadError(f"features have no rows for {missing.size} of {len(examples)} examples (first: "
                         f"{examples[missing[0]].qid}); postprocess features made with training=False")
    predictions: dict[str, str] = {}
    null_odds: dict[str, float] = {}
    for i, ex in enumerate(examples):
        rows = order[bounds[i]:bounds[i + 1]]
        r = rows[np.argmax(score[rows])]
        found = np.isfinite(score[r])
        text = ex.context[offsets[r, best_start[r], 0]:offsets[r, best_end[r], 1]] if found else ""
        if version_2:
            odds = float(null_score[rows].min() - score[r]) if found else float("inf")
            null_odds[ex.qid] = odds
            if odds > null_threshold:
                text = ""
        predictions[ex.qid] = text
    return predictions, null_odds
