"""The task registry: `glue/<task>`, `squad/v1.1`, `squad/v2.0`, `conll2003`, each binding a reader, a featurizer,
a head kind and an evaluator (outputs per feature row -> metrics on the original examples).

Data layout per family (`--data_dir`):
  glue/*     the task's folder as GLUE distributes it (train.tsv, dev.tsv, test.tsv; MNLI's dev_matched.tsv ...)
  squad/*    train-v1.1.json + dev-v1.1.json (or -v2.0); `--train_file/--dev_file` name other files
  conll2003  train.txt, valid.txt, test.txt (or the original eng.train, eng.testa, eng.testb)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np


class TaskError(ValueError):
    """An unknown task or a missing data file; the message lists the choices or the expected files."""


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str  # classification | regression | tagging | span
    num_labels: int
    metric: str  # the dev metric that selects settings (higher is better)
    eval_splits: tuple[str, ...]  # splits with labels, evaluated after training
    max_seq_len: int  # the paper's default for the task family
    read: Callable[[str, str], list]  # (data_dir, split) -> examples
    featurize: Callable[..., dict]  # (examples, tokenizer, max_seq_len, training) -> features
    evaluate: Callable[[list, dict, dict], dict]  # (examples, features, outputs) -> metrics
    options: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------- GLUE


def _glue_task(short: str) -> Task:
    from bert_jax.finetune.glue import GLUE_TASKS, featurize_pairs, glue_metrics, read_glue

    spec = GLUE_TASKS[short]
    regression = spec.labels is None
    metric_task = "mnli" if short in ("mnli-mm", "ax") else short

    def evaluate(examples, features, outputs):
        logits = outputs["logits"]
        rows = logits if regression else logits.argmax(-1)
        predictions = np.zeros(len(examples), rows.dtype)
        predictions[features["example_index"]] = rows  # one row per example: pairs are truncated, never split
        labels = np.asarray([e.label for e in examples], np.float32 if regression else np.int64)
        return glue_metrics(metric_task, predictions, labels)

    def read(data_dir, split):
        if split == "dev_mismatched":  # MNLI's second dev set, evaluated by the same run
            return read_glue("mnli-mm", data_dir, "dev")
        return read_glue(short, data_dir, split)

    return Task(name=f"glue/{short}", kind="regression" if regression else "classification",
                num_labels=1 if regression else len(spec.labels), metric=spec.metrics[0],
                eval_splits=("dev", "dev_mismatched") if short == "mnli" else ("dev",),
                max_seq_len=128, read=read,
                featurize=lambda examples, tok, max_len, training: featurize_pairs(examples, tok, max_len),
                evaluate=evaluate, options={"labels": spec.labels})


# ----------------------------------------------------------------------------------------- SQuAD


def _squad_file(data_dir: str, split: str, version: str, options: dict) -> str:
    override = options.get(f"{split}_file")
    if override:
        return override
    path = os.path.join(data_dir, f"{split}-v{version}.json")
    if not os.path.exists(path):
        raise TaskError(f"{path} is missing; put {split}-v{version}.json in --data_dir or pass --{split}_file")
    return path


def _squad_task(version: str, options: dict) -> Task:
    from bert_jax.finetune import squad, squad_eval

    version_2 = version == "2.0"

    def read(data_dir, split):
        examples, _ = squad.read_squad(_squad_file(data_dir, split, version, options))
        return examples

    def featurize(examples, tok, max_len, training):
        return squad.featurize_squad(examples, tok, max_seq_len=max_len, doc_stride=options.get("doc_stride", 128),
                                     max_query_len=options.get("max_query_len", 64), training=training)

    def evaluate(examples, features, outputs):
        # One n-best search, never blanked; v2 then blanks where the no-answer score wins by the threshold,
        # and tunes the threshold on the same never-blanked predictions (as evaluate-v2.0's best_f1).
        always, null_odds = squad.postprocess_squad(
            examples, features, outputs["start_logits"], outputs["end_logits"], n_best=options.get("n_best", 20),
            max_answer_len=options.get("max_answer_len", 30), version_2=version_2, null_threshold=float("inf"))
        threshold = options.get("null_threshold", 0.0)
        predictions = {qid: "" if version_2 and null_odds[qid] > threshold else text for qid, text in always.items()}
        metrics = squad_eval.squad_metrics(examples, predictions)
        if version_2:
            metrics["best_f1"], metrics["best_f1_threshold"] = squad_eval.best_null_threshold(examples, always, null_odds)
        return metrics

    return Task(name=f"squad/v{version}", kind="span", num_labels=2, metric="f1", eval_splits=("dev",),
                max_seq_len=384, read=read, featurize=featurize, evaluate=evaluate, options=options)


# ----------------------------------------------------------------------------------------- CoNLL-2003

CONLL_FILES = {"train": ("train.txt", "eng.train"), "dev": ("valid.txt", "dev.txt", "eng.testa"),
               "test": ("test.txt", "eng.testb")}


def _conll_task(options: dict) -> Task:
    from bert_jax.finetune.conll import CONLL2003_LABELS, featurize_tagging, read_conll, word_predictions
    from bert_jax.finetune.metrics import entity_f1

    labels = tuple(options.get("labels") or CONLL2003_LABELS)

    def read(data_dir, split):
        for name in CONLL_FILES[split]:
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                return read_conll(path, scheme=options.get("scheme", "auto"))
        raise TaskError(f"no CoNLL {split} file in {data_dir}; expected one of {CONLL_FILES[split]}")

    def evaluate(examples, features, outputs):
        predicted = word_predictions(features, outputs["logits"].argmax(-1), len(examples), labels)
        return entity_f1([list(e.tags) for e in examples], predicted)

    return Task(name="conll2003", kind="tagging", num_labels=len(labels), metric="f1", eval_splits=("dev",),
                max_seq_len=128, read=read,
                featurize=lambda examples, tok, max_len, training: featurize_tagging(examples, tok, labels, max_len),
                evaluate=evaluate, options={**options, "labels": labels})


# ----------------------------------------------------------------------------------------- registry


def task_names() -> list[str]:
    from bert_jax.finetune.glue import GLUE_TASKS

    return [f"glue/{t}" for t in GLUE_TASKS] + ["squad/v1.1", "squad/v2.0", "conll2003"]


def get_task(name: str, options: dict[str, Any] | None = None) -> Task:
    options = dict(options or {})
    family, _, short = name.partition("/")
    if family == "glue":
        from bert_jax.finetune.glue import GLUE_TASKS

        if short in GLUE_TASKS:
            return _glue_task(short)
    elif family == "squad" and short.lstrip("v") in ("1.1", "2.0"):
        return _squad_task(short.lstrip("v"), options)
    elif name in ("conll2003", "ner/conll2003"):
        return _conll_task(options)
    raise TaskError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")
