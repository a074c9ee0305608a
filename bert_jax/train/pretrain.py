"""`bert-jax pretrain`: one linear script. Config -> mesh -> data -> sharded state -> steps -> checkpoints.

    bert-jax pretrain --config configs/pretrain.py:tiny --workdir /tmp/run [--config.train.steps=100 ...]

Resumes automatically from the newest complete checkpoint in `<workdir>/checkpoints`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bert_jax import configlib, dirlock, outputs
from bert_jax.compile_cache import enable_compile_cache
from bert_jax.data.masking import example_fields, num_predictions
from bert_jax.data.pipeline import make_eval_iterator, make_pretrain_iterator
from bert_jax.data.unigram import UnigramFloor, accumulate, add_perplexities
from bert_jax.model.pretraining import PretrainModel, final_layer_positions
from bert_jax.objectives.base import ObjectiveSet
from bert_jax.parallel.sharding import make_mesh
from bert_jax.train import checkpoint as ckpt
from bert_jax.train import strategy as strategy_lib
from bert_jax.train.flops import train_flops_per_step
from bert_jax.train.metrics_writer import MetricsWriter
from bert_jax.train.optimizer import make_optimizer
from bert_jax.train.state import create_sharded_state, example_batch
from bert_jax.train.run_setup import (check_train, masking_config, optimizer_config, prepare_data,
                                     read_train_manifest, resolve_model, setup_distributed, speed_config)
from bert_jax.train.step import make_eval_step, make_train_step, summarize
from bert_jax.weights import load_weights

log = logging.getLogger("bert_jax.pretrain")
# Fields a checkpoint must agree on to be resumed (or used by init_from) by this run.
COMPATIBLE_FIELDS = ("model.vocab_size", "model.hidden_size", "model.num_layers", "model.num_heads",
                     "model.intermediate_size", "model.embedding_size", "model.share_layers",
                     "model.position_embedding", "model.activation", "model.norm", "objectives")


class NonFiniteLossError(RuntimeError):
    pass


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def load_init_params(path: str, abstract_params: Any, scan_layers: bool) -> Any:
    """This run's params from `train.init_from` (phase two, continued pretraining): another run's checkpoint, with
    the networks only pretraining uses, or any other source `bert_jax.weights.load_weights` reads."""
    params = load_weights(path, "train.init_from", scan_layers=scan_layers, pretraining_networks=True).params
    if jax.tree.structure(params) != jax.tree.structure(abstract_params):
        raise ValueError(f"train.init_from={path!r}: its params ({', '.join(sorted(params))}) do not match this "
                         f"model's tree ({', '.join(sorted(abstract_params))}); check model.* and objectives "
                         "against the source's config")
    return jax.tree.map(lambda a, p: jnp.asarray(p, a.dtype), abstract_params, params)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train (or resume) the run in `workdir`; returns the last step's metrics. A stop signal (SIGTERM, Ctrl-C)
    makes it save the current step and return; during start-up it returns before training anything."""
    check_train(config)
    opt_cfg, speed = optimizer_config(config), speed_config(config)  # checked before anything starts
    setup_distributed(config)
    outputs.writable_directory(workdir, "--workdir")  # read-only, not a directory, ...: one line, before any work
    # Signals caught from here on are stop requests (the CLI installed the same handlers before importing jax).
    preempted = ckpt.install_preemption_handler()
    try:
        with _workdir_lock(workdir):
            return _run(config, workdir, opt_cfg, speed, preempted)
    finally:
        preempted.uninstall()


@contextlib.contextmanager
def _workdir_lock(workdir: str):
    """One writer per workdir. Process 0 holds the lock for every process of the run (they share the workdir);
    all learn whether it got it, or the others would wait for process 0 in their first collective."""
    fd, error = None, None
    if jax.process_index() == 0:
        try:
            fd = dirlock.acquire(workdir, "--workdir", "bert-jax pretrain")
        except dirlock.DirectoryInUse as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        ok = np.asarray(multihost_utils.process_allgather(np.array([error is None], np.int32))).ravel()
        if error is None and not ok.all():
            error = dirlock.DirectoryInUse(f"--workdir {workdir} is in use by another writer (process 0's log names "
                                           "it); wait for it to finish or pass another --workdir")
    if error is not None:
        raise error
    try:
        yield
    finally:
        dirlock.release(fd)


def _stopped_before_training(workdir: str) -> dict[str, float]:
    done = ckpt.complete_steps(os.path.join(workdir, "checkpoints"))
    _say(f"stopped by signal before training: nothing new to save (newest checkpoint: "
         f"{'step ' + str(done[-1]) if done else 'none'}); start again to resume")
    return {"step": float(done[-1] if done else 0)}


