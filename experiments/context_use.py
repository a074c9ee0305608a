"""How much of a checkpoint's MLM skill comes from word order, and how much from which words are around.

    python experiments/context_use.py --checkpoint WORKDIR[@STEP] --data HELD_OUT_MAKE_DATA_DIR [--examples 512]

Scores the same masked targets (15% masking, seed 0, as `bert-jax evaluate`) three times:
  intact    the held-out examples as they are;
  shuffled  the unmasked words of each example permuted among their own positions (the bag of words kept, its
            order lost);
  random    the unmasked words replaced by random vocab tokens (no context at all; the targets' own inputs, [MASK]
            or the 10% kept/random tokens, stay).
A model that reads word order loses much more from `shuffled` than one that only reads the topic. Prints one line
per condition and writes --out (JSON).
"""
from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from bert_jax.data.pipeline import make_eval_iterator
from bert_jax.finetune.init import load_init
from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives.base import ObjectiveSet
from bert_jax.train.evaluate import masking_for, model_params
from bert_jax.train.step import make_eval_step

FIRST_ORDINARY_ID = 5  # [PAD], [UNK], [CLS], [SEP], [MASK] come first in every vocab make-data writes


def conditions(batch: dict, rng: np.random.Generator, vocab_size: int) -> dict[str, np.ndarray]:
    ids = batch["input_ids"]
    target = np.zeros(ids.shape, bool)
    np.put_along_axis(target, batch["masked_positions"], batch["masked_weights"] > 0, axis=1)
    context = ~target & (ids >= FIRST_ORDINARY_ID) & (batch["input_mask"] > 0)
    shuffled = ids.copy()
    for row in range(ids.shape[0]):
        where = np.flatnonzero(context[row])
        shuffled[row, where] = ids[row, rng.permutation(where)]
    random = ids.copy()
    random[context] = rng.integers(FIRST_ORDINARY_ID, vocab_size, int(context.sum()))
    return {"intact": ids, "shuffled": shuffled, "random": random}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a pretraining workdir[@STEP] with an MLM head")
    p.add_argument("--data", required=True, help="a held-out `bert-jax make-data` directory (the run's vocab)")
    p.add_argument("--examples", type=int, default=512, help="how many held-out examples (default 512)")
    p.add_argument("--out", default="", help="JSON file for the results (default: none)")
    args = p.parse_args()
    init = load_init(args.checkpoint, name="--checkpoint")
    objectives = ObjectiveSet.parse("mlm")
    model = PretrainModel(init.config, objectives)
    step = jax.jit(make_eval_step(model, objectives))
    masking = masking_for(objectives, init.saved_config, init.config.max_position_embeddings, rate=0.15)
    rng = np.random.default_rng(0)
    totals: dict[str, dict[str, float]] = {}
    params, seen = None, 0
    for batch in make_eval_iterator(args.data, 64, masking, mask_seed=0, vocab_size=init.config.vocab_size):
        if seen >= args.examples:
            break
        seen += int(batch["input_ids"].shape[0])
        if params is None:
            params = model_params(init, model, batch)
        for name, ids in conditions(batch, rng, init.config.vocab_size).items():
            out = jax.device_get(step(params, {**batch, "input_ids": ids}))
            row = totals.setdefault(name, {})
            for key, value in out.items():
                row[key] = row.get(key, 0.0) + float(np.sum(value))
    result = {"checkpoint": args.checkpoint, "examples": seen}
    for name, row in totals.items():
        n = row["count/mlm_loss"]
        result[name] = {"mlm_loss": row["sum/mlm_loss"] / n, "mlm_accuracy": row["sum/mlm_accuracy"] / n,
                        "targets": n}
        print(f"{name:9s} MLM loss {result[name]['mlm_loss']:.3f}  accuracy {result[name]['mlm_accuracy']:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
