"""`bert-jax finetune --task glue/sst2 --data_dir DIR --init PATH --workdir DIR`: the BERT paper's protocol.

For every learning rate in --learning_rates (5e-5, 3e-5, 2e-5) and every seed (3 by default): batch 32,
3 epochs, 10% warm-up, then eval on the dev split. Each setting's result is written to
`<workdir>/runs/<setting>.json` as it finishes (a restarted command skips finished settings), and
`<workdir>/metrics.json` summarises: every setting, the median / min / max / std over seeds per learning
rate, the learning rate chosen by the median dev score, and the init checkpoint's fingerprint.

Every split in --data_dir is used: labelled ones are scored (dev selects the setting; MNLI's dev_mismatched and
CoNLL's test split are reported beside it), unlabelled ones (GLUE's test sets) only predicted. Each setting's
predictions go to `<workdir>/runs/<setting>/`, the best single run's are copied to `<workdir>/predictions/`
(dev with gold labels, GLUE submission TSVs, SQuAD predictions.json, CoNLL word/gold/predicted; formats in
bert_jax/finetune/predictions.py). The flags and every split are checked, read and featurized before the first
training step (checks.py). A setting's trained outputs are saved before it is scored (trained.py): a failure after
training costs no training, and the same command run again scores the saved outputs.

Compiled steps are kept in JAX's persistent cache, so a second command with the same model and shapes skips
compiling: `$BERT_JAX_COMPILE_CACHE` (default ~/.cache/bert_jax/xla; `off` turns it off).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

from bert_jax import dirlock, outputs
from bert_jax.compile_cache import enable_compile_cache
from bert_jax.finetune import predictions as P
from bert_jax.finetune import trained
from bert_jax.finetune.batching import bucket_widths
from bert_jax.finetune.checks import check_args, read_splits, read_train
from bert_jax.finetune.init import InitError, describe, load_init
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
    p.add_argument("--max_eval_examples", type=int, default=0,
                   help="the first N examples of each labelled eval split (0: all); test sets are always whole")
    p.add_argument("--eval_each_epoch", action="store_true",
                   help="score the dev split after every epoch, not only after the last")
    p.add_argument("--train_file", default="",
                   help="SQuAD: a train JSON other than <data_dir>/train-vX.json; GLUE and pairs: .csv, .tsv or .jsonl "
                        "files (comma-separated paths or globs, concatenated) in place of <data_dir>/train.tsv")
    p.add_argument("--dev_file", default="",
                   help="SQuAD: a dev JSON other than <data_dir>/dev-vX.json; GLUE and pairs: .csv, .tsv or .jsonl "
                        "files as --train_file (MNLI then scores only these, no dev_mismatched)")
    p.add_argument("--test_file", default="",
                   help="a split to predict, scored too when it has labels (answers): SQuAD a JSON (default "
                        "<data_dir>/test-vX.json when present); GLUE and pairs files as --train_file (default GLUE's "
                        "test.tsv when present)")
    p.add_argument("--text_a_column", default="",
                   help="GLUE/pairs files: the first text's column (default: the task's, else the first of "
                        "sentence1, question1, question, premise, text_a, sentence, text)")
    p.add_argument("--text_b_column", default="",
                   help="GLUE/pairs files: the second text's column, 'none' for single-sentence files (default: the "
                        "task's, else the first of sentence2, question2, hypothesis, text_b, sentence)")
    p.add_argument("--label_column", default="",
                   help="GLUE/pairs files: the label column (default: the task's, else gold_label, label); rows "
                        "labelled '-' have no gold label and are dropped")
    p.add_argument("--labels", default="",
                   help="GLUE/pairs files: label values in index order, e.g. contradiction,entailment,neutral, or "
                        "VALUE=NAME entries mapping a file's values (e.g. 0=entailment); required for pairs, default "
                        "the GLUE task's labels; conll2003: the tags in index order (default: CoNLL-2003's nine)")
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
    p.add_argument("--strategy", default="mesh", choices=["mesh", "pmap"],
                   help="how the steps run on several devices, the state replicated either way: mesh (jax.jit over a "
                        "device mesh, each batch split over the most devices that divide --batch_size) or pmap (each "
                        "batch split over every local device; --batch_size must be a multiple of their number) "
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
    with outputs.write_errors_as_one_line(f"writing {path}", "settings finished before it are kept (a rerun skips "
                                                             "them)"):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1, default=float)
        os.replace(tmp, path)  # never a half-written file under the real name


def _finished(path: str, init, protocol: dict) -> dict | None:
    """The record of a setting a previous command finished with the same init and protocol, else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        done = json.load(f)
    return done if done.get("init_fingerprint") == init.fingerprint and done.get("protocol") == protocol else None


