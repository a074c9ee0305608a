"""What a pretraining run is built from, before any step: the processes (jax.distributed), the data (built-in
corpus or prepared shards, the same on every process), the model config the data implies, how the model runs, the
optimiser's schedule, the masking."""
from __future__ import annotations

import math
import os
import zlib

import jax
import ml_collections
import numpy as np

from bert_jax import interrupts
from bert_jax.data.builtin_corpus import DEFAULT_NUM_DOCS
from bert_jax.data.instances import MIN_SEQ_LEN
from bert_jax.data.make_data import builtin_vocab_dir, prepare_builtin_dataset
from bert_jax.data.masking import MaskingConfig
from bert_jax.data.shards import DataError, read_manifest
from bert_jax.data.tokenizer import SPECIAL_TOKENS
from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.objectives.base import ObjectiveSet
from bert_jax.train.optimizer import OptimizerConfig


def setup_distributed(config: ml_collections.ConfigDict) -> None:
    d = config.distributed
    if not d.enabled:
        return
    # JAX's preemption service takes SIGTERM on every host and agrees on the step to stop at; a local stop flag
    # (bert_jax.interrupts, installed by the CLI) would stop one host while the others wait in a collective.
    interrupts.reset()
    kwargs = {}
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or d.coordinator_address.startswith("127."):
        # CPU processes need a collectives backend to form one job (tests, laptops).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if d.coordinator_address:
        kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                      process_id=d.process_id)
    jax.distributed.initialize(**kwargs)  # no arguments: discovered automatically on TPU VMs and SLURM


def check_train(config: ml_collections.ConfigDict) -> None:
    """The train section's counts and choices, by the keys a user types, before anything starts."""
    t = config.train
    zero = {"eval_every": " (0: never)", "eval_batches": " (0: the whole eval set)",
            "checkpoint_every": " (0: at the end and when preempted)"}
    for key in ("steps", "global_batch_size", "log_every", "keep_checkpoints", *zero):
        minimum = 0 if key in zero else 1
        if t[key] < minimum:
            raise ValueError(f"train.{key}={t[key]} is invalid; it must be >= {minimum}{zero.get(key, '')}")
    if t.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.on_nonfinite={t.on_nonfinite!r} is unknown; choose stop or skip")


