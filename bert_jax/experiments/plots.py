"""PNG plots from a grid's results record: figure5 (downstream score against pretraining steps, MLM vs LTR, with
the min-max band over seeds), objectives (each column's score against pretraining FLOPs, one point per row,
the random-init floor dashed) and table6 (held-out MLM perplexity against model size, ours beside the paper's)."""
from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _ok(cell: dict) -> bool:
    return cell.get("status") == "ok"


def plot_figure5(results: dict, path: str) -> str:
    columns = [c for c in results["columns"] if any(_ok(r["cells"][c["key"]]) for r in results["rows"])]
    columns = columns or results["columns"][:1]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for series in sorted({r["series"] for r in results["rows"]}):
            points = sorted((r["init_step"], r["cells"][column["key"]]) for r in results["rows"]
                            if r["series"] == series and _ok(r["cells"][column["key"]]))
            if not points:
                continue
            steps = [s for s, _ in points]
            (line,) = ax.plot(steps, [c["median"] for _, c in points], marker="o", label=series)
            ax.fill_between(steps, [c["min"] for _, c in points], [c["max"] for _, c in points], alpha=0.2,
                            color=line.get_color())
        ax.set_title(f"{column['key']} ({results['scale']})")
        ax.set_xlabel("pretraining steps")
        ax.set_ylabel("dev score (median, min-max band over seeds)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _params(size: str) -> float:
    """Transformer-layer parameters (12 H^2 per layer) of an 'L/H/A' size, in millions."""
    layers, hidden, _ = (int(x) for x in size.split("/"))
    return 12 * layers * hidden * hidden / 1e6


def plot_table6(results: dict, path: str, column: str = "LM ppl") -> str:
    rows = results["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    ours = [(r["model"], r["cells"][column]) for r in rows if _ok(r["cells"].get(column, {}))]
    for ax, points, title in (
            (axes[0], [(m, c["median"]) for m, c in ours], f"ours ({results['scale']}: held-out MLM perplexity)"),
            (axes[1], [(r["paper_model"], r["cells"][column].get("paper")) for r in rows
                       if r["cells"].get(column, {}).get("paper") is not None], "paper (Table 6 LM ppl)")):
        points = sorted(points, key=lambda p: _params(p[0]))
        if points:
            xs = [_params(m) for m, _ in points]
            ax.plot(xs, [v for _, v in points], marker="o")
            for x, (m, v) in zip(xs, points):
                ax.annotate(m, (x, v), textcoords="offset points", xytext=(3, 3), fontsize=7)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled points suffice
        else:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("transformer parameters (millions, 12·L·H²)")
        ax.set_ylabel("perplexity")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def flops_points(results: dict) -> dict[str, list[tuple[float, float, str]]]:
    """Per column: (pretraining FLOPs, median score, row) of each finished cell of a row that pretrained (the
    random-init floor is drawn as a line of its own)."""
    out = {}
    for column in results["columns"]:
        key = column["key"]
        out[key] = sorted((float(r["pretraining_flops"]), r["cells"][key]["median"], r["variant"])
                          for r in results["rows"] if r.get("pretraining_flops") and not r.get("random_init")
                          and _ok(r["cells"][key]))
    return out


def plot_objectives(results: dict, path: str) -> tuple[str, dict]:
    """Each column's score against pretraining FLOPs, one labelled point per row, the random-init floor dashed;
    returns the path and the points drawn."""
    points = flops_points(results)
    columns = results["columns"]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.8 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        key = column["key"]
        for flops, score, row in points[key]:
            ax.scatter([flops], [score])
            ax.annotate(row, (flops, score), textcoords="offset points", xytext=(3, 3), fontsize=7)
        floor = [r["cells"][key] for r in results["rows"] if r.get("random_init") and _ok(r["cells"][key])]
        if floor:
            ax.axhline(floor[0]["median"], linestyle="--", color="grey", label="random init")
            ax.legend(fontsize=7)
        if not points[key]:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{key} ({results['scale']})", fontsize=9)
        ax.set_xlabel("pretraining FLOPs")
        ax.set_ylabel(column.get("note") or "dev score (median over seeds)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, points


def write_plots(results: dict, kind: str, out_dir: str) -> list[str]:
    """The grid's plots (none when `kind` is '')."""
    base = os.path.join(out_dir, f"{results['grid']}_{results['scale']}")
    if kind == "figure5":
        return [plot_figure5(results, base + ".png")]
    if kind == "table6":
        return [plot_table6(results, base + "_perplexity.png")]
    if kind == "objectives":
        return [plot_objectives(results, base + "_flops.png")[0]]
    return []