def _run(config: ml_collections.ConfigDict, workdir: str, opt_cfg, speed, preempted) -> dict[str, float]:
    # ---- objectives and data: what the run trains on decides the model's vocab and the masking
    os.makedirs(workdir, exist_ok=True)
    if preempted():
        return _stopped_before_training(workdir)
    objectives = ObjectiveSet.parse(config.objectives, config.objective_options.to_dict())
    train_dir, eval_dir = prepare_data(config, objectives, workdir)
    if preempted():  # building the data can take a while
        return _stopped_before_training(workdir)
    manifest = read_train_manifest(train_dir, eval_dir)
    if manifest["mode"] not in objectives.data_modes:
        raise ValueError(f"data {train_dir} was built in mode {manifest['mode']!r}, objectives {config.objectives!r} "
                         f"need one of {objectives.data_modes}; rebuild it with `bert-jax make-data --mode ...`")
    model_cfg = resolve_model(config, manifest, objectives)
    masking = masking_config(config, objectives)
    t = config.train
    seq_len = int(manifest["seq_len"])
    predictions = num_predictions(masking, seq_len) if masking.kind != "none" else 1

    # ---- model, optimizer and the state, created already sharded over the mesh
    optimizer, schedule = make_optimizer(opt_cfg)
    model = PretrainModel(model_cfg, objectives, speed)
    frozen = objectives.load_frozen()  # e.g. a distillation teacher: an input to the steps, never trained

    mesh = make_mesh(config.mesh.to_dict())
    dp = strategy_lib.data_parallel_count(t.strategy, mesh)
    if t.global_batch_size % dp:
        raise ValueError(f"train.global_batch_size={t.global_batch_size} is not divisible by the {dp} data-parallel "
                         f"devices; use a multiple of {dp}")
    if t.global_batch_size % (dp * opt_cfg.grad_accum_steps):
        raise ValueError(f"train.global_batch_size={t.global_batch_size} must divide into optimizer.grad_accum_steps="
                         f"{opt_cfg.grad_accum_steps} micro-batches of a multiple of {dp} rows")
    init_batch = {**example_batch(t.global_batch_size, seq_len, predictions),
                  **example_fields(masking, t.global_batch_size, seq_len)}
    state, abstract, shardings = create_sharded_state(model, optimizer, init_batch, mesh, t.seed)

    # ---- resume (state and the data iterator's position) or initialise from another run
    manager = ckpt.open_manager(os.path.join(workdir, "checkpoints"), keep_last=t.keep_checkpoints,
                                async_save=t.async_checkpoints)
    restored = ckpt.restore_latest(manager, ckpt.abstract_target(abstract, shardings))
    data_state = None
    if restored is not None:
        ckpt.check_compatible(restored.config, config.to_dict(), COMPATIBLE_FIELDS)
        if restored.manifest and restored.manifest.get("vocab_fingerprint") != manifest.get("vocab_fingerprint"):
            raise ValueError(f"checkpoint {restored.path} was trained on data with vocab fingerprint "
                             f"{restored.manifest.get('vocab_fingerprint')}, {train_dir} has "
                             f"{manifest.get('vocab_fingerprint')}; use the same vocab or a new workdir")
        state, data_state = restored.state, restored.data_iter
        _say(f"resumed from {restored.path} at step {int(state.step)}")
    elif t.init_from:
        params = load_init_params(t.init_from, abstract.params, speed.scan_layers)
        params = jax.device_put(params, shardings.params)
        state = state.replace(params=params, opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params))
        _say(f"initialised params from {t.init_from}")

    # ---- input pipeline: this process's slice of every global batch
    process_index, process_count = jax.process_index(), jax.process_count()
    data_kwargs = dict(expected_vocab_fingerprint=manifest.get("vocab_fingerprint"), vocab_size=model_cfg.vocab_size,
                       max_positions=model_cfg.max_position_embeddings, process_index=process_index,
                       process_count=process_count, num_threads=config.data.num_threads)
    train_iter = make_pretrain_iterator(train_dir, t.global_batch_size, t.seed, masking, packing=config.data.packing,
                                        **data_kwargs)
    if data_state is not None:
        train_iter.set_state(data_state)
    if eval_dir:  # opened once now so that unusable eval data fails before the first step
        make_eval_iterator(eval_dir, t.global_batch_size, masking, mask_seed=t.seed, **data_kwargs)
    if jax.process_index() == 0:  # after the checks: a refused resume leaves the run's config.json
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        _say(f"config:\n{config}")

    # ---- steps: the pure functions (train/step.py), compiled for the strategy (the one pmap/mesh seam)
    axis = strategy_lib.axis_name(t.strategy)
    train_step = make_train_step(model, objectives, optimizer, schedule, opt_cfg.grad_accum_steps, axis_name=axis,
                                 skip_nonfinite=t.on_nonfinite == "skip")
    strategy = strategy_lib.make_strategy(t.strategy, train_step, make_eval_step(model, objectives, axis_name=axis),
                                          mesh, shardings, frozen)
    state = strategy.place(state)

    # ---- held-out evaluation, against the unigram floor.
    # Data built before make-data recorded token counts has no floor; the eval then reports perplexity alone.
    floor = UnigramFloor.from_manifest(manifest, train_dir, model_cfg.vocab_size) if "token_counts" in manifest \
        else None

    def evaluate(params) -> dict[str, float]:
        if not eval_dir:
            return {}
        it = make_eval_iterator(eval_dir, t.global_batch_size, masking, mask_seed=t.seed, **data_kwargs)
        totals: dict[str, float] = {"examples": 0.0}
        for i, batch in enumerate(it):
            if t.eval_batches and i >= t.eval_batches:
                break
            accumulate(totals, strategy.metrics(strategy.evaluate(params, batch)), batch, floor)
        return add_perplexities(summarize(totals))

    # ---- the loop: step, log one step late, evaluate, checkpoint, stop on preemption
    if preempted():  # before the first step (the loop would train one more)
        return _stopped_before_training(workdir)
    start = int(jax.device_get(strategy.read(state).step))
    # Steps after `start` that an earlier attempt logged are trained again: their old lines go.
    writer = MetricsWriter(workdir, enabled=process_index == 0, resume_step=start)
    flops = train_flops_per_step(model_cfg, t.global_batch_size, seq_len, predictions,
                                 final_layer_positions(objectives.objectives, init_batch, speed), objectives)
    tokens_per_step = t.global_batch_size * seq_len
    progress = None
    if t.progress_bar and process_index == 0:
        from tqdm import tqdm
        progress = tqdm(total=t.steps, initial=start, desc="pretrain", dynamic_ncols=True, file=sys.stdout)
    config_dict = json.loads(config.to_json_best_effort())

    def save(step: int, s) -> None:
        ckpt.save_checkpoint(manager, step, state=strategy.read(s), data_iter=train_iter.get_state(),
                             config=config_dict, manifest=manifest)

    last: dict[str, float] = {}
    pending = None  # metrics of the previous step, fetched one step late so the host never stalls the device
    window_start, window_steps = time.perf_counter(), 0
    skipped = 0

    def flush(pending_step, metrics) -> dict[str, float]:
        nonlocal last
        host = strategy.metrics(metrics)
        if float(host["nonfinite"]) > 0:
            if t.on_nonfinite == "stop":
                # Named only once its files match their checksums: a damaged step is never "good".
                good = ckpt.last_verified_step(os.path.join(workdir, "checkpoints"))
                raise NonFiniteLossError(
                    f"loss or gradient is not finite at step {pending_step}; stopping. The last good checkpoint is "
                    f"{'none' if good is None else 'step ' + str(good)} in {workdir}/checkpoints (lower the learning "
                    "rate, or set train.on_nonfinite=skip)")
            log.warning("skipped the update of step %d: loss or gradient not finite", pending_step)
        summary = summarize(host)
        last = summary
        return summary

    def log_step(pending_step: int, metrics, in_flight: int, always: bool) -> None:
        """Fetch one step's metrics (each step once) and write its line if it is due. `in_flight`: steps dispatched
        after it, whose time belongs to the next window."""
        nonlocal skipped, window_start, window_steps
        summary = flush(pending_step, metrics)
        skipped += int(summary["nonfinite"])
        summary["skipped_steps"] = float(skipped)
        if not (always or pending_step % t.log_every == 0 or pending_step == t.steps):
            return
        done, elapsed = window_steps - in_flight, time.perf_counter() - window_start
        rate = tokens_per_step * done / max(elapsed, 1e-9)
        summary.update(tokens_per_second=rate, step_time=elapsed / max(done, 1))
        if t.peak_tflops:
            summary["mfu"] = flops * done / max(elapsed, 1e-9) / (t.peak_tflops * 1e12 * jax.device_count())
        writer.write(pending_step, summary)
        if progress is not None:
            progress.set_postfix(loss=f"{summary['loss']:.3f}", tok_s=f"{rate:,.0f}")
        window_start, window_steps = time.perf_counter(), in_flight

    step = start
    try:
        while step < t.steps:
            batch = next(train_iter)
            state, metrics = strategy.train(state, batch)
            step += 1
            window_steps += 1
            if pending is not None:
                log_step(*pending, in_flight=1, always=False)
            pending = (step, metrics)
            if progress is not None:
                progress.update(1)
            if t.eval_every and step % t.eval_every == 0:
                eval_metrics = evaluate(state.params)  # replicated under pmap, sharded under the mesh
                if eval_metrics:
                    writer.write(step, eval_metrics, prefix="eval")
                    _say(f"step {step} eval " + " ".join(f"{k}={v:.4f}" for k, v in sorted(eval_metrics.items())))
            stop = preempted(step)
            if ckpt.should_save(step, every=t.checkpoint_every, total_steps=t.steps, preempted=stop):
                # The step's line goes out before its checkpoint, so a resume from it never lacks that line; and a
                # non-finite step raises here (stop mode), before its state is saved.
                log_step(*pending, in_flight=0, always=stop)
                pending = None
                save(step, state)
            if stop:
                _say(f"preempted: saved step {step}, exiting")
                break
        if pending is not None:
            log_step(*pending, in_flight=0, always=True)
    finally:
        # A failed save raises here; the metrics and tensorboard files are closed (flushed) all the same.
        try:
            ckpt.wait_for_saves(manager)
        finally:
            try:
                writer.close()
            finally:
                if progress is not None:
                    progress.close()
    return {"step": float(step), **last}


