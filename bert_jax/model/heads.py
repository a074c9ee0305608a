"""Task heads on top of the encoder. Each takes the encoder output (and, for tied decoders, the encoder)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig
from bert_jax.model.layers import LayerNorm, dense, gather_positions, zeros_init

Array = jax.Array
# The names of the encoder and the heads in every params tree: pretraining, export, interop, the loader.
ENCODER, POOLER, MLM_HEAD, NSP_HEAD, SOP_HEAD, LM_HEAD = "encoder", "pooler", "mlm_head", "nsp_head", "sop_head", "lm_head"
# The heads a pretrained model keeps after pretraining (networks that serve pretraining only are dropped).
MODEL_HEADS = (POOLER, MLM_HEAD, NSP_HEAD, SOP_HEAD, LM_HEAD)
# SOP's classifier has NSP's shape and reads the same pooler, so either serves where the other is asked for.
HEAD_ALIASES = {NSP_HEAD: SOP_HEAD, SOP_HEAD: NSP_HEAD}


@jax.custom_vjp
def add_vocab_bias(logits: Array, bias: Array) -> Array:
    """logits + bias over the last (vocab) axis. The same values and gradients as `+`; the bias gradient is a
    contraction with ones instead of XLA's reduce over the leading axes, which XLA:CPU runs ~40x slower on a
    [batch, predictions, 30522] array (benchmarks/NOTES.md, section 14)."""
    return logits + bias


def _add_vocab_bias_fwd(logits, bias):
    return logits + bias, None


def _add_vocab_bias_bwd(_, g):
    ones = jnp.ones(g.shape[:-1], g.dtype)
    return g, jnp.tensordot(ones, g, axes=g.ndim - 1)


add_vocab_bias.defvjp(_add_vocab_bias_fwd, _add_vocab_bias_bwd)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + GELU + LayerNorm, then the decoder tied to the token embeddings + bias.

    Evaluated only at `positions` (a gather first) unless positions is None: at 15% masking the vocab
    projection at every position is ~7x the work actually needed.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, sequence: Array, attend, positions: Array | None = None) -> Array:
        cfg = self.config
        h = sequence if positions is None else gather_positions(sequence, positions)
        out_axis = "embed_factor" if cfg.factorized else "embed"
        h = dense(cfg, cfg.embed_dim, -1, ("embed", "mlp" if not cfg.factorized else out_axis), (out_axis,),
                  "transform")(h)
        h = jax.nn.gelu(h, approximate=False)
        h = LayerNorm(cfg, axis_name=out_axis, name="layer_norm")(h)
        logits = attend(h)
        bias = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), cfg.param_dtype)
        return add_vocab_bias(logits.astype(jnp.float32), bias.astype(jnp.float32))


class Pooler(nn.Module):
    """tanh(dense([CLS])), or of the token at `pool_positions` (the last real token, for LTR models)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, sequence: Array, pool_positions: Array | None = None) -> Array:
        cfg = self.config
        if pool_positions is None:
            first = sequence[:, 0]
        else:
            first = jnp.take_along_axis(sequence, pool_positions[:, None, None].astype(jnp.int32), axis=1)[:, 0]
        return jnp.tanh(dense(cfg, cfg.hidden_size, -1, ("embed", "mlp"), ("mlp",), "dense")(first))


class Classifier(nn.Module):
    """A dense layer to `num_outputs` logits in float32 (NSP/SOP: 2; classification: #labels; regression: 1)."""

    config: ModelConfig
    num_outputs: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        logits = dense(self.config, self.num_outputs, -1, ("mlp", "classes"), ("classes",), "dense")(x)
        return logits.astype(jnp.float32)


class CausalLMHead(nn.Module):
    """Next-token logits at every position, decoder tied to the token embeddings (left-to-right training)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, sequence: Array, attend, positions: Array | None = None) -> Array:
        return MLMHead(self.config, name="predictions")(sequence, attend, positions)
