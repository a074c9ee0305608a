"""GLUE: task table, TSV readers for every task as GLUE distributes it, pair featurizer, task metrics.

Files are read with csv QUOTE_NONE semantics: GLUE text holds unbalanced quotes (MRPC's `"The foodservice...`)
that a quoting reader would swallow across lines. Columns are found by header name where the file has a
header, by position in CoLA's header-less train/dev files. Test rows come back in file order with label None;
GLUE's submission format numbers them 0..n-1 in that order.
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from bert_jax.finetune import metrics as M

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


class GlueFormatError(ValueError):
    """A GLUE file or task request that cannot be read; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class GlueTask:
    name: str
    dirname: str  # the task's folder in a GLUE download (download_glue_data.py layout)
    files: dict[str, str]  # split -> file name
    text_a: str  # column names
    text_b: str | None
    label: dict[str, str | None]  # split -> label column; None = the split is unlabelled
    labels: tuple[str, ...] | None  # label values in index order; None = regression
    metrics: tuple[str, ...]  # the first one selects checkpoints/hyper-parameters
    header: bool = True  # False: labelled files have no header row and columns are found by `positions`
    positions: dict[str, int] = field(default_factory=dict)  # column name -> index in header-less files
    num_columns: int = 0  # column count of header-less files
    skip_malformed: bool = False  # QQP: rows broken by stray newlines are skipped (counted) instead of fatal

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_BINARY = ("0", "1")
_MNLI_LABELS = ("contradiction", "entailment", "neutral")
_ENTAILMENT = ("entailment", "not_entailment")


def _task(name, dirname, text_a, text_b, labels, metrics, label_column="label", files=None, **kw) -> GlueTask:
    files = files or {s: f"{s}.tsv" for s in SPLITS}
    return GlueTask(name, dirname, files, text_a, text_b, {"train": label_column, "dev": label_column, "test": None},
                    labels, metrics, **kw)


GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in (
    # CoLA train/dev: source, label, original mark, sentence (no header); test: index, sentence (header).
    _task("cola", "CoLA", "sentence", None, _BINARY, ("mcc", "accuracy"), header=False,
          positions={"label": 1, "sentence": 3}, num_columns=4),
    _task("sst2", "SST-2", "sentence", None, _BINARY, ("accuracy",)),
    _task("mrpc", "MRPC", "#1 String", "#2 String", _BINARY, ("f1", "accuracy"), label_column="Quality"),
    _task("stsb", "STS-B", "sentence1", "sentence2", None, ("pearson_spearman", "pearson", "spearman"),
          label_column="score"),
    _task("qqp", "QQP", "question1", "question2", _BINARY, ("f1", "accuracy"), label_column="is_duplicate",
          skip_malformed=True),
    _task("mnli", "MNLI", "sentence1", "sentence2", _MNLI_LABELS, ("accuracy",), label_column="gold_label",
          files={"train": "train.tsv", "dev": "dev_matched.tsv", "test": "test_matched.tsv"}),
    _task("mnli-mm", "MNLI", "sentence1", "sentence2", _MNLI_LABELS, ("accuracy",), label_column="gold_label",
          files={"train": "train.tsv", "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}),
    _task("qnli", "QNLI", "question", "sentence", _ENTAILMENT, ("accuracy",)),
    _task("rte", "RTE", "sentence1", "sentence2", _ENTAILMENT, ("accuracy",)),
    _task("wnli", "WNLI", "sentence1", "sentence2", _BINARY, ("accuracy",)),
    # The diagnostic set is unlabelled and predicted with an MNLI model; GLUE scores it with R3 (multiclass MCC).
    GlueTask("ax", "diagnostic", {"test": "diagnostic.tsv"}, "sentence1", "sentence2", {"test": None},
             _MNLI_LABELS, ("mcc",)),
)}


@dataclass(frozen=True)
class SentenceExample:
    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


def get_task(task: str) -> GlueTask:
    if task not in GLUE_TASKS:
        raise GlueFormatError(f"unknown GLUE task {task!r}; use one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[task]


def glue_path(task: str, data_dir: str, split: str) -> str:
    """The file for `split`: in `data_dir` itself, or in its GLUE sub-folder when `data_dir` is the GLUE root."""
    spec = get_task(task)
    if split not in spec.files:
        raise GlueFormatError(f"GLUE task {task!r} has no {split!r} split; use one of {sorted(spec.files)}")
    name = spec.files[split]
    for path in (os.path.join(data_dir, name), os.path.join(data_dir, spec.dirname, name)):
        if os.path.isfile(path):
            return path
    raise GlueFormatError(f"{os.path.join(data_dir, name)} does not exist; pass the {spec.dirname} folder of a GLUE "
                          f"download (or the GLUE root holding it) that contains {name}")


def read_glue(task: str, data_dir: str, split: str) -> list[SentenceExample]:
    """Examples of one split, labels as indices into `GLUE_TASKS[task].labels` (float scores for stsb)."""
    spec = get_task(task)
    path = glue_path(task, data_dir, split)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            # One record per line under QUOTE_NONE, so the reader's line_num is the file's line number.
            return _read_rows(spec, path, split, ((reader.line_num, row) for row in reader if row))
    except UnicodeDecodeError as e:
        raise GlueFormatError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-encode it as UTF-8") from e
    except csv.Error as e:  # e.g. a field over csv's size limit: not a GLUE file
        raise GlueFormatError(f"{path}:{reader.line_num}: {e}; pass a GLUE {spec.name} TSV file") from e


def _read_rows(spec: GlueTask, path: str, split: str, rows: Iterator[tuple[int, list[str]]]) -> list[SentenceExample]:
    label_column = spec.label.get(split)
    first = next(rows, None)
    if first is None:
        raise GlueFormatError(f"{path} is empty; pass a GLUE {spec.name} file with at least one row")
    columns, num_columns, has_header = _columns(spec, f"{path}:{first[0]}", first[1], label_column)
    if not has_header:
        rows = itertools.chain([first], rows)
    label_index = None if spec.labels is None else {v: i for i, v in enumerate(spec.labels)}
    examples: list[SentenceExample] = []
    skipped: list[int] = []
    for line, row in rows:
        if len(row) != num_columns:
            if spec.skip_malformed:
                skipped.append(line)
                continue
            raise GlueFormatError(f"{path}:{line}: {len(row)} tab-separated columns, expected {num_columns}; "
                                  f"fix or delete that row (the file must be a GLUE {spec.name} TSV)")
        label = None
        if label_column is not None:
            value = row[columns[label_column]].strip()
            try:
                label = _parse_label(value, label_index)
            except ValueError:
                if spec.skip_malformed:
                    skipped.append(line)
                    continue
                expected = "a finite number" if label_index is None else f"one of {list(spec.labels)}"
                raise GlueFormatError(f"{path}:{line}: label {value!r} in column {label_column!r} is not {expected}; "
                                      f"fix that row or pass the right task (not {spec.name!r})") from None
        text_b = None if spec.text_b is None else row[columns[spec.text_b]]
        guid = f"{spec.name}-{split}-{len(examples)}"
        examples.append(SentenceExample(guid, row[columns[spec.text_a]], text_b, label))
    if skipped:
        log.warning("%s: skipped %d malformed rows (wrong column count or label), lines %s%s", path, len(skipped),
                    skipped[:10], " ..." if len(skipped) > 10 else "")
    return examples


def _parse_label(value: str, label_index: dict[str, int] | None) -> int | float:
    if label_index is None:
        score = float(value)
        if not math.isfinite(score):  # a nan/inf score would turn every metric into nan after training
            raise ValueError(value)
        return score
    if value not in label_index:
        raise ValueError(value)
    return label_index[value]


def _columns(spec: GlueTask, where: str, first: list[str], label_column: str | None):
    """(column name -> index, expected column count, whether `first` is a header) from the header or positions."""
    needed = [c for c in (spec.text_a, spec.text_b, label_column) if c is not None]
    # Header-less tasks (CoLA) still get a header in their test file, so detect it by its column names.
    if spec.header or set(needed) <= set(first):
        missing = [c for c in needed if c not in first]
        if missing:
            raise GlueFormatError(f"{where}: header {first} lacks column(s) {missing}; pass the GLUE {spec.name} "
                                  f"file with its original header row")
        return {c: first.index(c) for c in needed}, len(first), True
    missing = [c for c in needed if c not in spec.positions]
    if missing:
        raise GlueFormatError(f"{where}: no header row with column(s) {missing}; add GLUE's header line")
    return {c: spec.positions[c] for c in needed}, spec.num_columns, False


def truncate_pair_lengths(len_a: np.ndarray, len_b: np.ndarray,
                          budget: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Kept lengths under BERT's `_truncate_seq_pair` (drop one token from the longer side, b on ties).

    Closed form of that loop: the longer side shrinks to the shorter one, then both alternate, so the
    kept a-length is min(len_a, max(ceil(budget/2), budget - len_b)) whenever the pair is over budget.
    """
    len_a, len_b = np.asarray(len_a, np.int64), np.asarray(len_b, np.int64)
    budget = np.broadcast_to(np.asarray(budget, np.int64), len_a.shape)
    over = len_a + len_b > budget
    keep_a = np.minimum(len_a, np.maximum((budget + 1) // 2, budget - len_b))
    keep_a = np.where(over, keep_a, len_a)
    keep_b = np.where(over, budget - keep_a, len_b)
    return keep_a, keep_b


def _place(out: np.ndarray, ids: np.ndarray, offsets: np.ndarray, keep: np.ndarray, first_col: np.ndarray) -> None:
    """Write the first keep[i] tokens of text i into row i of `out` from column first_col[i] on."""
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(ids)) - offsets[:-1][owner]
    kept = pos < keep[owner]
    out[owner[kept], first_col[owner[kept]] + pos[kept]] = ids[kept]


def featurize_pairs(examples: Sequence[SentenceExample], tokenizer, max_seq_len: int,
                    regression: bool | None = None) -> dict[str, np.ndarray]:
    """`[CLS] a [SEP] (b [SEP])` rows per the fine-tuning contract, one per example, pairs truncated longest-first.

    `regression=None` infers the label dtype (float32 when any label is a float, else int32); pass it for
    unlabelled test splits of regression tasks.
    """
    n = len(examples)
    has_b = np.array([e.text_b is not None for e in examples], dtype=bool)
    if max_seq_len < (3 if has_b.any() else 2):
        raise ValueError(f"--max_seq_len {max_seq_len} leaves no room for text after [CLS]/[SEP]; pass 128 or so")
    ids_a, _, off_a = tokenizer.encode_flat([e.text_a for e in examples])
    if has_b.any():
        ids_b, _, off_b = tokenizer.encode_flat([e.text_b or "" for e in examples])
    else:  # single-sentence task: skip a tokenizer pass over n empty strings
        ids_b, off_b = np.zeros(0, np.int32), np.zeros(n + 1, np.int64)
    len_a, len_b = np.diff(off_a), np.diff(off_b)
    budget = np.where(has_b, max_seq_len - 3, max_seq_len - 2)
    keep_a, keep_b = truncate_pair_lengths(len_a, len_b, budget)

    rows = np.arange(n)
    input_ids = np.full((n, max_seq_len), tokenizer.pad_id, dtype=np.int32)
    input_ids[:, 0] = tokenizer.cls_id
    _place(input_ids, ids_a, off_a, keep_a, np.ones(n, np.int64))
    sep_a = 1 + keep_a
    input_ids[rows, sep_a] = tokenizer.sep_id
    _place(input_ids, ids_b, off_b, keep_b, sep_a + 1)
    sep_b = sep_a + 1 + keep_b
    input_ids[rows[has_b], sep_b[has_b]] = tokenizer.sep_id
    length = np.where(has_b, sep_b + 1, sep_a + 1)
    col = np.arange(max_seq_len)
    token_type_ids = ((col > sep_a[:, None]) & (col < length[:, None]) & has_b[:, None]).astype(np.int32)

    if regression is None:
        regression = any(isinstance(e.label, float) for e in examples)
    label_dtype = np.float32 if regression else np.int32
    label = np.array([0 if e.label is None else e.label for e in examples], dtype=label_dtype)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "length": length.astype(np.int32),
        "example_index": rows.astype(np.int32),
        "label": label.reshape(n),
    }


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics, selection metric first. Classification predictions may be class ids or logits [N, C].

    mrpc/qqp select on f1 (GLUE reports f1 and accuracy); stsb selects on the mean of Pearson and Spearman.
    """
    spec = get_task(task)
    predictions = np.asarray(predictions)
    if spec.is_regression:
        pearson, spearman = M.pearson(predictions, labels), M.spearman(predictions, labels)
        return {"pearson_spearman": (pearson + spearman) / 2, "pearson": pearson, "spearman": spearman}
    if predictions.ndim == 2:
        predictions = predictions.argmax(-1)
    compute = {
        "accuracy": lambda: M.accuracy(predictions, labels),
        "mcc": lambda: M.matthews_corrcoef(predictions, labels),
        "f1": lambda: M.binary_f1(predictions, labels, positive=1),
    }
    return {name: compute[name]() for name in spec.metrics}
