"""`bert-jax experiment GRID [GRID ...] --scale mini|paper|smoke --workdir DIR`: the paper's ablation grids.

  mini   pretrain every variant on 2 CPU cores (sizes scaled down by a stated rule), fine-tune it with the
         multi-seed protocol, write <grid>_mini.{json,csv,md} (and PNG plots) under <workdir>/results
  smoke  the same protocol at a toy size in minutes (CI); the numbers mean nothing
  paper  write and print the commands and configs at the paper's scale (TPU pod); nothing runs
Grids: table5, table6, figure5, table8, roberta, objectives (pretraining objectives at equal FLOPs). Everything is restartable: rerun the same command after a crash.
--dry_run lists the pretraining runs and fine-tuning jobs (and whether each is done) without running anything.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys

from bert_jax.experiments.grids import GRIDS, SCALES

EXIT_FAILED_CELLS, EXIT_BAD_INPUT = 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bert-jax experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grids", nargs="+", choices=GRIDS, metavar="GRID", help=f"one or more of {', '.join(GRIDS)}")
    p.add_argument("--scale", choices=SCALES, default="mini",
                   help="mini (2 CPU cores), smoke (toy size, minutes) or paper (print the commands) (default: mini)")
    p.add_argument("--workdir", required=True, help="pretraining/fine-tuning runs, logs and results go here")
    p.add_argument("--data_root", default="", help="prepared mini data (default <workdir>/data; shared by grids)")
    p.add_argument("--shared_data", default="", help="folder laid out as ../shared/data (default: that folder)")
    p.add_argument("--results_dir", default="", help="tables and plots (default <workdir>/results)")
    p.add_argument("--jobs", type=int, default=0,
                   help="fine-tuning jobs at once, each a process on one CPU device (default: one per core; "
                        "1 = in this process)")
    p.add_argument("--dry_run", action="store_true", help="list what would run, run nothing")
    return p


def configure_cpu_runtime(workdir: str) -> None:
    """Before jax starts: one CPU device per core (data parallel uses both cores where one device uses about one)
    and a persistent compilation cache (every seed and variant of a grid compiles the same programs)."""
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={os.cpu_count() or 1}".strip()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(workdir), "jax_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def run_cpu_grids(args) -> int:
    from bert_jax.experiments import data as data_lib, grids as grids_lib, runner
    from bert_jax.experiments.plots import write_plots
    from bert_jax.experiments.tables import write_tables

    shared = args.shared_data or data_lib.DEFAULT_SHARED_DATA
    root = args.data_root or os.path.join(args.workdir, "data")
    results_dir = args.results_dir or os.path.join(args.workdir, "results")
    log = runner.Logger(args.workdir)
    scale = grids_lib.SCALE_BY_NAME[args.scale]
    if args.dry_run:
        return dry_run(args, data_lib.planned(shared, root, scale.data))
    prepared = data_lib.prepare(shared, root, scale.data, log)
    failed = 0
    for name in args.grids:
        grid = grids_lib.get_grid(name, args.scale)
        results = runner.run_grid(grid, args.workdir, prepared, log, workers=args.jobs or os.cpu_count() or 1)
        paths = write_tables(results, results_dir)
        plots = write_plots(results, grid.plot, results_dir)
        failed += sum(cell["status"] == "failed" for row in results["rows"] for cell in row["cells"].values())
        log(f"{name}: wrote {', '.join(list(paths.values()) + plots)}")
    if failed:
        log(f"{failed} cells failed; see the tables' 'Failed cells' and errors.log in the run folders")
    return EXIT_FAILED_CELLS if failed else 0


def dry_run(args, planned) -> int:
    from bert_jax.experiments import grids as grids_lib, runner
    from bert_jax.experiments.data import Unavailable
    from bert_jax.train import checkpoint as ckpt

    for name in args.grids:
        grid = grids_lib.get_grid(name, args.scale)
        print(f"{grid.name} at scale {grid.scale.name} ({grid.scale.size_rule}):")
        for run in runner.pretraining_runs(grid):
            steps = ckpt.complete_steps(os.path.join(args.workdir, "pretrain", run.run_id, "checkpoints"))
            target = int(run.overrides["train.steps"])
            state = "done" if target in steps else (f"resumes at step {steps[-1]}" if steps else "new")
            flops = max(grid.variant(name).pretraining_flops for name in run.variants)
            after = runner.needs(grid, run)
            print(f"  pretrain {run.run_id} [{state}] {target} steps for {', '.join(run.variants)}"
                  + (f", {flops:.3g} FLOPs" if flops else "") + (f", after {', '.join(after)}" if after else ""))
        for variant in grid.variants:
            rid = runner.run_id(grid.pretrain_overrides(variant))
            for column in grid.columns:
                if column.task in (grids_lib.PERPLEXITY, grids_lib.HELDOUT_RATIO):
                    print(f"  {variant.name} / {column.key}: from the pretraining run's eval")
                    continue
                where = planned.task(column.task)
                out = runner.finetune_dir(args.workdir, variant, column, rid)
                state = where.reason if isinstance(where, Unavailable) else (
                    "done" if os.path.isfile(os.path.join(out, "metrics.json")) else "to run")
                print(f"  {variant.name} / {column.key}: {column.task} [{state}]")
    return 0


# Keys phase two takes from its own config (configs/pretrain.py:base_phase2: 100k steps at seq 512).
PHASE_ONE_ONLY = ("train.steps", "data.seq_len", "optimizer.warmup_steps", "optimizer.learning_rate",
                  "train.checkpoint_every", "train.keep_checkpoints")
PAPER_DATA_DIRS = {"glue": "$GLUE_DIR", "squad": "$SQUAD_DIR", "conll2003": "$CONLL_DIR"}


def paper_commands(name: str) -> tuple[list[str], dict]:
    """Shell lines for a grid at the paper's scale, and the resolved configs they use."""
    from bert_jax.experiments import grids as grids_lib, runner

    grid = grids_lib.get_grid(name, "paper")
    s = grid.scale
    lines = [f"# {grid.title}: the paper's scale ({grid.source}). Run on every host of a TPU pod slice.",
             "# Set CORPUS (BooksCorpus + Wikipedia text), VOCAB (bert-base-uncased vocab.txt), DATA, OUT, GLUE_DIR,",
             "# SQUAD_DIR (train/dev-v1.1.json, -v2.0.json) and CONLL_DIR first.", "set -euo pipefail"]
    configs = {}
    modes = sorted({(v.pretrain["data.mode"], int(grid.pretrain_overrides(v)["data.seq_len"])) for v in grid.variants})
    for mode, seq in modes:
        for length in sorted({seq, 512} if s.phase2_config else {seq}):
            lines.append(f"bert-jax make-data --input \"$CORPUS\" --vocab \"$VOCAB\" --mode {mode} --seq_len {length} "
                         f"--output \"$DATA/{mode}-{length}\" --workers 64")
    final_dir = {}
    for run in runner.pretraining_runs(grid):
        o = run.overrides
        workdir = f"$OUT/pretrain/{run.run_id}"
        args = [f"--config.{k}=" + (f'"{v}"' if str(v).startswith("$OUT/") else shlex.quote(str(v)))  # $OUT expands
                for k, v in runner.resolve_run_dirs(grid, run, "$OUT").items()]
        lines += [f"# {', '.join(run.variants)}",
                  f"bert-jax pretrain --config {s.config} --workdir \"{workdir}\" "
                  f"--config.data.path=\"$DATA/{o['data.mode']}-{o['data.seq_len']}\" " + " ".join(args)]
        configs[run.run_id] = {"config": s.config, "overrides": o, "variants": list(run.variants)}
        final_dir[run.run_id] = workdir
        if s.phase2_config:
            kept = {k: v for k, v in o.items() if k not in PHASE_ONE_ONLY}
            args2 = [f"--config.{k}={shlex.quote(str(v))}" for k, v in kept.items()]
            lines.append(f"bert-jax pretrain --config {s.phase2_config} --workdir \"{workdir}-phase2\" "
                         f"--config.train.init_from=\"{workdir}\" --config.data.path=\"$DATA/{o['data.mode']}-512\" "
                         + " ".join(args2))
            configs[run.run_id]["phase2"] = {"config": s.phase2_config, "overrides": kept}
            final_dir[run.run_id] = f"{workdir}-phase2"
    for variant in grid.variants:
        rid = runner.run_id(grid.pretrain_overrides(variant))
        init = variant.init_prefix + final_dir[rid]
        if variant.init_suffix and variant.init_step <= s.steps:
            init = f"$OUT/pretrain/{rid}{variant.init_suffix}"
        for column in grid.columns:
            family = column.task.split("/")[0]
            if column.task in (grids_lib.PERPLEXITY, grids_lib.HELDOUT_RATIO):
                lines.append(f"# {variant.name} / {column.key}: the last eval record in {init}/metrics.jsonl")
                continue
            if family not in PAPER_DATA_DIRS:
                lines.append(f"# {variant.name} / {column.key}: {column.task} is not a bert-jax finetune task")
                continue
            options = [x for k, v in sorted(runner.finetune_options(variant, column).items()) for x in (f"--{k}", str(v))]
            out = runner.finetune_dir("$OUT", variant, column, rid)
            lines.append(" ".join(["bert-jax finetune --task", column.task, "--data_dir", PAPER_DATA_DIRS[family],
                                   "--init", f"\"{init}\"", "--workdir", f"\"{out}\"",
                                   *s.finetune.args(column.task), *options]))
    return lines, configs


