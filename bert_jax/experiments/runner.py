"""Run a grid at a CPU scale: pretrain each distinct run, fine-tune every (variant, column), collect the results.

Workdir layout (every step restartable; a killed command picks up where it stopped):
  pretrain/<run_id>/                      a `bert-jax pretrain` workdir (resumes; a finished run is skipped)
  finetune/<run_id>[@step]/<column>-<id>/ a `bert-jax finetune` workdir (finished settings are skipped)
  experiment.log                          progress with timings
A run id is the run's objective, data mode and size plus a hash of all its overrides, so grids that pretrain the
same model (table5's BERT_BASE, table6's 12/768/12, figure5's MLM) share one run.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Callable

from bert_jax.experiments.data import PreparedData, TaskData, Unavailable, fingerprint
from bert_jax.experiments.grids import HELDOUT_RATIO, PERPLEXITY, Column, Grid, Variant, run_dir_of
from bert_jax.experiments.paper import PAPER_CLAIMS, paper_number

RUN_FAILURES = (ValueError, FileNotFoundError, OSError, RuntimeError, FloatingPointError, KeyError)


class Preempted(Exception):
    """A pretraining run stopped on a signal before its last step (its checkpoint is saved)."""


@dataclasses.dataclass(frozen=True)
class PretrainRun:
    run_id: str
    overrides: dict  # without data paths
    variants: tuple[str, ...]  # rows that fine-tune from it


def run_id(overrides: dict) -> str:
    size = f"L{overrides['model.num_layers']}H{overrides['model.hidden_size']}A{overrides['model.num_heads']}"
    objectives = str(overrides.get("objectives", "mlm+nsp")).replace("*", "x").replace(" ", "")
    return f"{objectives}_{overrides.get('data.mode', 'default')}_{size}-{fingerprint(overrides)}"


def needs(grid: Grid, run: PretrainRun) -> list[str]:
    """Rows whose finished runs this run reads (`run_dir_of` in its overrides: a distillation teacher)."""
    return [v.name for v in grid.variants if any(value == run_dir_of(v.name) for value in run.overrides.values())]


def pretraining_runs(grid: Grid) -> list[PretrainRun]:
    """Distinct pretraining runs, in the order their first variant appears, except that a run comes after the runs
    it reads (`needs`)."""
    runs: dict[str, PretrainRun] = {}
    for variant in grid.variants:
        overrides = grid.pretrain_overrides(variant)
        rid = run_id(overrides)  # of the placeholder, not the path: the same run in any --workdir
        previous = runs.get(rid)
        runs[rid] = PretrainRun(rid, overrides, (previous.variants if previous else ()) + (variant.name,))
    ordered: list[PretrainRun] = []

    def place(run: PretrainRun, chain: tuple[str, ...]) -> None:
        if run in ordered:
            return
        if run.run_id in chain:
            raise ValueError(f"grid {grid.name}: pretraining runs read each other in a cycle ({', '.join(chain)})")
        for name in needs(grid, run):
            place(next(r for r in runs.values() if name in r.variants), chain + (run.run_id,))
        ordered.append(run)

    for run in runs.values():
        place(run, ())
    return ordered


def resolve_run_dirs(grid: Grid, run: PretrainRun, workdir: str) -> dict:
    """The run's overrides with each `run_dir_of(row)` replaced by that row's pretraining workdir."""
    dirs = {run_dir_of(v.name): os.path.join(workdir, "pretrain", run_id(grid.pretrain_overrides(v)))
            for v in grid.variants}
    return {k: dirs.get(v, v) if isinstance(v, str) else v for k, v in run.overrides.items()}


def finetune_options(variant: Variant, column: Column) -> dict:
    return {**variant.finetune, **column.finetune}


def finetune_dir(workdir: str, variant: Variant, column: Column, rid: str) -> str:
    init = ("random-" if variant.random_init else "") + rid + variant.init_suffix
    slug = "".join(ch if ch.isalnum() else "_" for ch in column.key).strip("_").lower()
    return os.path.join(workdir, "finetune", init, f"{slug}-{fingerprint({'task': column.task, **finetune_options(variant, column)})}")


class Logger:
    """Timestamped progress lines to stdout and `<workdir>/experiment.log`."""

    def __init__(self, workdir: str, echo: Callable[[str], None] = print):
        self.path, self.echo, self.start = os.path.join(workdir, "experiment.log"), echo, time.perf_counter()
        os.makedirs(workdir, exist_ok=True)

    def __call__(self, message: str) -> None:
        line = f"[{datetime.datetime.now():%H:%M:%S} +{time.perf_counter() - self.start:7.0f}s] {message}"
        self.echo(line)
        with open(self.path, "a") as f:
            f.write(line + "\n")


@contextlib.contextmanager
def _output_to(path: str):
    """The called module's own prints (config dumps, epoch lines) go to a log file beside its results."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f, contextlib.redirect_stdout(f):
        yield


