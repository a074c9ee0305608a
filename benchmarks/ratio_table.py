"""The README's performance table from a `train_step.py` JSON: one line per shape, ours against each peer in the
same run, and the run's conditions (date, matmul peak, load) above it.

    python benchmarks/train_step.py --shapes experiments,mini,base --variant recipe --out benchmarks/results/train_step_experiments.json
    python benchmarks/ratio_table.py benchmarks/results/train_step_experiments.json   # markdown on stdout

Ratios are the peer's median step time over ours (`bert_jax_speedup`, computed by the harness from the same
alternating blocks). The plain bert_jax row is the like-for-like one (the peers run BERT's post-LN, dropout 0.1,
learned positions); a `--variant` row (e.g. `recipe`, the grids' pre-LN, no-dropout, rotary model) gets its own
tokens/s and MFU column, and is never divided by a peer that runs another model.
"""
from __future__ import annotations

import argparse
import json
import sys

PEERS = ("torch", "flax")
PEER_NAMES = {"torch": "PyTorch", "flax": "Flax"}


def variant_label(framework: str) -> str:
    """'bert_jax[attention_dropout_rate=0.0,dropout_rate=0.0,norm=pre,position_embedding=rotary]' -> 'pre-LN,
    rotary, no dropout' (the recipe's settings in words; any other override as key=value)."""
    items = dict(item.split("=", 1) for item in framework.removeprefix("bert_jax[").removesuffix("]").split(",") if item)
    words = []
    norm = items.pop("norm", None)
    if norm:
        words.append("pre-LN" if norm == "pre" else f"norm={norm}")
    if "position_embedding" in items:
        words.append(items.pop("position_embedding"))
    if items.get("dropout_rate") == items.get("attention_dropout_rate") == "0.0":
        del items["dropout_rate"], items["attention_dropout_rate"]
        words.append("no dropout")
    return ", ".join(words + [f"{k}={v}" for k, v in items.items()])


def shape_label(name: str, shape: dict) -> str:
    return (f"{name} ({shape['layers']}/{shape['hidden']}/{shape['heads']}, vocab {shape['vocab']}, "
            f"seq {shape['seq']}, b{shape['batch']})")


def ratio_rows(payload: dict) -> list[dict]:
    """One dict per shape: ours, the variant rows and each peer, from rows with status ok."""
    by_shape: dict[str, dict] = {}
    for row in payload["rows"]:
        if row.get("status") != "ok":
            continue
        entry = by_shape.setdefault(row["shape"], {"shape": row["shape"], "ours": None, "variants": [], "peers": {}})
        if row["framework"] == "bert_jax":
            entry["ours"] = row
        elif row["framework"].startswith("bert_jax["):
            entry["variants"].append(row)
        else:
            entry["peers"][row["framework"]] = row
    return [e for e in by_shape.values() if e["ours"] is not None]


def markdown(payload: dict) -> str:
    shapes, rows = payload["settings"]["shapes"], ratio_rows(payload)
    peers = [p for p in PEERS if any(p in r["peers"] for r in rows)]
    variants = sorted({v["framework"] for r in rows for v in r["variants"]})
    head = ["shape", "bert_jax tok/s", "MFU"]
    head += [f"bert_jax {variant_label(v)} tok/s (MFU)" for v in variants]
    head += [f"{PEER_NAMES[p]} tok/s (ours x)" for p in peers] + ["XLA temp MiB (ours / Flax)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours = r["ours"]
        cells = [shape_label(r["shape"], shapes[r["shape"]]), f"{ours['tokens_per_s']:,.0f}", f"{ours['mfu']:.0%}"]
        for name in variants:
            v = next((v for v in r["variants"] if v["framework"] == name), None)
            cells.append(f"{v['tokens_per_s']:,.0f} ({v['mfu']:.0%})" if v else "")
        for p in peers:
            peer = r["peers"].get(p)
            cells.append(f"{peer['tokens_per_s']:,.0f} (**{peer['bert_jax_speedup']:.2f}x**)" if peer else "")
        temps = [((row or {}).get("memory") or {}).get("temp_size_in_bytes") for row in (ours, r["peers"].get("flax"))]
        cells.append(" / ".join(f"{t / 2**20:,.0f}" if t else "-" for t in temps))
        lines.append("| " + " | ".join(cells) + " |")
    settings = payload["settings"]
    caption = (f"{payload['date']}, {payload['processor']}, {payload['cpu_count']} cores, matmul peak "
               f"{payload['peak_gflops_used']:.0f} GFLOP/s (fp32 jnp.dot, this run), load "
               f"{payload['loadavg_start'][0]:.1f} -> {payload['loadavg_end'][0]:.1f}; {settings['steps']} timed steps "
               f"per framework in {settings['blocks']} alternating blocks.")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a train_step.py JSON")
    args = p.parse_args(argv)
    try:
        with open(args.results) as f:
            payload = json.load(f)
        text = markdown(payload)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        print(f"ratio_table.py: cannot read {args.results} as a train_step.py result ({e}); "
              "pass a JSON that benchmarks/train_step.py wrote", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
