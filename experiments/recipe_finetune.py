"""Does pretraining help downstream? The recipe's model against the same architecture from random weights.

    python experiments/recipe_finetune.py --run /work/recipe/run --workdir /work/recipe/finetune
        [--tasks sst2,mrpc] [--learning_rates 2e-4,5e-5] [--seeds 3] [--epochs 2] [--sst2_examples 4000]
        [--name recipe_finetune] [--out experiments/results]

For each task, `bert-jax finetune` twice with one protocol (the mini scale's: 2 epochs, batch 32, SST-2 on a seeded
4,000-example subset (--sst2_examples; 0 = all 67,349), MRPC whole, the whole dev set; the learning rates swept, 3
seeds each): from --run and from `random:<run>`. The pretrained model beats the floor when its median dev score at
its best learning rate exceeds the random init's by more than the larger spread (max - min over seeds) of the two;
"seeds separated" is the weaker reading, every pretrained seed's score above every random one's (at each init's
chosen rate). Finished settings are skipped on a rerun. Writes <out>/<name>.json and .md; beside the task's metric,
the median of every other dev metric at the chosen learning rate (MRPC's accuracy beside its F1: F1 rewards
answering "paraphrase" everywhere, 0.812 on dev).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

TASKS = {"sst2": ("glue/sst2", "SST-2"), "mrpc": ("glue/mrpc", "MRPC")}


def other_metrics(metrics: dict) -> dict:
    """{metric: median over seeds} of every dev metric but the task's own, at the chosen learning rate."""
    lr = metrics["best"]["learning_rate"]
    runs = [s["dev"] for s in metrics["settings"] if s["setting"]["learning_rate"] == lr]
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0] if k != metrics["metric"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the pretraining workdir, or WORKDIR@STEP for one checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--tasks", default="sst2,mrpc")
    p.add_argument("--learning_rates", default="2e-4,5e-5")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--sst2_examples", type=int, default=4000, help="SST-2's seeded train subset (0: all 67,349)")
    p.add_argument("--name", default="recipe_finetune", help="the result files' name under --out")
    p.add_argument("--evaluation", default="", help="`bert-jax evaluate --out` JSON of --run: its held-out ratio is "
                   "written above the table (checked against the init's fingerprint)")
    p.add_argument("--shared_data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args()
    rows = []
    for name in args.tasks.split(","):
        task, folder = TASKS[name]
        extra = ["--max_train_examples", str(args.sst2_examples)] if name == "sst2" and args.sst2_examples else []
        cells = {}
        # random: the same architecture from the run's config (a step suffix names weights, not the architecture)
        for label, init in (("pretrained", args.run), ("random", f"random:{args.run.split('@')[0]}")):
            workdir = os.path.join(args.workdir, f"{name}-{label}")
            cmd = ["bert-jax", "finetune", "--task", task, "--data_dir", os.path.join(args.shared_data, "glue", folder),
                   "--init", init, "--workdir", workdir, "--learning_rates", args.learning_rates, "--seeds",
                   str(args.seeds), "--epochs", str(args.epochs), "--batch_size", "32", "--max_seq_len", "128", *extra]
            print("$ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            with open(os.path.join(workdir, "metrics.json")) as f:
                metrics = json.load(f)
            cells[label] = {**metrics["best"], "metric": metrics["metric"], "fingerprint": metrics["init_fingerprint"],
                            "other_metrics": other_metrics(metrics)}
        pt, rnd = cells["pretrained"], cells["random"]
        spread = max(pt["max"] - pt["min"], rnd["max"] - rnd["min"])
        rows.append({"task": name, **{k: cells[k] for k in cells}, "margin": pt["median"] - rnd["median"],
                     "spread": spread, "beats_random": pt["median"] - rnd["median"] > spread,
                     # the weaker reading: every pretrained seed above every random one
                     "separated": pt["min"] > rnd["max"]})
    held_out = None
    if args.evaluation:
        with open(args.evaluation) as f:
            held_out = json.load(f)
        if held_out["init_fingerprint"] != rows[0]["pretrained"]["fingerprint"]:
            sys.exit(f"--evaluation {args.evaluation} scored weights {held_out['init_fingerprint']}, not --run's "
                     f"{rows[0]['pretrained']['fingerprint']}; evaluate the same checkpoint")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump({"run": args.run, "learning_rates": args.learning_rates, "seeds": args.seeds, "epochs": args.epochs,
                   "sst2_examples": args.sst2_examples, "held_out": held_out, "rows": rows}, f, indent=1)
    lines = [] if held_out is None else [
        f"Pretrained model: held-out MLM perplexity {held_out['mlm_perplexity']:.1f} against a unigram floor of "
        f"{held_out['mlm_unigram_perplexity']:.0f} (ratio {held_out['mlm_perplexity_ratio']:.3f}, "
        f"{held_out['examples']:.0f} examples at {held_out['mask_rate']:.0%} masking), NSP accuracy "
        f"{held_out.get('nsp_accuracy', float('nan')):.3f}.", ""]
    lines += ["| task (metric) | pretrained: median (min-max), lr | random init: median (min-max), lr | margin | "
             "spread | beats random | seeds separated | other dev metrics (median, pretrained / random) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = lambda c: f"{c['median']:.3f} ({c['min']:.3f}-{c['max']:.3f}), {c['learning_rate']:g}"  # noqa: E731
        lines.append(f"| {r['task']} ({r['pretrained']['metric']}) | {cell(r['pretrained'])} | {cell(r['random'])} | "
                     f"{r['margin']:+.3f} | {r['spread']:.3f} | {'yes' if r['beats_random'] else 'no'} | "
                     f"{'yes' if r['separated'] else 'no'} | "
                     + ", ".join(f"{k} {r['pretrained']['other_metrics'][k]:.3f} / {r['random']['other_metrics'][k]:.3f}"
                                 for k in r["pretrained"]["other_metrics"]) + " |")
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
