"""The chosen mini recipe, run long: its learning curve and the numbers in experiments/results/recipe_mini.json.

    python experiments/recipe_run.py --workdir /work/recipe [--probe base] [--set optimizer.learning_rate=2e-3]
        [--tokens 33554432] [--out experiments/results]

Runs the settings of one probe of `recipe_probes.py` (plus --set overrides) for --tokens pretraining tokens, with
an in-run eval every sixteenth of the budget (512 held-out examples), then scores the final checkpoint with
`bert-jax evaluate` on 8,192 held-out examples at 15% masking, and the same architecture untrained
(`random:WORKDIR`) on the same examples. Resumable: rerun the same command after a stop and the run continues
from its last checkpoint. The jnp.dot peak of the machine is measured at the start (the machine's speed swings
up to 4x between days: read `seconds` against it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_probes as probes  # noqa: E402

FINAL_EXAMPLES = 8192


def matmul_peak_gflops() -> float:
    """The benchmark harness's jnp.dot peak (benchmarks/train_step.py), best of sizes 1024 and 2048."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    from train_step import matmul_peak_gflops as measure

    return max(measure((1024, 2048), 5).values())


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def train_seconds(workdir: str) -> float:
    """Seconds spent in training steps, from the logged step times (evals, compiles and pauses excluded)."""
    total, last_step = 0.0, 0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row.get("split") == "train" and "step_time" in row:
                total += row["step_time"] * (row["step"] - last_step)
                last_step = row["step"]
    return total


def plot_curve(record: dict, path: str) -> None:
    """Held-out ratio and NSP accuracy against pretraining tokens (the in-run evals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [c["tokens"] / 1e6 for c in record["curve"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(tokens, [c["ratio"] for c in record["curve"]], marker="o", label="MLM perplexity / unigram")
    ax.plot(tokens, [c["nsp_accuracy"] for c in record["curve"]], marker="s", label="NSP accuracy")
    ax.axhline(0.25, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("pretraining tokens (M)")
    ax.set_title(f"mini recipe ({record['probe']}, lr {record['recipe']['optimizer.learning_rate']:g})\n"
                 f"held-out, in-run eval ({probes.EVAL_EXAMPLES} examples, the run's mask rate)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--probe", default="base", help="a probe of recipe_probes.py, or several joined by '+'")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE over the probe's settings (repeatable)")
    p.add_argument("--tokens", type=int, default=32 * 1024 * 1024)
    p.add_argument("--shared_data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--data_root", default="", help="where the split and datasets are built (default <workdir>/data; "
                                                  "pass recipe_probes.py's <workdir>/data to share them)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args()
    settings = {**probes.BASE, **probes.resolve(args.probe)[1]}
    for item in args.set:
        key, _, text = item.partition("=")
        if key not in settings:
            sys.exit(f"recipe_run: --set {key}: not a recipe setting; choose from {sorted(settings)}")
        settings[key] = _value(text)
    peak = matmul_peak_gflops()
    os.makedirs(args.workdir, exist_ok=True)
    run_dir = os.path.join(args.workdir, "run")
    with open(os.path.join(args.workdir, "recipe.log"), "a") as log:
        train, heldout = probes.prepare_data(args.shared_data, args.data_root or os.path.join(args.workdir, "data"),
                                             settings["vocab"], log)
        command = probes.probe_command(settings, train, heldout, args.tokens, run_dir)
        steps = int(next(c.split("=", 1)[1] for c in command if c.startswith("--config.train.steps=")))
        command = [c for c in command if not c.startswith(("--config.train.eval_every", "--config.train.checkpoint_every"))]
        command += [f"--config.train.eval_every={max(1, steps // 16)}",
                    f"--config.train.checkpoint_every={max(1, steps // 16)}"]
        start = time.time()
        probes.run(command, log)
        finals = {}
        for name, checkpoint in (("trained", run_dir), ("random_init", f"random:{run_dir}")):
            out = os.path.join(args.workdir, f"evaluate_{name}.json")
            probes.run(["bert-jax", "evaluate", "--checkpoint", checkpoint, "--data", heldout, "--max_examples",
                        str(FINAL_EXAMPLES), "--out", out], log)
            with open(out) as f:
                finals[name] = json.load(f)
    batch = int(settings["train.global_batch_size"])
    final = finals["trained"]
    record = {
        "tokens": steps * batch * probes.SEQ, "steps": steps, "batch": batch, "seq_len": probes.SEQ,
        "model": {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("model.")},
        "objectives": "mlm+nsp", "recipe": settings, "probe": args.probe,
        "held_out_ppl": final["mlm_perplexity"], "unigram_ppl": final["mlm_unigram_perplexity"],
        "ratio": final["mlm_perplexity_ratio"], "mlm_accuracy": final["mlm_accuracy"],
        "nsp_accuracy": final.get("nsp_accuracy"), "held_out_examples": final["examples"],
        "random_init_ratio": finals["random_init"]["mlm_perplexity_ratio"],
        "seconds": round(train_seconds(run_dir), 1), "wall_seconds_this_invocation": round(time.time() - start, 1),
        "matmul_peak_gflops": round(peak, 1), "machine": "2 CPU cores (shared), XLA:CPU",
        "curve": probes.read_curve(run_dir, batch),
        "command": " ".join(sys.argv),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "recipe_mini.json"), "w") as f:
        json.dump(record, f, indent=1)
    plot_curve(record, os.path.join(args.out, "recipe_mini.png"))
    print(f"recipe: {record['tokens'] / 1e6:.1f}M tokens, held-out ppl {record['held_out_ppl']:.1f} vs unigram "
          f"{record['unigram_ppl']:.1f} (ratio {record['ratio']:.3f}; random init {record['random_init_ratio']:.3f}), "
          f"NSP {record['nsp_accuracy']:.3f}, {record['seconds'] / 3600:.2f} h at peak {peak:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