def _config_args(overrides: dict) -> list[str]:
    return [f"{key}={value}" for key, value in overrides.items()]


def pretrain_run(grid: Grid, run: PretrainRun, workdir: str, data: PreparedData, log: Logger,
                 done: dict | None = None) -> dict:
    """Pretrain (or resume, or skip) one run; {'status', 'seconds', 'steps', 'dir', 'error'?}. `done`: the status
    of the runs before it, by run id (a run whose teacher failed fails too)."""
    from bert_jax import configlib
    from bert_jax.train import checkpoint as ckpt

    run_dir = os.path.join(workdir, "pretrain", run.run_id)
    steps = int(run.overrides["train.steps"])
    info = {"dir": run_dir, "steps": steps, "variants": list(run.variants)}
    if steps in ckpt.complete_steps(os.path.join(run_dir, "checkpoints")):
        log(f"pretrain {run.run_id} ({', '.join(run.variants)}): finished before, skipped")
        return {**info, "status": "done", "seconds": 0.0}
    failed = [name for name in needs(grid, run) if (done or {}).get(run_id(grid.pretrain_overrides(
        grid.variant(name))), {}).get("status") != "done"]
    if failed:
        log(f"pretrain {run.run_id}: skipped, it reads the runs of {', '.join(failed)}, which did not finish")
        return {**info, "status": "failed", "error": f"needs the finished run of {', '.join(failed)}", "seconds": 0.0}
    start = time.perf_counter()
    try:
        train_dir, eval_dir = data.pretraining(run.overrides["data.mode"], int(run.overrides["data.seq_len"]), log)
        overrides = {**resolve_run_dirs(grid, run, workdir), "data.path": train_dir, "data.eval_path": eval_dir}
        config = configlib.load_config(grid.scale.config, _config_args(overrides))
        log(f"pretrain {run.run_id} ({', '.join(run.variants)}): {steps} steps -> {run_dir}")
        from bert_jax.train import pretrain

        with _output_to(os.path.join(run_dir, "pretrain.log")):
            final = pretrain.run(config, run_dir)
    except RUN_FAILURES as e:
        log(f"pretrain {run.run_id}: FAILED ({type(e).__name__}: {e})")
        _append_traceback(run_dir)
        return {**info, "status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    if steps not in ckpt.complete_steps(os.path.join(run_dir, "checkpoints")):
        # pretrain.run returns normally after SIGTERM/SIGINT, having saved its step: the grid stops here (the
        # next runs would otherwise start under a signal meant for the whole job) and resumes on the next call.
        log(f"pretrain {run.run_id}: preempted at step {int(final.get('step', -1))} after {seconds:.0f}s; "
            f"rerun the same command to resume")
        raise Preempted(run.run_id)
    log(f"pretrain {run.run_id}: {steps} steps in {seconds:.0f}s, final loss {final.get('loss', float('nan')):.3f}")
    return {**info, "status": "done", "seconds": seconds}


def _append_traceback(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "errors.log"), "a") as f:
        f.write(traceback.format_exc() + "\n")


def heldout_metric(run_dir: str, steps: int, metrics: tuple[str, ...]) -> dict:
    """The first of `metrics` that the pretraining run's eval reports at its final step (the last record written
    for it) as a one-seed cell."""
    path = os.path.join(run_dir, "metrics.jsonl")
    found = None
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record.get("split") == "eval" and record.get("step") == steps:
                    found = next(((m, float(record[m])) for m in metrics if m in record), found)
    if found is None:
        return {"status": "failed", "reason": f"no eval {' or '.join(metrics)} at step {steps} in {path}"}
    metric, value = found
    return {"status": "ok", "median": value, "min": value, "max": value, "spread": 0.0, "seeds": 1,
            "scores": [value], "metric": metric}


def heldout_perplexity(run_dir: str, steps: int) -> dict:
    """The pretraining run's held-out MLM perplexity at its final step."""
    return heldout_metric(run_dir, steps, ("mlm_perplexity",))


# The held-out ratio of each kind of run (model perplexity / unigram floor on the same targets,
# bert_jax.data.unigram): a run reports the ratio of each loss term it has; the first found is its cell.
RATIO_METRICS = ("mlm_perplexity_ratio", "ltr_perplexity_ratio", "plm_perplexity_ratio",
                 "span_corruption_token_perplexity_ratio", "generator_perplexity_ratio")


