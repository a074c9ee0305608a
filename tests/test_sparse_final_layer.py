"""The sparse final layer (`speed.sparse_final_layer`): when every objective reads the last layer at a few
positions, that layer runs there alone. It must be the same function as the whole layer followed by a gather."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.model import ModelConfig, SpeedConfig
from bert_jax.model.params import to_scanned, unbox
from bert_jax.model.encoder import Encoder
from bert_jax.model.pretraining import PretrainModel, final_layer_positions
from bert_jax.objectives import ObjectiveSet
from bert_jax.objectives.mlm import MLM
from bert_jax.train.flops import forward_flops_per_sequence

B, L, P = 4, 24, 5
CFG = ModelConfig(vocab_size=90, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=32)
SPARSE, WHOLE = SpeedConfig(), SpeedConfig(sparse_final_layer=False)


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, L), np.int32)
    mask[0, 15:] = 0  # a padded row
    mask[1, 20:] = 0
    positions = np.sort(rng.choice(np.arange(1, 15), size=(B, P)), axis=1).astype(np.int32)
    weights = np.ones((B, P), np.float32)
    weights[2, -2:] = 0.0  # unused prediction slots point at position 0, as the pipeline pads them
    positions[2, -2:] = 0
    return {"input_ids": np.where(mask > 0, rng.integers(5, 90, (B, L)), 0).astype(np.int32),
            "token_type_ids": (np.arange(L)[None] >= 10).astype(np.int32).repeat(B, 0),
            "input_mask": mask, "masked_positions": positions,
            "masked_ids": rng.integers(5, 90, (B, P)).astype(np.int32), "masked_weights": weights,
            "sentence_label": rng.integers(0, 2, (B,)).astype(np.int32)}


def loss_and_grads(cfg, params, batch, spec="mlm+nsp", deterministic=True, rng=None, speed=SPARSE):
    model = PretrainModel(cfg, ObjectiveSet.parse(spec), speed)

    def loss(p):
        sums = model.apply(p, batch, deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})
        return sum(v for k, v in sums.items() if k.endswith("_loss")), sums

    (total, sums), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return total, sums, grads


def assert_same(a, b, rtol=2e-5, atol=2e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
    assert jax.tree.structure(a) == jax.tree.structure(b)


@pytest.mark.parametrize("overrides", [
    {}, {"norm": "pre"}, {"position_embedding": "relative"}, {"position_embedding": "rotary"},
    {"share_layers": True}, {"activation": "geglu"}, {"remat_policy": "save_qkv_out"}, {"causal": True}],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "bert")
def test_sparse_final_layer_equals_the_whole_layer_then_a_gather(overrides):
    batch = make_batch()
    remat = {k: v for k, v in overrides.items() if k == "remat_policy"}  # a SpeedConfig field
    cfg = CFG.replace(**{k: v for k, v in overrides.items() if k not in remat})
    params = PretrainModel(cfg, ObjectiveSet.parse("mlm+nsp")).init(jax.random.key(0), batch)
    whole = loss_and_grads(cfg, params, batch, speed=WHOLE.replace(**remat))
    sparse = loss_and_grads(cfg, params, batch, speed=SPARSE.replace(**remat))
    assert_same(whole[1], sparse[1])
    assert_same(whole[2], sparse[2])
    assert float(whole[0]) > 0


def test_sparse_path_really_runs_the_last_layer_at_the_read_positions_only():
    """XLA's cost analysis of the compiled step: sparse / whole as bert_jax.train.flops predicts (XLA counts a
    multiply-add differently, so compare ratios)."""
    batch = make_batch()
    cfg = CFG.replace(num_layers=1, hidden_size=64, intermediate_size=256)
    params = PretrainModel(cfg, ObjectiveSet.parse("mlm+nsp")).init(jax.random.key(0), batch)

    def flops(speed):
        fn = jax.jit(lambda p: loss_and_grads(cfg, p, batch, speed=speed)[0])
        return fn.lower(params).compile().cost_analysis()["flops"]

    whole, sparse = flops(WHOLE), flops(SPARSE)
    predicted = forward_flops_per_sequence(cfg, L, P, P + 1) / forward_flops_per_sequence(cfg, L, P)
    assert predicted < 0.5
    assert abs(sparse / whole - predicted) < 0.05, (sparse / whole, predicted)


def test_scanned_stack_gives_the_same_result():
    batch = make_batch(1)
    params = PretrainModel(CFG, ObjectiveSet.parse("mlm+nsp")).init(jax.random.key(1), batch)
    unscanned = loss_and_grads(CFG, params, batch)
    scanned = loss_and_grads(CFG, {"params": to_scanned(params["params"])}, batch,
                             speed=SpeedConfig(scan_layers=True))
    assert_same(unscanned[1], scanned[1])
    assert_same(to_scanned(unscanned[2]["params"]), unbox(scanned[2]["params"]))


def test_dropout_draws_elsewhere_are_untouched():
    """With dropout on, a sparse run is deterministic given its key and differs from the whole run only through
    the last layer's own masks (other shapes, so other draws): close, not equal."""
    batch = make_batch(2)
    cfg = CFG.replace(num_layers=2, dropout_rate=0.1, attention_dropout_rate=0.1)
    params = PretrainModel(cfg, ObjectiveSet.parse("mlm+nsp")).init(jax.random.key(2), batch)
    key = jax.random.key(3)
    whole = loss_and_grads(cfg, params, batch, deterministic=False, rng=key, speed=WHOLE)
    sparse = loss_and_grads(cfg, params, batch, deterministic=False, rng=key)
    again = loss_and_grads(cfg, params, batch, deterministic=False, rng=key)
    assert_same(sparse, again, rtol=0, atol=0)  # deterministic given the key
    # different masks in the last layer only: close (one layer's dropout), but not the same
    assert not np.allclose(float(whole[0]), float(sparse[0]), rtol=1e-6)
    assert abs(float(whole[0]) - float(sparse[0])) < 0.2 * float(whole[0])


