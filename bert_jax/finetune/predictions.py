"""Prediction files: what a fine-tuned model predicted on each split, in the formats official scorers read.

`bert-jax finetune` writes every setting's into `<workdir>/runs/<setting>/` and copies the best setting's (the
best single run on dev) to `<workdir>/predictions/`. Files per split, by the task's kind:

  classification, regression  labelled splits: `<split>.jsonl`, one line per example in file order,
                              {"index", "id", "prediction", "gold"} (class ids or scores) plus, for
                              classification, "prediction_label" and "gold_label" (the label strings).
                              Unlabelled splits (test sets): GLUE's submission file, `<NAME>.tsv` (CoLA.tsv,
                              SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv,
                              RTE.tsv, WNLI.tsv, AX.tsv; `<split>.tsv` outside GLUE): header `index<TAB>prediction`,
                              rows 0..n-1 in file order, label strings (0/1 for CoLA, SST-2, MRPC, QQP, WNLI;
                              entailment/neutral/contradiction for MNLI and AX; entailment/not_entailment for
                              QNLI and RTE), STS-B scores as numbers.
  span (SQuAD)                `<split>_predictions.json`: {question id: answer text}, the input of the official
                              evaluate-v1.1.py / evaluate-v2.0.py ('' is "no answer").
  tagging (CoNLL)             `<split>.conll`: `word gold predicted` per word, a blank line between sentences
                              (conlleval's input).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

GLUE_SUBMISSION_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
                         "mnli": "MNLI-m", "mnli-mm": "MNLI-mm", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
                         "ax": "AX"}
# The MNLI run also predicts the mismatched test set and the diagnostic set, each its own submission file.
GLUE_EXTRA_SPLIT_NAMES = {"test_mismatched": "MNLI-mm", "ax": "AX"}


def table_name(task_name: str, split: str) -> str:
    """The file an unlabelled split's predictions go to: GLUE's submission name for GLUE test sets."""
    family, _, short = task_name.partition("/")
    if family == "glue" and split in GLUE_EXTRA_SPLIT_NAMES:
        return GLUE_EXTRA_SPLIT_NAMES[split] + ".tsv"
    if family == "glue" and split == "test" and short in GLUE_SUBMISSION_NAMES:
        return GLUE_SUBMISSION_NAMES[short] + ".tsv"
    return f"{split}.tsv"


def _label_text(value, labels: Sequence[str] | None) -> str:
    return f"{float(value):.3f}" if labels is None else labels[int(value)]


def write_sentence_predictions(directory: str, task, split: str, examples: Sequence, predictions,
                               labelled: bool) -> str:
    """Classification / regression: `<split>.jsonl` with gold labels, or the submission TSV when unlabelled."""
    labels = task.options.get("labels") if task.kind == "classification" else None
    value = (lambda v: int(v)) if labels is not None else (lambda v: float(v))
    if not labelled:
        name = table_name(task.name, split)
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write("index\tprediction\n")
            f.writelines(f"{i}\t{_label_text(p, labels)}\n" for i, p in enumerate(predictions))
        return name
    name = f"{split}.jsonl"
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        for i, (example, predicted) in enumerate(zip(examples, predictions)):
            row = {"index": i, "id": example.guid, "prediction": value(predicted), "gold": value(example.label)}
            if labels is not None:
                row.update(prediction_label=labels[int(predicted)], gold_label=labels[int(example.label)])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return name


def write_span_predictions(directory: str, split: str, predictions: dict[str, str]) -> str:
    name = f"{split}_predictions.json"
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(predictions, f, ensure_ascii=False, indent=1)
    return name


def write_tag_predictions(directory: str, split: str, examples: Sequence, predictions: Sequence[Sequence[str]]) -> str:
    name = f"{split}.conll"
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        for sentence, predicted in zip(examples, predictions):
            f.writelines(f"{word} {gold} {tag}\n" for word, gold, tag in zip(sentence.words, sentence.tags, predicted))
            f.write("\n")
    return name


def write_split(directory: str, task, split: str, examples: Sequence, predictions: Any, labelled: bool) -> str:
    """One split's predictions (`task.predict`'s output) into `directory`; returns the file name."""
    if task.kind in ("classification", "regression"):
        return write_sentence_predictions(directory, task, split, examples, predictions, labelled)
    if task.kind == "span":
        return write_span_predictions(directory, split, predictions)
    if task.kind == "tagging":
        return write_tag_predictions(directory, split, examples, predictions)
    raise ValueError(f"task {task.name} has kind {task.kind!r}, which has no prediction format; "
                     "add one to bert_jax/finetune/predictions.py")


def write_predictions(directory: str, task, splits: dict[str, tuple[Sequence, Any, bool]]) -> list[str]:
    """{split: (examples, predictions, labelled)} into `directory`, replaced whole: a half-written set never sits
    under the real name (a restarted command trusts a setting's directory when it exists)."""
    staging = directory + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    names = [write_split(staging, task, split, *value) for split, value in splits.items()]
    replace_directory(staging, directory)
    return names


def publish(source: str, target: str) -> list[str]:
    """A copy of the directory `source` at `target` (replacing what was there); returns its file names."""
    staging = target + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    replace_directory(staging, target)
    return sorted(os.listdir(target))


def replace_directory(staging: str, target: str) -> None:
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.replace(staging, target)