def cell_from_summary(summary: dict, metric: str) -> dict:
    """Median and spread over the seeds of the chosen learning rate, in percent (the papers' unit)."""
    metric = metric or summary["metric"]
    factor = 1.0 if summary["task"].startswith("squad") else 100.0  # SQuAD's official metrics are percentages
    best_lr = summary["best"]["learning_rate"]
    scores = [factor * float(s["dev"][metric]) for s in summary["settings"]
              if abs(s["setting"]["learning_rate"] - best_lr) <= 1e-12 * max(1.0, best_lr)]
    ordered = sorted(scores)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
    return {"status": "ok", "median": median, "min": ordered[0], "max": ordered[-1],
            "spread": 0.5 * (ordered[-1] - ordered[0]), "seeds": n, "scores": scores, "metric": metric,
            "learning_rate": best_lr, "selected_by": summary["metric"]}


@dataclasses.dataclass(frozen=True)
class FinetuneJob:
    label: str  # 'variant / column'
    argv: tuple[str, ...]  # `bert-jax finetune` arguments
    out: str
    metric: str


def plan_finetune(grid: Grid, variant: Variant, column: Column, run_dir: str, rid: str, workdir: str,
                  data: PreparedData) -> dict | FinetuneJob:
    """A finished cell (n/a, or done before with the same arguments) or the job that computes it."""
    from bert_jax.finetune.main import SUMMARY_FILE

    where = data.task(column.task)
    if isinstance(where, Unavailable):
        return {"status": "n/a", "reason": where.reason}
    assert isinstance(where, TaskData)
    out = finetune_dir(workdir, variant, column, rid)
    init = variant.init_prefix + run_dir + variant.init_suffix
    options = [x for k, v in sorted(finetune_options(variant, column).items()) for x in (f"--{k}", str(v))]
    argv = ["--task", column.task, "--data_dir", where.data_dir, "--init", init, "--workdir", out, *where.args,
            *grid.scale.finetune.args(column.task), *options]
    summary_path, job_path = os.path.join(out, SUMMARY_FILE), os.path.join(out, "job.json")
    if os.path.isfile(summary_path) and os.path.isfile(job_path):
        with open(job_path) as f:
            same_job = json.load(f) == argv
        if same_job:
            with open(summary_path) as f:
                return {**cell_from_summary(json.load(f), column.metric), "dir": out}
    return FinetuneJob(f"{variant.name} / {column.key}", tuple(argv), out, column.metric)


def _finish(job: FinetuneJob, summary: dict, seconds: float, log: Logger) -> dict:
    job_path = os.path.join(job.out, "job.json")
    with open(job_path + ".tmp", "w") as f:
        json.dump(list(job.argv), f)
    os.replace(job_path + ".tmp", job_path)  # written last: marks the summary as this job's
    cell = {**cell_from_summary(summary, job.metric), "dir": job.out}
    log(f"finetune {job.label}: {cell['metric']} median {cell['median']:.2f} [{cell['min']:.2f}, {cell['max']:.2f}] "
        f"over {cell['seeds']} seeds in {seconds:.0f}s")
    return cell


def _failed(job: FinetuneJob, reason: str, log: Logger) -> dict:
    log(f"finetune {job.label}: FAILED ({reason})")
    return {"status": "failed", "reason": reason, "dir": job.out}


def run_in_process(job: FinetuneJob, log: Logger) -> dict:
    from bert_jax.finetune import main as finetune_main

    start = time.perf_counter()
    log(f"finetune {job.label}: {job.argv[1]} -> {job.out}")
    try:
        args = finetune_main.parser().parse_args(list(job.argv))
        with _output_to(os.path.join(job.out, "finetune.log")):
            summary = finetune_main.run(args)
    except (*RUN_FAILURES, SystemExit) as e:
        _append_traceback(job.out)
        return _failed(job, f"{type(e).__name__}: {e}", log)
    return _finish(job, summary, time.perf_counter() - start, log)


