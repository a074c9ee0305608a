"""The `bert-jax` command: one subcommand per stage of the data flow.

Subcommands are imported lazily so `bert-jax --help` does not pay for importing jax.
Each target is a `main(argv: list[str]) -> int | None` function.
"""
from __future__ import annotations

import importlib
import os
import sys

SUBCOMMANDS = {
    "train-tokenizer": ("bert_jax.data.tokenizer_cli", "Train a WordPiece vocab from a corpus."),
    "make-data": ("bert_jax.data.make_data", "Build fixed-length pretraining examples (sharded, resumable)."),
    "pretrain": ("bert_jax.train.pretrain", "Pretrain an encoder (mesh or pmap, resumable)."),
    "evaluate": ("bert_jax.train.evaluate", "Score a checkpoint's held-out MLM/LTR perplexity against the unigram floor."),
    "finetune": ("bert_jax.finetune.main", "Fine-tune and evaluate on GLUE, SQuAD or NER."),
    "build-qnli": ("bert_jax.finetune.qnli", "Build GLUE's QNLI TSV from a SQuAD v1.1 file (GLUE's recipe)."),
    "convert": ("bert_jax.interop.convert_cli", "Convert between transformers checkpoints and bert_jax params."),
    "export": ("bert_jax.train.export", "Write params only from a pretraining workdir."),
    "experiment": ("bert_jax.experiments.main", "Run an ablation grid and write its tables."),
}

# Commands that turn SIGTERM and a first Ctrl-C into "save and exit 0" (bert_jax/interrupts.py).
INTERRUPTIBLE = ("pretrain",)


def _usage() -> str:
    lines = ["usage: bert-jax <command> [args]", "", "commands:"]
    lines += [f"  {name:<16} {doc}" for name, (_, doc) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"bert-jax: unknown command {name!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    from bert_jax.xla_flags import add_default_xla_flags

    add_default_xla_flags()  # before any subcommand imports jax
    if name in INTERRUPTIBLE:
        from bert_jax import interrupts

        interrupts.install()  # a SIGTERM or Ctrl-C while jax imports is a stop request too, not a death
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f"bert-jax: command {name!r} is not available in this version", file=sys.stderr)
            return 2
        raise
    sys.argv = [f"bert-jax {name}", *rest]
    result = module.main(rest)
    return int(result or 0)


def run() -> None:
    """The console entry point (also `python -m bert_jax.cli`): main(), then the process ends with its code.

    A failed run ends here, without the interpreter's shutdown: after a failed checkpoint save, tensorstore's native
    threads still finish writes into the abandoned temporary directory and call back into Python, printing tracebacks
    onto the terminal below the run's one line, or failing the shutdown's flush of stderr, which turns exit code 4
    into 120 (both seen under load). Everything of ours is closed by then (metrics, logs, checkpoint manager)."""
    try:
        code = main()
    except BrokenPipeError:
        # The reader went away (`bert-jax --help | head`): nothing left to say to it, and no traceback either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    if code != 0:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
