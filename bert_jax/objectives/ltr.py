"""Left-to-right language modelling (the BERT paper's 'LTR & No NSP' ablation).

Causal attention (the objective sets `causal`, so the run's model attends only to earlier tokens) and
next-token prediction at every real position whose next token belongs to the same example: targets are
input_ids[t + 1] where input_mask[t] == input_mask[t + 1] != 0, so packed rows never predict across an
example boundary and the last token of a row or example predicts nothing. No masking; the decoder is tied to
the token embeddings. Fine-tuning such a model must keep `model.causal=True` and pool the last real token
([CLS] comes first and so sees nothing): `bert-jax finetune` does (bert_jax/finetune/model.py, `pool_kind`).
"""
import jax.numpy as jnp

from bert_jax import model_flops
from bert_jax.model.heads import LM_HEAD, CausalLMHead
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy


def next_token_weights(input_mask):
    """[B, L-1]: 1.0 where position t predicts token t+1 of the same (packed) example."""
    here, nxt = input_mask[:, :-1], input_mask[:, 1:]
    return ((here != 0) & (here == nxt)).astype(jnp.float32)


def denominators(batch):
    n = next_token_weights(batch["input_mask"]).sum()
    return {"ltr_loss": n, "ltr_accuracy": n}


def forward(ctx):
    logits = CausalLMHead(ctx.config, name=LM_HEAD)(ctx.hidden[:, :-1], ctx.encoder.attend)
    weights = next_token_weights(ctx.batch["input_mask"])
    loss, correct = weighted_cross_entropy(logits, ctx.batch["input_ids"][:, 1:], weights)
    return {"ltr_loss": loss, "ltr_accuracy": correct}


LTR = register(Objective(name="ltr", data_modes=("single", "full-sentences", "doc-sentences", "segment-pair"),
                         masking="none", denominators=denominators, forward=forward,
                         loss_weights={"ltr_loss": 1.0}, causal=True,
                         flops=lambda cfg, seq_len, predictions, options: model_flops.lm_head(cfg, seq_len - 1)))
