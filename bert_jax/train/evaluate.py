"""`bert-jax evaluate`: did a pretrained model learn? Held-out loss, accuracy and perplexity beside the unigram floor.

    bert-jax evaluate --checkpoint RUN[@STEP] --data heldout_dir/          # a `make-data` directory
    bert-jax evaluate --checkpoint params.msgpack --data 'books/*.txt.gz' --train_data pretrain_dir/

--checkpoint is whatever `bert-jax finetune --init` takes: a pretraining workdir (newest complete checkpoint, or
@STEP), a params file (`bert-jax export`), a transformers checkpoint directory (`bert_jax.weights` tells them
apart) or random:SOURCE. --data is a `make-data` directory, or text files in any format `make-data` reads
(tokenised into a temporary dataset with the model's vocab, in the objectives' data mode).

A run's own objectives are scored where they have a held-out score (SCORABLE: MLM, LTR, XLNet's PLM on its
predicted tokens, T5's span corruption on its span tokens, ELECTRA by its generator's MLM; a distillation student
by its MLM head). Masked-LM models (the default, `mlm+nsp`) are scored on masks drawn
from --seed, the same for every model given the same data and seed, over the whole set or --max_examples (a
sample of it: the eval order is one fixed shuffle, bert_jax.data.pipeline.make_eval_iterator). A
causal (LTR) model is scored on next-token prediction instead. Beside each perplexity stands the unigram floor
(`bert_jax.data.unigram`): the perplexity of the pretraining data's own token frequencies on the same targets
(from the workdir's manifest, or --train_data; failing both, the evaluated set's, which flatters the floor and
is said so), and the ratio model/floor: ~1 means the model learned nothing beyond token frequencies.

Prints one line and writes the JSON (--out). Exit codes: 0 done, 2 bad input (one line naming it; a damaged checkpoint
step, params file or data shard, or an --out that cannot be written, among them), 4 --out could not be written
(e.g. disk full).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import outputs
from bert_jax.data.corpus import FORMAT_HELP, FORMATS, CorpusError, ReaderOptions
from bert_jax.data.masking import MaskingConfig
from bert_jax.data.pipeline import make_eval_iterator
from bert_jax.data.shards import MANIFEST, DataError, read_manifest
from bert_jax.data.unigram import UnigramError, UnigramFloor, accumulate, add_perplexities
from bert_jax.finetune.init import InitError, load_init
from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives.base import ObjectiveSet
from bert_jax.train.step import make_eval_step, summarize
from bert_jax.weights import Weights, WeightsError, find_head, load_weights

# Objectives whose heads make a held-out score, each against the unigram floor of its own targets
# (bert_jax.data.unigram): MLM's masked tokens, LTR's next tokens, PLM's predicted tokens (the last 1/K of each
# order), T5's span tokens (sentinels and the end token excluded), ELECTRA's generator at the masked positions.
SCORABLE = ("mlm", "nsp", "sop", "ltr", "plm", "span_corruption", "electra")
SCORED_AS = {"distill": "mlm"}  # a distillation student is scored by its own MLM head (no teacher needed)
RATIO_PREFIXES = ("mlm", "ltr", "plm", "span_corruption_token", "generator")


class EvaluateError(ValueError):
    """Bad input to `bert-jax evaluate`; the message names it and the fix."""


def load_checkpoint(path: str) -> Weights:
    """--checkpoint as `finetune --init` reads it, but keeping the networks that serve pretraining only: the heads
    of PLM (plm_head, plm_query), T5 (span_decoder, span_sentinels) and ELECTRA (generator) score their runs."""
    if path.startswith("random") or not path:
        return load_init(path, name="--checkpoint")
    try:
        return load_weights(path, "--checkpoint", scan_layers=False, pretraining_networks=True)
    except WeightsError as e:
        raise EvaluateError(str(e)) from None


def choose_objectives(init: Weights, requested: str | None) -> ObjectiveSet:
    if requested:
        spec = requested
    elif init.saved_config and init.saved_config.get("objectives"):
        names = [t.rpartition("*")[2] for t in str(init.saved_config["objectives"]).replace(" ", "").split("+")]
        kept = [SCORED_AS.get(n, n) for n in names if SCORED_AS.get(n, n) in SCORABLE]
        if not kept:
            raise EvaluateError(f"--checkpoint {init.path} was trained with {init.saved_config['objectives']!r}, "
                                f"none of {SCORABLE}; pass --objectives mlm (with a model that has an MLM head)")
        spec = "+".join(kept)
    else:
        spec = "ltr" if init.config.causal else "mlm+nsp"
    # the run's own options (plm's K, T5's noise density, ELECTRA's generator width): its heads were shaped by them
    saved = dict((init.saved_config or {}).get("objective_options") or {})
    names = [t.rpartition("*")[2] for t in spec.replace(" ", "").split("+")]
    return ObjectiveSet.parse(spec, {n: saved[n] for n in names if n in saved})


def model_params(init: Weights, model: PretrainModel, batch: dict) -> dict:
    """The loaded params in the tree the scoring model needs; a head the checkpoint lacks is an error."""
    abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), batch)))["params"]
    out = {}
    fresh = None
    for name in abstract:
        source = find_head(init.params, name)
        if source is None and init.kind == "random":  # e.g. an LTR head: random like the rest
            fresh = fresh or nn.unbox(model.init(jax.random.key(0), batch))["params"]
            out[name] = fresh[name]
            continue
        if source is None:
            raise EvaluateError(f"--checkpoint {init.path} has no {name!r} params (it has {sorted(init.params)}); "
                                "pass --objectives naming only heads it trained")
        out[name] = init.params[source]
    if jax.tree.structure(out) != jax.tree.structure(abstract):
        raise EvaluateError(f"--checkpoint {init.path}: its params do not fit a {init.config.num_layers}-layer model "
                            "of its own config; was it saved by another version?")
    return jax.tree.map(lambda a, p: jnp.asarray(p, a.dtype), abstract, out)


def masking_for(objectives: ObjectiveSet, saved: dict | None, seq_len: int, rate: float) -> MaskingConfig:
    """BERT's masking at `rate` (the same for every model compared); whole-word when the run trained so."""
    data = (saved or {}).get("data", {})
    kind = objectives.masking or "none"
    if kind == "mlm" and data.get("whole_word"):
        kind = "wwm"
    return MaskingConfig(kind=kind, rate=rate, mask_ratio=float(data.get("mask_ratio", 0.8)),
                         random_ratio=float(data.get("random_ratio", 0.1)),
                         keep_ratio=float(data.get("keep_ratio", 0.1)),
                         max_predictions=max(1, math.ceil(seq_len * rate)), **objectives.masking_options)


