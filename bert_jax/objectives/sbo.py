"""SpanBERT's span-boundary objective: predict each masked token of a span from the two tokens just
outside the span and the token's position inside it, without looking at the token's own representation.

    h = LN(GELU(W2 . LN(GELU(W1 . [x_left ; x_right ; p_offset]))))   ->   logits = h . E^T + b

x_left, x_right: final hidden states at `span_left` / `span_right` (from span masking, which never masks a
boundary token); p_offset: a learned embedding of the 0-based offset inside the span; E: the token embedding
table (the tied decoder). Used as 'mlm+sbo' (the loss is their sum): the set then asks the pipeline for 'span'
masking, whose masked_* arrays MLM reads unchanged. Single-segment data, no NSP (SpanBERT).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import model_flops
from bert_jax.model.layers import LayerNorm, dense, gather_positions, normal_init, zeros_init
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy


class SpanBoundaryHead(nn.Module):
    """Logits [B, P, V] for the targets at span_offset inside the spans bounded by span_left/span_right."""

    config: object  # ModelConfig

    @nn.compact
    def __call__(self, sequence, attend, span_left, span_right, span_offset):
        cfg = self.config
        # offsets are < the span's length <= seq_len <= max_position_embeddings, so the table covers them all
        offset = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                          embedding_init=normal_init(cfg, ("position", "embed")), name="offset_embedding")(span_offset)
        h = jnp.concatenate([gather_positions(sequence, span_left), gather_positions(sequence, span_right),
                             offset.astype(sequence.dtype)], axis=-1)
        out_axis = "embed_factor" if cfg.factorized else "embed"
        h = dense(cfg, cfg.hidden_size, -1, ("mlp", "embed"), ("embed",), "dense_1")(h)
        h = LayerNorm(cfg, name="norm_1")(jax.nn.gelu(h, approximate=False))
        h = dense(cfg, cfg.embed_dim, -1, ("embed", out_axis if cfg.factorized else "mlp"), (out_axis,), "dense_2")(h)
        h = LayerNorm(cfg, axis_name=out_axis, name="norm_2")(jax.nn.gelu(h, approximate=False))
        bias = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), cfg.param_dtype)
        return attend(h).astype(jnp.float32) + bias.astype(jnp.float32)


def denominators(batch):
    n = batch["masked_weights"].sum()
    return {"sbo_loss": n, "sbo_accuracy": n}


def forward(ctx):
    b = ctx.batch
    if "span_left" not in b:
        raise ValueError("sbo needs span-masked batches (span_left/right/offset); the run must use masking 'span'")
    logits = SpanBoundaryHead(ctx.config, name="sbo_head")(ctx.hidden, ctx.encoder.attend,
                                                           b["span_left"], b["span_right"], b["span_offset"])
    loss, correct = weighted_cross_entropy(logits, b["masked_ids"], b["masked_weights"])
    return {"sbo_loss": loss, "sbo_accuracy": correct}


def flops(cfg, seq_len, predictions, options):
    """At each target: dense_1 from [left; right; offset] (3H) to H, then the MLM-shaped head (dense_2, decoder)."""
    return 2.0 * predictions * 3 * cfg.hidden_size * cfg.hidden_size + model_flops.lm_head(cfg, predictions)


SBO = register(Objective(name="sbo", data_modes=("single", "doc-sentences", "full-sentences"), masking="span",
                         denominators=denominators, forward=forward, loss_weights={"sbo_loss": 1.0},
                         flops=flops))
