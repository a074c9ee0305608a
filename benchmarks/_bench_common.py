"""Shared by benchmarks/train_step.py and its parts: the benchmark shapes, the one set of inputs every framework
gets, and the optimiser settings."""
from __future__ import annotations

import dataclasses

import numpy as np

PAD, CLS, SEP, MASK = 0, 101, 102, 103  # BERT's uncased ids; random tokens are drawn from [1000, vocab)
OPTIMIZER = dict(lr=1e-4, weight_decay=0.01, eps=1e-6)
TOKENS_DEFINITION = "batch * seq per step (padding positions included)"


class BenchmarkError(ValueError):
    """A bad command-line value; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    seq: int
    batch: int
    mask_rate: float = 0.15  # BERT's; the experiments' mini recipe masks 40%

    @property
    def pad(self) -> int:
        return int(round(0.1 * self.seq))

    @property
    def max_predictions(self) -> int:
        return int(round(self.mask_rate * self.seq))

    @property
    def masked_per_row(self) -> int:
        return int(round(self.mask_rate * (self.seq - self.pad)))

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


def experiment_shape_name(resized: tuple[int, int, int]) -> str:
    """The harness's name for a grid model of (layers, hidden, heads), e.g. `x-L4H192A3`."""
    layers, hidden, heads = resized
    return f"x-L{layers}H{hidden}A{heads}"


def experiment_shapes() -> dict[str, Shape]:
    """The models the CPU grids train (`bert-jax experiment --scale mini`): every Table 6 size resized by the mini
    scale's rule, at its batch, sequence length, vocabulary and masking rate, all read from the grid definitions.
    Named by the resized size, e.g. `x-L4H192A3` (Table 5's BERT_BASE, from 12/768/12)."""
    from bert_jax.experiments.grids import MINI, TABLE6_SIZES

    shapes = {}
    for size in TABLE6_SIZES:
        layers, hidden, heads = MINI.resize(size)
        name = experiment_shape_name(MINI.resize(size))
        shapes[name] = Shape(name, layers, hidden, heads, 4 * hidden, MINI.data.vocab_size,
            MINI.pretrain["data.seq_len"], MINI.pretrain["train.global_batch_size"], MINI.pretrain["data.mask_rate"])
    return shapes


SHAPES = {
    "tiny": Shape("tiny", 2, 64, 2, 256, 2048, 32, 4),
    "mini": Shape("mini", 4, 256, 4, 1024, 30522, 128, 32),
    "small": Shape("small", 4, 512, 8, 2048, 30522, 128, 16),  # Turc et al.'s BERT-Small and -Medium
    "medium": Shape("medium", 8, 512, 8, 2048, 30522, 128, 16),
    "base": Shape("base", 12, 768, 12, 3072, 30522, 128, 8),
    **experiment_shapes(),
}
def at_seq(shape: Shape, seq: int) -> Shape:
    """`shape` at sequence length `seq` with the same tokens per step (the batch shrinks as seq grows)."""
    return dataclasses.replace(shape, name=f"{shape.name}@{seq}", seq=seq, batch=max(1, shape.tokens // seq))


# `--shapes experiments` names them all
SHAPE_GROUPS = {"experiments": [name for name in SHAPES if name.startswith("x-")]}


def make_inputs(shape: Shape, seed: int) -> dict[str, np.ndarray]:
    """The shared batch, in bert_jax's pipeline format plus `mlm_labels` ([B, L], -100 where not predicted)
    for the HF peers."""
    rng = np.random.default_rng(seed)
    b, l, p = shape.batch, shape.seq, shape.max_predictions
    real, n_mask = l - shape.pad, shape.masked_per_row
    pos = np.arange(l)[None, :]
    original = rng.integers(1000, shape.vocab, (b, l)).astype(np.int32)
    original[:, 0], original[:, real - 1] = CLS, SEP
    original[:, real:] = PAD
    # n_mask distinct positions per row among the real ones after [CLS]: the first n_mask of a random order.
    order = np.argsort(rng.random((b, real - 1)), axis=1)[:, :n_mask] + 1
    masked_positions = np.zeros((b, p), np.int32)
    masked_positions[:, :n_mask] = np.sort(order, axis=1)
    masked_weights = np.zeros((b, p), np.float32)
    masked_weights[:, :n_mask] = 1.0
    rows = np.arange(b)[:, None]
    masked_ids = np.where(masked_weights > 0, original[rows, masked_positions], 0).astype(np.int32)
    input_ids = original.copy()
    input_ids[rows, masked_positions[:, :n_mask]] = MASK
    mlm_labels = np.full((b, l), -100, np.int32)
    mlm_labels[rows, masked_positions[:, :n_mask]] = original[rows, masked_positions[:, :n_mask]]
    return {"input_ids": input_ids,
            "token_type_ids": ((pos >= real // 2) & (pos < real)).astype(np.int32).repeat(b, 0),
            "input_mask": (pos < real).astype(np.int32).repeat(b, 0),
            "position_ids": np.tile(np.arange(l, dtype=np.int32), (b, 1)),
            "masked_positions": masked_positions, "masked_ids": masked_ids, "masked_weights": masked_weights,
            "sentence_label": rng.integers(0, 2, b).astype(np.int32), "mlm_labels": mlm_labels}


@dataclasses.dataclass(frozen=True)
class Runner:
    """A framework set up and warm: `run(n)` -> (per-step seconds, last loss); `close()` frees it."""
    framework: str
    info: dict
    run: object
    close: object
    hlo_text: object = None  # () -> the compiled step's HLO text (bert_jax rows; --profile saves it beside the trace)
