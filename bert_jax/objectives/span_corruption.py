"""T5's span corruption: the encoder reads text whose noise spans are each replaced by one sentinel; a shallow
decoder, owned by this objective, writes the spans back: sentinel 0, span 0, sentinel 1, span 1, ..., end token.

The pipeline's 't5_spans' masking (bert_jax/data/noise_spans.py) builds both sides on the host, from
`noise_density` (0.15) and `mean_span_length` (3), T5's defaults. The loss is the decoder's cross-entropy over
every target (sentinels and the end token included, as T5); `span_corruption_token_loss` is the same over the span
tokens alone, the part a unigram model can be held against (the in-run eval reports its floor and ratio).

Sentinels are this objective's own embeddings (`span_sentinels`, `num_sentinels` rows, T5's 100), not vocab
tokens: at a sentinel slot the encoder reads that row in place of a token embedding (`Encoder`'s
`token_embeddings`), and the decoder reads and predicts it as ids V .. V + num_sentinels - 1 past the vocab (its
logits: the tied token table's, then the sentinel table's). So any vocab works, Google's (whose [unused*] rows stay
unused) and the built-in corpus's alike, the encoder's token table keeps the vocab's shape, and export, which
writes the encoder and BERT's heads, leaves the sentinels and the decoder out. The end token is [SEP].

The decoder (`span_decoder`): the targets shifted right behind [PAD] (T5's start token) through the shared
embeddings, learned positions and a LayerNorm, then `decoder_layers` (2) layers of causal self-attention,
cross-attention to the encoder's output and the feed-forward, the encoder's widths and norm placement (post or
pre), and an MLM-shaped head over the vocab and the sentinels.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import model_flops
from bert_jax.data.noise_spans import noise_counts, span_token_weights, target_length
from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.dropout import attention_dropout, make_dropout
from bert_jax.model.heads import MLMHead
from bert_jax.model.layers import MASK_VALUE, FeedForward, LayerNorm, dense, normal_init
from bert_jax.model.pretraining import READS_NOTHING
from bert_jax.objectives.base import Objective, register, weighted_cross_entropy

SENTINELS, DECODER = "span_sentinels", "span_decoder"
MODES = ("full-sentences", "doc-sentences", "single", "segment-pair", "sentence-order", "sentence-pair")


class Attention(nn.Module):
    """Multi-head attention from `queries` [B, Q, H] to `keys_values` [B, K, H] under a bool mask [B, 1, Q, K];
    softmax in float32."""

    config: ModelConfig
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, queries, keys_values, mask, deterministic: bool):
        cfg = self.config
        q = dense(cfg, (cfg.num_heads, cfg.head_dim), -1, ("embed", "heads", "kv"), ("heads", "kv"), "query")(queries)
        kv = dense(cfg, (2, cfg.num_heads, cfg.head_dim), -1, ("embed", "qkv", "heads", "kv"), ("qkv", "heads", "kv"),
                   "key_value")(keys_values)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, kv[:, :, 0]).astype(jnp.float32) / math.sqrt(cfg.head_dim)
        probs = jax.nn.softmax(jnp.where(mask, scores, MASK_VALUE), axis=-1)
        if cfg.attention_dropout_rate > 0.0 and not deterministic:
            probs = attention_dropout(self, probs, cfg.attention_dropout_rate, cfg.attention_dropout_broadcast,
                                      self.speed.dropout_rng)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(cfg.dtype), kv[:, :, 1])
        return dense(cfg, cfg.hidden_size, (-2, -1), ("heads", "kv", "embed"), ("embed",), "out")(out)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, feed-forward; residuals and LayerNorms as the
    encoder's (`norm`: after each, or before each)."""

    config: ModelConfig
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, x, encoded, self_mask, cross_mask, deterministic: bool):
        cfg = self.config
        drop = make_dropout(self.speed.dropout_rng, cfg.dropout_rate)
        pre = cfg.norm == "pre"
        for name, mask in (("self_attention", self_mask), ("cross_attention", cross_mask)):
            norm = LayerNorm(cfg, name=f"{name}_norm")
            h = norm(x) if pre else x
            h = Attention(cfg, self.speed, name=name)(h, h if name == "self_attention" else encoded, mask,
                                                      deterministic)
            x = x + drop(h, deterministic=deterministic)
            x = x if pre else norm(x)
        norm = LayerNorm(cfg, name="mlp_norm")
        h = FeedForward(cfg, name="mlp")(norm(x) if pre else x)
        x = x + drop(h, deterministic=deterministic)
        return x if pre else norm(x)


