"""Matmul FLOPs (2 per multiply-add) of the model's parts, per sequence, forward only.

The parts every objective is built from: a transformer layer's query side and key/value side, the encoder stack,
the tied LM head, the pooler + classifier. `bert_jax.train.flops` adds the encoder to each objective's own term
(`Objective.flops`), and each objective composes its term from these (ELECTRA's generator is an `encoder` of its
own config; PLM's query stream is `per_query` at its targets; T5's decoder is `decoder_layer`s). It lives outside
`bert_jax/objectives` and `bert_jax/train` so both can use it (objectives never import train). Embedding lookups,
norms, softmax and activations are ignored, as usual.
"""
from __future__ import annotations

from bert_jax.model.config import ModelConfig


def feed_forward(cfg: ModelConfig) -> float:
    """One position through a layer's feed-forward (GEGLU has two input projections)."""
    gated = 2 if cfg.activation == "geglu" else 1
    return 2.0 * (gated + 1) * cfg.hidden_size * cfg.intermediate_size


def key_value(cfg: ModelConfig) -> float:
    """One key position of a layer: its key and value projections."""
    return 2.0 * 2 * cfg.hidden_size * cfg.hidden_size


def per_query(cfg: ModelConfig, keys: int) -> float:
    """One query position of a layer attending to `keys` positions: query and output projections, the scores and
    the weighted sum, and the feed-forward."""
    h = cfg.hidden_size
    return 2.0 * 2 * h * h + feed_forward(cfg) + 2.0 * 2 * keys * h


def projection(cfg: ModelConfig, positions: int) -> float:
    """A factorised embedding's projection (embed_dim -> hidden) at `positions`; 0 when not factorised."""
    return 2.0 * positions * cfg.embed_dim * cfg.hidden_size if cfg.factorized else 0.0


def encoder(cfg: ModelConfig, seq_len: int, final_layer_positions: int | None = None) -> float:
    """The encoder stack over `seq_len` tokens; with `final_layer_positions` the last layer's query side runs at
    that many positions only (its keys and values at every position)."""
    layers = seq_len * cfg.num_layers * (key_value(cfg) + per_query(cfg, seq_len))
    if final_layer_positions is not None:
        layers -= (seq_len - min(final_layer_positions, seq_len)) * per_query(cfg, seq_len)
    return layers + projection(cfg, seq_len)


def lm_head(cfg: ModelConfig, positions: int, outputs: int | None = None) -> float:
    """BERT's MLM-shaped head at `positions`: dense hidden -> embed_dim, then the tied decoder over `outputs`
    (default: the vocab)."""
    outputs = cfg.vocab_size if outputs is None else outputs
    return 2.0 * positions * (cfg.hidden_size * cfg.embed_dim + cfg.embed_dim * outputs)


def pooler_classifier(cfg: ModelConfig, classes: int = 2) -> float:
    """The pooler (dense on one position) and a `classes`-way classifier on it."""
    h = cfg.hidden_size
    return 2.0 * (h * h + classes * h)


def decoder_layer(cfg: ModelConfig, targets: int, sources: int) -> float:
    """One decoder layer over `targets` positions: causal self-attention (counted whole, as the encoder's
    attention), cross-attention to `sources` encoder positions (their keys and values included), feed-forward."""
    h = cfg.hidden_size
    self_attention = targets * (key_value(cfg) + 2.0 * 2 * h * h + 2.0 * 2 * targets * h)
    cross_attention = sources * key_value(cfg) + targets * (2.0 * 2 * h * h + 2.0 * 2 * sources * h)
    return self_attention + cross_attention + targets * feed_forward(cfg)
