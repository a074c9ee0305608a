"""Masked language modelling (BERT): predict the original token at each masked position."""
from bert_jax import model_flops
from bert_jax.model.heads import MLM_HEAD, MLMHead
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy

ALL_MODES = ("segment-pair", "sentence-order", "sentence-pair", "full-sentences", "doc-sentences", "single")


def denominators(batch):
    n = batch["masked_weights"].sum()
    return {"mlm_loss": n, "mlm_accuracy": n}


def forward(ctx):
    logits = MLMHead(ctx.config, name=MLM_HEAD)(ctx.hidden, ctx.encoder.attend)
    loss, correct = weighted_cross_entropy(logits, ctx.batch["masked_ids"], ctx.batch["masked_weights"])
    return {"mlm_loss": loss, "mlm_accuracy": correct}


MLM = register(Objective(name="mlm", data_modes=ALL_MODES, masking="mlm", denominators=denominators,
                         forward=forward, loss_weights={"mlm_loss": 1.0},
                         flops=lambda cfg, seq_len, predictions, options: model_flops.lm_head(cfg, predictions),
                         reads=lambda batch: batch["masked_positions"]))
