"""Host-side input pipeline throughput: batches/s and examples/s with masking applied on the fly.

    python benchmarks/pipeline_bench.py [DATASET_DIR] [--steps N] [--batch-size B]

Without DATASET_DIR a random seq-128 segment-pair dataset (and a short-example 'single' dataset for
packing) is written to a temporary directory. Results go to benchmarks/results/pipeline_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from bert_jax.data.masking import MaskingConfig
from bert_jax.data.pipeline import make_eval_iterator, make_pretrain_iterator
from bert_jax.data.shards import FORMAT_VERSION, MANIFEST, shard_name, write_json_atomic, write_shard

SPECIAL = dict(pad=0, unk=100, cls=101, sep=102, mask=103)  # BERT's uncased ids
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pipeline_bench.json")


def write_random_dataset(out_dir: str, num_examples: int = 20000, seq_len: int = 128, vocab_size: int = 30522,
                         mode: str = "segment-pair", max_len: int | None = None, shard_size: int = 5000,
                         seed: int = 0) -> str:
    """Random token ids in the shard format, shaped like make-data's output ([CLS] A [SEP] B [SEP] [PAD]...)."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for index, start in enumerate(range(0, num_examples, shard_size)):
        n = min(shard_size, num_examples - start)
        lengths = rng.integers(min(16, seq_len), (max_len or seq_len) + 1, n).astype(np.int32)
        lengths[rng.random(n) < 0.7] = max_len or seq_len  # most examples are full, as make-data produces
        pos = np.arange(seq_len)[None, :]
        ids = rng.integers(1000, vocab_size, (n, seq_len)).astype(np.int32)
        ids[pos >= lengths[:, None]] = SPECIAL["pad"]
        ids[:, 0] = SPECIAL["cls"]
        ids[np.arange(n), lengths - 1] = SPECIAL["sep"]
        types = np.zeros((n, seq_len), np.int8)
        labels = np.full(n, -1, np.int8)
        if mode in ("segment-pair", "sentence-order"):
            mid = lengths // 2
            ids[np.arange(n), mid] = SPECIAL["sep"]
            types[(pos > mid[:, None]) & (pos < lengths[:, None])] = 1
            labels = rng.integers(0, 2, n).astype(np.int8)
        arrays = dict(input_ids=ids, token_type_ids=types, word_start=rng.random((n, seq_len)) < 0.8,
                      length=lengths, sentence_label=labels)
        write_shard(out_dir, index, arrays, {"documents": n})
        entries.append({"name": shard_name(index), "examples": n})
    write_json_atomic(os.path.join(out_dir, MANIFEST), {
        "format_version": FORMAT_VERSION, "mode": mode, "seq_len": seq_len, "vocab_size": vocab_size,
        "vocab_fingerprint": "random", "special_ids": SPECIAL, "max_token_id": vocab_size - 1, "seed": seed,
        "examples": num_examples, "shards": entries})
    return out_dir


def measure_pipeline(dataset_dir: str, batch_size: int = 32, seq_len: int = 128, steps: int = 300,
                     masking: MaskingConfig = MaskingConfig(), packing: bool = False, num_threads: int = 0,
                     eval_mode: bool = False) -> dict:
    """Batches/s of one process's iterator after a short warm-up (seq_len is checked against the data)."""
    if eval_mode:
        it = make_eval_iterator(dataset_dir, batch_size, masking, packing=packing, num_threads=num_threads)
    else:
        it = make_pretrain_iterator(dataset_dir, batch_size, seed=0, masking=masking, packing=packing,
                                    num_threads=num_threads, max_positions=seq_len)
    for _ in range(5):
        next(it)
    real_tokens, start = 0, time.perf_counter()
    done = 0
    for batch in it:
        real_tokens += int((batch["input_mask"] > 0).sum())
        done += 1
        if done == steps:
            break
    elapsed = time.perf_counter() - start
    return {"kind": masking.kind, "packing": packing, "num_threads": num_threads, "eval": eval_mode,
            "batch_size": batch_size, "seq_len": seq_len, "steps": done,
            "batches_per_s": done / elapsed, "examples_per_s": done * batch_size / elapsed,
            "ms_per_batch": 1e3 * elapsed / done, "real_token_fraction": real_tokens / (done * batch_size * seq_len)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", nargs="?")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pair_dir = args.dataset_dir or write_random_dataset(os.path.join(tmp, "pair"))
        single_dir = write_random_dataset(os.path.join(tmp, "single"), mode="single", max_len=40)
        cases = [dict(masking=MaskingConfig(kind=k), num_threads=t) for k in ("mlm", "wwm", "span", "none") for t in (0,)]
        cases += [dict(masking=MaskingConfig(), num_threads=t) for t in (1, 2)]
        cases += [dict(masking=MaskingConfig(), eval_mode=True)]
        rows = [dict(dataset="pair", **measure_pipeline(pair_dir, args.batch_size, steps=args.steps, **c)) for c in cases]
        rows.append(dict(dataset="single<=40 packed", **measure_pipeline(
            single_dir, args.batch_size, steps=args.steps, packing=True)))
        rows.append(dict(dataset="single<=40", **measure_pipeline(single_dir, args.batch_size, steps=args.steps)))
    print(f"{'dataset':<18} {'kind':<5} {'thr':>3} {'eval':>5} {'batches/s':>10} {'examples/s':>11} {'ms/batch':>9} {'real tok':>9}")
    for r in rows:
        print(f"{r['dataset']:<18} {r['kind']:<5} {r['num_threads']:>3} {str(r['eval']):>5} {r['batches_per_s']:>10.1f} "
              f"{r['examples_per_s']:>11.0f} {r['ms_per_batch']:>9.2f} {r['real_token_fraction']:>9.2f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "dataset": args.dataset_dir or "random seq 128 (20k examples)", "results": rows}, f, indent=2)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
