"""The BERT encoder: embeddings, then a stack of transformer layers (plain, scanned, rematerialised or shared)."""
from __future__ import annotations

import flax.struct

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.dropout import make_dropout
from bert_jax.model.layers import (LayerNorm, RelativePositionBias, TransformerLayer, attention_mask, dense,
                                   gather_positions, normal_init, position_table_init, sinusoidal_table)

Array = jax.Array

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_out": jax.checkpoint_policies.save_only_these_names("qkv_out"),
}


@flax.struct.dataclass
class EncoderOutput:
    sequence: Array  # [B, L, H] (or [B, P, H] at the output_positions asked for), after pre-LN's final LayerNorm
    hidden_states: tuple[Array, ...] | None  # embeddings output then each layer's output, if asked for
    query: Array | None = None  # [B, P, H]: the query stream's output at QueryStream.positions, when one was given


@flax.struct.dataclass
class QueryStream:
    """XLNet's second attention stream (bert_jax/objectives/plm.py): at `positions` it knows where a token is but
    not what it is. It starts from `embedding` (a learned vector standing in for every token there) plus the
    position and segment embeddings, and each layer, with the content stream's weights, attends from it to the
    content stream's input to that layer under `query_mask`; the content stream itself attends under
    `content_mask`. Both masks are ANDed with the padding/packing mask."""

    positions: Array  # int [B, P]
    content_mask: Array  # bool [B, 1, L, L] over (query, key) positions
    query_mask: Array  # bool [B, 1, L, L] over (query, key) positions; only the rows at `positions` are read
    embedding: Array  # [embed_dim]


class Embeddings(nn.Module):
    config: ModelConfig
    # Another module's token table (an nn.Embed of [vocab, embed_dim]) to use instead of an own one: ELECTRA's
    # generator shares the discriminator's token embeddings; the params stay where that module lives.
    shared_token: nn.Module | None = None
    speed: SpeedConfig = SpeedConfig()

    def setup(self):
        cfg = self.config
        embed_axis = "embed_factor" if cfg.factorized else "embed"
        if self.shared_token is not None:
            self.token = self.shared_token
        else:
            self.token = nn.Embed(cfg.vocab_size, cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                  embedding_init=normal_init(cfg, ("vocab", embed_axis)))
        self.segment = nn.Embed(cfg.type_vocab_size, cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                embedding_init=normal_init(cfg, ("type_vocab", embed_axis)))
        if cfg.position_embedding == "learned":
            self.position = nn.Embed(cfg.max_position_embeddings, cfg.embed_dim, dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype,
                                     embedding_init=position_table_init(cfg, ("position", embed_axis)))
        self.layer_norm = LayerNorm(cfg, axis_name=embed_axis)
        self.dropout = make_dropout(self.speed.dropout_rng, cfg.dropout_rate)
        if cfg.factorized:
            self.projection = dense(cfg, cfg.hidden_size, -1, ("embed_factor", "embed"), ("embed",), "projection")

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool,
                 token_embeddings: Array | None = None) -> Array:
        """`token_embeddings` [B, L, E], when given, stand in for the token table's rows of `input_ids` (T5's sentinels,
        XLNet's query stream: inputs that are not vocab tokens)."""
        cfg = self.config
        tokens = self.token(input_ids) if token_embeddings is None else token_embeddings.astype(cfg.dtype)
        x = tokens + self.segment(token_type_ids)
        if cfg.position_embedding == "learned":
            x = x + self.position(position_ids)
        elif cfg.position_embedding == "sinusoidal":
            table = jnp.asarray(sinusoidal_table(cfg.max_position_embeddings, cfg.embed_dim))
            x = x + jnp.take(table, position_ids, axis=0).astype(x.dtype)
        x = self.dropout(self.layer_norm(x), deterministic=deterministic)
        if cfg.factorized:
            x = self.projection(x)
        return x

    def attend(self, x: Array) -> Array:
        """Logits against the token embedding table (the tied MLM/LM decoder)."""
        return self.token.attend(x)


class _ScanLayer(nn.Module):
    """Adapter giving TransformerLayer the (carry, x) -> (carry, y) signature nn.scan wants."""

    config: ModelConfig
    speed: SpeedConfig
    deterministic: bool
    layer_cls: type

    @nn.compact
    def __call__(self, x, mask, bias, position_ids, query_positions=None, query_inputs=None):
        x = self.layer_cls(self.config, self.speed, name="layer")(x, mask, bias, position_ids, self.deterministic,
                                                                  query_positions, query_inputs)
        return x, None


