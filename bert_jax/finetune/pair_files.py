"""Sentence(-pair) classification files as users bring them: CSV, TSV or JSON lines with named columns.

The format follows the extension: `.csv` is ordinary quoted CSV (the NLI CSVs quote sentences holding commas),
`.tsv` is read with GLUE's QUOTE_NONE (a stray quote in GLUE text must not swallow lines), `.jsonl`/`.json`/
`.ndjson` hold one JSON object per line (MNLI/SNLI's official `*.jsonl`). A file argument may list several files
or globs separated by commas; their examples are concatenated in the order given.

Columns are found by name: the caller's names first, then common ones (sentence1/sentence2, question/sentence,
premise/hypothesis, gold_label/label). Rows whose label is `-` (MNLI/SNLI pairs without annotator consensus)
have no gold label and are dropped, as the official counts do. Label values are mapped to indices by a
`LabelMap`: `a,b,c` (values in index order) or `VALUE=NAME` entries for files that store e.g. ids.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from bert_jax.finetune.glue import GlueFormatError, GlueTask, SentenceExample

log = logging.getLogger(__name__)

NO_GOLD_LABEL = "-"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
# Searched in order after the caller's own names; a pair's second text is never the column taken as the first.
TEXT_A_COLUMNS = ("sentence1", "question1", "question", "premise", "text_a", "sentence", "text")
TEXT_B_COLUMNS = ("sentence2", "question2", "hypothesis", "text_b", "sentence")
LABEL_COLUMNS = ("gold_label", "label")


@dataclass(frozen=True)
class Columns:
    """Column names tried in order; the first one a file has is used. text_b () = single-text task."""
    text_a: tuple[str, ...] = TEXT_A_COLUMNS
    text_b: tuple[str, ...] = TEXT_B_COLUMNS
    label: tuple[str, ...] = LABEL_COLUMNS
    text_b_required: bool = False  # a pair task: a file without a second text is an error, not single-text


def find_columns(text_a: str = "", text_b: str = "", label: str = "", task: GlueTask | None = None) -> Columns:
    """Columns from `--text_a_column` etc. ('' = find by name, text_b 'none' = single text), a GLUE task's own
    names tried before the common ones. A name the user gives is the only one tried."""
    def names(given, own, common):
        return (given,) if given else tuple(dict.fromkeys(c for c in (own, *common) if c))

    single = text_b == "none" or (task is not None and task.text_b is None and not text_b)
    return Columns(text_a=names(text_a, task and task.text_a, TEXT_A_COLUMNS),
                   text_b=() if single else names(text_b, task and task.text_b, TEXT_B_COLUMNS),
                   label=names(label, task and task.label.get("train"), LABEL_COLUMNS),
                   text_b_required=not single and bool(text_b or task is not None))


@dataclass(frozen=True)
class LabelMap:
    names: tuple[str, ...]  # label names in index order
    index: dict  # value as written in a file -> index into names


def parse_labels(text: str, task_labels: Sequence[str] | None = None) -> LabelMap:
    """`--labels`: 'a,b,c' (values in index order) or 'VALUE=NAME,...'; for a task with fixed labels (GLUE) the
    names must be the task's and the index order stays the task's, so metrics and prediction files keep it."""
    entries = [e.strip() for e in (text or "").split(",") if e.strip()]
    if not entries:
        if task_labels is None:
            raise GlueFormatError("no label set; pass --labels with every label value in order, e.g. "
                                  "--labels contradiction,entailment,neutral")
        return LabelMap(tuple(task_labels), {name: i for i, name in enumerate(task_labels)})
    pairs = [tuple(x.strip() for x in e.split("=", 1)) if "=" in e else (e, e) for e in entries]
    values = [v for v, _ in pairs]
    if len(set(values)) != len(values):
        raise GlueFormatError(f"--labels {text!r} repeats a value; list each label value once")
    names = tuple(dict.fromkeys(name for _, name in pairs))  # first-seen order; several values may share a name
    if task_labels is not None:
        unknown = [n for n in names if n not in task_labels]
        if unknown:
            raise GlueFormatError(f"--labels {text!r} names {unknown}, not labels of this task {list(task_labels)}; "
                                  "map file values onto them as VALUE=NAME")
        names = tuple(task_labels)
    return LabelMap(names, {value: names.index(name) for value, name in pairs})


def expand_files(spec: str) -> list[str]:
    """The files of a comma-separated list of paths and globs, each glob sorted, in the order given."""
    paths: list[str] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        found = [p for p in matches if os.path.isfile(p)]
        if not found:
            raise GlueFormatError(f"{item} matches no file; pass existing .csv/.tsv/.jsonl files, comma-separated")
        paths += found
    if not paths:
        raise GlueFormatError(f"file list {spec!r} names no file; pass e.g. train.csv or 'a.jsonl,b.jsonl'")
    return paths


def _format_of(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise GlueFormatError(f"{path}: unknown extension {extension!r}; name the file .csv, .tsv or .jsonl "
                              "(one JSON object per line) to say its format")
    return FORMATS[extension]


def _records(path: str, fmt: str) -> Iterator[tuple[int, dict | list]]:
    """(line number where the record starts, record): the header row first for CSV/TSV, dicts for JSONL."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if fmt == "jsonl":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GlueFormatError(f"{path}:{number}: not a JSON object ({e.msg}); write one JSON object "
                                          "per line (JSON lines), or give a CSV file the .csv extension") from None
                if not isinstance(record, dict):
                    raise GlueFormatError(f"{path}:{number}: a JSON {type(record).__name__}, not an object; write "
                                          "one JSON object per line")
                yield number, record
            return
        reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",",
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
        start = 1
        try:
            for row in reader:
                if row:
                    yield start, row
                start = reader.line_num + 1  # a quoted CSV field may span lines: report where the record began
        except csv.Error as e:
            raise GlueFormatError(f"{path}:{start}: {e}; fix the quoting of that row") from None


