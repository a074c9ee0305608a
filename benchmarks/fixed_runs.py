"""Fixed short pretraining runs whose losses a refactor must not change, and their comparison.

    python benchmarks/fixed_runs.py run --out /tmp/before            # on the old tree (a git worktree of it)
    python benchmarks/fixed_runs.py run --out /tmp/after             # on the new tree
    python benchmarks/fixed_runs.py compare /tmp/before /tmp/after   # exit 1 unless every loss is bit-identical

Each run is `bert-jax pretrain` of `configs/pretrain.py:tiny` on the built-in corpus for 24 steps, logging every
step and evaluating at steps 12 and 24, for one objective set per family (mlm+nsp, mlm+sop, mlm+sbo on span
masking, ELECTRA, LTR). `compare` checks every train and eval row's loss terms, as logged in metrics.jsonl
(floats as JSON writes them: equal text means equal bits). Run it from the tree under test (PYTHONPATH=that tree
when it is not the installed one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

RUNS = {"mlm_nsp": ("mlm+nsp", ""), "mlm_sop": ("mlm+sop", "sentence-order"), "mlm_sbo": ("mlm+sbo", "single"),
        "electra": ("electra", "single"), "ltr": ("ltr", "single")}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(out: str) -> int:
    os.makedirs(out, exist_ok=True)
    for name, (objectives, mode) in RUNS.items():
        workdir = os.path.join(out, name)
        cmd = [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config", "configs/pretrain.py:tiny",
               "--workdir", workdir, f"--config.objectives={objectives}", "--config.train.steps=24",
               "--config.train.log_every=1", "--config.train.progress_bar=False", "--config.train.eval_every=12"]
        if mode:
            cmd.append(f"--config.data.mode={mode}")
        with open(workdir + ".log", "w") as log:
            if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
                print(f"{name}: failed, see {workdir}.log")
                return 1
        print(f"{name}: done")
    return 0


def losses(path: str) -> list[tuple]:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    keys = sorted({k for r in rows for k in r if k == "loss" or k.endswith("_loss")})
    return [(r["step"], r.get("split")) + tuple(r.get(k) for k in keys) for r in rows]


def compare(before: str, after: str) -> int:
    same = True
    for name in RUNS:
        a, b = losses(os.path.join(before, name, "metrics.jsonl")), losses(os.path.join(after, name, "metrics.jsonl"))
        first = next(((x, y) for x, y in zip(a, b) if x != y), None)
        print(f"{name}: {len(a)} rows, " + ("bit-identical" if first is None and len(a) == len(b) else
                                            f"DIFFER at {first[0] if first else 'the row count'}"))
        same &= first is None and len(a) == len(b)
    return 0 if same else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the fixed pretraining runs")
    r.add_argument("--out", required=True, help="a directory for one workdir per run")
    c = sub.add_parser("compare", help="compare two `run` outputs row by row")
    c.add_argument("before", help="the `run --out` directory of the old tree")
    c.add_argument("after", help="the `run --out` directory of the new tree")
    args = p.parse_args()
    return run(args.out) if args.command == "run" else compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
