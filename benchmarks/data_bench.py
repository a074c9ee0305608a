"""make-data speed and memory against HF `tokenizers`' own encode_batch on the same text.

    python benchmarks/data_bench.py [--repeats 3] [--workers 1 2]

Corpus: every Project Gutenberg book plus WikiText-2 valid from the shared data folder (../shared/data),
read as plain text (a document per file), tokenised with Google's bert-base-uncased vocab, built into
seq-128 segment-pair instances. For each worker count N it measures, best of --repeats (runs interleaved,
so load from other processes hits both sides alike):
  builder   tokens/s of `build_dataset` (read, split, tokenise, build, write; timed inside the process,
            interpreter start excluded) and the peak RSS of its processes (sum over the process tree, and
            the largest single process), sampled with psutil;
  reference tokens/s of `Tokenizer.encode_batch` alone on the very same sentences, in one call, with
            RAYON_NUM_THREADS=N (also reported: `encode_batch_fast`, which skips character offsets and
            is what the builder calls);
and the ratio builder / reference. The builder is then run on the corpus doubled (every file twice) to
show that its peak memory does not grow with the corpus. Results go to benchmarks/results/data_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("BERT_JAX_SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
CORPUS = [os.path.join(SHARED, "corpus", "gutenberg", "*.txt"), os.path.join(SHARED, "corpus", "wikitext-2", "valid.txt")]
VOCAB = os.path.join(SHARED, "vocab", "bert-base-uncased-vocab.txt")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "data_bench.json")
SEQ_LEN = 128


def _child_build(inputs: list[str], out_dir: str, workers: int) -> dict:
    from bert_jax.data.corpus import ReaderOptions
    from bert_jax.data.make_data import build_dataset

    cpu = _cpu_seconds()
    start = time.perf_counter()
    manifest = build_dataset(inputs, out_dir, VOCAB, mode="segment-pair", seq_len=SEQ_LEN, workers=workers,
                             reader=ReaderOptions(format="text"), log=lambda _: None)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds() - cpu,
            "tokens": manifest["tokens"], "examples": manifest["examples"]}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its reaped children (pool workers)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _child_reference(inputs: list[str]) -> dict:
    from bert_jax.data.corpus import ReaderOptions, iter_documents
    from bert_jax.data.tokenizer import load_tokenizer

    sentences = [s for doc in iter_documents(inputs, ReaderOptions(format="text")) for s in doc]
    backend = load_tokenizer(VOCAB).backend
    cpu = _cpu_seconds()
    start = time.perf_counter()
    encodings = backend.encode_batch(sentences, add_special_tokens=False)
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu
    tokens = sum(len(e) for e in encodings)
    del encodings
    start = time.perf_counter()
    backend.encode_batch_fast(sentences, add_special_tokens=False)
    fast_seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "fast_seconds": fast_seconds, "tokens": tokens,
            "sentences": len(sentences)}


def _run_child(args: list[str], threads: int) -> dict:
    """Run this script in child mode; returns its JSON plus peak RSS of its process tree (MiB)."""
    import psutil

    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", *args], stdout=subprocess.PIPE, env=env)
    root = psutil.Process(proc.pid)
    peak_sum = peak_max = 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
        except psutil.Error:
            rss = []
        if rss:
            peak_sum, peak_max = max(peak_sum, sum(rss)), max(peak_max, max(rss))
        time.sleep(0.01)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"child {args} failed with exit code {proc.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {**result, "peak_rss_mib_sum": peak_sum / 2**20, "peak_rss_mib_max_process": peak_max / 2**20}


def bench_pipeline(dataset_dir: str) -> dict | None:
    """Hook for the input-pipeline measurement on a built dataset; None until bert_jax.data.pipeline exists."""
    try:
        import bert_jax.data.pipeline  # noqa: F401
    except ModuleNotFoundError:
        return None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from pipeline_bench import measure_pipeline
    except ImportError:
        return None
    return measure_pipeline(dataset_dir, seq_len=SEQ_LEN)


def _doubled_inputs(tmp: str) -> list[str]:
    import glob

    files = [f for pattern in CORPUS for f in sorted(glob.glob(pattern))]
    for copy in ("copy1", "copy2"):
        os.makedirs(os.path.join(tmp, copy))
        for i, f in enumerate(files):
            os.symlink(f, os.path.join(tmp, copy, f"{i:03d}-{os.path.basename(f)}"))
    return [os.path.join(tmp, "copy1", "*"), os.path.join(tmp, "copy2", "*")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--with-pipeline", action="store_true", help="also run bench_pipeline on the built dataset")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, rest = a.child[0], a.child[1:]
        if kind == "build":
            result = _child_build(rest[2:], rest[0], int(rest[1]))
        else:
            result = _child_reference(rest)
        print(json.dumps(result))
        return 0
    missing = [path for path in [os.path.dirname(CORPUS[0]), CORPUS[1], VOCAB] if not os.path.exists(path)]
    if missing:
        print(f"data_bench: {missing[0]} is missing; this benchmark needs the shared data folder "
              f"(set BERT_JAX_SHARED_DATA to its path)", file=sys.stderr)
        return 2
    rows, pipeline = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for workers in a.workers:
            builds, refs = [], []
            for r in range(a.repeats):
                out = os.path.join(tmp, f"w{workers}-r{r}")
                builds.append(_run_child(["build", out, str(workers), *CORPUS], workers))
                refs.append(_run_child(["reference", *CORPUS], workers))
            if builds[0]["tokens"] != refs[0]["tokens"]:
                raise SystemExit(f"builder tokenised {builds[0]['tokens']} tokens, reference {refs[0]['tokens']}")
            best_b = min(builds, key=lambda x: x["seconds"])
            best_r = min(refs, key=lambda x: x["seconds"])
            rows.append({
                "corpus": "gutenberg+wikitext2-valid", "workers": workers, "tokens": best_b["tokens"],
                "examples": best_b["examples"], "builder_tokens_per_s": best_b["tokens"] / best_b["seconds"],
                "reference_tokens_per_s": best_r["tokens"] / best_r["seconds"],
                "reference_fast_tokens_per_s": best_r["tokens"] / min(x["fast_seconds"] for x in refs),
                "ratio": (best_b["tokens"] / best_b["seconds"]) / (best_r["tokens"] / best_r["seconds"]),
                "cpu_ratio": min(x["cpu_seconds"] for x in refs) / min(x["cpu_seconds"] for x in builds),
                "builder_seconds": [round(x["seconds"], 3) for x in builds],
                "builder_cpu_seconds": [round(x["cpu_seconds"], 3) for x in builds],
                "reference_cpu_seconds": [round(x["cpu_seconds"], 3) for x in refs],
                "reference_seconds": [round(x["seconds"], 3) for x in refs],
                "peak_rss_mib_sum": max(x["peak_rss_mib_sum"] for x in builds),
                "peak_rss_mib_max_process": max(x["peak_rss_mib_max_process"] for x in builds),
            })
        if a.with_pipeline:
            pipeline = bench_pipeline(os.path.join(tmp, f"w{a.workers[0]}-r0"))
        doubled = _doubled_inputs(os.path.join(tmp, "doubled"))
        for workers in a.workers:
            runs = [_run_child(["build", os.path.join(tmp, f"d{workers}-r{r}"), str(workers), *doubled], workers)
                    for r in range(a.repeats)]
            best = min(runs, key=lambda x: x["seconds"])
            rows.append({
                "corpus": "doubled", "workers": workers, "tokens": best["tokens"], "examples": best["examples"],
                "builder_tokens_per_s": best["tokens"] / best["seconds"], "reference_tokens_per_s": None,
                "reference_fast_tokens_per_s": None,
                "ratio": None, "cpu_ratio": None, "builder_seconds": [round(x["seconds"], 3) for x in runs],
                "builder_cpu_seconds": [round(x["cpu_seconds"], 3) for x in runs], "reference_seconds": [],
                "reference_cpu_seconds": [],
                "peak_rss_mib_sum": max(x["peak_rss_mib_sum"] for x in runs),
                "peak_rss_mib_max_process": max(x["peak_rss_mib_max_process"] for x in runs),
            })
    print(f"{'corpus':<26} {'workers':>7} {'tokens':>9} {'builder tok/s':>14} {'encode_batch tok/s':>19} "
          f"{'ratio':>6} {'cpu ratio':>9} {'peak RSS sum':>13} {'max proc':>9}")
    for r in rows:
        ref = f"{r['reference_tokens_per_s']:,.0f}" if r["reference_tokens_per_s"] else "-"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        cpu_ratio = f"{r['cpu_ratio']:.2f}" if r["cpu_ratio"] else "-"
        print(f"{r['corpus']:<26} {r['workers']:>7} {r['tokens']:>9} {r['builder_tokens_per_s']:>14,.0f} {ref:>19} "
              f"{ratio:>6} {cpu_ratio:>9} {r['peak_rss_mib_sum']:>10.0f} MiB {r['peak_rss_mib_max_process']:>5.0f} MiB")
    print("ratio: builder / encode_batch tokens per wall second (best run of each); cpu ratio: the same per CPU "
          "second (encode_batch CPU / builder CPU), which load from other processes does not distort")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "load_average_at_end": os.getloadavg(), "seq_len": SEQ_LEN, "mode": "segment-pair",
                   "results": rows, "pipeline": pipeline}, f, indent=2)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