def publish_best_predictions(workdir: str, summary: dict, log) -> dict | None:
    """The best single run's predictions copied to <workdir>/predictions; None (and a note) when it has none."""
    from bert_jax.finetune.train import Setting

    name = Setting(**summary["best_single_run"]["setting"]).name
    source, target = os.path.join(workdir, "runs", name), os.path.join(workdir, "predictions")
    if not os.path.isdir(source):  # finished by a bert-jax that kept no predictions
        shutil.rmtree(target, ignore_errors=True)
        log(f"{name} has no predictions (finished before bert-jax kept them); delete "
            f"{os.path.join(workdir, 'runs', name + '.json')} and rerun to get them")
        return None
    return {"setting": name, "directory": target, "files": P.publish(source, target)}


def _short(metrics) -> str:
    if isinstance(metrics, dict):
        return "{" + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float))) + "}"
    return str(metrics)


def score(task, splits: dict, result: dict, log) -> dict:
    """A trained setting's record: each scored split's metrics after every epoch that has its outputs."""
    from bert_jax.finetune.train import Setting

    scored = {name: split for name, split in splits.items() if split.labelled}
    epochs = [dict(record) for record in result["epochs"]]
    for record in epochs:
        outputs = result["outputs"].get(record["epoch"], {})
        scores = {name: task.evaluate(s.examples, s.features, outputs[name])
                  for name, s in scored.items() if name in outputs}
        record.update(scores)
        if scores:
            log(f"{Setting(**result['setting']).name} epoch {record['epoch']}: " + ", ".join(
                f"{name}={_short(value)}" for name, value in scores.items()))
    return {"setting": result["setting"], "epochs": epochs, "final": {name: epochs[-1][name] for name in scored},
            **{k: result[k] for k in ("loaded", "seconds", "steps")}}


def run(args) -> dict:
    """Fine-tune as `args` say (see `parser`); one writer per --workdir (a second one fails at once)."""
    check_args(args)  # before loading or creating anything
    existed = os.path.exists(args.workdir)
    outputs.writable_directory(args.workdir, "--workdir")  # read-only, a file, ...: one line before any work
    try:
        with dirlock.hold(args.workdir, "--workdir", "bert-jax finetune"):
            return _run(args)
    except BaseException:
        if not existed:  # refused before writing anything (a bad task option, init or split): no empty workdir
            dirlock.remove_if_unused(args.workdir)
        raise


