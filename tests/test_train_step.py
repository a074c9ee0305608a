"""The pure train step (bert_jax.train.step): layouts agree (mesh vs pmap, 8 devices vs 1), gradient
accumulation equals the big batch, non-finite steps are skipped, dropout keys depend on the step only."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax.model.config import ModelConfig
from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives.base import ObjectiveSet
from bert_jax.parallel.sharding import LOGICAL_RULES, batch_sharding, make_mesh
from bert_jax.train.optimizer import OptimizerConfig, make_optimizer
from bert_jax.train.state import create_sharded_state, example_batch, state_shardings
from bert_jax.train.step import make_train_step

VOCAB, SEQ, PRED, BATCH = 128, 32, 6, 16
STEPS = 3
# Float sums are reduced in a different order per layout; 1e-5 is far below one update of lr 1e-3.
ATOL, RTOL = 1e-5, 1e-5


def build(dropout: float, lr: float = 1e-3, warmup: int = 0, grad_accum: int = 1):
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      max_position_embeddings=SEQ, dropout_rate=dropout, attention_dropout_rate=dropout)
    objectives = ObjectiveSet.parse("mlm+nsp")
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=lr, warmup_steps=warmup, total_steps=100,
                                                         grad_accum_steps=grad_accum))
    return PretrainModel(cfg, objectives), objectives, optimizer, schedule


def random_batch(seed: int) -> dict[str, np.ndarray]:
    """Padded rows, a masked-token count that depends on row % 4 (so the 4 strided micro-batches of
    grad accumulation hold 6, 0, 1 and 2 masked tokens per row), and NSP labels missing (-1) in some rows."""
    rng = np.random.default_rng(seed)
    batch = example_batch(BATCH, SEQ, PRED)
    rows = np.arange(BATCH)
    lengths = rng.integers(SEQ // 2, SEQ + 1, size=BATCH)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
    batch["input_mask"] = mask
    batch["input_ids"] = (rng.integers(5, VOCAB, size=(BATCH, SEQ)) * mask).astype(np.int32)
    batch["token_type_ids"] = ((np.arange(SEQ)[None] >= lengths[:, None] // 2) * mask).astype(np.int32)
    counts = np.array([PRED, 0, 1, 2])[rows % 4]
    weights = (np.arange(PRED)[None] < counts[:, None]).astype(np.float32)
    batch["masked_weights"] = weights
    batch["masked_positions"] = (rng.integers(1, lengths[:, None], size=(BATCH, PRED)) * weights).astype(np.int32)
    batch["masked_ids"] = (rng.integers(5, VOCAB, size=(BATCH, PRED)) * weights).astype(np.int32)
    labels = rng.integers(0, 2, size=BATCH)
    batch["sentence_label"] = np.where(rows % 8 == 3, -1, labels).astype(np.int32)
    return batch


BATCHES = [random_batch(seed) for seed in range(STEPS)]


@functools.cache
def initial_host_state():
    """The same initial state for every layout and optimiser setting here (dropout and learning rate do not
    change the tree): created on one device, then copied to the host."""
    model, _, optimizer, _ = build(0.0)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    state, _, _ = create_sharded_state(model, optimizer, example_batch(BATCH, SEQ, PRED), mesh, seed=0)
    return jax.device_get(state)


@functools.cache
def single_device_step(dropout, lr=1e-3, warmup=0, grad_accum=1):
    """One jitted step per setting, shared by the tests (each compile costs seconds on a small CPU)."""
    model, objectives, optimizer, schedule = build(dropout, lr, warmup, grad_accum)
    return jax.jit(make_train_step(model, objectives, optimizer, schedule, grad_accum))


def run_single(dropout):
    step, state = single_device_step(dropout), initial_host_state()
    metrics = []
    for batch in BATCHES:
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def run_mesh(mesh_axes, dropout, grad_accum=1):
    model, objectives, optimizer, schedule = build(dropout, grad_accum=grad_accum)
    mesh = make_mesh(mesh_axes)
    _, shardings = state_shardings(model, optimizer, example_batch(BATCH, SEQ, PRED), mesh)
    state = jax.device_put(initial_host_state(), shardings)
    step = make_train_step(model, objectives, optimizer, schedule, grad_accum)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(step, in_shardings=(shardings, None), out_shardings=(shardings, replicated))
    metrics = []
    for batch in BATCHES:
        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
            placed = {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
            state, m = jitted(state, placed)
        metrics.append(jax.device_get(m))
    # The layout really is sharded: some parameter is split over several devices.
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(state.params))
    return jax.device_get(state), metrics


def run_pmap(dropout):
    model, objectives, optimizer, schedule = build(dropout)
    n = jax.local_device_count()
    assert n == 8
    state = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), initial_host_state())
    step = jax.pmap(make_train_step(model, objectives, optimizer, schedule, axis_name="batch"), axis_name="batch")
    metrics = []
    for batch in BATCHES:
        state, m = step(state, {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()})
        m = jax.device_get(m)
        for value in m.values():  # psum'd: every device reports the same global figure
            np.testing.assert_array_equal(value, np.broadcast_to(value[0], value.shape))
        metrics.append(jax.tree.map(lambda x: x[0], m))
    state = jax.device_get(state)
    for leaf in jax.tree.leaves(state.params):  # replicas stay identical
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
    return jax.tree.map(lambda x: x[0], state), metrics


@functools.cache
def cached_run(kind, dropout, grad_accum=1):
    if kind == "pmap":
        return run_pmap(dropout)
    if kind == "single":
        return run_single(dropout)
    return run_mesh(dict(zip(("data", "fsdp", "tensor"), kind)), dropout, grad_accum)


def assert_close_runs(a, b, atol=ATOL, rtol=RTOL):
    (state_a, metrics_a), (state_b, metrics_b) = a, b
    losses_a = [float(m["loss"]) for m in metrics_a]
    losses_b = [float(m["loss"]) for m in metrics_b]
    np.testing.assert_allclose(losses_a, losses_b, atol=atol, rtol=rtol)
    assert int(state_a.step) == int(state_b.step) == STEPS
    paths_a = jax.tree_util.tree_flatten_with_path(state_a.params)[0]
    leaves_b = jax.tree.leaves(state_b.params)
    assert len(paths_a) == len(leaves_b)
    for (path, x), y in zip(paths_a, leaves_b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path))


def test_params_move_and_runs_differ_from_initial():
    """Guard for the comparisons below: three steps change params by far more than their tolerance."""
    initial = initial_host_state().params
    state, metrics = cached_run((2, 2, 2), 0.0)
    change = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(initial)))
    assert change > 100 * ATOL
    assert all(np.isfinite(float(m["loss"])) and float(m["nonfinite"]) == 0 for m in metrics)
    # denominators are global counts: 16 rows with 6, 0, 1, 2 masked tokens by row % 4; two rows lack NSP labels
    assert float(metrics[0]["count/mlm_loss"]) == 4 * (6 + 0 + 1 + 2)
    assert float(metrics[0]["count/nsp_loss"]) == BATCH - 2


def test_mesh_matches_pmap():
    # (data=2, fsdp=2, tensor=2) exercises all three axes. No dropout: pmap folds the device index into its
    # key by design, the mesh draws one global mask.
    assert_close_runs(cached_run((2, 2, 2), 0.0), cached_run("pmap", 0.0))


def test_sharded_matches_single_device_with_dropout():
    # Dropout on: with partitionable threefry the masks do not depend on how the batch is sharded.
    assert_close_runs(cached_run((2, 2, 2), 0.1), cached_run("single", 0.1))


def test_dropout_changes_the_result():
    """Guard: the dropout runs above differ from the no-dropout runs (dropout is really applied)."""
    with_dropout = [float(m["loss"]) for m in cached_run("single", 0.1)[1]]
    without = [float(m["loss"]) for m in cached_run("single", 0.0)[1]]
    assert abs(with_dropout[0] - without[0]) > 1e-3


def test_grad_accumulation_equals_one_big_batch():
    # Micro-batches hold 6, 0, 1 and 2 masked tokens per row (and one has no NSP label at all); the
    # update must still be the global-batch-normalised one.
    accumulated = cached_run((2, 2, 2), 0.0, grad_accum=4)
    assert_close_runs(accumulated, cached_run((2, 2, 2), 0.0))
    for m in accumulated[1]:
        assert float(m["count/mlm_loss"]) == 36.0


def test_grad_accumulation_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        single_device_step(0.0, grad_accum=3)(initial_host_state(), BATCHES[0])


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # NaNs in the same places count as equal


def test_nan_in_params_skips_the_update():
    step, state = single_device_step(0.0), initial_host_state()
    params = jax.tree.map(np.array, state.params)
    params["encoder"]["embeddings"]["token"]["embedding"][7, 3] = np.nan
    poisoned = state.replace(params=params)
    new_state, metrics = jax.device_get(step(poisoned, BATCHES[0]))
    assert float(metrics["nonfinite"]) == 1.0
    assert not np.isfinite(float(metrics["loss"])) or not np.isfinite(float(metrics["grad_norm"]))
    assert int(new_state.step) == 1  # the step counts (the schedule moves on), the update does not
    assert_trees_equal(new_state.params, poisoned.params)
    assert_trees_equal(new_state.opt_state, poisoned.opt_state)
    # Control: the same step on clean params does update them.
    clean_state, clean_metrics = jax.device_get(step(state, BATCHES[0]))
    assert float(clean_metrics["nonfinite"]) == 0.0
    assert not np.array_equal(clean_state.params["encoder"]["embeddings"]["token"]["embedding"],
                              state.params["encoder"]["embeddings"]["token"]["embedding"])


def test_huge_learning_rate_skips_the_overflowing_step():
    step, state = single_device_step(0.0, lr=1e30), initial_host_state()
    seen_nonfinite = False
    for batch in BATCHES:
        new_state, metrics = jax.device_get(step(state, batch))
        if float(metrics["nonfinite"]):
            seen_nonfinite = True
            assert_trees_equal(new_state.params, state.params)
            assert_trees_equal(new_state.opt_state, state.opt_state)
        else:
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(new_state.params))
        state = new_state
    assert seen_nonfinite, "a learning rate of 1e30 should overflow the loss within three steps"


def test_dropout_key_depends_on_step_only():
    step, state = single_device_step(0.1), initial_host_state()
    batch = BATCHES[0]
    first_state, first = jax.device_get(step(state, batch))
    again_state, again = jax.device_get(step(state, batch))
    assert_trees_equal(first, again)
    assert_trees_equal(first_state, again_state)
    _, later = jax.device_get(step(state.replace(step=np.int32(5)), batch))
    assert abs(float(later["loss"]) - float(first["loss"])) > 1e-4
    # Control: without dropout the step number does not change the loss (params and batch are the same).
    step0 = single_device_step(0.0)
    _, a = jax.device_get(step0(state, batch))
    _, b = jax.device_get(step0(state.replace(step=np.int32(5)), batch))
    assert float(a["loss"]) == float(b["loss"])
