"""Next-sentence prediction (BERT): is segment B the text that followed A (0) or a random one (1)?"""
import jax.numpy as jnp

from bert_jax import model_flops
from bert_jax.model.heads import NSP_HEAD, POOLER, SOP_HEAD, Classifier, Pooler
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy


def sentence_pair_denominators(prefix):
    def denominators(batch):
        n = (batch["sentence_label"] >= 0).sum()
        return {f"{prefix}_loss": n, f"{prefix}_accuracy": n}
    return denominators


def first_position(batch):
    return jnp.zeros((batch["input_ids"].shape[0], 1), jnp.int32)


def pooler_flops(cfg, seq_len, predictions, options):
    return model_flops.pooler_classifier(cfg, 2)  # the pooler at [CLS] and the two-way classifier


def sentence_pair_forward(prefix):
    def forward(ctx):
        pooled = Pooler(ctx.config, name=POOLER)(ctx.hidden)  # [CLS], the only position read
        logits = Classifier(ctx.config, 2, name={"nsp": NSP_HEAD, "sop": SOP_HEAD}[prefix])(pooled)
        labels = ctx.batch["sentence_label"]
        loss, correct = weighted_cross_entropy(logits, jnp.maximum(labels, 0), labels >= 0)
        return {f"{prefix}_loss": loss, f"{prefix}_accuracy": correct}
    return forward


NSP = register(Objective(name="nsp", data_modes=("segment-pair", "sentence-pair"), masking="none",
                         denominators=sentence_pair_denominators("nsp"), forward=sentence_pair_forward("nsp"),
                         loss_weights={"nsp_loss": 1.0}, reads=first_position, flops=pooler_flops))
