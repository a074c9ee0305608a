"""`bert-jax finetune --task glue/sst2 --data_dir DIR --init PATH --workdir DIR`: the BERT paper's protocol.

For every learning rate in --learning_rates (5e-5, 3e-5, 2e-5) and every seed (3 by default): batch 32,
3 epochs, 10% warm-up, then eval on the dev split. Each setting's result is written to
`<workdir>/runs/<setting>.json` as it finishes (a restarted command skips finished settings), and
`<workdir>/metrics.json` summarises: every setting, the median / min / max / std over seeds per learning
rate, the learning rate chosen by the median dev score, and the init checkpoint's fingerprint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from bert_jax.finetune.batching import bucket_widths
from bert_jax.finetune.init import InitError, load_init
from bert_jax.finetune.tasks import TaskError, get_task, task_names

SUMMARY_FILE = "metrics.json"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bert-jax finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="one of: " + ", ".join(task_names()))
    p.add_argument("--data_dir", required=True, help="the task's data (e.g. GLUE's SST-2 folder, SQuAD's JSON folder)")
    p.add_argument("--init", required=True,
                   help="pretraining workdir[@STEP], params file (or a directory with one and its vocab.txt), HF "
                        "checkpoint dir, or random:WORKDIR / random:configs/pretrain.py:VARIANT (fresh weights, the "
                        "random-init floor)")
    p.add_argument("--workdir", required=True,
                   help="per-setting results (runs/<setting>.json) and the summary metrics.json go here")
    p.add_argument("--vocab", default="", help="vocab.txt (default: the one the init records)")
    p.add_argument("--learning_rates", type=_floats, default=[5e-5, 3e-5, 2e-5],
                   help="comma-separated peak learning rates to try (default: 5e-5,3e-5,2e-5)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per learning rate")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=32, help="examples per step (default: %(default)s)")
    p.add_argument("--warmup_fraction", type=float, default=0.1,
                   help="share of the steps spent warming the learning rate up from 0 (default: %(default)s)")
    p.add_argument("--max_seq_len", type=int, default=0, help="default: 128 (GLUE, NER), 384 (SQuAD)")
    p.add_argument("--variant", default="standard", choices=["standard", "bilstm", "features"],
                   help="the task model: standard (BERT's head), bilstm (a BiLSTM over the encoder) or features "
                        "(a frozen encoder's layer features into a two-layer BiLSTM) (default: %(default)s)")
    p.add_argument("--features", default="last", help="feature-based input (--variant features)")
    p.add_argument("--dropout", type=float, default=None, help="default: the pretrained config's")
    p.add_argument("--max_train_examples", type=int, default=0, help="a seeded random subset (0: all)")
    p.add_argument("--max_eval_examples", type=int, default=0, help="the first N dev examples (0: all)")
    p.add_argument("--eval_each_epoch", action="store_true",
                   help="score the dev split after every epoch, not only after the last")
    p.add_argument("--train_file", default="", help="SQuAD: a train JSON other than <data_dir>/train-vX.json")
    p.add_argument("--dev_file", default="", help="SQuAD: a dev JSON other than <data_dir>/dev-vX.json")
    p.add_argument("--doc_stride", type=int, default=128,
                   help="SQuAD: tokens between the starts of a long context's windows (default: %(default)s)")
    p.add_argument("--max_query_len", type=int, default=64,
                   help="SQuAD: question tokens kept (default: %(default)s)")
    p.add_argument("--max_answer_len", type=int, default=30,
                   help="SQuAD: the longest answer span predicted, in tokens (default: %(default)s)")
    p.add_argument("--n_best", type=int, default=20,
                   help="SQuAD: start and end candidates searched per window (default: %(default)s)")
    p.add_argument("--null_threshold", type=float, default=0.0,
                   help="SQuAD v2.0: answer '' when the null score beats the best span by more than this "
                        "(default: %(default)s)")
    p.add_argument("--progress", action="store_true", help="a progress bar per setting")
    return p


def summarize(task, runs: list[dict], init_info: dict, protocol: dict) -> dict:
    """Median and spread over seeds per learning rate; the learning rate with the best median wins."""
    per_lr: dict[str, dict] = {}
    for run in runs:
        lr = f"{run['setting']['learning_rate']:g}"
        per_lr.setdefault(lr, {"scores": []})["scores"].append(run["final"]["dev"][task.metric])
    for stats in per_lr.values():
        scores = np.asarray(stats["scores"], np.float64)
        stats.update(median=float(np.median(scores)), min=float(scores.min()), max=float(scores.max()),
                     std=float(scores.std()), seeds=len(scores))
    best_lr = max(per_lr, key=lambda lr: per_lr[lr]["median"])
    best_run = max(runs, key=lambda r: r["final"]["dev"][task.metric])
    other_splits = {}  # e.g. MNLI's dev_mismatched, at the learning rate the dev split chose
    for split in (s for s in runs[0]["final"] if s != "dev"):
        scores = np.asarray([r["final"][split][task.metric] for r in runs
                             if f"{r['setting']['learning_rate']:g}" == best_lr])
        other_splits[split] = {"median": float(np.median(scores)), "min": float(scores.min()),
                               "max": float(scores.max()), "std": float(scores.std())}
    return {"task": task.name, "metric": task.metric, **init_info, "protocol": protocol,
            "best": {"learning_rate": float(best_lr), **{k: per_lr[best_lr][k] for k in
                                                         ("median", "min", "max", "std", "seeds")},
                     "other_splits": other_splits},
            "best_single_run": {"setting": best_run["setting"], "dev": best_run["final"]["dev"]},
            "per_learning_rate": per_lr,
            "settings": [{"setting": r["setting"], **r["final"], "epochs": r["epochs"],
                          "seconds": r["seconds"]} for r in runs]}


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, default=float)
    os.replace(tmp, path)  # never a half-written file under the real name


def run(args) -> dict:
    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune.model import FineTuneModel, HeadConfig
    from bert_jax.finetune.train import Setting, run_setting

    options = {k: getattr(args, k) for k in ("train_file", "dev_file", "doc_stride", "max_query_len",
                                             "max_answer_len", "n_best", "null_threshold")}
    task = get_task(args.task, options)
    init = load_init(args.init, args.vocab or None)
    vocab = args.vocab or init.vocab_path
    if not vocab:
        raise InitError(f"--init {args.init} records no vocab; pass --vocab PATH/vocab.txt (the pretraining vocab)")
    tokenizer = load_tokenizer(vocab)
    if tokenizer.vocab_size != init.config.vocab_size:
        raise InitError(f"--vocab {vocab} has {tokenizer.vocab_size} tokens but the model has "
                        f"{init.config.vocab_size}; pass the vocab the init was pretrained with")
    max_len = args.max_seq_len or min(task.max_seq_len, init.config.max_position_embeddings)
    if max_len > init.config.max_position_embeddings:
        raise ValueError(f"--max_seq_len {max_len} exceeds the model's max_position_embeddings "
                         f"{init.config.max_position_embeddings}; pass --max_seq_len <= it")
    os.makedirs(os.path.join(args.workdir, "runs"), exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731

    train_examples = task.read(args.data_dir, "train")
    if args.max_train_examples and args.max_train_examples < len(train_examples):
        keep = np.sort(np.random.default_rng(0).choice(len(train_examples), args.max_train_examples, replace=False))
        train_examples = [train_examples[i] for i in keep]
    train = task.featurize(train_examples, tokenizer, max_len, True)
    eval_examples, evals = {}, {}
    for split in task.eval_splits:  # 'dev' selects settings; MNLI also reports dev_mismatched
        examples = task.read(args.data_dir, split)
        eval_examples[split] = examples[:args.max_eval_examples] if args.max_eval_examples else examples
        evals[split] = task.featurize(eval_examples[split], tokenizer, max_len, False)
    log(f"{task.name}: {len(train_examples)} train examples ({len(train['length'])} rows), " + ", ".join(
        f"{len(eval_examples[s])} {s} examples ({len(evals[s]['length'])} rows)" for s in evals) +
        f", max_seq_len {max_len}")

    head = HeadConfig(kind=task.kind, num_labels=task.num_labels, variant=args.variant, features=args.features,
                      dropout=args.dropout)
    model = FineTuneModel(init.config, head)
    widths = bucket_widths(max_len)
    evaluate = lambda split, outputs: task.evaluate(eval_examples[split], evals[split], outputs)  # noqa: E731
    protocol = {"learning_rates": args.learning_rates, "seeds": args.seeds, "epochs": args.epochs,
                "batch_size": args.batch_size, "warmup_fraction": args.warmup_fraction, "max_seq_len": max_len,
                "variant": args.variant, "features": args.features if args.variant == "features" else None,
                "pool": "last token" if init.config.causal else "[CLS]", "train_examples": len(train_examples),
                "eval_examples": {k: len(v) for k, v in eval_examples.items()}, "vocab": tokenizer.path, "bucket_widths": list(widths)}
    runs, step_cache = [], {}  # every setting shares one compiled step (the learning rate is an argument)
    for lr in args.learning_rates:
        for seed in range(args.seeds):
            setting = Setting(learning_rate=lr, seed=seed, epochs=args.epochs, batch_size=args.batch_size,
                              warmup_fraction=args.warmup_fraction)
            path = os.path.join(args.workdir, "runs", f"{setting.name}.json")
            if os.path.exists(path):
                with open(path) as f:
                    done = json.load(f)
                if done.get("init_fingerprint") == init.fingerprint and done.get("protocol") == protocol:
                    log(f"{setting.name}: done before, skipped")
                    runs.append(done)
                    continue
            result = run_setting(model, init.params, train, evals, evaluate, setting, widths,
                                 eval_each_epoch=args.eval_each_epoch, log=log, progress=args.progress,
                                 step_cache=step_cache)
            record = {k: result[k] for k in ("setting", "epochs", "final", "loaded", "seconds", "steps")}
            record.update(init_fingerprint=init.fingerprint, protocol=protocol)
            _write_json(path, record)
            runs.append(record)
    summary = summarize(task, runs, init.describe(), protocol)
    _write_json(os.path.join(args.workdir, SUMMARY_FILE), summary)
    best = summary["best"]
    log(f"{task.name} dev {task.metric}: median {best['median']:.4f} (min {best['min']:.4f}, max {best['max']:.4f}, "
        f"{best['seeds']} seeds) at lr {best['learning_rate']:g}; {os.path.join(args.workdir, SUMMARY_FILE)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except (InitError, TaskError, ValueError, FileNotFoundError) as e:
        print(f"bert-jax finetune: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