class SpanDecoder(nn.Module):
    """Logits [B, T, V + num_sentinels] of each target given the earlier ones and the encoder's output."""

    config: ModelConfig  # the encoder's, with num_layers = the decoder's depth
    token: nn.Module  # the encoder's token table (nn.Embed [V, E]), shared
    sentinels: nn.Module  # the objective's sentinel table (nn.Embed [num_sentinels, E]), shared with the input
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, targets, target_weights, encoded, encoder_mask, deterministic: bool):
        cfg = self.config
        vocab, length = self.token.num_embeddings, targets.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"span_corruption: {length} targets exceed max_position_embeddings "
                             f"{cfg.max_position_embeddings}; lower noise_density or raise it")
        inputs = jnp.concatenate([jnp.full_like(targets[:, :1], cfg.pad_token_id), targets[:, :-1]], axis=1)
        x = embed_extended(self.token, self.sentinels, inputs)
        axis = "embed_factor" if cfg.factorized else "embed"
        x = x + nn.Embed(cfg.max_position_embeddings, cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         embedding_init=normal_init(cfg, ("position", axis)), name="position")(jnp.arange(length))
        x = make_dropout(self.speed.dropout_rng, cfg.dropout_rate)(
            LayerNorm(cfg, axis_name=axis, name="embeddings_norm")(x), deterministic=deterministic)
        if cfg.factorized:
            x = dense(cfg, cfg.hidden_size, -1, ("embed_factor", "embed"), ("embed",), "projection")(x)
        # a target attends to itself and the targets before it (its inputs are the ones before it), never past the end
        earlier = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
        self_mask = (earlier[None] & (target_weights > 0)[:, None, :])[:, None]
        cross_mask = (encoder_mask != 0)[:, None, None, :]
        for i in range(cfg.num_layers):
            x = DecoderLayer(cfg, self.speed, name=f"layer_{i}")(x, encoded, self_mask, cross_mask, deterministic)
        if cfg.norm == "pre":
            x = LayerNorm(cfg, name="final_norm")(x)
        attend = lambda h: jnp.concatenate([self.token.attend(h), self.sentinels.attend(h)], axis=-1)  # noqa: E731
        head_cfg = cfg.replace(vocab_size=vocab + self.sentinels.num_embeddings)
        return MLMHead(head_cfg, name="lm_head")(x, attend)


def embed_extended(token, sentinels, ids):
    """Embeddings of ids over the vocab then the sentinels (id V + k is sentinel k)."""
    vocab = token.num_embeddings
    words = token(jnp.minimum(ids, vocab - 1))
    marks = sentinels(jnp.clip(ids - vocab, 0, sentinels.num_embeddings - 1))
    return jnp.where((ids >= vocab)[..., None], marks.astype(words.dtype), words)


def extended_ids(ids, sentinel_numbers, vocab: int):
    """Vocab ids, with sentinel k + 1 (the batch's numbering, 0 = none) turned into id vocab + k."""
    return jnp.where(sentinel_numbers > 0, vocab + sentinel_numbers - 1, ids)


def decoder_logits(ctx):
    """(logits [B, T, V + num_sentinels], extended targets [B, T]) of the batch's targets."""
    cfg, b, options = ctx.config, ctx.batch, ctx.options
    count = int(options["num_sentinels"])
    _, most = noise_counts(b["input_ids"].shape[1], float(options["noise_density"]), float(options["mean_span_length"]))
    if most > count:
        raise ValueError(f"span_corruption: a {b['input_ids'].shape[1]}-token row can hold {int(most)} spans but "
                         f"num_sentinels={count}; raise objective_options.span_corruption.num_sentinels")
    token = ctx.encoder.embeddings.token
    axis = "embed_factor" if cfg.factorized else "embed"
    sentinels = nn.Embed(count, cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         embedding_init=normal_init(cfg, ("vocab", axis)), name=SENTINELS)
    vocab = token.num_embeddings
    inputs = embed_extended(token, sentinels, extended_ids(b["input_ids"], b["input_sentinels"], vocab))
    encoded = ctx.encoder(b["input_ids"], b.get("token_type_ids"), b.get("input_mask"), b.get("position_ids"),
                          ctx.deterministic, token_embeddings=inputs).sequence
    decoder_cfg = cfg.replace(num_layers=int(options["decoder_layers"]), causal=True)
    targets = extended_ids(b["target_ids"], b["target_sentinels"], vocab)
    decoder = SpanDecoder(decoder_cfg, token, sentinels, ctx.encoder.speed, name=DECODER)
    return decoder(targets, b["target_weights"], encoded, b["input_mask"], ctx.deterministic), targets


def denominators(batch):
    n = batch["target_weights"].sum()
    tokens = span_token_weights(batch["target_sentinels"], batch["target_weights"]).sum()
    return {"span_corruption_loss": n, "span_corruption_accuracy": n, "span_corruption_token_loss": tokens,
            "span_corruption_token_accuracy": tokens}


def forward(ctx):
    b = ctx.batch
    if "target_sentinels" not in b:
        raise ValueError("span_corruption needs T5 span-masked batches; the run must use masking 't5_spans'")
    logits, targets = decoder_logits(ctx)
    loss, correct = weighted_cross_entropy(logits, targets, b["target_weights"])
    token_loss, token_correct = weighted_cross_entropy(logits, targets,
                                                       span_token_weights(b["target_sentinels"], b["target_weights"]))
    return {"span_corruption_loss": loss, "span_corruption_accuracy": correct,
            "span_corruption_token_loss": token_loss, "span_corruption_token_accuracy": token_correct}


def masking_options(options):
    return {"noise_density": float(options["noise_density"]), "mean_span_length": float(options["mean_span_length"])}


def flops(cfg, seq_len, predictions, options):
    """Beyond the encoder pass (the shared count): the decoder over the T = target_length targets (its layers,
    cross-attending to all seq_len encoder positions) and its head over the vocab and the sentinels."""
    targets = target_length(seq_len, float(options["noise_density"]), float(options["mean_span_length"]))
    decoder = cfg.replace(num_layers=int(options["decoder_layers"]))
    layers = decoder.num_layers * model_flops.decoder_layer(decoder, targets, seq_len)
    head = model_flops.lm_head(decoder, targets, cfg.vocab_size + int(options["num_sentinels"]))
    return layers + model_flops.projection(decoder, targets) + head


SPAN_CORRUPTION = register(Objective(
    name="span_corruption", data_modes=MODES, masking="t5_spans", denominators=denominators, forward=forward,
    loss_weights={"span_corruption_loss": 1.0},
    options={"noise_density": 0.15, "mean_span_length": 3.0, "decoder_layers": 2, "num_sentinels": 100},
    masking_options=masking_options, reads=READS_NOTHING, flops=flops))
