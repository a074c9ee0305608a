"""One fine-tuning setting (finetune/train.py): its optimizer is pretraining's AdamW at a unit peak, and its steps
run through pretraining's strategy seam, where pmap and mesh train to the same model."""
import jax
import numpy as np
import optax
import pytest

from bert_jax.finetune.batching import bucket_widths, num_batches
from bert_jax.finetune.model import FineTuneModel, HeadConfig, masked_optimizer
from bert_jax.finetune.train import Setting, data_parallel_devices, optimizer_config, run_setting
from bert_jax.model import BertForPreTraining, preset
from bert_jax.model.params import unbox
from bert_jax.train.optimizer import make_optimizer, weight_decay_mask

VOCAB = 40
CFG = preset("tiny", vocab_size=VOCAB, hidden_size=32, num_heads=2, intermediate_size=64, num_layers=1,
             max_position_embeddings=32, dropout_rate=0.0, attention_dropout_rate=0.0)


def random_tree(seed):
    rng = np.random.default_rng(seed)
    leaf = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return {"encoder": {"layer": {"kernel": leaf(4, 3), "bias": leaf(3)}, "norm": {"scale": leaf(3)}},
            "classifier": {"dense": {"kernel": leaf(3, 2), "bias": leaf(2)}}}


@pytest.mark.parametrize("variant", ["standard", "features"])
def test_optimizer_times_the_learning_rate_is_adamw_with_warmup_and_linear_decay(variant):
    setting, total, lr = Setting(learning_rate=3e-3, seed=0, warmup_fraction=0.3), 10, 3e-3
    params = random_tree(0)
    head = HeadConfig("classification", variant=variant)
    tx = masked_optimizer(make_optimizer(optimizer_config(setting, total))[0], params, head)
    # BERT's fine-tuning recipe written out with optax: 3 warm-up steps to the peak, linear decay to 0 at step 10.
    fraction = optax.join_schedules([optax.linear_schedule(0.0, 1.0, 3), optax.linear_schedule(1.0, 0.0, 7)], [3])
    reference = masked_optimizer(optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(lambda count: lr * fraction(count), b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                    mask=weight_decay_mask)), params, head)
    state, ref_state = tx.init(params), reference.init(params)
    for step in range(total + 2):  # through warm-up, decay and past the end
        grads = random_tree(step + 1)
        updates, state = tx.update(grads, state, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        got = jax.tree.map(lambda u: lr * u, updates)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected), strict=True):
            # The schedules round differently by at most one float32 ulp of the rate.
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-12, err_msg=f"{jax.tree_util.keystr(path)} step {step}")
        if variant == "features":
            assert all(not np.any(u) for u in jax.tree.leaves(got["encoder"]))
        params = optax.apply_updates(params, got)


def test_mesh_splits_a_batch_over_the_most_devices_that_divide_it():
    assert jax.device_count() == 8  # tests/conftest.py
    assert [data_parallel_devices("mesh", b) for b in (32, 16, 12, 6, 7)] == [8, 8, 4, 2, 1]
    assert data_parallel_devices("pmap", 16) == 8


def tiny_features(n, seed, width=16, kind="classification"):
    """Rows of random length; classification: whether token 7 occurs; tagging: each token's id mod 3."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, width + 1, size=n)
    ids = rng.integers(5, VOCAB, size=(n, width)).astype(np.int32)
    ids = np.where(np.arange(width)[None] < lengths[:, None], ids, 0)
    ids[:, 0] = 2
    features = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "length": lengths.astype(np.int32)}
    if kind == "tagging":
        features["tag_ids"] = (ids % 3).astype(np.int32)
        features["tag_weights"] = (ids > 2).astype(np.float32)  # [CLS] and padding are never scored
    else:
        features["label"] = (ids == 7).any(axis=1).astype(np.int32)
    return features


@pytest.mark.parametrize("kind", ["classification", "tagging"])
def test_pmap_and_mesh_fine_tune_to_the_same_outputs(kind):
    # Without dropout the two strategies compute the same steps, summed in another order: 8 devices, 2 rows each,
    # and the last batch's weight-0 padding rows leave the devices unequal counts to normalise by.
    model = FineTuneModel(CFG, HeadConfig(kind, num_labels=3 if kind == "tagging" else 2, dropout=0.0))
    ids = np.ones((1, 8), np.int32)
    pretrained = unbox(BertForPreTraining(CFG).init(jax.random.key(0), ids))["params"]
    train, dev = tiny_features(72, 1, kind=kind), tiny_features(40, 2, kind=kind)
    setting = Setting(learning_rate=3e-3, seed=0, epochs=2, batch_size=16)
    widths = bucket_widths(16)  # one width: one compilation of each step per strategy
    results = {strategy: run_setting(model, pretrained, train, {"dev": dev}, setting, widths,
                                     each_epoch=("dev",), log=lambda _: None, strategy=strategy)
               for strategy in ("mesh", "pmap")}
    mesh, pmap = results["mesh"], results["pmap"]
    assert mesh["steps"] == pmap["steps"] == 2 * num_batches(train, 16, widths)
    np.testing.assert_allclose([e["train_loss"] for e in pmap["epochs"]],
                               [e["train_loss"] for e in mesh["epochs"]], rtol=1e-5)
    assert mesh["epochs"][-1]["train_loss"] < mesh["epochs"][0]["train_loss"]  # it trained
    for epoch in (1, 2):
        for key, value in mesh["outputs"][epoch]["dev"].items():
            got = pmap["outputs"][epoch]["dev"][key]
            assert got.shape == value.shape and value.shape[0] == 40, key
            np.testing.assert_allclose(got, value, atol=1e-5, rtol=1e-5, err_msg=f"epoch {epoch} {key}")