def write_paper_commands(name: str, out_dir: str) -> tuple[str, list[str]]:
    lines, configs = paper_commands(name)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}_paper_commands.sh"), os.path.join(out_dir, f"{name}_paper_configs.json")]
    for path, text in zip(paths, ("\n".join(lines) + "\n", json.dumps(configs, indent=1))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return "\n".join(lines), paths


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.scale == "paper":
        for name in args.grids:
            text, paths = write_paper_commands(name, args.results_dir or os.path.join(args.workdir, "results"))
            print(text)
            print(f"# written: {', '.join(paths)}")
        return 0
    if not args.dry_run:
        configure_cpu_runtime(args.workdir)
    from bert_jax.experiments.data import ExperimentDataError

    from bert_jax.experiments.runner import Preempted

    from bert_jax import dirlock

    try:  # one writer per --workdir; a dry run writes nothing
        lock = contextlib.nullcontext() if args.dry_run else dirlock.hold(args.workdir, "--workdir",
                                                                          "bert-jax experiment")
        with lock:
            return run_cpu_grids(args)
    except (ExperimentDataError, dirlock.DirectoryInUse) as e:
        print(f"bert-jax experiment: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Preempted as e:  # as pretrain does: a preempted job saved its state and exits 0; rerun to resume
        print(f"bert-jax experiment: preempted during pretraining run {e}; rerun the same command to resume",
              file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
