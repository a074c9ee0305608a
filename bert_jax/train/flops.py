"""Model FLOPs of a training step (forward + backward = 3x forward), for tokens/s -> MFU."""
from __future__ import annotations

from bert_jax.model.config import ModelConfig


def forward_flops_per_sequence(cfg: ModelConfig, seq_len: int, predictions: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one sequence through the encoder and an MLM head at `predictions`
    positions; embedding lookups, norms and softmax are ignored as usual."""
    h, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    gated = 2 if cfg.activation == "geglu" else 1
    per_token_layer = 2 * (3 * h * h + h * h + (gated + 1) * h * f)  # qkv, out, mlp
    attention = 2 * 2 * seq_len * h  # scores and weighted sum, per token per layer
    encoder = seq_len * l * (per_token_layer + attention)
    projection = 2 * seq_len * cfg.embed_dim * h if cfg.factorized else 0
    head = predictions * 2 * (h * cfg.embed_dim + cfg.embed_dim * cfg.vocab_size)
    pooler = 2 * (h * h + 2 * h)
    return float(encoder + projection + head + pooler)


def train_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int, predictions: int) -> float:
    return 3.0 * batch * forward_flops_per_sequence(cfg, seq_len, predictions)