def dataset_for(args, init: Weights, objectives: ObjectiveSet, scratch: str) -> str:
    """--data as a make-data directory, building one from text files when it is not."""
    if os.path.isdir(args.data) and os.path.isfile(os.path.join(args.data, MANIFEST)):
        return args.data
    if os.path.isdir(args.data):
        raise EvaluateError(f"--data {args.data} is a directory without {MANIFEST}; pass a finished `bert-jax make-data` "
                            "output or text files (a glob such as 'dir/*.txt')")
    vocab = args.vocab or init.vocab_path
    if not vocab:
        raise EvaluateError(f"--checkpoint {args.checkpoint} records no vocab; pass --vocab (its vocab.txt)")
    from bert_jax.data.make_data import build_dataset

    seq_len = args.seq_len or int(((init.saved_config or {}).get("data") or {}).get("seq_len", 128))
    out = os.path.join(scratch, "data")
    build_dataset([args.data], out, vocab, mode=objectives.data_modes[0], seq_len=seq_len, seed=args.seed,
                  reader=ReaderOptions(format=args.format), lowercase=None, log=lambda m: None)
    return out


def floor_for(args, init: Weights, eval_dir: str, eval_manifest: dict, vocab_size: int) -> tuple[UnigramFloor, str]:
    if args.train_data:
        return UnigramFloor.from_manifest(read_manifest(args.train_data), args.train_data, vocab_size), args.train_data
    if init.manifest and "token_counts" in init.manifest:
        return UnigramFloor.from_manifest(init.manifest, init.path, vocab_size), "the checkpoint's pretraining data"
    return (UnigramFloor.from_manifest(eval_manifest, eval_dir, vocab_size),
            "the evaluated set itself (pass --train_data for the pretraining data's; this floor is lower)")


def evaluate(args) -> dict:
    start = time.perf_counter()
    init = load_checkpoint(args.checkpoint)
    objectives = choose_objectives(init, args.objectives)
    config = init.config.replace(causal=init.config.causal or objectives.causal)
    if config.causal != init.config.causal:
        raise EvaluateError(f"--objectives {objectives.names} need a causal model; --checkpoint {args.checkpoint} "
                            "is bidirectional")
    with tempfile.TemporaryDirectory(prefix="bert-jax-evaluate-") as scratch:
        eval_dir = dataset_for(args, init, objectives, scratch)
        manifest = read_manifest(eval_dir)
        if manifest["mode"] not in objectives.data_modes:
            raise EvaluateError(f"--data {args.data} was built in mode {manifest['mode']!r}; objectives "
                                f"{'+'.join(objectives.names)} need one of {objectives.data_modes}")
        trained_on = (init.manifest or {}).get("vocab_fingerprint")
        if trained_on and manifest.get("vocab_fingerprint") != trained_on:
            raise EvaluateError(f"--data {args.data} was tokenised with another vocab than --checkpoint "
                                f"{args.checkpoint} was trained with; rebuild it with that run's vocab")
        seq_len = int(manifest["seq_len"])
        masking = masking_for(objectives, init.saved_config, seq_len, args.mask_rate)
        floor, floor_source = floor_for(args, init, eval_dir, manifest, config.vocab_size)
        model = PretrainModel(config, objectives)
        it = make_eval_iterator(eval_dir, args.batch_size, masking, mask_seed=args.seed, vocab_size=config.vocab_size,
                                max_positions=config.max_position_embeddings)
        step = jax.jit(make_eval_step(model, objectives))
        params = None
        totals: dict[str, float] = {"examples": 0.0}
        for i, batch in enumerate(it):
            if args.max_examples and totals["examples"] >= args.max_examples:
                break
            if params is None:
                params = model_params(init, model, batch)
            accumulate(totals, jax.device_get(step(params, batch)), batch, floor)
    metrics = add_perplexities(summarize(totals))
    return {"checkpoint": args.checkpoint, "step": init.step, "init_fingerprint": init.fingerprint,
            "data": args.data, "objectives": "+".join(objectives.names), "seed": args.seed,
            "mask_rate": masking.rate if masking.kind != "none" else None, "seq_len": seq_len,
            "unigram_source": floor_source, "seconds": round(time.perf_counter() - start, 2), **metrics}


