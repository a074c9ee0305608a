"""Write a grid's results as `<grid>_<scale>.json`, `.csv` and `.md`: rows are variants, columns tasks, each cell
ours (median ± half-range over seeds, n seeds) beside the paper's number; 'n/a (...)' where a cell cannot run.
"""
from __future__ import annotations

import csv
import io
import json
import os


def format_cell(cell: dict) -> str:
    status = cell.get("status")
    if status == "ok":
        metric = cell.get("metric", "")
        digits = 3 if metric.endswith("_ratio") else 2 if metric == "mlm_perplexity" else 1
        if cell.get("seeds", 1) <= 1 and not cell.get("spread"):
            return f"{cell['median']:.{digits}f}"
        return f"{cell['median']:.{digits}f} ± {cell['spread']:.{digits}f} ({cell['seeds']} seeds)"
    if status == "n/a":
        return cell.get("reason") or "n/a"
    if status == "failed":
        return "failed"
    return "pending"


def format_paper(value) -> str:
    return "–" if value is None else f"{value:g}"


def _header_lines(results: dict) -> list[str]:
    h = results["header"]
    ft = h.get("finetune", {})
    lines = [f"- scale: **{results['scale']}**; model sizes: {h['size_rule']}",
             f"- pretraining: {h['steps']} steps, batch {h['batch_size']}, seq {h['seq_len']}, peak lr "
             f"{h['learning_rate']} ({h['pretraining_config']} plus each variant's overrides)"]
    data = h.get("data") or {}
    if data:
        lines.append(f"- data: {data.get('pretraining_text')}; held-out: {data.get('heldout_text')}; "
                     f"{data.get('squad')}; WordPiece vocab {data.get('vocab_size')}")
    if ft:
        subsets = ", ".join(f"{k} {v} train" for k, v in ft.get("max_train_examples", {}).items())
        evals = ", ".join(f"{k} first {v} dev" for k, v in ft.get("max_eval_examples", {}).items())
        epochs = ", ".join(f"{k} {v}" for k, v in ft.get("epochs_by_task", {}).items())
        lines.append(f"- fine-tuning: learning rates {', '.join(f'{x:g}' for x in ft['learning_rates'])} (best median "
                     f"on dev), {ft['seeds']} seeds each, {ft['epochs']} epochs, batch {ft['batch_size']}, max_seq_len "
                     f"{ft['max_seq_len']}" + (f" (epochs: {epochs})" if epochs else "")
                     + (f"; subsets: {subsets}" if subsets else "")
                     + (f"; {evals}" if evals else ""))
    lines.append(f"- cells: ours = median ± {h['spread']} (n seeds), scores in percent (perplexity as is); "
                 "paper = the paper's dev number")
    t = results.get("timing", {})
    when = f"- date: {results['date']}"
    if t:
        when += (f"; this invocation: wall {t['wall_seconds'] / 60:.0f} min on {t['cpu_count']} CPU cores (runs "
                 "finished by earlier invocations are not counted; see experiment.log), load average "
                 f"{t['load_average_start'][0]:.1f} at start, {t['load_average_end'][0]:.1f} at end")
    lines.append(when)
    return lines


def to_markdown(results: dict) -> str:
    columns = results["columns"]
    out = [f"# {results['title']} — {results['scale']} scale", "", f"Paper: {results['source']}.", ""]
    out += _header_lines(results)
    out.append("")
    head = ["variant", "model (#L/#H/#A)"]
    for c in columns:
        label = c["key"] + (f" ({c['note']})" if c.get("note") else "")
        head += [f"{label} ours", f"{c['key']} paper"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for row in results["rows"]:
        cells = [row["variant"], row["model"]]
        for c in columns:
            cell = row["cells"][c["key"]]
            cells += [format_cell(cell), format_paper(cell.get("paper"))]
        out.append("| " + " | ".join(cells) + " |")
    failures = [(row["variant"], c["key"], row["cells"][c["key"]].get("reason", "")) for row in results["rows"]
                for c in columns if row["cells"][c["key"]].get("status") == "failed"]
    if failures:
        out += ["", "Failed cells:"] + [f"- {v} / {k}: {reason}" for v, k, reason in failures]
    shared = [f"{row['variant']} fine-tunes {row['shares_pretraining_with']}'s pretrained model" +
              (f" at step {row['init_step']}" if row.get("init_step") else "")
              for row in results["rows"] if row.get("shares_pretraining_with")]
    if shared:
        out += ["", "Shared pretraining: " + "; ".join(shared) + "."]
    out += _compute_and_floor_lines(results)
    if results.get("paper_claims"):
        out += ["", "What the paper says this grid shows:"] + [f"- {c}" for c in results["paper_claims"]]
    if results.get("notes"):
        out += ["", "Notes:"] + [f"- {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


def below_floor(results: dict) -> list[tuple[str, str]]:
    """(row, column) cells whose median is not above the random-init floor row's in a fine-tuned column."""
    floor = next((r for r in results["rows"] if r["variant"] == results.get("floor")), None)
    if floor is None:
        return []
    out = []
    for c in results["columns"]:
        base = floor["cells"].get(c["key"], {})
        if base.get("status") != "ok":
            continue
        out += [(r["variant"], c["key"]) for r in results["rows"] if r is not floor
                and r["cells"][c["key"]].get("status") == "ok" and r["cells"][c["key"]]["median"] <= base["median"]]
    return out


def _compute_and_floor_lines(results: dict) -> list[str]:
    """Each row's pretraining steps and FLOPs (where the grid sets them) and the cells at or below the floor."""
    out = []
    compute = [f"{r['variant']} {r['pretrain'].get('train.steps', '?')} steps, {r['pretraining_flops']:.3g} FLOPs"
               for r in results["rows"] if r.get("pretraining_flops")]
    if compute:
        out += ["", "Pretraining compute: " + "; ".join(compute) + "."]
    if results.get("floor"):
        low = below_floor(results)
        out += ["", f"At or below the {results['floor']} floor: "
                + ("; ".join(f"{v} / {k}" for v, k in low) if low else "none of the finished cells") + "."]
    return out


def to_csv(results: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = [c["key"] for c in results["columns"]]
    fields = ("median", "spread", "min", "max", "seeds", "status", "paper")
    writer.writerow(["variant", "model", "pretraining_run", "init_step"] + [f"{k} {f}" for k in keys for f in fields])
    for row in results["rows"]:
        values = [row["variant"], row["model"], row["pretraining_run"], row.get("init_step", 0)]
        for k in keys:
            cell = row["cells"][k]
            ok = cell.get("status") == "ok"
            values += [f"{cell[f]:.4f}" if ok else "" for f in ("median", "spread", "min", "max")]
            values += [cell.get("seeds", "") if ok else "", format_cell(cell) if not ok else "ok",
                       "" if cell.get("paper") is None else cell["paper"]]
        writer.writerow(values)
    return buf.getvalue()


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)  # never a half-written table under the real name


def write_tables(results: dict, out_dir: str) -> dict[str, str]:
    """Write json, csv and md; returns {'json': path, 'csv': path, 'md': path}."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{results['grid']}_{results['scale']}")
    paths = {"json": base + ".json", "csv": base + ".csv", "md": base + ".md"}
    _write(paths["json"], json.dumps(results, indent=1, default=str))
    _write(paths["csv"], to_csv(results))
    _write(paths["md"], to_markdown(results))
    return paths