def prepare_data(config: ml_collections.ConfigDict, objectives: ObjectiveSet, workdir: str) -> tuple[str, str]:
    """(train dir, eval dir or ''). "builtin" generates, tokenises and caches the built-in corpus."""
    data = config.data
    if not data.path:
        raise ValueError("data.path is empty; pass --config.data.path=DIR (a `bert-jax make-data` output) or "
                         "--config.data.path=builtin")
    if data.path != "builtin":
        return data.path, data.eval_path
    check_builtin_data(config, objectives)  # before generating and tokenising a corpus
    mode = data.mode or objectives.data_modes[0]
    cache = os.path.join(workdir, "data")
    docs = data.builtin_docs or DEFAULT_NUM_DOCS
    kwargs = dict(mode=mode, seq_len=data.seq_len, vocab_size=data.builtin_vocab_size, log=lambda m: None)
    if jax.process_index() == 0:
        try:
            train_dir = prepare_builtin_dataset(cache, seed=0, num_docs=docs, **kwargs)
            # Held out: documents of another seed, tokenised with the training vocab.
            vocab = builtin_vocab_dir(cache, data.builtin_vocab_size, docs, 0)
            eval_dir = data.eval_path or prepare_builtin_dataset(cache, seed=1, num_docs=max(docs // 20, 200),
                                                                 vocab=vocab, **kwargs)
        except DataError as e:  # its fix names make-data's flags; this run's are --workdir and data.*
            raise ValueError(f"data.path=builtin: the built-in data cached under --workdir {workdir} does not match "
                             f"this run ({str(e).split('; ')[0]}); delete {cache} or pass another --workdir") from e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("builtin data ready")
    train_dir = prepare_builtin_dataset(cache, seed=0, num_docs=docs, **kwargs)
    vocab = builtin_vocab_dir(cache, data.builtin_vocab_size, docs, 0)
    eval_dir = data.eval_path or prepare_builtin_dataset(cache, seed=1, num_docs=max(docs // 20, 200),
                                                         vocab=vocab, **kwargs)
    return train_dir, eval_dir


def check_builtin_data(config: ml_collections.ConfigDict, objectives: ObjectiveSet) -> None:
    """The built-in corpus's data.* settings, named by their config keys (make-data's own errors name its flags)."""
    data, positions = config.data, config.model.max_position_embeddings
    if data.mode and data.mode not in objectives.data_modes:
        raise ValueError(f"data.mode={data.mode!r} cannot feed objectives {config.objectives!r}; pass "
                         f"--config.data.mode= one of {', '.join(objectives.data_modes)}, or leave it empty")
    if data.seq_len < MIN_SEQ_LEN:
        raise ValueError(f"data.seq_len={data.seq_len} is too small; pass --config.data.seq_len={MIN_SEQ_LEN} or "
                         "more (BERT uses 128, then 512)")
    if data.builtin_vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"data.builtin_vocab_size={data.builtin_vocab_size} is too small; pass "
                         "--config.data.builtin_vocab_size=4096 (the default) or a few hundred at least")
    masking_config(config, objectives)  # its data.* errors, before the corpus is made
    ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": config.model.vocab_size or 1})  # model.* errors
    if data.seq_len > positions:
        raise ValueError(f"data.seq_len={data.seq_len} is more than model.max_position_embeddings={positions}; pass "
                         f"--config.data.seq_len={positions} or less, or raise --config.model.max_position_embeddings")


def read_train_manifest(train_dir: str, eval_dir: str) -> dict:
    """The training data's manifest. With several processes, every process must read the same datasets: with
    unequal batch counts some would wait forever in a collective, and one process failing to read its data
    would leave the others waiting for it; both fail here on every process, before the first step."""
    if jax.process_count() == 1:
        return read_manifest(train_dir)
    from jax.experimental import multihost_utils

    try:
        manifest = read_manifest(train_dir)
        eval_examples = int(read_manifest(eval_dir)["examples"]) if eval_dir else 0
        mine = np.array([int(manifest["examples"]), int(manifest["seq_len"]), eval_examples,
                         zlib.crc32(str(manifest.get("vocab_fingerprint")).encode())], np.int64)
        error = None
    except (ValueError, OSError, KeyError) as e:
        mine, error = np.full(4, -1, np.int64), e
    everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    if error is not None:
        raise error
    failed = [i for i, row in enumerate(everyone.tolist()) if row[0] < 0]
    if failed:
        raise ValueError(f"process(es) {failed} could not read their data (their logs say why); every process "
                         f"must be able to read data.path={train_dir!r} and data.eval_path={eval_dir!r}")
    if (everyone != everyone[0]).any():
        seen = ", ".join(f"process {i}: {r[0]} train / {r[2]} eval examples, seq_len {r[1]}"
                         for i, r in enumerate(everyone.tolist()))
        raise ValueError(f"processes read different data (data.path={train_dir!r} on process {jax.process_index()}; "
                         f"{seen}); every process must read the same dataset: copy it to every host or use "
                         "shared storage")
    return manifest


def resolve_model(config: ml_collections.ConfigDict, manifest: dict, objectives: ObjectiveSet) -> ModelConfig:
    values = config.model.to_dict()
    if not values.get("vocab_size"):
        values["vocab_size"] = int(manifest["vocab_size"])
        with config.model.ignore_type():
            config.model.vocab_size = values["vocab_size"]
    values["causal"] = values.get("causal") or objectives.causal
    model_cfg = ModelConfig.from_dict(values)
    if manifest["vocab_size"] != model_cfg.vocab_size:
        raise ValueError(f"data vocab size {manifest['vocab_size']} != model.vocab_size {model_cfg.vocab_size}; "
                         "rebuild the data with the model's vocab or set --config.model.vocab_size=0")
    return model_cfg


def speed_config(config: ml_collections.ConfigDict) -> SpeedConfig:
    return SpeedConfig.from_dict(config.speed.to_dict())


def optimizer_config(config: ml_collections.ConfigDict) -> OptimizerConfig:
    """The optimizer section with its schedule's length, train.steps: a run's length is set in that one place. A run
    shorter than its warm-up warms up throughout."""
    steps = config.train.steps
    if steps < 1:
        raise ValueError(f"train.steps={steps} is invalid; it must be >= 1")
    values = config.optimizer.to_dict()
    if "warmup_steps" in values:
        values["warmup_steps"] = min(values["warmup_steps"], steps)
    return OptimizerConfig.from_config({**values, "total_steps": steps})


def masking_config(config: ml_collections.ConfigDict, objectives: ObjectiveSet) -> MaskingConfig:
    d = config.data
    kind = objectives.masking
    if kind == "mlm" and d.whole_word:
        kind = "wwm"
    capped = d.max_predictions and d.max_predictions < math.ceil(d.mask_rate * d.seq_len - 1e-9)
    if kind in ("mlm", "wwm", "span") and capped:  # plm and T5 size their targets by their own options
        raise ValueError(f"data.max_predictions={d.max_predictions} caps data.mask_rate={d.mask_rate} below its "
                          f"{math.ceil(d.mask_rate * d.seq_len - 1e-9)} masked positions per {d.seq_len}-token example; "
                          "set --config.data.max_predictions=0 (derived from the rate) or raise it")
    return MaskingConfig(kind=kind, rate=d.mask_rate, mask_ratio=d.mask_ratio, random_ratio=d.random_ratio,
                         keep_ratio=d.keep_ratio, max_predictions=d.max_predictions or None,
                         **objectives.masking_options)
