"""The accelerator attention path (`speed.attention_impl='dot_product_attention'`, cuDNN flash attention on GPU)
against the default einsum + fp32-softmax path, on CPU: same logits and gradients in fp32, within bf16 rounding in
bf16, with padding, packing, causal masks and every position kind."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.model import BertForPreTraining, SpeedConfig, preset
from bert_jax.model.params import unbox

CFG = preset("tiny", vocab_size=211, max_position_embeddings=64, hidden_size=64, num_heads=4,
             intermediate_size=96, dropout_rate=0.0, attention_dropout_rate=0.0)
XLA, DPA = SpeedConfig(), SpeedConfig(attention_impl="dot_product_attention")


def padded_and_packed_batch(seed=0, length=24):
    """Row 0 full, row 1 padded, row 2 two packed examples (segment ids 1, 2) then padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 211, size=(3, length)).astype(np.int32)
    mask = np.zeros((3, length), np.int32)
    mask[0], mask[1, :15] = 1, 1
    mask[2, :9], mask[2, 9:20] = 1, 2
    types = np.zeros_like(ids)
    types[:, length // 2:] = 1
    positions = np.broadcast_to(np.arange(length), ids.shape).copy()
    positions[2, 9:20] = np.arange(11)
    return jnp.asarray(ids * (mask > 0)), jnp.asarray(types * (mask > 0)), jnp.asarray(mask), jnp.asarray(positions)


def mlm_loss(cfg, speed, params, batch):
    out = BertForPreTraining(cfg, speed=speed).apply(params, *batch)
    logp = jax.nn.log_softmax(out.mlm_logits.astype(jnp.float32))
    real = (batch[2] > 0).astype(jnp.float32)
    return -(jnp.take_along_axis(logp, batch[0][..., None], -1)[..., 0] * real).sum() / real.sum(), out


@pytest.mark.parametrize("position,causal", [("learned", False), ("relative", False), ("rotary", True)])
def test_dot_product_attention_equals_the_xla_path_in_fp32(position, causal):
    cfg = CFG.replace(position_embedding=position, causal=causal, norm="pre")
    batch = padded_and_packed_batch()
    params = unbox(BertForPreTraining(cfg).init(jax.random.key(0), batch[0]))
    (loss_a, out_a), grad_a = jax.value_and_grad(lambda p: mlm_loss(cfg, XLA, p, batch), has_aux=True)(params)
    (loss_b, out_b), grad_b = jax.value_and_grad(lambda p: mlm_loss(cfg, DPA, p, batch), has_aux=True)(params)
    real = np.asarray(batch[2]) > 0
    np.testing.assert_allclose(np.asarray(out_b.mlm_logits)[real], np.asarray(out_a.mlm_logits)[real], atol=2e-5)
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6, rtol=1e-4)


def test_dot_product_attention_in_bf16_is_within_bf16_rounding_of_fp32():
    cfg = CFG.replace(position_embedding="rotary", norm="pre")
    batch = padded_and_packed_batch(seed=1)
    params = unbox(BertForPreTraining(cfg).init(jax.random.key(1), batch[0]))
    f32 = np.asarray(mlm_loss(cfg, XLA, params, batch)[1].mlm_logits)
    real = np.asarray(batch[2]) > 0
    for speed in (XLA, DPA):
        loss, out = mlm_loss(cfg.replace(dtype="bfloat16"), speed, params, batch)
        assert out.mlm_logits.dtype == jnp.float32 and np.isfinite(float(loss))
        rel = np.linalg.norm(np.asarray(out.mlm_logits)[real] - f32[real]) / np.linalg.norm(f32[real])
        assert rel < 1e-2, (speed.attention_impl, rel)


def test_attention_dropout_in_training_takes_the_xla_path():
    """jax.nn.dot_product_attention has no dropout: with attention dropout on, training must still drop (the module
    falls back to the einsum path), so both impls give the same training outputs under the same key."""
    cfg = CFG.replace(attention_dropout_rate=0.3)
    batch = padded_and_packed_batch(seed=2)
    params = unbox(BertForPreTraining(cfg).init(jax.random.key(2), batch[0]))

    def train_out(speed, key):
        return np.asarray(BertForPreTraining(cfg, speed=speed).apply(params, *batch, deterministic=False,
                                                                     rngs={"dropout": key}).sequence)

    a, b = train_out(XLA, jax.random.key(3)), train_out(DPA, jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - train_out(DPA, jax.random.key(4))).max() > 1e-3  # the dropout masks do act
