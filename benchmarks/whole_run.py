"""What a grid's pretraining run costs end to end, against the harness's step time for the same model.

    python benchmarks/whole_run.py --data DIR [--eval_data DIR] [--grid table5 --variant BERT_BASE --scale mini]
                                   [--steps 512] [--harness benchmarks/results/train_step_experiments.json]

Runs `bert-jax pretrain` with the variant's own config (as `bert-jax experiment` builds it: its scale's config file,
overrides, evaluation and checkpoint cadence) on prepared `make-data` folders, for `--steps` steps instead of the
grid's, in a fresh temporary workdir. Reports, in tokens/s (batch x seq per step, as the harness counts them):
- steady: the median of the logged windows after the first (no compilation; evaluation and checkpoint time fall in
  the windows they interrupt, as they do in a real run),
- whole: steps x batch x seq over the process's wall time, start-up, compilation, data, evaluation and the
  checkpoints included,
and, given the harness's JSON, its `bert_jax` row for the same shape (the `--variant recipe` row when it exists:
the grids train that one) and the ratios. Writes JSON beside the harness's results.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from _bench_common import experiment_shape_name  # noqa: E402
from train_step import recipe_overrides  # noqa: E402


def grid_overrides(grid_name: str, variant_name: str, scale: str) -> tuple[str, dict, str]:
    """(config file, overrides, harness shape name) of one grid variant's pretraining run."""
    from bert_jax.experiments.grids import get_grid

    grid = get_grid(grid_name, scale)
    variant = grid.variant(variant_name)
    return grid.scale.config, grid.pretrain_overrides(variant), experiment_shape_name(grid.scale.resize(variant.size))


def harness_row(path: str, shape: str) -> dict | None:
    """The harness's bert_jax row for `shape`, the recipe variant's if it was timed (what the grids train)."""
    with open(path) as f:
        rows = [r for r in json.load(f)["rows"] if r.get("shape") == shape and r.get("status") == "ok"
                and r.get("framework", "").startswith("bert_jax")]
    recipe = [r for r in rows if r.get("model_overrides") == recipe_overrides()]
    return (recipe or rows or [None])[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a make-data output folder in the variant's data mode and seq_len")
    p.add_argument("--eval_data", default="", help="its held-out folder ('' = no evaluation)")
    p.add_argument("--grid", default="table5", help="grid name (bert_jax/experiments/grids.py)")
    p.add_argument("--variant", default="BERT_BASE", help="variant of that grid")
    p.add_argument("--scale", default="mini", help="grid scale")
    p.add_argument("--steps", type=int, default=512, help="steps to run (the grid's cadences kept)")
    p.add_argument("--harness", default=os.path.join(HERE, "results", "train_step_experiments.json"),
                   help="train_step.py JSON with the same shape ('' = none)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "whole_run.json"), help="JSON to write")
    args = p.parse_args(argv)
    config_file, overrides, shape = grid_overrides(args.grid, args.variant, args.scale)
    overrides = {**overrides, "data.path": args.data, "data.eval_path": args.eval_data, "train.steps": args.steps}
    if not args.eval_data:
        overrides["train.eval_every"] = 0
    tokens_per_step = int(overrides["train.global_batch_size"]) * int(overrides["data.seq_len"])
    with tempfile.TemporaryDirectory(prefix="bert_jax_whole_run_") as workdir:
        cmd = [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config", os.path.join(ROOT, config_file),
               "--workdir", os.path.join(workdir, "run"), *[f"--config.{k}={v}" for k, v in overrides.items()]]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(f"whole_run.py: bert-jax pretrain failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}",
                  file=sys.stderr)
            return 1
        with open(os.path.join(workdir, "run", "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f]
    windows = [r["tokens_per_second"] for r in lines if r.get("split") == "train" and "tokens_per_second" in r]
    steady = statistics.median(windows[1:]) if len(windows) > 1 else float("nan")
    whole = args.steps * tokens_per_step / wall
    row = harness_row(args.harness, shape) if args.harness and os.path.exists(args.harness) else None
    harness = row["tokens_per_s"] if row else None
    result = {"benchmark": "whole_run", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "grid": args.grid, "variant": args.variant, "scale": args.scale, "shape": shape, "steps": args.steps,
              "tokens_per_step": tokens_per_step, "wall_s": wall, "steady_tokens_per_s": steady,
              "whole_tokens_per_s": whole, "window_tokens_per_s": windows, "loadavg_end": list(os.getloadavg()),
              "harness": {"file": args.harness, "framework": row["framework"], "tokens_per_s": harness} if row else None,
              "overrides": {k: str(v) for k, v in overrides.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{args.grid}/{args.variant} ({shape}), {args.steps} steps of {tokens_per_step} tokens: wall {wall:.0f} s")
    print(f"  bert-jax pretrain steady: {steady:,.0f} tok/s; whole run: {whole:,.0f} tok/s")
    if harness:
        print(f"  harness ({row['framework']}): {harness:,.0f} tok/s; steady / harness {steady / harness:.2f}, "
              f"whole / harness {whole / harness:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
