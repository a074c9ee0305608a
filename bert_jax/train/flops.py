"""Model FLOPs of a training step, for tokens/s -> MFU and for sizing runs to equal compute (the objectives grid).

One count for every run: the encoder's pass over the sequence (`bert_jax.model_flops.encoder`), plus each
objective's own term (`Objective.flops`: its heads, ELECTRA's generator, PLM's query stream, T5's decoder, a
distillation teacher's forward). Trained parts cost 3x their forward in a step (forward + backward), frozen
parts (a teacher) 1x. Only what the loss needs counts: with `final_layer_positions` (MLM + NSP: predictions + 1)
the last layer's query side runs at those positions alone.
"""
from __future__ import annotations

import ml_collections

from bert_jax import model_flops
from bert_jax.data.masking import example_fields, num_predictions
from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.pretraining import final_layer_positions as reader_positions
from bert_jax.objectives.base import Flops, ObjectiveSet
from bert_jax.train.run_setup import masking_config, resolve_model
from bert_jax.train.state import example_batch

DEFAULT_OBJECTIVES = "mlm+nsp"  # callers that name none (benchmarks): BERT's


def forward_flops(cfg: ModelConfig, seq_len: int, predictions: int, final_layer_positions: int | None = None,
                  objectives: ObjectiveSet | None = None) -> Flops:
    objectives = objectives if objectives is not None else ObjectiveSet.parse(DEFAULT_OBJECTIVES)
    encoder = Flops(trained=model_flops.encoder(cfg, seq_len, final_layer_positions))
    return encoder + objectives.flops(cfg, seq_len, predictions)


def forward_flops_per_sequence(cfg: ModelConfig, seq_len: int, predictions: int,
                               final_layer_positions: int | None = None,
                               objectives: ObjectiveSet | None = None) -> float:
    """Matmul FLOPs (2 per multiply-add) of one sequence's forward pass, trained and frozen parts together."""
    return forward_flops(cfg, seq_len, predictions, final_layer_positions, objectives).forward


def train_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int, predictions: int,
                         final_layer_positions: int | None = None, objectives: ObjectiveSet | None = None) -> float:
    return batch * forward_flops(cfg, seq_len, predictions, final_layer_positions, objectives).train_step


def planned_train_flops(config: ml_collections.ConfigDict, vocab_size: int) -> float:
    """A pretraining config's FLOPs per step before its data exists (`vocab_size` stands in for the manifest's),
    counted as `bert-jax pretrain` counts them: the same objectives, masking, predictions and sparse final layer.
    Teachers are not read (see distill's `flops`)."""
    objectives = ObjectiveSet.parse(config.objectives, config.objective_options.to_dict(), prepare=False)
    cfg = resolve_model(config.copy_and_resolve_references(), {"vocab_size": int(config.model.vocab_size or vocab_size)},
                        objectives)
    masking = masking_config(config, objectives)
    seq_len, batch = int(config.data.seq_len), int(config.train.global_batch_size)
    predictions = num_predictions(masking, seq_len) if masking.kind != "none" else 1
    example = {**example_batch(1, seq_len, predictions), **example_fields(masking, 1, seq_len)}
    speed = SpeedConfig.from_dict(config.speed.to_dict())
    return train_flops_per_step(cfg, batch, seq_len, predictions,
                                reader_positions(objectives.objectives, example, speed), objectives)