def _one_line(error: BaseException) -> str:
    """A message listing items one per line (e.g. differing checkpoint paths) as one line."""
    first, *rest = str(error).splitlines() or [""]
    return " ".join([first, "; ".join(line.strip() for line in rest if line.strip())]).strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bert-jax pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any config field is overridden by --config.a.b=value, e.g. "
                                            "--config.train.steps=100 (an unknown key is an error naming it).")
    parser.add_argument("--config", required=True, help="configs/<file>.py[:variant], e.g. configs/pretrain.py:tiny")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and the resolved config go here")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse reads --config and --workdir; the --config.a.b=value overrides it leaves go to config_flags.
    args, overrides = _parser().parse_known_args(argv)
    try:
        config = configlib.load_config(args.config, overrides)
    except configlib.ConfigError as e:
        print(f"bert-jax pretrain: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:  # checked first: a config refused here leaves no workdir behind, and the log below goes into it
        check_train(config)
        optimizer_config(config), speed_config(config)
        outputs.writable_directory(args.workdir, "--workdir")
    except (ValueError, outputs.OutputError) as e:
        print(f"bert-jax pretrain: {e}", file=sys.stderr)
        return outputs.EXIT_BAD_INPUT
    enable_compile_cache()  # a restarted or repeated run loads its compiled steps ($BERT_JAX_COMPILE_CACHE)
    if "://" in args.workdir:  # a bucket: libraries' output stays on the terminal
        return _run_and_report(config, args.workdir, sys.stderr, None)
    log_path = os.path.join(args.workdir, "logs", "pretrain.log")
    with outputs.library_output_to(log_path) as terminal:
        return _run_and_report(config, args.workdir, terminal, log_path)


def _run_and_report(config: ml_collections.ConfigDict, workdir: str, terminal, log_path: str | None) -> int:
    """Run; each failure is one line on `terminal` with its exit code (the libraries' tracebacks are in the log)."""
    details = f" (details in {log_path})" if log_path else ""

    def fail(e: BaseException, code: int, suffix: str = "") -> int:
        print(f"bert-jax pretrain: {_one_line(e)}{suffix}", file=terminal, flush=True)
        return code

    try:
        final = run(config, workdir)
    except NonFiniteLossError as e:
        return fail(e, 3)
    except (ValueError, FileNotFoundError) as e:  # bad input: one line naming it and the fix, no traceback
        return fail(e, outputs.EXIT_BAD_INPUT)
    except (ckpt.CheckpointSaveError, outputs.WriteError) as e:  # e.g. disk full; the message names what is kept
        return fail(e, outputs.EXIT_WRITE_FAILED, details)
    except OSError as e:  # another file the run could not read or write
        code = outputs.EXIT_WRITE_FAILED if outputs.is_disk_full(e) else outputs.EXIT_BAD_INPUT
        return fail(ValueError(f"{e.filename or 'a file'}: {outputs.reason(e)}; {outputs.fix(e)}"), code, details)
    _say("final: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))
    return 0
