"""Full pretraining step (MLM + NSP, forward + backward + AdamW) of bert_jax against HF peers, in one run.

    python benchmarks/train_step.py [--shapes mini,base] [--steps 10] [--warmup 2] [--peers torch,flax]
    python benchmarks/train_step.py --quick                 # tiny shape, 3 steps, torch peer only (smoke test)
    python benchmarks/train_step.py --memory-sweep          # compile-only: base at seq 512, per remat policy
    python benchmarks/train_step.py --variant scan_layers=True --variant remat_policy=full   # extra rows
    python benchmarks/train_step.py --shapes experiments --variant recipe   # the models the grids train, as they train
    python benchmarks/train_step.py --shapes mini,small,medium,base --seqs 128,256,512   # cost as work grows

Every framework gets the same inputs (written once to an .npz): random token ids, the last ~10% of each row
padding (input_mask 0), round(0.15 * real tokens) masked positions ([MASK] in input_ids), NSP labels; fp32;
dropout 0.1; AdamW (lr 1e-4, wd 0.01, eps 1e-6, no clipping, constant rate). Peers run in subprocesses
(_peer_torch.py in this venv; _peer_flax.py in a transformers<5 venv made once and cached) and every
framework is set up before timing starts, then timed in alternating blocks (A, B, C, A, B, C) because this
machine's speed swings between runs. tokens/s counts all batch * seq positions, padding included (as the
issue's figures do). MFU uses one model-FLOPs count for everyone (bert_jax.train.flops: what the loss needs, the
MLM head at the max_predictions positions and the last layer at those and [CLS]) against a jnp.dot matmul peak
measured in the same run (the best of a measurement before and one after the timed blocks).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import (CLS, MASK, OPTIMIZER, PAD, SEP, SHAPE_GROUPS, SHAPES, TOKENS_DEFINITION, BenchmarkError,  # noqa: E402,F401
                           Runner, Shape, at_seq, make_inputs)
from _bench_ours import compile_bert_jax, memory_sweep, model_config, start_bert_jax, variant_name  # noqa: E402,F401

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
DEFAULT_PEER_VENV = os.path.join(os.path.expanduser("~"), ".cache", "bert_jax_bench", "flax-peer-venv")


def start_peer(framework: str, python: str, shape: Shape, seed: int, inputs_path: str, threads: int,
               log_dir: str, peer_xla_flags: str = "") -> Runner:
    """A peer subprocess, set up (model built, compiled where it compiles) and waiting for 'run N'."""
    script = os.path.join(HERE, f"_peer_{framework}.py")
    spec = dict(dataclasses.asdict(shape), seed=seed, threads=threads, **OPTIMIZER)
    stderr = open(os.path.join(log_dir, f"{framework}-{shape.name}.stderr"), "w+")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if peer_xla_flags:
        env["XLA_FLAGS"] = peer_xla_flags
    env["TRANSFORMERS_VERBOSITY"] = "error"
    proc = subprocess.Popen([python, script, inputs_path, json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)

    def read_event(until: str) -> dict:
        events = {}
        while True:
            line = proc.stdout.readline()
            if not line:
                stderr.seek(0)
                tail = [s for s in stderr.read().splitlines() if s.strip()][-1:] or ["no output"]
                raise RuntimeError(f"{framework} peer exited ({proc.wait()}): {tail[0][:300]}")
            if line.startswith("{"):
                event = json.loads(line)
                events.update(event)
                if event.get("event") == until:
                    return events

    def run(n: int):
        proc.stdin.write(f"run {n}\n")
        proc.stdin.flush()
        reply = read_event("times")
        for key in ("loss0", "mlm_loss0", "max_rss_mib"):
            if key in reply:
                info[key] = reply[key]
        return reply["times"], reply["loss"]

    def close():
        if proc.poll() is None:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.close()
                proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
        stderr.close()

    try:
        info = read_event("ready")
    except Exception:
        close()
        raise
    info.pop("event", None)
    return Runner(framework, info, run, close)


def matmul_peak_gflops(sizes: tuple[int, ...], repeats: int) -> dict:
    """Best fp32 jnp.dot rate over `repeats` runs for each size; the max over sizes is the MFU peak."""
    import jax
    import jax.numpy as jnp

    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        dot = jax.jit(jnp.dot)
        dot(a, b).block_until_ready()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            dot(a, b).block_until_ready()
            best = min(best, time.perf_counter() - start)
        out[str(n)] = 2.0 * n ** 3 / best / 1e9
    return out


def time_shape(shape: Shape, args, peer_python: dict, log_dir: str) -> list[dict]:
    """Set up every framework, warm it up, then time `steps` steps each in alternating blocks."""
    from bert_jax.train.flops import train_flops_per_step

    inputs = make_inputs(shape, args.seed)
    inputs_path = os.path.join(log_dir, f"inputs-{shape.name}.npz")
    np.savez(inputs_path, **inputs)
    # What the loss needs: the MLM head at the masked positions, the last layer at those and [CLS].
    model_flops = train_flops_per_step(model_config(shape, {}), shape.batch, shape.seq, shape.max_predictions,
                                       shape.max_predictions + 1)
    executed_peer = train_flops_per_step(model_config(shape, {}), shape.batch, shape.seq, shape.seq)
    starters = [(variant_name(o), lambda o=o: start_bert_jax(shape, o, args.seed, inputs))
                for o in [{}] + args.variants]
    for peer in args.peers:
        starters.append((peer, lambda peer=peer: start_peer(peer, peer_python[peer], shape, args.seed, inputs_path,
                                                            args.threads, log_dir, args.peer_xla_flags)))
    rows = {name: {"shape": shape.name, "framework": name, "status": "unavailable"} for name, _ in starters}
    runners = {}  # name -> (runner, timed step seconds, per-block medians)

    def fail(name: str, error: Exception) -> None:  # a framework that cannot run is a row saying why
        rows[name]["reason"] = f"{type(error).__name__}: {error}"[:400]
        if name in runners:
            runners.pop(name)[0].close()

    for name, start in starters:
        if name in peer_python and peer_python[name] is None:
            rows[name]["reason"] = args.peer_reasons[name]
            continue
        try:
            print(f"[{shape.name}] setting up {name} ...", flush=True)
            runners[name] = (start(), [], [])
            first_times, _ = runners[name][0].run(1)
            runners[name][0].info["first_step_s"] = first_times[0]
            if args.warmup > 1:
                runners[name][0].run(args.warmup - 1)
        except Exception as e:
            fail(name, e)
    per_block = [args.steps // args.blocks + (i < args.steps % args.blocks) for i in range(args.blocks)]
    last_loss = {}
    for block, n in enumerate(per_block):
        for name in list(runners):
            runner, times, medians = runners[name]
            try:
                got, last_loss[name] = runner.run(n)
            except Exception as e:
                fail(name, e)
                continue
            times.extend(got)
            medians.append(float(np.median(got)))
            print(f"[{shape.name}] block {block + 1}/{args.blocks} {name}: median {medians[-1]:.3f}s/step", flush=True)
    if args.profile:
        profile_bert_jax(shape, runners, args.profile, args.profile_steps)
    for name, (runner, times, medians) in runners.items():
        runner.close()
        median = float(np.median(times))
        rows[name].update({"status": "ok", "tokens_per_step": shape.tokens, "tokens_per_s": shape.tokens / median,
                           "step_time_s_median": median, "step_times_s": times, "block_medians_s": medians,
                           "model_flops_per_step": model_flops,
                           "executed_flops_per_step": executed_peer if name in ("torch", "flax") else model_flops,
                           "loss_last": last_loss[name],
                           **runner.info})
    rows = list(rows.values())
    base = next((r for r in rows if r["framework"] == "bert_jax" and r["status"] == "ok"), None)
    for row in rows:
        if base is not None and row["status"] == "ok" and row is not base:
            row["bert_jax_speedup"] = base["tokens_per_s"] / row["tokens_per_s"]
    return rows


def profile_bert_jax(shape: Shape, runners: dict, out_dir: str, steps: int) -> None:
    """`steps` more steps of each warm bert_jax row under `jax.profiler.trace`: one TensorBoard/Perfetto trace
    per row in out_dir/<shape>-<row>/ (peers are not traced; they run in other processes or frameworks)."""
    import jax

    for name, (runner, _, _) in runners.items():
        if not name.startswith("bert_jax"):
            continue
        trace_dir = os.path.join(out_dir, f"{shape.name}-{name}")
        os.makedirs(trace_dir, exist_ok=True)
        with open(os.path.join(trace_dir, "step.hlo.txt"), "w") as f:  # op names -> source (profile_summary.py)
            f.write(runner.hlo_text())
        with jax.profiler.trace(trace_dir):
            runner.run(steps)
        print(f"[{shape.name}] {name}: profiler trace of {steps} steps -> {trace_dir}", flush=True)


def environment() -> dict:
    import flax
    import jax
    import optax
    versions = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                "numpy": np.__version__, "python": platform.python_version()}
    try:
        import torch
        import transformers
        versions.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    device = jax.devices()[0]
    processor = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        processor = names[0] if names else processor
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "device": f"{device.platform}: {device.device_kind} ({processor})", "processor": processor,
            "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()), "versions": versions,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def pipeline_vs_step(shape: Shape, rows: list[dict], batches: int) -> dict:
    """The masking input pipeline (bert_jax.data.pipeline, MLM 15%, one host thread) at this shape's batch and
    seq against the bert_jax step's consumption in the same run: it must deliver >= 10x the batches/s."""
    import tempfile

    from pipeline_bench import measure_pipeline, write_random_dataset

    from bert_jax.data.masking import MaskingConfig

    ours = next((r for r in rows if r["framework"] == "bert_jax" and r["status"] == "ok"), None)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_dataset(os.path.join(tmp, "data"), num_examples=max(4 * shape.batch * batches, 2000),
                                    seq_len=shape.seq, vocab_size=shape.vocab)
        measured = measure_pipeline(data, shape.batch, shape.seq, steps=batches,
                                    masking=MaskingConfig(max_predictions=shape.max_predictions))
    consumed = 1.0 / ours["step_time_s_median"] if ours else float("nan")
    return {"shape": shape.name, "pipeline_batches_per_s": measured["batches_per_s"],
            "step_batches_per_s": consumed, "ratio": measured["batches_per_s"] / consumed, "detail": measured}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'shape':<11} {'framework':<44} {'tok/s':>8} {'step s':>7} {'MFU':>6} {'x(ours)':>7} "
          f"{'compile s':>9} {'temp MiB':>8} {'loss0':>7}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['shape']:<11} {r['framework']:<44} unavailable: {r['reason']}")
            continue
        temp = (r.get("memory") or {}).get("temp_size_in_bytes")
        print(f"{r['shape']:<11} {r['framework']:<44} {r['tokens_per_s']:>8.0f} {r['step_time_s_median']:>7.3f} "
              f"{r['mfu']:>6.1%} {r.get('bert_jax_speedup', 1.0):>7.2f} "
              f"{r.get('compile_s', float('nan')):>9.2f} {temp / 2**20 if temp else float('nan'):>8.1f} "
              f"{r.get('loss0', float('nan')):>7.3f}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="mini,base",
                   help=f"comma-separated, from {sorted(SHAPES)}, or 'experiments' for every x-* shape (the grids' models)")
    p.add_argument("--seqs", default="",
                   help="comma-separated sequence lengths: each shape at each, same tokens per step (e.g. 128,256,512)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per framework (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first includes compilation)")
    p.add_argument("--blocks", type=int, default=2, help="timed steps are split into this many alternating blocks")
    p.add_argument("--peers", default="torch,flax", help="comma-separated from torch,flax; '' for none")
    p.add_argument("--peer-venv", default=DEFAULT_PEER_VENV, help="virtualenv for the Flax peer (made if missing)")
    p.add_argument("--variant", dest="variants", action="append", default=[],
                   help="extra bert_jax row with ModelConfig or SpeedConfig overrides, e.g. scan_layers=True,remat_policy=dots; "
                        "'recipe' for the grids' model settings (configs/pretrain.py:mini_text)")
    p.add_argument("--peer-xla-flags", default="",
                   help="XLA_FLAGS for the peers (default none; e.g. the flags bert_jax adds, for a like-for-like run)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="", metavar="DIR",
                   help="after timing, trace more steps of each bert_jax row with jax.profiler into DIR")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--matmul-sizes", default="2048,4096")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_step*.json)")
    p.add_argument("--quick", action="store_true", help="tiny shape, 3 steps, torch peer only (1 thread)")
    p.add_argument("--memory-sweep", action="store_true", help="compile-only remat policy sweep, nothing timed")
    p.add_argument("--sweep-seq", type=int, default=512)
    p.add_argument("--sweep-batch", type=int, default=8)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.steps, args.warmup, args.blocks, args.peers = "tiny", 3, 1, 1, "torch"
        args.matmul_sizes = "1024"
        args.threads = 1  # tiny ops: a second OpenMP thread only adds barrier waits on a busy machine
    args.shapes = [name for s in args.shapes.split(",") if s for name in SHAPE_GROUPS.get(s, [s])]
    args.peers = [s for s in args.peers.split(",") if s]
    bad = [s for s in args.shapes if s not in SHAPES]
    if bad:
        raise BenchmarkError(f"--shapes {','.join(bad)} unknown; choose from {','.join(SHAPES)}")
    if args.seqs:
        try:
            seqs = [int(s) for s in args.seqs.split(",") if s]
        except ValueError:
            raise BenchmarkError(f"--seqs {args.seqs}: write comma-separated integers, e.g. 128,256,512") from None
        if not seqs or min(seqs) < 8 or max(seqs) > 512:
            raise BenchmarkError(f"--seqs {args.seqs}: lengths from 8 to 512 (BERT's position table)")
        swept = [at_seq(SHAPES[name], seq) for name in args.shapes for seq in seqs]
        SHAPES.update({shape.name: shape for shape in swept})
        args.shapes = [shape.name for shape in swept]
    bad = [s for s in args.peers if s not in ("torch", "flax")]
    if bad:
        raise BenchmarkError(f"--peers {','.join(bad)} unknown; choose from torch,flax")
    if args.steps < 1 or args.blocks < 1 or args.warmup < 1 or args.blocks > args.steps:
        raise BenchmarkError("--steps, --blocks and --warmup must be >= 1, with --blocks <= --steps")
    args.variants = [_parse_overrides(v) for v in args.variants]
    args.matmul_sizes = tuple(int(s) for s in args.matmul_sizes.split(","))
    return args


