"""Packing must not change losses: a packed row's loss sums (and gradients) equal those of its examples run alone
with the same masks, for a bidirectional (MLM) and a causal (LTR) model, on the xla and dot_product_attention
paths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.model import SpeedConfig, preset
from bert_jax.model.params import unbox
from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives.base import ObjectiveSet

CFG = preset("tiny", vocab_size=97, max_position_embeddings=32, hidden_size=32, num_heads=2, intermediate_size=64,
             dropout_rate=0.0, attention_dropout_rate=0.0, norm="pre")
LENGTHS, WIDTH, P = (7, 5, 9), 24, 3  # three examples packed into one row of 24, 3 masked tokens each


def examples_and_masks(seed=0):
    rng = np.random.default_rng(seed)
    examples = [rng.integers(5, 97, size=n).astype(np.int32) for n in LENGTHS]
    masked = [np.sort(rng.choice(np.arange(1, n - 1), P, replace=False)).astype(np.int32) for n in LENGTHS]
    return examples, masked


def batch_of(rows, width, masked_per_row, targets_per_row, mask_inputs=True):
    """rows: list of lists of examples packed into each row; masked/targets: per row, positions in the row;
    mask_inputs: the masked tokens read [MASK] (id 3) in the input (MLM; LTR reads the text unmasked)."""
    b, p = len(rows), max(len(m) for m in masked_per_row)
    batch = {k: np.zeros((b, width), np.int32) for k in ("input_ids", "token_type_ids", "input_mask", "position_ids")}
    batch.update(masked_positions=np.zeros((b, p), np.int32), masked_ids=np.zeros((b, p), np.int32),
                 masked_weights=np.zeros((b, p), np.float32))
    for r, row in enumerate(rows):
        start = 0
        for k, ex in enumerate(row):
            batch["input_ids"][r, start:start + len(ex)] = ex
            batch["input_mask"][r, start:start + len(ex)] = k + 1
            batch["position_ids"][r, start:start + len(ex)] = np.arange(len(ex))
            start += len(ex)
        n = len(masked_per_row[r])
        batch["masked_positions"][r, :n], batch["masked_ids"][r, :n] = masked_per_row[r], targets_per_row[r]
        batch["masked_weights"][r, :n] = 1.0
    for r in range(b if mask_inputs else 0):
        batch["input_ids"][r, batch["masked_positions"][r][batch["masked_weights"][r] > 0]] = 3
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("objective", ["mlm", "ltr"])
@pytest.mark.parametrize("attention_impl", ["xla", "dot_product_attention"])
def test_a_packed_row_has_the_loss_and_gradients_of_its_examples_run_alone(objective, attention_impl):
    objectives = ObjectiveSet.parse(objective)
    cfg = CFG.replace(causal=objectives.causal)
    model = PretrainModel(cfg, objectives, speed=SpeedConfig(attention_impl=attention_impl))
    examples, masked = examples_and_masks()
    offsets = np.cumsum((0,) + LENGTHS[:-1])
    mlm = objective == "mlm"
    packed = batch_of([examples], WIDTH, [np.concatenate([m + o for m, o in zip(masked, offsets)])],
                      [np.concatenate([ex[m] for ex, m in zip(examples, masked)])], mlm)
    alone = batch_of([[ex] for ex in examples], WIDTH, masked, [ex[m] for ex, m in zip(examples, masked)], mlm)
    params = unbox(model.init(jax.random.key(0), packed))["params"]

    def loss_sums(p, batch):
        sums = model.apply({"params": p}, batch)
        return sum(v for k, v in sums.items() if k.endswith("_loss")), sums

    (total_packed, sums_packed), grad_packed = jax.value_and_grad(loss_sums, has_aux=True)(params, packed)
    (total_alone, sums_alone), grad_alone = jax.value_and_grad(loss_sums, has_aux=True)(params, alone)
    assert sums_packed.keys() == sums_alone.keys() and float(total_packed) > 1.0
    for k in sums_packed:
        np.testing.assert_allclose(float(sums_packed[k]), float(sums_alone[k]), rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(grad_packed), jax.tree.leaves(grad_alone)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)
    # and the test can fail: one example's tokens seen by another (no segment ids) changes the sums
    leaky = dict(packed, input_mask=(packed["input_mask"] > 0).astype(jnp.int32))
    assert abs(float(loss_sums(params, leaky)[0]) - float(total_packed)) > 1e-3
