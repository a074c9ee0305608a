"""What `bert-jax finetune` checks before its first training step: the flags, then every split it will read.

A protocol trains for hours (9 settings of 3 epochs by default); an input that cannot be used must fail before
the first of them, as one line naming the flag or the file as the user typed it and the fix. Each split is read
and featurized here, so an empty, header-only, unlabelled or malformed file (every split: train, dev, MNLI's
dev_mismatched, test sets) stops the command with exit code 2 and nothing trained.
"""
from __future__ import annotations

import dataclasses
import math
import os

from bert_jax.finetune.tasks import TaskError


@dataclasses.dataclass(frozen=True)
class Split:
    """A split the trained model is run on, read and featurized before any training."""
    name: str
    path: str  # the file, as --data_dir or --<split>_file spells it (for messages)
    examples: list
    features: dict
    labelled: bool  # scored; False: predicted only (a test set)


def _at_least(args, flag: str, minimum: int, hint: str) -> None:
    value = getattr(args, flag)
    if value < minimum:
        raise TaskError(f"--{flag} {value} must be at least {minimum}; {hint}")


def check_args(args) -> None:
    """The flags' values: each error names the flag as typed and a value that works."""
    # jax and flax (the model imports it) not at import time: `--help` stays fast.
    import jax

    from bert_jax.finetune.model import FEATURES

    if not args.learning_rates:
        raise TaskError("--learning_rates names no learning rate; pass e.g. --learning_rates 5e-5,3e-5,2e-5")
    bad = [lr for lr in args.learning_rates if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise TaskError(f"--learning_rates holds {bad[0]:g}; every learning rate must be a positive number, e.g. "
                        "--learning_rates 5e-5,3e-5,2e-5")
    _at_least(args, "seeds", 1, "pass --seeds 3 (seeds 0, 1, 2, the paper's protocol)")
    _at_least(args, "epochs", 1, "pass --epochs 3 (the paper's)")
    _at_least(args, "batch_size", 1, "pass --batch_size 32 (the paper's)")
    devices = jax.local_device_count()
    if args.strategy == "pmap" and args.batch_size % devices:
        raise TaskError(f"--batch_size {args.batch_size} does not split over the {devices} devices --strategy pmap "
                        f"runs on; pass a multiple of {devices}, or --strategy mesh (which splits it over fewer)")
    if not 0.0 <= args.warmup_fraction <= 1.0:
        raise TaskError(f"--warmup_fraction {args.warmup_fraction} must lie in [0, 1]; pass 0.1 (the paper's)")
    _at_least(args, "max_seq_len", 0, "pass 0 for the task's default (128; SQuAD 384)")
    _at_least(args, "max_train_examples", 0, "pass 0 to train on every example")
    _at_least(args, "max_eval_examples", 0, "pass 0 to score every example")
    _at_least(args, "doc_stride", 1, "pass --doc_stride 128 (BERT's)")
    _at_least(args, "max_query_len", 1, "pass --max_query_len 64 (BERT's)")
    _at_least(args, "max_answer_len", 1, "pass --max_answer_len 30 (BERT's)")
    _at_least(args, "n_best", 1, "pass --n_best 20 (BERT's)")
    if math.isnan(args.null_threshold):
        raise TaskError("--null_threshold is nan; pass a number, e.g. --null_threshold 0")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise TaskError(f"--dropout {args.dropout} must lie in [0, 1); pass 0.1 or leave it out (the pretrained "
                        "config's)")
    if args.features not in FEATURES:
        raise TaskError(f"--features {args.features!r} is not one of {', '.join(FEATURES)}")
    if args.features != "last" and args.variant != "features":
        raise TaskError(f"--features {args.features} is read only by --variant features; add --variant features or "
                        "leave --features out")


def split_path(task, data_dir: str, split: str) -> str:
    return task.locate(data_dir, split) or os.path.join(data_dir, split)


# Why a file of this kind can hold no example, for the message.
_EMPTY = {"classification": "a header row alone is no example", "regression": "a header row alone is no example",
          "span": "no question under data[].paragraphs[].qas", "tagging": "no 'word ... tag' line"}


def require_examples(task, examples: list, path: str, split: str) -> None:
    if examples:
        return
    fix = f"put the {task.name} {split} data in it"
    if split in task.optional_splits:
        fix += f", or leave the file out (the {split} split is optional)"
    raise TaskError(f"{path} has no {split} examples ({_EMPTY.get(task.kind, 'empty')}); {fix}")


def featurize(task, examples: list, path: str, tokenizer, max_len: int, training: bool) -> dict:
    """The split's features; a split whose every example is unusable fails naming its file."""
    features = task.featurize(examples, tokenizer, max_len, training)
    if not len(features["length"]):  # featurizers raise for this themselves; kept as the backstop for new tasks
        raise TaskError(f"{path} gives no feature rows; check its examples")
    return features


def read_train(task, args, tokenizer, max_len: int) -> tuple[list, dict]:
    """The training examples (a seeded --max_train_examples subset) and their features."""
    import numpy as np

    examples, path = task.read(args.data_dir, "train"), split_path(task, args.data_dir, "train")
    require_examples(task, examples, path, "train")
    if args.max_train_examples and args.max_train_examples < len(examples):
        keep = np.sort(np.random.default_rng(0).choice(len(examples), args.max_train_examples, replace=False))
        examples = [examples[i] for i in keep]
    return examples, featurize(task, examples, path, tokenizer, max_len, True)


def read_splits(task, args, tokenizer, max_len: int) -> dict[str, Split]:
    """The task's eval splits (required) and its optional splits whose files are there (test sets), each read
    and featurized now, so that an empty or malformed file fails before the first training step."""
    names = task.eval_splits + tuple(s for s in task.optional_splits if task.locate(args.data_dir, s))
    splits = {}
    for name in names:
        examples, path = task.read(args.data_dir, name), split_path(task, args.data_dir, name)
        require_examples(task, examples, path, name)
        labelled = task.has_labels(examples)
        if name in task.eval_splits and not labelled:
            raise TaskError(f"{path} has no labels; the {name} split is scored, pass a labelled file")
        if labelled and args.max_eval_examples:
            examples = examples[:args.max_eval_examples]
        features = featurize(task, examples, path, tokenizer, max_len, False)
        splits[name] = Split(name, path, examples, features, labelled)
    return splits
