"""The task registry: `glue/<task>`, `pairs`, `squad/v1.1`, `squad/v2.0`, `conll2003`, each binding a reader, a
featurizer, a head kind and an evaluator (outputs per feature row -> metrics on the original examples).

Data layout per family (`--data_dir`):
  glue/*     the task's folder as GLUE distributes it (train.tsv, dev.tsv, test.tsv; MNLI's dev_matched.tsv ...),
             or `--train_file/--dev_file/--test_file` in CSV, TSV or JSONL (pair_files.py; MNLI then scores
             only --dev_file)
  pairs      no folder: the user's sentence(-pair) classification files and `--labels` (pair_files.py)
  squad/*    train-v1.1.json + dev-v1.1.json (or -v2.0); `--train_file/--dev_file/--test_file` name other files
  conll2003  train.txt, valid.txt, test.txt (or the original eng.train, eng.testa, eng.testb)
A task's optional splits (test sets; MNLI's test_mismatched and the diagnostic set AX, looked for in the GLUE root
too) are used only when their file is there: scored when it has labels, predicted either way.
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
    # (examples, features, outputs) -> one prediction per example, what `evaluate` scores (predictions.py writes
    # them): class ids / scores [n] (classification / regression), tags per word (tagging), {qid: text} (span).
    predict: Callable[[list, dict, dict], Any] | None = None
    optional_splits: tuple[str, ...] = ()  # read only when `locate` finds them (test sets); scored when labelled
    locate: Callable[[str, str], str | None] = lambda data_dir, split: None  # the split's file, None if absent
    has_labels: Callable[[list], bool] = lambda examples: True  # False: the split is predicted, never scored


# ----------------------------------------------------------------------------------------- GLUE


def _glue_task(short: str, options: dict) -> Task:
    from bert_jax.finetune.glue import GLUE_TASKS, GlueFormatError, featurize_pairs, glue_metrics, glue_path, read_glue
    from bert_jax.finetune.pair_files import find_columns, parse_labels, read_pair_files

    spec = GLUE_TASKS[short]
    regression = spec.labels is None
    # --train_file/--dev_file/--test_file: CSV, TSV or JSONL files in place of the GLUE folder's (pair_files.py)
    files = {split: options.get(f"{split}_file") for split in ("train", "dev", "test")}
    label_map = None if regression else parse_labels(options.get("labels", ""), spec.labels)
    columns = find_columns(options.get("text_a_column", ""), options.get("text_b_column", ""),
                           options.get("label_column", ""), spec)
    metric_task = "mnli" if short in ("mnli-mm", "ax") else short

    def predict(examples, features, outputs):
        logits = outputs["logits"]
        rows = logits if regression else logits.argmax(-1)
        predictions = np.zeros(len(examples), rows.dtype)
        predictions[features["example_index"]] = rows  # one row per example: pairs are truncated, never split
        return predictions

    def evaluate(examples, features, outputs):
        labels = np.asarray([e.label for e in examples], np.float32 if regression else np.int64)
        return glue_metrics(metric_task, predict(examples, features, outputs), labels)

    # MNLI's other files, predicted by the same run; the diagnostic set (AX) may sit in the GLUE root beside it.
    sources = {"dev_mismatched": ("mnli-mm", "dev"), "test_mismatched": ("mnli-mm", "test"), "ax": ("ax", "test")}

    def locate(data_dir, split):
        if files.get(split):
            return files[split]
        source, source_split = sources.get(split, (short, split))
        for directory in (data_dir, os.path.dirname(os.path.abspath(data_dir))) if split == "ax" else (data_dir,):
            try:
                return glue_path(source, directory, source_split)
            except GlueFormatError:
                continue
        return None

    def read(data_dir, split):
        if files.get(split):  # a test file is scored when it has a label column
            return read_pair_files(files[split], columns, label_map, split, short,
                                   labelled=None if split == "test" else True)
        source, source_split = sources.get(split, (short, split))
        path = locate(data_dir, split)
        return read_glue(source, os.path.dirname(path) if path else data_dir, source_split)

    return Task(name=f"glue/{short}", kind="regression" if regression else "classification",
                num_labels=1 if regression else len(spec.labels), metric=spec.metrics[0],
                eval_splits=("dev", "dev_mismatched") if short == "mnli" and not files["dev"] else ("dev",),
                max_seq_len=128, read=read,
                featurize=lambda examples, tok, max_len, training: featurize_pairs(examples, tok, max_len, regression),
                evaluate=evaluate, options={"labels": spec.labels}, predict=predict,
                optional_splits=("test", "test_mismatched", "ax") if short == "mnli" else ("test",), locate=locate,
                has_labels=lambda examples: all(e.label is not None for e in examples))


def _pairs_task(options: dict) -> Task:
    """`pairs`: the user's own sentence(-pair) classification files (--train_file ..., --labels), GLUE's recipe."""
    from bert_jax.finetune import metrics as M
    from bert_jax.finetune.glue import featurize_pairs
    from bert_jax.finetune.pair_files import find_columns, parse_labels, read_pair_files

    label_map = parse_labels(options.get("labels", ""))
    if len(label_map.names) < 2:
        raise TaskError(f"--labels {options.get('labels')!r} names one label; a classifier needs two or more, e.g. "
                        "--labels no,yes")
    columns = find_columns(options.get("text_a_column", ""), options.get("text_b_column", ""),
                           options.get("label_column", ""))

    def read(data_dir, split):
        if not options.get(f"{split}_file"):
            raise TaskError(f"task pairs reads only the files it is given; pass --{split}_file FILE (.csv, .tsv or "
                            ".jsonl; several comma-separated)")
        return read_pair_files(options[f"{split}_file"], columns, label_map, split, "pairs",
                               labelled=None if split == "test" else True)

    def predict(examples, features, outputs):
        predictions = np.zeros(len(examples), np.int64)
        predictions[features["example_index"]] = outputs["logits"].argmax(-1)  # one row per example
        return predictions

    def evaluate(examples, features, outputs):
        predicted, gold = predict(examples, features, outputs), np.asarray([e.label for e in examples], np.int64)
        scores = {"accuracy": M.accuracy(predicted, gold), "mcc": M.matthews_corrcoef(predicted, gold)}
        if len(label_map.names) == 2:  # the second label is the positive class, as GLUE's 0/1 tasks
            scores["f1"] = M.binary_f1(predicted, gold, positive=1)
        return scores

    return Task(name="pairs", kind="classification", num_labels=len(label_map.names), metric="accuracy",
                eval_splits=("dev",), max_seq_len=128, read=read,
                featurize=lambda examples, tok, max_len, training: featurize_pairs(examples, tok, max_len, False),
                evaluate=evaluate, options={**options, "labels": label_map.names}, predict=predict,
                optional_splits=("test",), locate=lambda data_dir, split: options.get(f"{split}_file") or None,
                has_labels=lambda examples: all(e.label is not None for e in examples))


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
        path = _squad_file(data_dir, split, version, options)
        examples, _ = squad.read_squad(path)
        # Training rows need an answer found at its answer_start (or an unanswerable question); without one
        # the featurizer would drop every question.
        if split == "train" and examples and not any(
                e.is_impossible or any(squad.answer_matches(e.context, a) for a in e.answers) for e in examples):
            raise TaskError(f"{path} has no question whose answer text is in its context at answer_start, so "
                            "nothing to train on; fix the answers' answer_start (or pass the train file)")
        return examples

    def featurize(examples, tok, max_len, training):
        return squad.featurize_squad(examples, tok, max_seq_len=max_len, doc_stride=options.get("doc_stride", 128),
                                     max_query_len=options.get("max_query_len", 64), training=training)

    def answers(examples, features, outputs):
        # One n-best search, never blanked; v2 then blanks where the no-answer score wins by the threshold,
        # and tunes the threshold on the same never-blanked predictions (as evaluate-v2.0's best_f1).
        always, null_odds = squad.postprocess_squad(
            examples, features, outputs["start_logits"], outputs["end_logits"], n_best=options.get("n_best", 20),
            max_answer_len=options.get("max_answer_len", 30), version_2=version_2, null_threshold=float("inf"))
        threshold = options.get("null_threshold", 0.0)
        predictions = {qid: "" if version_2 and null_odds[qid] > threshold else text for qid, text in always.items()}
        return always, null_odds, predictions

    def evaluate(examples, features, outputs):
        always, null_odds, predictions = answers(examples, features, outputs)
        metrics = squad_eval.squad_metrics(examples, predictions)
        if version_2:
            metrics["best_f1"], metrics["best_f1_threshold"] = squad_eval.best_null_threshold(examples, always, null_odds)
        return metrics

    def locate(data_dir, split):
        path = options.get(f"{split}_file") or os.path.join(data_dir, f"{split}-v{version}.json")
        return path if os.path.isfile(path) else None

    return Task(name=f"squad/v{version}", kind="span", num_labels=2, metric="f1", eval_splits=("dev",),
                max_seq_len=384, read=read, featurize=featurize, evaluate=evaluate, options=options,
                predict=lambda examples, features, outputs: answers(examples, features, outputs)[2],
                optional_splits=("test",), locate=locate,
                has_labels=lambda examples: any(e.answers or e.is_impossible for e in examples))


# ----------------------------------------------------------------------------------------- CoNLL-2003

CONLL_FILES = {"train": ("train.txt", "eng.train"), "dev": ("valid.txt", "dev.txt", "eng.testa"),
               "test": ("test.txt", "eng.testb")}


def _conll_task(options: dict) -> Task:
    from bert_jax.finetune.conll import CONLL2003_LABELS, featurize_tagging, read_conll, word_predictions
    from bert_jax.finetune.metrics import entity_f1

    # --labels: the tag set in index order (comma-separated), else CoNLL-2003's nine tags
    labels = tuple(t.strip() for t in options.get("labels", "").split(",") if t.strip()) or CONLL2003_LABELS
    if len(labels) < 2:
        raise TaskError(f"--labels {options['labels']!r} names one tag; list every tag in index order (e.g. "
                        "O,B-PER,I-PER)")

    def read(data_dir, split):
        for name in CONLL_FILES[split]:
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                sentences = read_conll(path, scheme=options.get("scheme", "auto"))
                _check_tags(sentences, labels, path)
                return sentences
        raise TaskError(f"no CoNLL {split} file in {data_dir}; expected one of {CONLL_FILES[split]}")

    def predict(examples, features, outputs):
        return word_predictions(features, outputs["logits"].argmax(-1), len(examples), labels)

    def locate(data_dir, split):
        paths = [os.path.join(data_dir, name) for name in CONLL_FILES[split]]
        return next((path for path in paths if os.path.exists(path)), None)

    return Task(name="conll2003", kind="tagging", num_labels=len(labels), metric="f1", eval_splits=("dev",),
                max_seq_len=128, read=read,
                featurize=lambda examples, tok, max_len, training: featurize_tagging(examples, tok, labels, max_len),
                evaluate=lambda examples, features, outputs: entity_f1([list(e.tags) for e in examples],
                                                                       predict(examples, features, outputs)),
                options={**options, "labels": labels}, predict=predict, optional_splits=("test",), locate=locate)


def _check_tags(sentences, labels: tuple[str, ...], path: str) -> None:
    known = set(labels)
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            if tag not in known:
                line = f":{sentence.lines[i]}" if sentence.lines else ""
                raise TaskError(f"{path}{line}: tag {tag!r} is not one of the labels {list(labels)}; fix that line or "
                                "pass --labels with every tag in index order (e.g. O,B-PER,I-PER)")


# ----------------------------------------------------------------------------------------- registry


def task_names() -> list[str]:
    from bert_jax.finetune.glue import GLUE_TASKS

    return [f"glue/{t}" for t in GLUE_TASKS] + ["pairs", "squad/v1.1", "squad/v2.0", "conll2003"]


def get_task(name: str, options: dict[str, Any] | None = None) -> Task:
    options = dict(options or {})
    family, _, short = name.partition("/")
    if family == "glue":
        from bert_jax.finetune.glue import GLUE_TASKS

        if short in GLUE_TASKS:
            return _glue_task(short, options)
    elif family == "squad" and short.lstrip("v") in ("1.1", "2.0"):
        return _squad_task(short.lstrip("v"), options)
    elif name == "pairs":
        return _pairs_task(options)
    elif name in ("conll2003", "ner/conll2003"):
        return _conll_task(options)
    raise TaskError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")