def test_each_objective_gets_the_hidden_states_it_reads_from_one_encoder_pass():
    seen = {}

    def probe(name, reads):
        def forward(ctx):
            seen[name] = ctx.hidden
            return {f"{name}_loss": jnp.zeros(())}
        return dataclasses.replace(MLM, name=name, forward=forward, loss_weights={f"{name}_loss": 1.0},
                                   denominators=lambda b: {f"{name}_loss": jnp.ones(())}, reads=reads)

    batch = make_batch()
    first = lambda b: jnp.zeros((B, 1), jnp.int32)  # noqa: E731
    at_mask = probe("at_mask", lambda b: b["masked_positions"])
    at_cls = probe("at_cls", first)
    whole = probe("whole", "sequence")
    nothing = probe("nothing", "nothing")
    objective_set = lambda *objectives: ObjectiveSet(objectives, (1.0,) * len(objectives),  # noqa: E731
                                                     {o.name: {} for o in objectives})
    params = PretrainModel(CFG, objective_set(at_mask, at_cls, whole)).init(jax.random.key(0), batch)
    sequence = Encoder(CFG).apply({"params": params["params"]["encoder"]}, batch["input_ids"],
                                  batch["token_type_ids"], batch["input_mask"]).sequence
    # mixed readers: one whole pass, the positional ones gathered from it
    PretrainModel(CFG, objective_set(at_mask, at_cls, whole, nothing)).apply(params, batch)
    assert seen["whole"].shape == (B, L, CFG.hidden_size) and seen["nothing"] is None
    np.testing.assert_allclose(seen["whole"], sequence, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(seen["at_mask"], np.take_along_axis(np.asarray(sequence),
                               batch["masked_positions"][..., None], axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(seen["at_cls"], np.asarray(sequence)[:, :1], rtol=1e-6, atol=1e-6)
    # positional readers only: the sparse last layer, the same values
    PretrainModel(CFG, objective_set(at_mask, at_cls)).apply(params, batch)
    assert seen["at_mask"].shape == (B, P, CFG.hidden_size) and seen["at_cls"].shape == (B, 1, CFG.hidden_size)
    np.testing.assert_allclose(seen["at_mask"], np.take_along_axis(np.asarray(sequence),
                               batch["masked_positions"][..., None], axis=1), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(seen["at_cls"], np.asarray(sequence)[:, :1], rtol=2e-5, atol=2e-6)
    # an objective that reads nothing costs no encoder pass
    jaxpr = jax.make_jaxpr(lambda p: PretrainModel(CFG, objective_set(nothing)).apply(p, batch))(params)
    assert "dot_general" not in str(jaxpr)


def test_final_layer_positions_and_the_flops_count():
    batch = make_batch()
    positions = lambda spec, speed: final_layer_positions(ObjectiveSet.parse(spec).objectives, batch, speed)  # noqa: E731
    assert positions("mlm+nsp", SPARSE) == P + 1
    assert positions("mlm", SPARSE) == P
    assert positions("mlm+nsp", SpeedConfig(scan_layers=True)) is None
    assert positions("mlm+nsp", WHOLE) is None
    assert positions("ltr", SPARSE) is None
    cfg = ModelConfig(vocab_size=100, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=32)
    h, f, seq, preds = 8, 32, 10, 3
    per_query = 2 * (2 * h * h + 2 * h * f) + 4 * seq * h
    whole = forward_flops_per_sequence(cfg, seq, preds)
    assert whole == 2 * seq * (4 * h * h + per_query) + preds * 2 * (h * h + h * 100) + 2 * (h * h + 2 * h)
    assert forward_flops_per_sequence(cfg, seq, preds, seq) == whole
    assert whole - forward_flops_per_sequence(cfg, seq, preds, 4) == (seq - 4) * per_query