class Encoder(nn.Module):
    config: ModelConfig
    shared_token: nn.Module | None = None  # see Embeddings.shared_token
    speed: SpeedConfig = SpeedConfig()  # how it runs (scanned, rematerialised, ...), never what it computes

    def setup(self):
        cfg = self.config
        self.embeddings = Embeddings(cfg, self.shared_token, self.speed)
        if cfg.position_embedding == "relative":
            self.relative_bias = RelativePositionBias(cfg)
        if cfg.norm == "pre":
            self.final_norm = LayerNorm(cfg)

    def _layer_cls(self):
        policy = self.speed.remat_policy
        if policy == "none":
            return TransformerLayer
        return nn.remat(TransformerLayer, policy=REMAT_POLICIES[policy], static_argnums=(5,))

    @nn.compact
    def _stack(self, x, mask, bias, position_ids, deterministic: bool, output_hidden_states: bool,
               output_positions, query=None):
        """`query`: (g, query mask, positions) of a query stream, run beside x through every layer; returns
        (x, hidden states, g)."""
        cfg = self.config
        layer_cls = self._layer_cls()
        scan = self.speed.scan_layers
        if scan and query is not None:
            raise ValueError("the two-stream encoder (objective plm) runs the unscanned stack; set "
                             "speed.scan_layers=False")
        if scan and not output_hidden_states:
            scan_kwargs = dict(in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers)
            if cfg.share_layers:
                scanned = nn.scan(_ScanLayer, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                                  **scan_kwargs)
            else:
                scanned = nn.scan(_ScanLayer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                                  metadata_params={nn.PARTITION_NAME: "layers"}, **scan_kwargs)
            name = "layer_shared" if cfg.share_layers else "layers"
            x, _ = scanned(cfg, self.speed, deterministic, layer_cls, name=name)(x, mask, bias, position_ids)
            # Every scanned layer has the same shapes, so the last one runs at all positions too.
            return (x if output_positions is None else gather_positions(x, output_positions)), None, None
        if scan:
            raise ValueError("output_hidden_states needs the unscanned stack; set speed.scan_layers=False "
                             "(feature extraction and fine-tuning with all layers)")
        hidden = [x]
        # Shared (ALBERT) params sit at layer_shared/layer whether scanned or not, so checkpoints move freely.
        shared = None
        if cfg.share_layers:
            shared = _ScanLayer(cfg, self.speed, deterministic, layer_cls, name="layer_shared")
        g, query_mask, query_positions = query if query is not None else (None, None, None)
        for i in range(cfg.num_layers):
            queries = output_positions if i == cfg.num_layers - 1 else None
            layer = shared if shared is not None else layer_cls(cfg, self.speed, name=f"layer_{i}")
            if g is not None:  # the query stream reads this layer's input content stream as keys and values
                g = (shared(x, query_mask, bias, position_ids, query_positions, g)[0] if shared is not None else
                     layer(x, query_mask, bias, position_ids, deterministic, query_positions, g))
            if shared is not None:
                x, _ = shared(x, mask, bias, position_ids, queries)
            else:
                x = layer(x, mask, bias, position_ids, deterministic, queries)
            hidden.append(x)
        return x, tuple(hidden) if output_hidden_states else None, g

    def __call__(self, input_ids: Array, token_type_ids: Array | None = None, input_mask: Array | None = None,
                 position_ids: Array | None = None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_positions: Array | None = None,
                 token_embeddings: Array | None = None, query_stream: QueryStream | None = None) -> EncoderOutput:
        """`output_positions` [B, P]: the caller reads the output at these positions only, so the last layer
        computes its queries, feed-forward and LayerNorms there alone (at 15% masking, ~1/6 of that layer's
        work; it still attends over every position) and `sequence` is [B, P, H]. The scanned stack computes the
        last layer whole and gathers. `token_embeddings`: see `Embeddings`. `query_stream`: XLNet's two-stream
        attention (see `QueryStream`); its output is `query`, and `sequence` is the content stream."""
        cfg = self.config
        batch, length = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if input_mask is None:
            input_mask = (input_ids != cfg.pad_token_id).astype(jnp.int32)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic, token_embeddings)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        mask = attention_mask(input_mask, cfg.causal)
        bias = self.relative_bias(position_ids) if cfg.position_embedding == "relative" else None
        query = None
        if query_stream is not None:
            at = query_stream.positions.astype(jnp.int32)
            stand_in = jnp.broadcast_to(query_stream.embedding, at.shape + query_stream.embedding.shape[-1:])
            g = self.embeddings(gather_positions(input_ids, at), gather_positions(token_type_ids, at),
                                gather_positions(position_ids, at), deterministic, stand_in)
            query = (g, mask & query_stream.query_mask, at)
            mask = mask & query_stream.content_mask
        x, hidden, g = self._stack(x, mask, bias, position_ids, deterministic, output_hidden_states, output_positions,
                                   query)
        if cfg.norm == "pre":
            x = self.final_norm(x)
            g = None if g is None else self.final_norm(g)
        return EncoderOutput(sequence=x, hidden_states=hidden, query=g)

    def attend(self, x: Array) -> Array:
        return self.embeddings.attend(x)
