"""`bert-jax export --workdir RUN --out params.msgpack [--step N]`: params only, for fine-tuning and interop.

Writes the encoder with BERT's pretraining heads (the tree of `BertForPreTraining`, readable by
`bert_jax.interop.load_params` and convertible to transformers). Heads the run did not train (an MLM head
for ELECTRA's discriminator, the NSP head of a run without NSP) are freshly initialised, with a warning;
networks that only serve pretraining (ELECTRA's generator, a distillation teacher) are left out.

The checkpoint step is verified against its checksums before it is read: a damaged step is refused (exit 2), one
line naming it and the other complete steps. Exit codes: 0 written; 2 bad input (the workdir, the step, an --out
that cannot be written); 4 --out could not be written (e.g. disk full), nothing partial left under its name.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import outputs
from bert_jax.interop.params_file import save_params
from bert_jax.model.config import ModelConfig
from bert_jax.model.pretraining import BertForPreTraining
from bert_jax.weights import ENCODER, find_head, load_weights


def pretraining_params(params: dict, config: ModelConfig, seed: int = 0) -> dict:
    """Map a PretrainModel param tree onto BertForPreTraining's, initialising the heads it lacks."""
    fresh = nn.unbox(BertForPreTraining(config).init(jax.random.key(seed), jnp.zeros((1, 2), jnp.int32)))["params"]
    out = {}
    for name, value in fresh.items():
        source = find_head(params, name)
        if source is None:
            if name == ENCODER:
                raise ValueError("the checkpoint has no 'encoder' params; is it a bert_jax pretraining checkpoint?")
            warnings.warn(f"export: the run trained no {name!r}; writing a freshly initialised one", stacklevel=2)
            out[name] = value
        else:
            out[name] = params[source]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert-jax export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a pretraining workdir")
    parser.add_argument("--out", required=True, help="the params file to write (msgpack)")
    parser.add_argument("--step", type=int, default=None, help="a checkpoint step (default: the newest complete)")
    args = parser.parse_args(argv)
    try:
        outputs.writable_file(args.out, "--out")
        weights = load_weights(args.workdir, "--workdir", step=args.step)
        config = weights.config
        with outputs.write_errors_as_one_line(f"writing --out {args.out}", "no partial file was left under that name"):
            save_params(args.out, config, pretraining_params(weights.params, config))
    except (FileNotFoundError, ValueError) as e:
        print(f"bert-jax export: {e}", file=sys.stderr)
        return outputs.EXIT_BAD_INPUT
    except outputs.WriteError as e:
        print(f"bert-jax export: {e}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED
    print(json.dumps({"exported": args.out, "step": weights.step, "model": config.to_dict()}))
    return 0
