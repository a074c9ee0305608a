"""`bert-jax pretrain` under 1, 2, 4 and 8 simulated CPU devices: the same losses, and what the sharded program costs.

    python benchmarks/device_scaling.py [--devices 1,2,4,8] [--steps 40] [--strategy mesh]
    python benchmarks/device_scaling.py --devices 1,2 --config configs/pretrain.py:mini_text --seq_len 128 --batch 32 \
        --vocab 8192 --set model.num_layers=4,model.hidden_size=192,model.num_heads=3,model.intermediate_size=768

One run (configs/pretrain.py:tiny by default, dropout off so every device count draws nothing random) per device
count, on one built-in dataset made once, each in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=N. Reports every step's loss against the 1-device run's (largest
relative difference), the steady tokens/s (median of the per-step windows after the first 5) and the whole
process's wall time. What it shows: that the data-parallel program is the same computation at any device count.
What it does not: speed-up. Simulated devices share this machine's cores, so N devices do the same arithmetic plus
the collectives and the per-device dispatch; the cost ratio is that overhead, not what N real chips would give.
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
sys.path.insert(0, ROOT)


def run_one(devices: int, data_dir: str, workdir: str, steps: int, strategy: str, batch: int,
            config: str = "configs/pretrain.py:tiny", extra: dict | None = None) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    overrides = {"data.path": data_dir, "data.eval_path": "", "train.steps": steps, "train.log_every": 1,
                 "train.eval_every": 0, "train.checkpoint_every": 0, "train.progress_bar": False,
                 "train.global_batch_size": batch, "train.strategy": strategy,
                 "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0, **(extra or {})}
    cmd = [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config", os.path.join(ROOT, config),
           "--workdir", workdir, *[f"--config.{k}={v}" for k, v in overrides.items()]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{devices} devices: bert-jax pretrain exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"train"' in line]
    return {"devices": devices, "wall_s": wall, "losses": [r["loss"] for r in rows],
            "steady_tokens_per_s": statistics.median(r["tokens_per_second"] for r in rows[5:])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4,8", help="comma-separated simulated device counts")
    p.add_argument("--steps", type=int, default=40, help="steps per run")
    p.add_argument("--batch", type=int, default=16, help="global batch (divisible by every device count)")
    p.add_argument("--strategy", default="mesh", choices=("mesh", "pmap"), help="train.strategy")
    p.add_argument("--config", default="configs/pretrain.py:tiny", help="config file:variant, relative to the repo")
    p.add_argument("--seq_len", type=int, default=64, help="sequence length of the built-in dataset")
    p.add_argument("--vocab", type=int, default=4096, help="WordPiece vocab size of the built-in dataset")
    p.add_argument("--set", default="", help="extra config overrides, comma-separated key=value")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the device counts this many times, alternating; each count's best steady rate is kept")
    p.add_argument("--out", default=os.path.join(HERE, "results", "device_scaling.json"), help="JSON to write")
    args = p.parse_args(argv)
    counts = [int(d) for d in args.devices.split(",") if d]
    try:
        extra = dict(item.split("=", 1) for item in args.set.split(",") if item)
    except ValueError:
        print(f"device_scaling.py: --set {args.set!r} must be comma-separated key=value pairs", file=sys.stderr)
        return 2
    if any(args.batch % d for d in counts):
        print(f"device_scaling.py: --batch {args.batch} must be divisible by every count in --devices {args.devices}",
              file=sys.stderr)
        return 2
    from bert_jax.data.make_data import prepare_builtin_dataset

    with tempfile.TemporaryDirectory(prefix="bert_jax_devices_") as tmp:
        data_dir = prepare_builtin_dataset(os.path.join(tmp, "data"), mode="segment-pair", seq_len=args.seq_len,
                                           vocab_size=args.vocab, seed=0, num_docs=2000)
        by_count = {d: [] for d in counts}
        for round_ in range(args.rounds):  # alternating, because this machine's speed swings between minutes
            for d in counts:
                by_count[d].append(run_one(d, data_dir, os.path.join(tmp, f"run-{d}-{round_}"), args.steps,
                                           args.strategy, args.batch, args.config, extra))
    runs = []
    for d in counts:
        first = by_count[d][0]
        assert all(r["losses"] == first["losses"] for r in by_count[d]), f"{d} devices: a rerun changed the losses"
        rates = [r["steady_tokens_per_s"] for r in by_count[d]]
        runs.append({**first, "steady_tokens_per_s_rounds": rates, "steady_tokens_per_s": max(rates)})
    reference = runs[0]
    print(f"{'devices':>7} {'max rel loss diff':>18} {'steady tok/s':>13} {'x 1st':>6} {'wall s':>7}")
    for r in runs:
        r["max_rel_loss_diff"] = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], reference["losses"], strict=True))
        r["cost_vs_first"] = reference["steady_tokens_per_s"] / r["steady_tokens_per_s"]
        print(f"{r['devices']:>7} {r['max_rel_loss_diff']:>18.2e} {r['steady_tokens_per_s']:>13,.0f} "
              f"{r['cost_vs_first']:>6.2f} {r['wall_s']:>7.1f}")
    payload = {"benchmark": "device_scaling", "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "cpu_count": os.cpu_count(), "loadavg_end": list(os.getloadavg()), "steps": args.steps,
               "batch": args.batch, "strategy": args.strategy, "config": f"{args.config}, dropout 0, {extra}",
               "seq_len": args.seq_len, "vocab": args.vocab, "rounds": args.rounds,
               "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