def _pick(names: Sequence[str], wanted: Sequence[str], avoid: str | None = None) -> str | None:
    return next((c for c in wanted if c in names and c != avoid), None)


def _resolve(path: str, line: int, names: Sequence[str], columns: Columns, labelled: bool | None):
    """(text_a, text_b or None, label or None) column names present in the file, or a one-line error."""
    def missing(what, wanted, flag):
        raise GlueFormatError(f"{path}:{line}: no {what} column (looked for {list(wanted)}; the file has "
                              f"{list(names)}); pass {flag} NAME")

    text_a = _pick(names, columns.text_a) or missing("first text", columns.text_a, "--text_a_column")
    text_b = _pick(names, columns.text_b, avoid=text_a)
    if text_b is None and columns.text_b_required:
        missing("second text", columns.text_b, "--text_b_column")
    label = None if labelled is False else _pick(names, columns.label)
    if label is None and labelled:
        missing("label", columns.label, "--label_column")
    return text_a, text_b, label


def _field(record: dict, column: str, path: str, line: int) -> str:
    if column not in record:  # JSON lines need not all have the same keys
        raise GlueFormatError(f"{path}:{line}: no {column!r} field in this row; add it or delete the row")
    value = record[column]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # e.g. a JSON label stored as 0/1/2
        return str(value)
    raise GlueFormatError(f"{path}:{line}: {column!r} holds {value!r}, not text; fix or delete that row")


def read_file(path: str, columns: Columns, labels: LabelMap | None,
              labelled: bool | None) -> list[tuple[str, str | None, int | float | None]]:
    """(text_a, text_b, label) per row of one file. `labelled` None: labels when the file has a label column
    (test files); label None when unlabelled, a float when `labels` is None (regression)."""
    fmt = _format_of(path)
    try:
        records = _records(path, fmt)
        first = next(records, None)
        if first is None:
            raise GlueFormatError(f"{path} is empty; pass a file with a header (or JSON keys) and at least one row")
        if fmt == "jsonl":
            header, rows = list(first[1]), ((n, r) for it in ([first], records) for n, r in it)
        else:
            header, rows = first[1], records
        text_a, text_b, label = _resolve(path, first[0], header, columns, labelled)
        position = {name: i for i, name in enumerate(header)} if fmt != "jsonl" else None
        out, dropped = [], 0
        for line, record in rows:
            if position is not None:
                if len(record) != len(header):
                    sep = "tab" if fmt == "tsv" else "comma"
                    raise GlueFormatError(f"{path}:{line}: {len(record)} {sep}-separated fields, header has "
                                          f"{len(header)}; fix or delete that row")
                record = {name: record[i] for name, i in position.items()}
            value = None
            if label is not None:
                raw = _field(record, label, path, line).strip()
                if raw == NO_GOLD_LABEL:
                    dropped += 1
                    continue
                value = _label_value(raw, labels, path, line, label)
            out.append((_field(record, text_a, path, line),
                        None if text_b is None else _field(record, text_b, path, line), value))
    except UnicodeDecodeError as e:
        raise GlueFormatError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-encode it as UTF-8") from e
    if not out:
        why = f"all {dropped} are labelled {NO_GOLD_LABEL!r} (no gold label)" if dropped else "only a header"
        raise GlueFormatError(f"{path} has no examples ({why}); pass a file with at least one example row")
    if dropped:
        log.info("%s: dropped %d rows labelled %r (no gold label)", path, dropped, NO_GOLD_LABEL)
    return out


def _label_value(raw: str, labels: LabelMap | None, path: str, line: int, column: str) -> int | float:
    if labels is None:  # regression (STS-B)
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):  # nan/inf would turn every metric into nan after training
            raise GlueFormatError(f"{path}:{line}: {column} {raw!r} is not a finite number; fix that row")
        return score
    if raw not in labels.index:
        raise GlueFormatError(f"{path}:{line}: {column} {raw!r} is not one of {list(labels.index)}; fix that row or "
                              "pass --labels listing every label value (VALUE=NAME maps a value onto a name)")
    return labels.index[raw]


def read_pair_files(spec: str, columns: Columns, labels: LabelMap | None, split: str, name: str,
                    labelled: bool | None = True) -> list[SentenceExample]:
    """Examples of every file in `spec` (comma-separated paths/globs), concatenated, guids `<name>-<split>-<i>`."""
    rows = [row for path in expand_files(spec) for row in read_file(path, columns, labels, labelled)]
    return [SentenceExample(f"{name}-{split}-{i}", a, b, y) for i, (a, b, y) in enumerate(rows)]