def run_in_subprocess(job: FinetuneJob, log: Logger) -> dict:
    """`bert-jax finetune` in its own process (it trains on one device): several run side by side, one per core."""
    from bert_jax.finetune.main import SUMMARY_FILE

    # The same environment (device count included): a checkpoint saved on N CPU devices is restored by
    # `bert_jax.finetune.init` only on N devices (orbax: "Topology mismatch detected").
    env = dict(os.environ)
    os.makedirs(job.out, exist_ok=True)
    start = time.perf_counter()
    log(f"finetune {job.label}: {job.argv[1]} -> {job.out} (subprocess)")
    log_path = os.path.join(job.out, "finetune.log")
    with open(log_path, "a") as out:
        code = subprocess.run([sys.executable, "-m", "bert_jax.cli", "finetune", *job.argv], stdout=out,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        with open(log_path) as f:
            tail = [line.strip() for line in f if line.strip()][-1:]
        return _failed(job, f"exit {code}: {tail[0] if tail else ''} (see {log_path})", log)
    with open(os.path.join(job.out, SUMMARY_FILE)) as f:
        return _finish(job, json.load(f), time.perf_counter() - start, log)


def run_jobs(jobs: dict, workers: int, log: Logger) -> dict:
    """{key: FinetuneJob} -> {key: cell}; `workers` > 1 runs that many subprocesses at once."""
    if workers <= 1:
        return {key: run_in_process(job, log) for key, job in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(run_in_subprocess, job, log) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def run_grid(grid: Grid, workdir: str, data: PreparedData, log: Logger, workers: int = 1) -> dict:
    """Everything for one grid; returns the results record that tables.py and plots.py write."""
    started, load_start = datetime.datetime.now(), os.getloadavg()
    wall = time.perf_counter()
    runs = pretraining_runs(grid)
    run_of = {name: r for r in runs for name in r.variants}
    log(f"{grid.name} at scale {grid.scale.name}: {len(grid.variants)} variants, {len(runs)} pretraining runs, "
        f"{len(grid.columns)} columns; load average {load_start[0]:.1f}")
    pretrain_status: dict[str, dict] = {}
    for r in runs:  # in order: a run reading another's result (a teacher) comes after it
        pretrain_status[r.run_id] = pretrain_run(grid, r, workdir, data, log, pretrain_status)
    planned, jobs = {}, {}
    for variant in grid.variants:
        run = run_of[variant.name]
        status = pretrain_status[run.run_id]
        for column in grid.columns:
            key = (variant.name, column.key)
            if status["status"] != "done":
                planned[key] = {"status": "failed", "reason": f"pretraining failed: {status.get('error', '')}"}
            elif column.task == PERPLEXITY:
                planned[key] = heldout_perplexity(status["dir"], status["steps"])
            elif column.task == HELDOUT_RATIO:
                planned[key] = ({"status": "n/a", "reason": "random init: ~1 by construction"} if variant.random_init
                                else heldout_metric(status["dir"], status["steps"], RATIO_METRICS))
            else:
                planned[key] = plan_finetune(grid, variant, column, status["dir"], run.run_id, workdir, data)
                if isinstance(planned[key], FinetuneJob):
                    jobs[key] = planned.pop(key)
    done = sum(c.get("status") == "ok" for c in planned.values())
    log(f"{grid.name}: {len(jobs)} fine-tuning jobs to run ({workers} at a time), {done} cells done before")
    planned.update(run_jobs(jobs, workers, log))
    rows = []
    for variant in grid.variants:
        run = run_of[variant.name]
        cells = {c.key: {**planned[(variant.name, c.key)], "paper": paper_number(grid.name, variant.name, c.key)}
                 for c in grid.columns}
        layers, hidden, heads = grid.scale.resize(variant.size)
        rows.append({"variant": variant.name, "model": f"{layers}/{hidden}/{heads}",
                     "paper_model": "/".join(map(str, variant.size)), "pretraining_run": run.run_id,
                     "shares_pretraining_with": variant.shares_pretraining_with, "init_step": variant.init_step,
                     "series": variant.series, "pretrain": variant.pretrain, "finetune": variant.finetune,
                     "random_init": variant.random_init, "pretraining_flops": variant.pretraining_flops,
                     "cells": cells})
    return {
        "grid": grid.name, "scale": grid.scale.name, "title": grid.title, "source": grid.source,
        "date": started.strftime("%Y-%m-%d %H:%M"), "header": header(grid, data),
        "columns": [{"key": c.key, "task": c.task, "metric": c.metric, "note": c.note,
                     "options": c.finetune} for c in grid.columns],
        "rows": rows, "paper_claims": list(PAPER_CLAIMS.get(grid.name, ())), "notes": list(grid.notes),
        "floor": grid.floor,
        "pretraining": list(pretrain_status.values()),
        "timing": {"wall_seconds": time.perf_counter() - wall, "load_average_start": list(load_start),
                   "load_average_end": list(os.getloadavg()), "cpu_count": os.cpu_count()},
    }


def header(grid: Grid, data: PreparedData | None) -> dict:
    s, p = grid.scale, grid.scale.pretrain
    protocol = dataclasses.asdict(s.finetune)
    return {"scale": s.name, "size_rule": s.size_rule, "pretraining_config": s.config,
            "steps": s.steps, "batch_size": p.get("train.global_batch_size"), "seq_len": p.get("data.seq_len"),
            "learning_rate": p.get("optimizer.learning_rate"), "finetune": protocol,
            "seeds": s.finetune.seeds, "spread": "half the min-max range over seeds of the chosen learning rate",
            "data": data.describe() if data is not None else {}}
