"""Probes for the mini pretraining recipe: learning curves of the held-out perplexity ratio against tokens.

    python experiments/recipe_probes.py --workdir /work/probes [--shared_data ../shared/data] [--tokens 2097152]
        [--only base,lr2e-3] [--out experiments/results]

Each probe is one `bert-jax pretrain` run of the mini scale's BERT model (4/192/12, MLM+NSP) on the new corpus (`corpus/gutenberg-292`
and `corpus/enwiki-2015-sample`), changed from the base recipe in one setting, with the same token budget and
its learning-rate schedule ending at that budget. Its in-run eval scores a fixed held-out subset (512 examples)
every quarter of the budget, against the unigram floor of its own training data; the final checkpoint is then
scored by `bert-jax evaluate` at a 15% mask rate on 2,048 held-out examples, the same masks for every probe with
the same vocab.

Held out, never trained on: the books at positions 0, 29, 58, ... of the sorted Gutenberg file list and the
Wikipedia files at positions 0, 25, 50, 75. The data is built once under <workdir>/data (make-data, and
train-tokenizer for the 8k vocab). Results are rewritten after each probe (a rerun skips finished probes):
<out>/recipe_probes.json, .md and .png.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

from bert_jax.experiments import data as data_lib

BATCH, SEQ = 32, 128
EVAL_EXAMPLES, FINAL_EXAMPLES = 512, 2048
# The probes' base: the mini scale's BERT_BASE when they ran (12/768/12 -> 4/192/12; grids.py now uses 4/192/3).
BASE = {"model.num_layers": 4, "model.hidden_size": 192, "model.num_heads": 12, "model.intermediate_size": 768,
        "model.max_position_embeddings": SEQ, "model.norm": "pre", "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0,
        "optimizer.learning_rate": 1e-3, "optimizer.warmup_fraction": 0.1, "train.global_batch_size": BATCH,
        "data.mask_rate": 0.15, "vocab": "google30k"}
# name: (what it changes, overrides of BASE); in the order they run.
PROBES = {
    "base": ("pre-LN, dropout 0, lr 1e-3, warm-up 10%, batch 32, mask 15%, Google 30k vocab", {}),
    "lr2e-3": ("peak lr 2e-3", {"optimizer.learning_rate": 2e-3}),
    "post_ln": ("post-LN (BERT's)", {"model.norm": "post"}),
    "heads3": ("3 heads of 64 (4/192/3) instead of 12 of 16", {"model.num_heads": 3}),
    "wide256": ("the `mini` preset's width: 4/256/4 (intermediate 1024)",
                {"model.hidden_size": 256, "model.num_heads": 4, "model.intermediate_size": 1024}),
    # 39 predicted positions per example: the configs derive data.max_predictions from the rate (until session 7 it
    # stayed 20, which capped any higher rate at 15.6%).
    "mask30": ("mask rate 30% (80/10/10)", {"data.mask_rate": 0.3}),
    "mask40": ("mask rate 40% (80/10/10)", {"data.mask_rate": 0.4}),
    "vocab8k": ("WordPiece 8k trained on the corpus", {"vocab": "wordpiece8k"}),
    "batch64": ("batch 64 (half the steps)", {"train.global_batch_size": 64}),
    "dropout0.1": ("dropout 0.1", {"model.dropout_rate": 0.1, "model.attention_dropout_rate": 0.1}),
    "lr5e-4": ("peak lr 5e-4", {"optimizer.learning_rate": 5e-4}),
    "lr4e-3": ("peak lr 4e-3", {"optimizer.learning_rate": 4e-3}),
    "warmup2": ("warm-up 2%", {"optimizer.warmup_fraction": 0.02}),
    "batch128": ("batch 128 (a quarter of the steps)", {"train.global_batch_size": 128}),
    # Positions: BERT learns an absolute table from N(0, 0.02), and at this budget its models barely use word order
    # (experiments/README.md, "Why the curve flattens"); these give attention relative offsets from the start.
    "sinus_init": ("learned positions starting as the sin/cos table", {"model.position_init": "sinusoidal"}),
    "rotary": ("rotary positions (relative offsets in every attention score)", {"model.position_embedding": "rotary"}),
}


def resolve(name: str) -> tuple[str, dict]:
    """A probe by name, or several joined by '+' (their changes applied together, left to right)."""
    parts = name.split("+")
    unknown = [n for n in parts if n not in PROBES or n == "base" and len(parts) > 1]
    if unknown:
        sys.exit(f"recipe_probes: unknown probe(s) {unknown} in {name!r}; choose from {list(PROBES)}, joined by '+'")
    return "; ".join(PROBES[n][0] for n in parts), {k: v for n in parts for k, v in PROBES[n][1].items()}


def split_corpus(shared: str, root: str) -> tuple[str, str]:
    """Symlink folders train/ and heldout/ over the corpus files, split by the mini data's rule
    (bert_jax/experiments/data.py: split_files); returns their globs."""
    books = sorted(glob.glob(os.path.join(shared, data_lib.BOOKS_GLOB)))
    wiki = sorted(glob.glob(os.path.join(shared, data_lib.WIKI_GLOB)))
    if not books or not wiki:
        sys.exit(f"recipe_probes: {shared}/corpus lacks gutenberg-292/*.txt.gz or enwiki-2015-sample/*.txt.gz; "
                 "pass --shared_data")
    for files, every, sub in ((books, data_lib.HELDOUT_EVERY_BOOK, "gb"), (wiki, data_lib.HELDOUT_EVERY_WIKI, "wiki")):
        for split, paths in zip(("train", "heldout"), data_lib.split_files(files, every)):
            folder = os.path.join(root, split, sub)
            for path in paths:
                os.makedirs(folder, exist_ok=True)
                link = os.path.join(folder, os.path.basename(path))
                if not os.path.lexists(link):
                    os.symlink(os.path.abspath(path), link)
    return os.path.join(root, "train", "*", "*.gz"), os.path.join(root, "heldout", "*", "*.gz")


def run(cmd: list[str], log) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def prepare_data(shared: str, root: str, vocab: str, log) -> tuple[str, str]:
    train_glob, heldout_glob = split_corpus(shared, root)
    if vocab == "google30k":
        vocab_path = os.path.join(shared, "vocab", "bert-base-uncased-vocab.txt")
    else:
        vocab_path = os.path.join(root, "vocab-wordpiece8k")
        if not os.path.isfile(os.path.join(vocab_path, "vocab.txt")):
            run(["bert-jax", "train-tokenizer", "--input", train_glob, "--vocab_size", "8192", "--output", vocab_path],
                log)
    dirs = []
    for split, pattern in (("train", train_glob), ("heldout", heldout_glob)):
        out = os.path.join(root, f"{vocab}-{split}")
        run(["bert-jax", "make-data", "--input", pattern, "--vocab", vocab_path, "--uncased", "--output", out,
             "--workers", "2"], log)
        dirs.append(out)
    return dirs[0], dirs[1]


def probe_command(settings: dict, train: str, heldout: str, tokens: int, workdir: str) -> list[str]:
    batch = int(settings["train.global_batch_size"])
    steps = max(1, tokens // (batch * SEQ))
    overrides = {k: v for k, v in settings.items() if k not in ("vocab", "optimizer.warmup_fraction")}
    overrides.update({"data.path": train, "data.eval_path": heldout, "model.vocab_size": 0, "train.steps": steps,
                      "optimizer.warmup_steps": max(1, round(steps * settings["optimizer.warmup_fraction"])),
                      "train.eval_every": steps // 4, "train.eval_batches": EVAL_EXAMPLES // batch,
                      "train.checkpoint_every": steps // 2, "train.log_every": 25, "train.progress_bar": False})
    return ["bert-jax", "pretrain", "--config", "configs/pretrain.py:mini", "--workdir", workdir,
            *[f"--config.{k}={v}" for k, v in overrides.items()]]


def read_curve(workdir: str, batch: int) -> list[dict]:
    curve = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row.get("split") == "eval" and "mlm_perplexity_ratio" in row:
                curve.append({"step": row["step"], "tokens": row["step"] * batch * SEQ,
                              "ratio": row["mlm_perplexity_ratio"], "ppl": row["mlm_perplexity"],
                              "unigram_ppl": row["mlm_unigram_perplexity"], "nsp_accuracy": row.get("nsp_accuracy")})
    return curve


def write_results(results: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "recipe_probes.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = [f"Probes at {results['tokens'] / 1e6:.1f}M pretraining tokens each (mini 4/192/12, MLM+NSP, seq 128); "
             "held-out ratio = MLM perplexity / unigram perplexity at 15% masking, 2,048 held-out examples.", "",
             "| probe | change from base | ratio | ppl | unigram ppl | MLM acc | NSP acc | ratio at 1/2 budget | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, p in results["probes"].items():
        f = p["final"]
        half = next((c["ratio"] for c in p["curve"] if c["tokens"] >= results["tokens"] // 2), float("nan"))
        lines.append(f"| {name} | {p['change']} | {f['mlm_perplexity_ratio']:.3f} | {f['mlm_perplexity']:.0f} | "
                     f"{f['mlm_unigram_perplexity']:.0f} | {f['mlm_accuracy']:.3f} | {f.get('nsp_accuracy', 0):.3f} | "
                     f"{half:.3f} | {p['seconds']:.0f} |")
    with open(os.path.join(out_dir, "recipe_probes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, p in results["probes"].items():
        ax.plot([c["tokens"] / 1e6 for c in p["curve"]], [c["ratio"] for c in p["curve"]], marker=".", label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("pretraining tokens (M)")
    ax.set_ylabel("held-out MLM perplexity / unigram perplexity")
    ax.set_title("mini recipe probes (in-run eval, 512 held-out examples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "recipe_probes.png"), dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--shared_data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--tokens", type=int, default=2 * 1024 * 1024, help="pretraining tokens per probe")
    p.add_argument("--only", default="", help="comma-separated probe names, each one probe or several joined by '+' "
                   "(e.g. wide256+vocab8k); default: all single probes, in order")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args()
    names = [n for n in (args.only.split(",") if args.only else PROBES) if n]
    for name in names:
        resolve(name)
    os.makedirs(args.workdir, exist_ok=True)
    results_path = os.path.join(args.out, "recipe_probes.json")
    results = {"tokens": args.tokens, "probes": {}}
    if os.path.isfile(results_path):
        with open(results_path) as f:
            old = json.load(f)
        if old.get("tokens") == args.tokens:
            results = old
    with open(os.path.join(args.workdir, "probes.log"), "a") as log:
        for name in names:
            if name in results["probes"]:
                continue
            change, overrides = resolve(name)
            settings = {**BASE, **overrides}
            train, heldout = prepare_data(args.shared_data, os.path.join(args.workdir, "data"), settings["vocab"], log)
            workdir = os.path.join(args.workdir, name)
            start = time.time()
            run(probe_command(settings, train, heldout, args.tokens, workdir), log)
            final_json = os.path.join(workdir, "evaluate.json")
            run(["bert-jax", "evaluate", "--checkpoint", workdir, "--data", heldout, "--max_examples",
                 str(FINAL_EXAMPLES), "--out", final_json], log)
            with open(final_json) as f:
                final = json.load(f)
            results["probes"][name] = {"change": change, "settings": settings, "seconds": time.time() - start,
                                       "curve": read_curve(workdir, int(settings["train.global_batch_size"])),
                                       "final": final}
            write_results(results, args.out)
            print(f"{name}: ratio {final['mlm_perplexity_ratio']:.3f} nsp {final.get('nsp_accuracy', 0):.3f} "
                  f"({time.time() - start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
