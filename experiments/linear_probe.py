"""What do a checkpoint's frozen features know about sentiment? A logistic-regression probe on SST-2, per layer.

    python experiments/linear_probe.py --checkpoint RUN[@STEP] [--checkpoint random:RUN ...]
        [--glue_dir ../shared/data/glue/SST-2] [--train_examples 4000] [--out probe.json]

Each sentence is encoded once as `[CLS] tokens [SEP]` (segment A, at most 64 tokens) by the frozen encoder; its
features are the mean over its tokens of one layer's hidden states (every layer, 0 = the embeddings) and the
final layer's [CLS] state. An L2-regularised logistic regression (standardised features, full-batch Newton steps)
is fitted on a seeded subset of SST-2 train and scored on the whole dev set. Fine-tuning adapts the encoder;
this shows what pretraining put into it before any adaptation, against the same architecture untrained.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.finetune.glue import read_glue
from bert_jax.finetune.init import load_init
from bert_jax.model.config import SpeedConfig
from bert_jax.model.encoder import Encoder

MAX_LEN, BATCH = 64, 128


def read_sst2(glue_dir: str, split: str, limit: int = 0) -> tuple[list[str], np.ndarray]:
    """SST-2 through the fine-tuning reader; `limit` keeps the seeded subset `bert-jax finetune
    --max_train_examples` trains on (finetune/checks.py::read_train)."""
    examples = read_glue("sst2", glue_dir, split)
    if limit and limit < len(examples):
        keep = np.sort(np.random.default_rng(0).choice(len(examples), limit, replace=False))
        examples = [examples[i] for i in keep]
    return [e.text_a for e in examples], np.array([e.label for e in examples])


def features(init, tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """{'mean_L': [N, H] for every layer L, 'cls': [N, H]}."""
    encoder = Encoder(init.config, speed=SpeedConfig(scan_layers=False))
    params = {"params": init.params["encoder"]}

    @jax.jit
    def run(ids, mask):
        out = encoder.apply(params, ids, jnp.zeros_like(ids), mask, None, True, output_hidden_states=True)
        weights = mask[..., None].astype(jnp.float32)
        means = [(h.astype(jnp.float32) * weights).sum(1) / weights.sum(1) for h in out.hidden_states]
        return means, out.sequence[:, 0].astype(jnp.float32)

    token_lists, _ = tokenizer.encode_batch(texts)
    collected: dict[str, list] = {}
    for start in range(0, len(texts), BATCH):
        chunk = token_lists[start:start + BATCH]
        ids, mask = np.zeros((BATCH, MAX_LEN), np.int32), np.zeros((BATCH, MAX_LEN), np.int32)
        for row, tokens in enumerate(chunk):
            seq = [tokenizer.cls_id, *tokens[:MAX_LEN - 2], tokenizer.sep_id]
            ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        means, cls = jax.device_get(run(ids, mask))
        for layer, m in enumerate(means):
            collected.setdefault(f"mean_{layer}", []).append(m[:len(chunk)])
        collected.setdefault("cls", []).append(cls[:len(chunk)])
    return {k: np.concatenate(v) for k, v in collected.items()}


def logistic_probe(train_x, train_y, dev_x, dev_y, l2: float = 1.0, steps: int = 25) -> float:
    """Dev accuracy of an L2-regularised logistic regression fitted by Newton's method (it converges in a few
    steps on a few hundred standardised features)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.hstack([(train_x - mu) / sd, np.ones((len(train_x), 1))]).astype(np.float64)
    b = np.hstack([(dev_x - mu) / sd, np.ones((len(dev_x), 1))]).astype(np.float64)
    w = np.zeros(a.shape[1])
    reg = np.full(a.shape[1], l2)
    reg[-1] = 0.0  # the bias is not penalised
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-a @ w))
        grad = a.T @ (p - train_y) + reg * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg + 1e-9)
        w -= np.linalg.solve(hess, grad)
    return float(((b @ w > 0).astype(int) == dev_y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a pretraining workdir[@STEP] or random:WORKDIR (repeatable)")
    p.add_argument("--glue_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue",
                                                      "SST-2"), help="folder with SST-2's train.tsv and dev.tsv")
    p.add_argument("--vocab", default="", help="vocab.txt or its folder (default: the checkpoint's)")
    p.add_argument("--train_examples", type=int, default=4000, help="seeded subset of SST-2 train (0: all)")
    p.add_argument("--out", default="", help="JSON file for the results (default: none)")
    args = p.parse_args()
    train_x, train_y = read_sst2(args.glue_dir, "train", args.train_examples)
    dev_x, dev_y = read_sst2(args.glue_dir, "dev")
    results = {}
    for checkpoint in args.checkpoint:
        init = load_init(checkpoint, vocab=args.vocab or None, name="--checkpoint")
        if not (args.vocab or init.vocab_path):
            raise SystemExit(f"--checkpoint {checkpoint} records no vocab; pass --vocab (its vocab.txt)")
        tokenizer = load_tokenizer(args.vocab or init.vocab_path)
        train_f, dev_f = features(init, tokenizer, train_x), features(init, tokenizer, dev_x)
        results[checkpoint] = {k: logistic_probe(train_f[k], train_y, dev_f[k], dev_y) for k in train_f}
        print(checkpoint, " ".join(f"{k}={v:.3f}" for k, v in results[checkpoint].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"train_examples": len(train_y), "dev_examples": len(dev_y), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
