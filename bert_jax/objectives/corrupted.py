"""A worked example (docs/objectives.md walks through it): at each masked slot, was the input token altered?

The masking pipeline replaces a chosen token by [MASK] (80%), by a random token (10%) or keeps it (10%);
this objective asks, for each chosen position, whether the token the model sees there differs from the
original -- a per-position binary decision read off the batch (input_ids vs masked_ids), with a two-way
classifier on the final hidden state. Small, but it shows every part of an objective: the batch fields it
needs, the masking it asks the pipeline for, denominators counted from the batch, a head created by name,
sums returned per term, an option, and registration. Use it beside MLM ('mlm+0.1*corrupted') or alone.
"""
import jax
import jax.numpy as jnp

from bert_jax.model.heads import Classifier
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy
from bert_jax.objectives.mlm import ALL_MODES


def corrupted_labels(batch):
    """[B, P] int: 1 where the input token at a masked position differs from the original, else 0."""
    seen = jnp.take_along_axis(batch["input_ids"], batch["masked_positions"].astype(jnp.int32), axis=1)
    return (seen != batch["masked_ids"]).astype(jnp.int32)


def denominators(batch):
    n = batch["masked_weights"].sum()  # padding slots of the P predictions have weight 0
    return {"corrupted_loss": n, "corrupted_accuracy": n}


def forward(ctx):
    hidden = ctx.hidden  # [B, P, H] at the positions it reads: the masked ones
    logits = Classifier(ctx.config, 2, name="corrupted_head")(hidden)
    # an option: 'label_smoothing' spreads that much target mass evenly over the two classes
    smooth = float(ctx.options["label_smoothing"])
    labels, weights = corrupted_labels(ctx.batch), ctx.batch["masked_weights"]
    loss, correct = weighted_cross_entropy(logits, labels, weights)
    if smooth:
        uniform = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)  # cross-entropy to (1/2, 1/2)
        loss = (1.0 - smooth) * loss + smooth * jnp.sum(uniform * weights)
    return {"corrupted_loss": loss, "corrupted_accuracy": correct}


CORRUPTED = register(Objective(name="corrupted", data_modes=ALL_MODES, masking="mlm", denominators=denominators,
                               forward=forward, loss_weights={"corrupted_loss": 1.0},
                               options={"label_smoothing": 0.0}, reads=lambda batch: batch["masked_positions"],
                               flops=lambda cfg, seq_len, predictions, options: 2.0 * predictions * cfg.hidden_size * 2))
