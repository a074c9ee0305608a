"""Building blocks of the encoder: LayerNorm, attention, feed-forward, position encodings.

Every parameter carries logical axis names (see `bert_jax/parallel/sharding.py` for the rules that map them
to mesh axes). Compute runs in `dtype`; LayerNorm statistics and the softmax always run in float32.
"""
from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from bert_jax.model.config import ModelConfig, SpeedConfig
from bert_jax.model.dropout import attention_dropout, make_dropout

Array = jax.Array
MASK_VALUE = -1e9  # finite, so rows with nothing to attend to (all-padding rows) give a uniform softmax, not NaN


def normal_init(config: ModelConfig, names: tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def position_table_init(config: ModelConfig, names: tuple) -> Callable:
    """The learned position table's initializer (model.position_init)."""
    if config.position_init == "normal":
        return normal_init(config, names)

    def sinusoid(key, shape, dtype=jnp.float32):
        del key  # deterministic: rows of norm initializer_range * sqrt(width), as a normal init's rows have on average
        return jnp.asarray(sinusoidal_table(*shape) * (config.initializer_range * math.sqrt(2.0)), dtype)

    return nn.with_logical_partitioning(sinusoid, names)


def zeros_init(names: tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones_init(names: tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


class LayerNorm(nn.Module):
    """LayerNorm with float32 statistics whatever the compute dtype."""

    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        features = x.shape[-1]
        scale = self.param("scale", ones_init((self.axis_name,)), (features,), cfg.param_dtype)
        bias = self.param("bias", zeros_init((self.axis_name,)), (features,), cfg.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.layer_norm_eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(cfg.dtype)


class Dense(nn.Module):
    """Contract the last `len(axes)` input dims with a kernel of shape in_dims + features.

    Written out instead of nn.DenseGeneral because that one initialises a flattened 2-D kernel and reshapes it,
    which breaks logical sharding constraints applied at init under a mesh.
    """

    config: ModelConfig
    features: tuple[int, ...]
    num_in: int
    kernel_names: tuple
    bias_names: tuple
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array, feature_slice: slice | None = None) -> Array:
        """`feature_slice` computes only those entries of the first feature axis (a slice of the same kernel)."""
        cfg = self.config
        in_shape = x.shape[x.ndim - self.num_in:]
        kernel = self.param("kernel", normal_init(cfg, self.kernel_names), in_shape + self.features, cfg.param_dtype)
        if feature_slice is not None:
            kernel = kernel[(slice(None),) * self.num_in + (feature_slice,)]
        contract = (tuple(range(x.ndim - self.num_in, x.ndim)), tuple(range(self.num_in)))
        y = jax.lax.dot_general(x.astype(cfg.dtype), kernel.astype(cfg.dtype), (contract, ((), ())))
        if self.use_bias:
            bias = self.param("bias", zeros_init(self.bias_names), self.features, cfg.param_dtype)
            y = y + (bias if feature_slice is None else bias[feature_slice]).astype(cfg.dtype)
        return y


def dense(config: ModelConfig, features, axes, kernel_names: tuple, bias_names: tuple, name: str,
          use_bias: bool = True) -> Dense:
    features = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    num_in = len(axes) if isinstance(axes, (tuple, list)) else 1
    return Dense(config, features, num_in, kernel_names, bias_names, use_bias, name=name)


def sinusoidal_table(length: int, width: int) -> np.ndarray:
    """The Transformer's fixed sin/cos table, [length, width] (sin on even, cos on odd features)."""
    position = np.arange(length, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, width, 2, dtype=np.float64) * (-math.log(10000.0) / width))
    table = np.zeros((length, width), dtype=np.float64)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div[: width // 2])
    return table.astype(np.float32)


def relative_position_bucket(relative: Array, bidirectional: bool, num_buckets: int, max_distance: int) -> Array:
    """T5's bucketing of (key - query) offsets: exact for small offsets, log-spaced up to max_distance."""
    bucket = jnp.zeros_like(relative)
    n = -relative
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    n_safe = jnp.maximum(n, 1).astype(jnp.float32)
    large = max_exact + (
        jnp.log(n_safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """T5-style learned bias per head and relative-position bucket, shared by all layers: [B, heads, Q, K]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, position_ids: Array) -> Array:
        cfg = self.config
        table = self.param("embedding", normal_init(cfg, ("relpos_buckets", "heads")),
                           (cfg.relative_buckets, cfg.num_heads), cfg.param_dtype)
        relative = position_ids[:, None, :] - position_ids[:, :, None]  # key - query, [B, Q, K]
        buckets = relative_position_bucket(relative, not cfg.causal, cfg.relative_buckets, cfg.relative_max_distance)
        bias = jnp.take(table, buckets, axis=0)  # [B, Q, K, heads]
        return jnp.transpose(bias, (0, 3, 1, 2)).astype(jnp.float32)


def apply_rotary(x: Array, position_ids: Array, base: float) -> Array:
    """RoPE on [B, L, heads, head_dim], rotating feature pairs (i, i + d/2) by angle pos * base^(-2i/d)."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = position_ids.astype(jnp.float32)[..., None] * inv_freq  # [B, L, half]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def gather_positions(sequence: Array, positions: Array) -> Array:
    """[B, L, ...] gathered at [B, P] positions -> [B, P, ...]."""
    index = positions.astype(jnp.int32).reshape(positions.shape + (1,) * (sequence.ndim - 2))
    return jnp.take_along_axis(sequence, index, axis=1)


def gather_queries(scores: Array, positions: Array) -> Array:
    """[B, N, Q, K] (a mask or bias over queries and keys) at [B, P] query positions -> [B, N, P, K]."""
    if scores.shape[2] == 1:  # broadcast over queries already
        return scores
    index = positions.astype(jnp.int32)[:, None, :, None]
    return jnp.take_along_axis(scores, jnp.broadcast_to(index, scores.shape[:2] + index.shape[2:3] + (1,)), axis=2)


def attention_mask(input_mask: Array, causal: bool) -> Array:
    """Boolean [B, 1, Q, K]: keys must be real and in the query's packed example; padding queries see all
    real keys (as BERT implementations do), so their outputs match and stay finite."""
    q, k = input_mask[:, :, None], input_mask[:, None, :]
    allowed = (k > 0) & ((q == k) | (q == 0))
    if causal:
        length = input_mask.shape[1]
        allowed = allowed & (jnp.arange(length)[None, :, None] >= jnp.arange(length)[None, None, :])
    return allowed[:, None, :, :]


class SelfAttention(nn.Module):
    config: ModelConfig
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, x: Array, mask: Array, bias: Array | None, position_ids: Array, deterministic: bool,
                 query_positions: Array | None = None, query_inputs: Array | None = None) -> Array:
        """Outputs [B, L, H], or [B, P, H] at `query_positions` [B, P] only (keys and values from all of x).
        `query_inputs` [B, P, H]: the queries at `query_positions` are computed from these instead of from x there
        (XLNet's query stream, which must not read its own token; see `Encoder`'s query_stream)."""
        cfg = self.config
        # One fused projection for q, k and v: one matmul instead of three.
        projection = dense(cfg, (3, cfg.num_heads, cfg.head_dim), -1, ("embed", "qkv", "heads", "kv"),
                           ("qkv", "heads", "kv"), "qkv")
        q_positions = position_ids
        if query_positions is None:
            qkv = checkpoint_name(projection(x), "qkv_out")  # what speed.remat_policy=save_qkv_out keeps
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            kv = checkpoint_name(projection(x, slice(1, 3)), "qkv_out")
            k, v = kv[:, :, 0], kv[:, :, 1]
            q_source = gather_positions(x, query_positions) if query_inputs is None else query_inputs
            q = checkpoint_name(projection(q_source, slice(0, 1)), "qkv_out")[:, :, 0]
            q_positions = gather_positions(position_ids, query_positions)
            mask = gather_queries(mask, query_positions)
            bias = None if bias is None else gather_queries(bias, query_positions)
        if cfg.position_embedding == "rotary":
            q = apply_rotary(q, q_positions, cfg.rotary_base)
            k = apply_rotary(k, position_ids, cfg.rotary_base)
        q = nn.with_logical_constraint(q, ("act_batch", "act_length", "act_heads", "act_kv"))
        k = nn.with_logical_constraint(k, ("act_batch", "act_length", "act_heads", "act_kv"))
        v = nn.with_logical_constraint(v, ("act_batch", "act_length", "act_heads", "act_kv"))
        dropout = cfg.attention_dropout_rate if not deterministic else 0.0
        if self.speed.attention_impl == "dot_product_attention" and dropout == 0.0:
            out = jax.nn.dot_product_attention(q, k, v, bias=None if bias is None else bias.astype(q.dtype),
                                               mask=mask, scale=1.0 / math.sqrt(cfg.head_dim))
        else:
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(cfg.head_dim)
            if bias is not None:
                scores = scores + bias
            scores = jnp.where(mask, scores, MASK_VALUE)
            probs = jax.nn.softmax(scores, axis=-1)
            if dropout > 0.0:
                probs = attention_dropout(self, probs, dropout, cfg.attention_dropout_broadcast, self.speed.dropout_rng)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(cfg.dtype), v)
        out = nn.with_logical_constraint(out, ("act_batch", "act_length", "act_heads", "act_kv"))
        return dense(cfg, cfg.hidden_size, (-2, -1), ("heads", "kv", "embed"), ("embed",), "out")(out)


class FeedForward(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        if cfg.activation == "geglu":
            h = dense(cfg, (2, cfg.intermediate_size), -1, ("embed", "gate", "mlp"), ("gate", "mlp"), "wi")(x)
            h = jax.nn.gelu(h[:, :, 0], approximate=False) * h[:, :, 1]
        else:
            h = dense(cfg, cfg.intermediate_size, -1, ("embed", "mlp"), ("mlp",), "wi")(x)
            h = jax.nn.gelu(h, approximate=False)  # BERT uses the exact (erf) GELU
        h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
        return dense(cfg, cfg.hidden_size, -1, ("mlp", "embed"), ("embed",), "wo")(h)


class TransformerLayer(nn.Module):
    """Attention then feed-forward, each with residual and LayerNorm: after (post-LN, BERT) or before (pre-LN)."""

    config: ModelConfig
    speed: SpeedConfig = SpeedConfig()

    @nn.compact
    def __call__(self, x: Array, mask: Array, bias: Array | None, position_ids: Array, deterministic: bool,
                 query_positions: Array | None = None, query_inputs: Array | None = None) -> Array:
        """[B, L, H] -> [B, L, H], or [B, P, H] at `query_positions` [B, P]: every position still serves as a key
        and value, but the rest of the layer runs at those positions only (see `Encoder`'s output_positions).
        With `query_inputs` [B, P, H] the rest of the layer runs on them (queries and residual) instead of on x at
        those positions: XLNet's query stream, with this layer's weights and x as keys and values."""
        cfg = self.config
        drop = make_dropout(self.speed.dropout_rng, cfg.dropout_rate)
        pre = cfg.norm == "pre"
        pre_norm = LayerNorm(cfg, name="attention_norm") if pre else None
        h = pre_norm(x) if pre else x
        queries = query_inputs if query_inputs is None or not pre else pre_norm(query_inputs)
        attention = SelfAttention(cfg, self.speed, name="attention")
        h = attention(h, mask, bias, position_ids, deterministic, query_positions, queries)
        if query_inputs is not None:
            x = query_inputs
        elif query_positions is not None:
            x = gather_positions(x, query_positions)
        x = x + drop(h, deterministic=deterministic)
        x = x if pre else LayerNorm(cfg, name="attention_norm")(x)
        h = LayerNorm(cfg, name="mlp_norm")(x) if pre else x
        h = FeedForward(cfg, name="mlp")(h)
        x = x + drop(h, deterministic=deterministic)
        x = x if pre else LayerNorm(cfg, name="mlp_norm")(x)
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