def summary_line(result: dict) -> str:
    name, step = result["checkpoint"], result.get("step")
    if step is not None and not name.endswith(f"@{step}"):  # WORKDIR@STEP already names it
        name += f"@{step}"
    parts = [f"evaluate {name} on {int(result['examples'])} examples:"]
    for prefix in RATIO_PREFIXES:
        if f"{prefix}_perplexity_ratio" in result:
            parts.append(f"{prefix} loss {result[prefix + '_loss']:.4f} acc {result[prefix + '_accuracy']:.4f} "
                         f"ppl {result[prefix + '_perplexity']:.1f} vs unigram {result[prefix + '_unigram_perplexity']:.1f} "
                         f"(ratio {result[prefix + '_perplexity_ratio']:.3f})")
    for prefix in ("nsp", "sop"):
        if f"{prefix}_accuracy" in result:
            parts.append(f"{prefix} acc {result[prefix + '_accuracy']:.4f}")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bert-jax evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="pretraining workdir[@STEP], params file, or transformers checkpoint directory")
    p.add_argument("--data", required=True, help="a make-data directory, or text files (quote globs)")
    p.add_argument("--out", default="evaluate.json", help="the JSON to write (default: %(default)s)")
    p.add_argument("--objectives", default=None,
                   help="what to score, e.g. mlm or mlm+nsp or ltr (default: the run's own, else mlm+nsp, ltr if causal)")
    p.add_argument("--train_data", default=None,
                   help="the pretraining make-data directory whose token counts make the unigram floor (default: the "
                        "workdir's recorded manifest)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (and of the pairs of text --data)")
    p.add_argument("--mask_rate", type=float, default=0.15,
                   help="share of tokens masked (80/10/10 as BERT), the same for every model compared, whatever "
                        "rate it trained at (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=64, help="examples per forward pass (default: %(default)s)")
    p.add_argument("--max_examples", type=int, default=0,
                   help="score N examples, rounded up to whole batches: the first N of the set's one fixed "
                        "shuffled order, a sample of the whole set (default 0: the whole set)")
    p.add_argument("--vocab", default=None, help="text --data: the vocab to tokenise with (default: the checkpoint's)")
    p.add_argument("--seq_len", type=int, default=0, help="text --data: example length (default: the run's, else 128)")
    p.add_argument("--format", choices=FORMATS, default="auto", help="text --data: " + FORMAT_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.batch_size < 1 or args.max_examples < 0 or not 0 < args.mask_rate < 1:
            raise EvaluateError("--batch_size must be at least 1, --max_examples at least 0, --mask_rate in (0, 1)")
        outputs.writable_file(args.out, "--out")  # before the work: a read-only or directory --out fails now
        result = evaluate(args)
    except (EvaluateError, InitError, UnigramError, CorpusError, DataError, ValueError, FileNotFoundError) as e:
        print(f"bert-jax evaluate: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return outputs.EXIT_BAD_INPUT
    except OSError as e:  # e.g. a full disk under the scratch directory text --data is tokenised into
        print(f"bert-jax evaluate: {e.filename}: {outputs.reason(e)}; {outputs.fix(e)}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED if outputs.is_disk_full(e) else outputs.EXIT_BAD_INPUT
    tmp = f"{args.out}.tmp-{os.getpid()}"
    try:
        with outputs.write_errors_as_one_line(f"writing --out {args.out}", "no partial file was left under that name"):
            try:
                with open(tmp, "w") as f:
                    json.dump(result, f, indent=2, sort_keys=True)
                os.replace(tmp, args.out)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    except outputs.WriteError as e:
        print(f"bert-jax evaluate: {e}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED
    print(summary_line(result) + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