def _run(args) -> dict:
    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune.model import FineTuneModel, HeadConfig
    from bert_jax.finetune.train import Setting, data_parallel_devices, run_setting

    log = lambda m: print(m, flush=True)  # noqa: E731
    cache = enable_compile_cache()  # before the first compile (a random init compiles)
    options = {k: getattr(args, k) for k in ("train_file", "dev_file", "test_file", "doc_stride", "max_query_len",
                                             "max_answer_len", "n_best", "null_threshold")}
    options.update({k: getattr(args, k) for k in ("text_a_column", "text_b_column", "label_column", "labels")})
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

    # Every split is read and featurized before the first step: a bad one fails now, never after training.
    train_examples, train = read_train(task, args, tokenizer, max_len)
    splits = read_splits(task, args, tokenizer, max_len)  # 'dev' selects settings; the others are reported
    scored = {name: split for name, split in splits.items() if split.labelled}
    unlabelled = {name: split for name, split in splits.items() if not split.labelled}
    log(f"{task.name}: {len(train_examples)} train examples ({len(train['length'])} rows), " + ", ".join(
        f"{len(s.examples)} {name} examples ({len(s.features['length'])} rows{'' if s.labelled else ', predicted'})"
        for name, s in splits.items()) + f", max_seq_len {max_len}; {args.strategy}, each batch split over "
        f"{data_parallel_devices(args.strategy, args.batch_size)} device(s); compile cache {cache or 'off'}")
    os.makedirs(os.path.join(args.workdir, "runs"), exist_ok=True)

    head = HeadConfig(kind=task.kind, num_labels=task.num_labels, variant=args.variant, features=args.features,
                      dropout=args.dropout)
    model = FineTuneModel(init.config, head)
    widths = bucket_widths(max_len)
    # The vocab by content, not path: a finetune workdir (or its init) moved elsewhere still skips finished settings.
    protocol = {"learning_rates": args.learning_rates, "seeds": args.seeds, "epochs": args.epochs,
                "batch_size": args.batch_size, "warmup_fraction": args.warmup_fraction, "max_seq_len": max_len,
                "variant": args.variant, "features": args.features if args.variant == "features" else None,
                "pool": "last token" if init.config.causal else "[CLS]", "train_examples": len(train_examples),
                "eval_examples": {k: len(v.examples) for k, v in scored.items()}, "vocab": tokenizer.fingerprint,
                "bucket_widths": list(widths)}
    if unlabelled:  # only when there are some: settings finished before test sets were predicted stay valid
        protocol["predict_examples"] = {k: len(v.examples) for k, v in unlabelled.items()}
    stamp = trained.stamp(init.fingerprint, protocol, {k: v.features for k, v in splits.items()})
    runs, step_cache = [], {}  # every setting shares one compiled step (the learning rate is an input)
    for lr in args.learning_rates:
        for seed in range(args.seeds):
            setting = Setting(learning_rate=lr, seed=seed, epochs=args.epochs, batch_size=args.batch_size,
                              warmup_fraction=args.warmup_fraction)
            path = os.path.join(args.workdir, "runs", f"{setting.name}.json")
            done = _finished(path, init, protocol)
            if done is not None:
                log(f"{setting.name}: done before, skipped")
                runs.append(done)
                continue
            saved = trained.outputs_path(args.workdir, setting.name)
            result = trained.load(saved, stamp, log)
            if result is None:
                result = run_setting(model, init.params, train, {k: v.features for k, v in splits.items()}, setting,
                                     widths, each_epoch=list(scored) if args.eval_each_epoch else (), log=log,
                                     progress=args.progress, step_cache=step_cache, strategy=args.strategy)
                trained.save(saved, result, stamp)  # before scoring: nothing after this point can lose the training
            else:
                log(f"{setting.name}: trained before, scoring its saved outputs ({saved})")
            try:
                record = score(task, splits, result, log)
                if task.predict is not None:  # written before the record: a finished record has its predictions
                    final_outputs = result["outputs"][setting.epochs]
                    record["predictions"] = P.write_predictions(
                        os.path.join(args.workdir, "runs", setting.name), task,
                        {name: (s.examples, task.predict(s.examples, s.features, final_outputs[name]), s.labelled)
                         for name, s in splits.items()})
                record.update(init_fingerprint=init.fingerprint, protocol=protocol)
                _write_json(path, record)
            except BaseException:
                print(f"bert-jax finetune: {setting.name} is trained and its outputs are kept in {saved}; the same "
                      "command run again scores them without training it again", file=sys.stderr, flush=True)
                raise
            os.remove(saved)  # the record and the predictions are the result now
            runs.append(record)
    summary = summarize(task, runs, describe(init), protocol)
    summary["predictions"] = publish_best_predictions(args.workdir, summary, log) if task.predict else None
    _write_json(os.path.join(args.workdir, SUMMARY_FILE), summary)
    best = summary["best"]
    where = f"; predictions of {summary['predictions']['setting']} in {summary['predictions']['directory']}" \
        if summary["predictions"] else ""
    log(f"{task.name} dev {task.metric}: median {best['median']:.4f} (min {best['min']:.4f}, max {best['max']:.4f}, "
        f"{best['seeds']} seeds) at lr {best['learning_rate']:g}; {os.path.join(args.workdir, SUMMARY_FILE)}{where}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except (InitError, TaskError, ValueError, FileNotFoundError) as e:
        print(f"bert-jax finetune: {e}", file=sys.stderr)
        return outputs.EXIT_BAD_INPUT
    except outputs.WriteError as e:  # e.g. a full disk: finished settings are kept
        print(f"bert-jax finetune: {e}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED
    except OSError as e:  # another file it could not read or write (predictions, ...)
        print(f"bert-jax finetune: {e.filename}: {outputs.reason(e)}; {outputs.fix(e)}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED if outputs.is_disk_full(e) else outputs.EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
