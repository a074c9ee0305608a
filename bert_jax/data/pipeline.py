"""Per-process numpy batches for pretraining and evaluation, built on grain.

A position in the stream is (epoch, global batch index); everything else is a pure function of it:
  rows of global batch b   = rows [b*B, (b+1)*B) of the epoch's row plan (`packing.plan_epoch`)
  process p's share        = rows [b*B + p*B/P, b*B + (p+1)*B/P)
  masks                    = hash of (seed, epoch, row key, position)      (`masking.apply_masking`)
So the iterator state is two integers; it can be restored with a different process count, and
every process reads only its own rows. Within an epoch, batches are a `grain.MapDataset` over batch
indices, mapped by one vectorised function and prefetched by grain's thread pool.

With drop_remainder, an epoch has floor(rows / B) batches (a different tail is dropped each epoch);
otherwise ceil(rows / B), the last one padded with rows whose input_mask and masked_weights are 0
and whose sentence_label is -1.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterator

import grain
import numpy as np

from bert_jax.data import packing
from bert_jax.data.masking import MaskingConfig, apply_masking
from bert_jax.data.shards import FORMAT_VERSION, Examples, open_examples

SINGLE_SEGMENT_MODES = ("full-sentences", "doc-sentences", "single")
STATE_VERSION = 1
_MASK_SALT = 0x6D61736B


class PipelineError(ValueError):
    """A dataset/model/iterator mismatch the user must fix; the message says how."""


@dataclass(frozen=True)
class PipelineSpec:
    """Everything that fixes the sequence of global batches (not how it is split across processes)."""

    global_batch_size: int
    seed: int
    masking: MaskingConfig
    shuffle: bool = True
    epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True
    packing: bool = False
    mask_seed: int | None = None  # None: derived from `seed`; eval fixes it so masks are the same every time
    model_vocab_size: int | None = None  # random replacements stay below min(this, the data's vocab_size)


def validate_dataset(examples: Examples, spec: PipelineSpec, process_index: int, process_count: int, *,
                     expected_vocab_fingerprint: str | None = None, vocab_size: int | None = None,
                     max_positions: int | None = None) -> None:
    """Raise PipelineError (one line: what is wrong and the fix) if the data cannot feed this model/run."""
    m, path = examples.manifest, examples.path
    if m.get("format_version") != FORMAT_VERSION:
        raise PipelineError(f"{path} has format_version {m.get('format_version')}, this code reads {FORMAT_VERSION}; "
                            "rebuild it with `bert-jax make-data`")
    found = m.get("vocab_fingerprint")
    if expected_vocab_fingerprint is not None and found != expected_vocab_fingerprint:
        raise PipelineError(f"{path} was tokenized with vocab fingerprint {found}, the model expects "
                            f"{expected_vocab_fingerprint}; rebuild the data with the model's vocab (`bert-jax make-data --vocab ...`)")
    if vocab_size is not None and int(m["max_token_id"]) >= vocab_size:
        raise PipelineError(f"{path} holds token id {m['max_token_id']} but the model's vocab_size is {vocab_size}; "
                            "use a model with vocab_size > max_token_id or rebuild the data with the model's vocab")
    if max_positions is not None and examples.seq_len > max_positions:
        raise PipelineError(f"{path} has seq_len {examples.seq_len} > the model's max_position_embeddings "
                            f"{max_positions}; rebuild the data with `bert-jax make-data --seq_len "
                            f"{max_positions}` (or less), or raise model.max_position_embeddings")
    if spec.global_batch_size < 1 or process_count < 1 or not 0 <= process_index < process_count:
        raise PipelineError(f"global_batch_size={spec.global_batch_size}, process {process_index} of {process_count}: "
                            "need a positive batch and 0 <= process_index < process_count")
    if spec.global_batch_size % process_count:
        raise PipelineError(f"global_batch_size {spec.global_batch_size} is not divisible by the {process_count} processes; "
                            "choose a multiple of the process count")
    if spec.packing and m.get("mode") not in SINGLE_SEGMENT_MODES:
        raise PipelineError(f"data.packing needs single-segment examples but {path} has mode {m.get('mode')!r}; "
                            f"set data.packing=false or use data of a mode in {SINGLE_SEGMENT_MODES}")
    if len(examples) == 0:
        raise PipelineError(f"{path} holds no examples; rebuild it from a larger corpus")
    if spec.epochs is not None and spec.epochs < 1:
        raise PipelineError(f"epochs={spec.epochs} must be >= 1 (or None to repeat forever)")


def _batch_count(num_rows: int, spec: PipelineSpec) -> int:
    if spec.drop_remainder:
        return num_rows // spec.global_batch_size
    return math.ceil(num_rows / spec.global_batch_size)


def _make_batch(batch_index: int, *, examples: Examples, plan: packing.EpochRows, spec: PipelineSpec,
                process_index: int, process_count: int) -> dict[str, np.ndarray]:
    """Process `process_index`'s rows of global batch `batch_index` of the plan's epoch."""
    per_process = spec.global_batch_size // process_count
    first = batch_index * spec.global_batch_size + process_index * per_process
    m = examples.manifest
    rows = packing.assemble_rows(examples, packing.row_examples(plan, np.arange(first, first + per_process)),
                                 pad_id=int(m["special_ids"]["pad"]))
    mask_seed = spec.seed ^ _MASK_SALT if spec.mask_seed is None else spec.mask_seed
    vocab_size = min(int(m["vocab_size"]), spec.model_vocab_size or int(m["vocab_size"]))
    masked = apply_masking(rows, spec.masking, m["special_ids"], vocab_size, mask_seed,
                           rows["row_keys"], epoch=plan.epoch if spec.mask_seed is None else 0)
    batch = {k: rows[k] for k in ("token_type_ids", "input_mask", "position_ids", "sentence_label")}
    batch.update(masked)
    return batch


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Iterates one process's batches; `get_state()`/`set_state()` save and restore the position."""

    def __init__(self, examples: Examples, spec: PipelineSpec, process_index: int, process_count: int,
                 num_threads: int = 1, prefetch: int = 4):
        self.examples, self.spec = examples, spec
        self.process_index, self.process_count = process_index, process_count
        self._read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)
        self._lengths = None
        if spec.packing:
            self._lengths = np.concatenate([np.asarray(s["length"]) for s in examples.shards])
        self._epoch, self._batch = 0, 0
        self._plan: packing.EpochRows | None = None
        self._grain_iter = None

    # ------------------------------------------------------------------ position
    def plan(self, epoch: int) -> packing.EpochRows:
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = packing.plan_epoch(len(self.examples), self.spec.seed, epoch, self.spec.shuffle,
                                            self._lengths, self.examples.seq_len)
        return self._plan

    def batches_in_epoch(self, epoch: int = 0) -> int:
        return _batch_count(self.plan(epoch).num_rows, self.spec)

    def get_state(self) -> dict[str, Any]:
        """A small JSON-able dict; independent of the process count."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "batch": self._batch, "seed": self.spec.seed,
                "global_batch_size": self.spec.global_batch_size, "packing": self.spec.packing,
                "shuffle": self.spec.shuffle, "num_examples": len(self.examples)}

    def set_state(self, state: dict[str, Any]) -> None:
        mine = self.get_state()
        for key in ("version", "seed", "global_batch_size", "packing", "shuffle", "num_examples"):
            if state.get(key) != mine[key]:
                raise PipelineError(f"iterator state has {key}={state.get(key)!r} but this pipeline has {mine[key]!r}; "
                                    "restore with the settings and dataset the state was saved with")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._grain_iter = None

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self.spec.epochs is not None and self._epoch >= self.spec.epochs:
                raise StopIteration
            if self._grain_iter is None:
                self._grain_iter = self._open_epoch()
            try:
                batch = next(self._grain_iter)
            except StopIteration:
                self._epoch, self._batch, self._grain_iter = self._epoch + 1, 0, None
                continue
            self._batch += 1
            return batch

    def _open_epoch(self):
        plan = self.plan(self._epoch)
        n_batches = _batch_count(plan.num_rows, self.spec)
        if n_batches == 0:
            raise PipelineError(f"{self.examples.path}: epoch {self._epoch} has {plan.num_rows} rows, fewer than one global "
                                f"batch of {self.spec.global_batch_size}; lower train.global_batch_size or use more "
                                "data")
        make = functools.partial(_make_batch, examples=self.examples, plan=plan, spec=self.spec,
                                 process_index=self.process_index, process_count=self.process_count)
        start = min(self._batch, n_batches)
        dataset = grain.MapDataset.range(start, n_batches).map(make)
        return iter(dataset.to_iter_dataset(self._read_options))


def _open(dataset_dir: str, spec: PipelineSpec, process_index: int, process_count: int, num_threads: int,
          prefetch: int, **model) -> BatchIterator:
    examples = open_examples(dataset_dir)
    validate_dataset(examples, spec, process_index, process_count, **model)
    iterator = BatchIterator(examples, spec, process_index, process_count, num_threads, prefetch)
    if iterator.batches_in_epoch(0) == 0:
        raise PipelineError(f"{dataset_dir} has {iterator.plan(0).num_rows} rows, fewer than one global batch of "
                            f"{spec.global_batch_size}; lower train.global_batch_size or use more data")
    return iterator


def make_pretrain_iterator(dataset_dir: str, global_batch_size: int, seed: int, masking: MaskingConfig, *,
                           process_index: int = 0, process_count: int = 1, epochs: int | None = None,
                           drop_remainder: bool = True, packing: bool = False,
                           expected_vocab_fingerprint: str | None = None, vocab_size: int | None = None,
                           max_positions: int | None = None, num_threads: int = 1, prefetch: int = 4) -> BatchIterator:
    """Shuffled (a new permutation and new masks each epoch), repeated `epochs` times (None: forever)."""
    spec = PipelineSpec(global_batch_size, seed, masking, shuffle=True, epochs=epochs,
                        drop_remainder=drop_remainder, packing=packing, model_vocab_size=vocab_size)
    return _open(dataset_dir, spec, process_index, process_count, num_threads, prefetch,
                 expected_vocab_fingerprint=expected_vocab_fingerprint, vocab_size=vocab_size, max_positions=max_positions)


EVAL_ORDER_SEED = 0  # one order for every model, run and process count: their scores are over the same examples


def make_eval_iterator(dataset_dir: str, global_batch_size: int, masking: MaskingConfig, *, mask_seed: int = 0,
                       process_index: int = 0, process_count: int = 1, packing: bool = False,
                       expected_vocab_fingerprint: str | None = None, vocab_size: int | None = None,
                       max_positions: int | None = None, num_threads: int = 1, prefetch: int = 4) -> BatchIterator:
    """Every example exactly once, in one fixed pseudo-random order, with masks fixed by `mask_seed` (keyed by
    example, so the same example gets the same masks whatever the order); the last batch is padded.

    The order is a shuffle, not the file order, so that the first N batches (the in-run eval's `eval_batches`,
    `evaluate --max_examples`) are a sample of the whole set: make-data writes a corpus's files in order, and the
    first shards of a held-out split can be one or two books, whose NSP negatives all come from each other."""
    spec = PipelineSpec(global_batch_size, seed=EVAL_ORDER_SEED, masking=masking, shuffle=True, epochs=1,
                        drop_remainder=False, packing=packing, mask_seed=mask_seed, model_vocab_size=vocab_size)
    return _open(dataset_dir, spec, process_index, process_count, num_threads, prefetch,
                 expected_vocab_fingerprint=expected_vocab_fingerprint, vocab_size=vocab_size, max_positions=max_positions)
