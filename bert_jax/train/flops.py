"""Model FLOPs of a training step (forward + backward = 3x forward), for tokens/s -> MFU."""
from __future__ import annotations

from bert_jax.model.config import ModelConfig


def forward_flops_per_sequence(cfg: ModelConfig, seq_len: int, predictions: int,
                               final_layer_positions: int | None = None) -> float:
    """Matmul FLOPs (2 per multiply-add) of one sequence through the encoder and an MLM head at `predictions`
    positions; embedding lookups, norms and softmax are ignored as usual. Only what the loss needs counts: with
    `final_layer_positions` (MLM + NSP: predictions + 1) the last layer's queries, attention output and
    feed-forward count at those positions alone (its keys and values at every position)."""
    h, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    gated = 2 if cfg.activation == "geglu" else 1
    kv = 2 * 2 * h * h
    per_query = 2 * (h * h + h * h + (gated + 1) * h * f) + 2 * 2 * seq_len * h  # q, out, mlp; scores, sum
    encoder = seq_len * l * (kv + per_query)
    if final_layer_positions is not None:
        encoder -= (seq_len - min(final_layer_positions, seq_len)) * per_query
    projection = 2 * seq_len * cfg.embed_dim * h if cfg.factorized else 0
    head = predictions * 2 * (h * cfg.embed_dim + cfg.embed_dim * cfg.vocab_size)
    pooler = 2 * (h * h + 2 * h)
    return float(encoder + projection + head + pooler)


def train_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int, predictions: int,
                         final_layer_positions: int | None = None) -> float:
    return 3.0 * batch * forward_flops_per_sequence(cfg, seq_len, predictions, final_layer_positions)
