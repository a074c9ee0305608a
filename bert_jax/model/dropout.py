"""Dropout masks: jax.random's or a fused counter hash (`speed.dropout_rng=fused`).

jax.random runs Threefry-2x32 as a primitive that XLA:CPU lowers with rolled loops (jax registers the CPU lowering
with `use_rolled_loops=True`): every round is a pass over arrays in memory, 4-7% of a CPU training step
(benchmarks/NOTES.md). `fused` computes the same Threefry-2x32 (20 rounds, the Random123 rotation constants, bit
for bit jax's `threefry_2x32`) written out as plain uint32 arithmetic on counters made from iotas, so XLA fuses the
whole hash, the comparison and the select into the op that applies the mask: no bits array, no loop. Each element
gets its own counter (its index in the mask; the first axis and the rest in the two counter words), so the mask
does not depend on how the array is sharded. On GPU/TPU, where jax's threefry is already unrolled and fused, the
two cost about the same.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds on uint32 arrays (keys broadcast against counters), unrolled."""
    ks = (k0, k1, k0 ^ k1 ^ PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def key_words(key: Array) -> tuple[Array, Array]:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = data.astype(jnp.uint32).reshape(-1)
    return data[0], data[1]


def fused_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """32 random bits per element of `shape`: the hash of (element index in the first axis, index in the rest)."""
    if not shape:
        shape = (1,)
    rest = int(np.prod(shape[1:], dtype=np.int64))
    if rest >= 2 ** 32 or shape[0] >= 2 ** 32:
        raise ValueError(f"dropout mask of shape {shape} is too large for 32-bit counters; use speed.dropout_rng=jax")
    lead = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
    flat = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, 0, -1):
        flat = flat + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    k0, k1 = key_words(key)
    return threefry2x32(k0, k1, flat, lead)[0]


def apply_dropout(x: Array, key: Array, rate: float, mask_shape: tuple | None, rng_impl: str) -> Array:
    """x with elements dropped at `rate` and the rest scaled by 1 / keep; `mask_shape` (broadcastable to x) shares
    one mask along its unit axes. `rng_impl`: "fused" (see the module docstring) or "jax"."""
    shape = tuple(mask_shape or x.shape)
    if rng_impl == "fused":
        threshold = min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)
        keep = fused_bits(key, shape) >= np.uint32(threshold)
        keep_prob = 1.0 - threshold / 2.0 ** 32
    else:
        keep = jax.random.bernoulli(key, 1.0 - rate, shape)
        keep_prob = 1.0 - rate
    return jnp.where(keep, x / keep_prob, jnp.zeros((), x.dtype)).astype(x.dtype)


class Dropout(nn.Module):
    """nn.Dropout's interface with the model's choice of mask generator."""

    rate: float
    rng_impl: str  # "fused" or "jax" (SpeedConfig.dropout_rng)

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        return apply_dropout(x, self.make_rng("dropout"), self.rate, None, self.rng_impl)


def make_dropout(rng_impl: str, rate: float, **kwargs) -> nn.Module:
    """Dropout at `rate` with masks from `rng_impl` (SpeedConfig.dropout_rng)."""
    if rng_impl == "jax":
        return nn.Dropout(rate, **kwargs)  # flax's own: the masks of checkpoints trained before the option existed
    return Dropout(rate, rng_impl, **kwargs)


def attention_dropout(module: nn.Module, probs: Array, rate: float, broadcast: bool, rng_impl: str) -> Array:
    """Dropout of the attention probabilities [B, heads, Q, K], per element or with one [Q, K] mask shared
    across examples and heads (`broadcast`: ModelConfig.attention_dropout_broadcast, B x heads times fewer random
    draws)."""
    shape = (1, 1) + probs.shape[2:] if broadcast else probs.shape
    return apply_dropout(probs, module.make_rng("dropout"), rate, shape, rng_impl)
