"""The pretraining model: the encoder run once, each objective handed the final hidden states it reads.

`PretrainModel(config, objectives)` is what trains. Each objective (bert_jax/objectives/) declares what it reads
of the encoder's final layer over the batch (`Objective.reads`):
  - a function batch -> [B, P] positions (MLM: the masked ones; NSP/SOP: [CLS]): it gets hidden [B, P, H];
  - "sequence": it gets hidden [B, L, H];
  - "nothing": no hidden (ELECTRA runs the encoder itself, on its corrupted input).
The encoder runs at most once for all of them. When every reader reads positions, its last layer computes at
those positions alone (`speed.sparse_final_layer`; the speed-up lives in the encoder, objectives never see it).

Head names are shared with `BertForPreTraining`, the logits view of the same tree that interop and export use:
a run of 'mlm+nsp' has exactly the params tree of `BertForPreTraining(config)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.encoder import Encoder
from bert_jax.model.heads import ENCODER, Classifier, MLMHead, Pooler
from bert_jax.model.layers import gather_positions

Array = jax.Array
Batch = Mapping[str, Array]
READS_SEQUENCE, READS_NOTHING = "sequence", "nothing"


@dataclasses.dataclass
class Context:
    """What an objective's forward sees. `hidden`: the final hidden states it declared it reads; `encoder`: for
    the tied decoder (`encoder.attend`) and for objectives that run passes of their own; `module`: the parent that
    owns the heads it creates by name and its rng streams."""

    module: nn.Module
    config: ModelConfig
    encoder: Encoder
    batch: Batch
    hidden: Array | None
    deterministic: bool
    options: Mapping[str, Any]


def reads_positions(objective) -> bool:
    return callable(objective.reads)


def reads_sparsely(objectives, speed: SpeedConfig) -> bool:
    """Whether the encoder's last layer runs at the readers' positions only: every objective that reads the
    final layer reads positions, and the speed settings allow it."""
    readers = [o for o in objectives if o.reads != READS_NOTHING]
    return speed.sparse_final_layer and bool(readers) and all(reads_positions(o) for o in readers)


def final_layer_positions(objectives, batch: Batch, speed: SpeedConfig) -> int | None:
    """How many positions the last layer computes per example when it runs sparsely (for the FLOPs count); None
    when it computes them all (a scanned stack computes the layer whole)."""
    if speed.scan_layers or not reads_sparsely(objectives, speed):
        return None
    return sum(int(o.reads(batch).shape[1]) for o in objectives if reads_positions(o))


def final_hidden(encoder: Encoder, objectives, batch: Batch, speed: SpeedConfig,
                 deterministic: bool) -> dict[str, Array | None]:
    """Each objective's hidden states from one encoder pass (or none, when no objective reads one)."""
    readers = [o for o in objectives if o.reads != READS_NOTHING]
    out: dict[str, Array | None] = {o.name: None for o in objectives}
    if not readers:
        return out
    run = lambda positions=None: encoder(batch["input_ids"], batch.get("token_type_ids"),  # noqa: E731
                                         batch.get("input_mask"), batch.get("position_ids"), deterministic,
                                         output_positions=positions).sequence
    if reads_sparsely(objectives, speed):
        positions = [o.reads(batch).astype(jnp.int32) for o in readers]
        hidden, start = run(jnp.concatenate(positions, axis=1)), 0
        for o, p in zip(readers, positions):
            out[o.name], start = hidden[:, start:start + p.shape[1]], start + p.shape[1]
        return out
    sequence = run()
    for o in readers:
        out[o.name] = gather_positions(sequence, o.reads(batch)) if reads_positions(o) else sequence
    return out


class PretrainModel(nn.Module):
    """The encoder plus whatever heads the objectives create; returns loss and metric sums per term.

    `objectives` is an `ObjectiveSet` (bert_jax/objectives/base.py): its `objectives`, and `options` per name."""

    config: ModelConfig
    objectives: Any
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, batch: Batch, deterministic: bool = True) -> dict[str, Array]:
        encoder = Encoder(self.config, speed=self.speed, name=ENCODER)
        objectives = self.objectives.objectives
        hidden = final_hidden(encoder, objectives, batch, self.speed, deterministic)
        sums: dict[str, Array] = {}
        for objective in objectives:
            ctx = Context(self, self.config, encoder, batch, hidden[objective.name], deterministic,
                          self.objectives.options[objective.name])
            sums.update(objective.forward(ctx))
        return sums


@flax.struct.dataclass
class PreTrainingOutput:
    mlm_logits: Array  # [B, P, V] at masked positions, or [B, L, V] when positions is None
    sentence_logits: Array  # [B, 2]
    sequence: Array


class BertForPreTraining(nn.Module):
    """The logits view of an 'mlm+nsp' PretrainModel's tree (same names, same shapes): transformers parity,
    conversion and export read and write this tree."""

    config: ModelConfig
    speed: SpeedConfig = SpeedConfig()

    def setup(self):
        # attribute names = MLM_HEAD, POOLER, NSP_HEAD (tests/test_objectives.py checks the trees are one)
        self.encoder = Encoder(self.config, speed=self.speed)
        self.mlm_head = MLMHead(self.config)
        self.pooler = Pooler(self.config)
        self.nsp_head = Classifier(self.config, 2)

    def __call__(self, input_ids, token_type_ids=None, input_mask=None, position_ids=None,
                 masked_positions=None, deterministic: bool = True) -> PreTrainingOutput:
        out = self.encoder(input_ids, token_type_ids, input_mask, position_ids, deterministic)
        mlm_logits = self.mlm_head(out.sequence, self.encoder.attend, masked_positions)
        sentence_logits = self.nsp_head(self.pooler(out.sequence))
        return PreTrainingOutput(mlm_logits=mlm_logits, sentence_logits=sentence_logits, sequence=out.sequence)