def recipe_overrides() -> dict:
    """`--variant recipe`: the model settings the grids train with beyond their size, read from the config they use
    (configs/pretrain.py:mini_text against :mini; e.g. pre-LN, no dropout, rotary positions)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_config", os.path.join(ROOT, "configs", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recipe, plain = module.get_config("mini_text").model, module.get_config("mini").model
    sizes = {"vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"}
    return {k: v for k, v in recipe.items() if k not in sizes and plain.get(k) != v}


def _parse_overrides(text: str) -> dict:
    if text == "recipe":
        return recipe_overrides()
    out = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise BenchmarkError(f"--variant {text!r}: write KEY=VALUE[,KEY=VALUE] (ModelConfig or SpeedConfig fields)")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)  # never a half-written results file


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except BenchmarkError as e:
        print(f"train_step.py: {e}", file=sys.stderr)
        return 2
    from bert_jax.xla_flags import add_default_xla_flags

    add_default_xla_flags()  # the flags `bert-jax` runs with (no effect if jax has already started)
    env = environment()
    if args.memory_sweep:
        rows = memory_sweep(args.sweep_seq, args.sweep_batch)
        env["loadavg_end"] = list(os.getloadavg())
        out = args.out or os.path.join(RESULTS_DIR, "train_step_memory.json")
        write_json(out, {"benchmark": "train_step_memory_sweep", **env, "rows": rows})
        print(f"\n{'scan':<5} {'remat':<14} {'temp MiB':>9} {'args MiB':>9} {'compile s':>9}")
        for r in rows:
            m = r["memory"] or {}
            print(f"{str(r['scan_layers']):<5} {r['remat_policy']:<14} {m.get('temp_size_in_bytes', 0) / 2**20:>9.1f} "
                  f"{m.get('argument_size_in_bytes', 0) / 2**20:>9.1f} {r['compile_s']:>9.1f}")
        print(f"wrote {out}")
        return 0
    peer_python = {"torch": sys.executable} if "torch" in args.peers else {}
    args.peer_reasons = {}
    if "flax" in args.peers:
        import flax
        import jax
        import optax
        sys.path.insert(0, HERE)
        from _peer_flax import ensure_venv
        pins = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
        peer_python["flax"], args.peer_reasons["flax"] = ensure_venv(args.peer_venv, DEFAULT_PEER_VENV, pins)
    # The peak is measured before and after the timed runs and the best is used: on this shared machine one
    # measurement swung 323-519 GFLOP/s between runs, and a low one would inflate every MFU.
    peak = matmul_peak_gflops(args.matmul_sizes, repeats=3 if args.quick else 5)
    print(f"matmul peak (fp32 jnp.dot, best of runs): {peak} GFLOP/s", flush=True)
    rows, pipelines = [], []
    with tempfile.TemporaryDirectory(prefix="bert_jax_bench_") as log_dir:
        for name in args.shapes:
            shape_rows = time_shape(SHAPES[name], args, peer_python, log_dir)
            rows.extend(shape_rows)
            if not args.quick:
                pipelines.append(pipeline_vs_step(SHAPES[name], shape_rows, batches=200))
                p = pipelines[-1]
                print(f"[{name}] input pipeline {p['pipeline_batches_per_s']:.0f} batches/s vs the step's "
                      f"{p['step_batches_per_s']:.2f}: {p['ratio']:.0f}x", flush=True)
    peak_after = matmul_peak_gflops(args.matmul_sizes, repeats=3 if args.quick else 5)
    print(f"matmul peak after the timed runs: {peak_after} GFLOP/s", flush=True)
    peak_gflops = max(max(peak.values()), max(peak_after.values()))
    for row in rows:
        if row["status"] == "ok":
            row["mfu"] = row["model_flops_per_step"] / row["step_time_s_median"] / (peak_gflops * 1e9)
    env["loadavg_end"] = list(os.getloadavg())
    payload = {"benchmark": "train_step", **env, "matmul_peak_gflops": peak, "matmul_peak_gflops_after": peak_after,
               "peak_gflops_used": peak_gflops,
               "settings": {"steps": args.steps, "warmup": args.warmup, "blocks": args.blocks, "seed": args.seed,
                            "threads": args.threads, "dtype": "float32", "objectives": "mlm+nsp",
                            "optimizer": dict(name="adamw", clip=None, schedule="constant", **OPTIMIZER),
                            "dropout": 0.1, "tokens": TOKENS_DEFINITION,
                            "model_flops": "bert_jax.train.flops.train_flops_per_step: 3 x forward matmul FLOPs "
                                           "(2 per MAC: qkv/out/ffn per token per layer + 4*seq*hidden attention "
                                           "+ MLM head at max_predictions positions + pooler), counting only what "
                                           "the loss needs: the last layer's queries, attention output and FFN at "
                                           "the max_predictions + 1 positions read (MLM + [CLS]); peers' executed "
                                           "count puts the MLM head and the last layer at every position",
                            "shapes": {n: dict(dataclasses.asdict(SHAPES[n]), max_predictions=SHAPES[n].max_predictions,
                                               masked_per_row=SHAPES[n].masked_per_row, pad_per_row=SHAPES[n].pad)
                                       for n in args.shapes}},
               "rows": rows, "input_pipeline": pipelines}
    out = args.out or os.path.join(RESULTS_DIR, "train_step_quick.json" if args.quick else "train_step.json")
    write_json(out, payload)
    print_table(rows)
    print(f"load average start {env['loadavg_start']} end {env['loadavg_end']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
