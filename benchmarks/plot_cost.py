"""Cost as work grows, from a `train_step.py --seqs` run: a table and a plot of tokens/s and memory against sequence
length, one line per model size and framework.

    python benchmarks/train_step.py --shapes mini,small,medium,base --seqs 128,256,512 --out benchmarks/results/train_step_cost.json
    python benchmarks/plot_cost.py benchmarks/results/train_step_cost.json   # writes train_step_cost.png and .md beside it

Memory: XLA's temporary buffers of the compiled step for bert_jax and the Flax peer (what grows with the batch's
activations); for PyTorch, which compiles nothing, the peer process's peak resident memory (model and optimizer
included), so only its trend compares.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def table_rows(payload: dict) -> list[dict]:
    shapes = payload["settings"]["shapes"]
    out = []
    for row in payload["rows"]:
        if row.get("status") != "ok":
            continue
        shape = shapes[row["shape"]]
        temp = (row.get("memory") or {}).get("temp_size_in_bytes")
        memory = temp / 2**20 if temp is not None else row.get("max_rss_mib")
        out.append({"model": row["shape"].split("@")[0], "seq": shape["seq"], "batch": shape["batch"],
                    "framework": row["framework"], "tokens_per_s": row["tokens_per_s"], "mfu": row.get("mfu"),
                    "memory_mib": memory, "memory_kind": "XLA temp" if temp is not None else "peak RSS",
                    "speedup": row.get("bert_jax_speedup")})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| model | seq | batch | framework | tok/s | MFU | ours x | memory MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{r['mfu']:.0%}" if r["mfu"] is not None else ""
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        memory = f"{r['memory_mib']:,.0f} ({r['memory_kind']})" if r["memory_mib"] is not None else ""
        lines.append(f"| {r['model']} | {r['seq']} | {r['batch']} | {r['framework']} | {r['tokens_per_s']:,.0f} | "
                     f"{mfu} | {speedup} | {memory} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    # one colour per model size (in the order the run lists them), one line style per framework
    models = list(dict.fromkeys(r["model"] for r in rows))
    for key in sorted({(r["model"], r["framework"]) for r in rows}, key=lambda k: (models.index(k[0]), k[1])):
        points = sorted((r["seq"], r["tokens_per_s"], r["memory_mib"]) for r in rows
                        if (r["model"], r["framework"]) == key)
        label = f"{key[0]} {key[1]}"
        style = "-" if key[1].startswith("bert_jax") else "--" if key[1] == "flax" else ":"
        colour = f"C{models.index(key[0]) % 10}"
        speed.plot([p[0] for p in points], [p[1] for p in points], style, color=colour, marker="o", label=label)
        if all(p[2] is not None for p in points):
            memory.plot([p[0] for p in points], [p[2] for p in points], style, color=colour, marker="o", label=label)
    for ax, title in ((speed, "tokens/s (same tokens per step)"), (memory, "memory MiB (XLA temp; torch: peak RSS)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    speed.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="train_step.py JSON from a --seqs run")
    args = p.parse_args(argv)
    try:
        with open(args.results) as f:
            payload = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"plot_cost.py: cannot read {args.results}: {e}; pass a train_step.py --out JSON", file=sys.stderr)
        return 2
    rows = table_rows(payload)
    stem = os.path.splitext(args.results)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows))
    plot(rows, stem + ".png")
    print(markdown(rows))
    print(f"wrote {stem}.md and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
