"""Optimiser chain: schedules, weight-decay mask, BERT Adam / AdamW / LAMB updates, clipping, accumulation."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bert_jax.train import optimizer as opt_lib
from bert_jax.train.optimizer import OptimizerConfig, OptimizerConfigError


def toy_params(seed=0, num_layers=None):
    """Flax-like params; with num_layers, the encoder layer is scanned (leading layer axis)."""
    rng = np.random.default_rng(seed)
    lead = () if num_layers is None else (num_layers,)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=lead + shape).astype(np.float32))

    layer = {"attention": {"qkv": {"kernel": arr(4, 12), "bias": arr(12)}},
             "attention_norm": {"scale": arr(4), "bias": arr(4)}}
    encoder = {"layer_0": layer} if num_layers is None else {"layers": layer}
    return {"params": {"encoder": encoder,
                       "embeddings": {"token": {"embedding": jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)}}}}


def cfg(**kw):
    base = dict(warmup_steps=0, total_steps=100, schedule="constant", learning_rate=1e-2, grad_clip_norm=0.0)
    base.update(kw)
    return OptimizerConfig(**base)


# ----------------------------------------------------------------------------- config


def test_from_config_builds_and_rejects_unknown_key():
    c = ml_collections.ConfigDict(dict(name="lamb", learning_rate=2e-3, warmup_steps=1e3, total_steps=5000))
    built = OptimizerConfig.from_config(c)
    assert built.name == "lamb" and built.warmup_steps == 1000 and isinstance(built.warmup_steps, int)
    with pytest.raises(OptimizerConfigError, match="unknown optimizer config key 'lr'"):
        OptimizerConfig.from_config({"lr": 1e-3})
    with pytest.raises(OptimizerConfigError, match="optimizer.name='sgd'"):
        OptimizerConfig(name="sgd")
    with pytest.raises(OptimizerConfigError, match="warmup_steps"):
        OptimizerConfig(warmup_steps=200, total_steps=100)


# ----------------------------------------------------------------------------- schedules


def test_linear_warmup_then_linear_decay_to_end():
    s = opt_lib.make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=110,
                                              schedule="linear", end_learning_rate=0.1))
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(s(60)), 0.55, rtol=1e-6)  # halfway between peak and end
    np.testing.assert_allclose(float(s(110)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(s(500)), 0.1, rtol=1e-6)  # held at the end value
    values = np.asarray(s(jnp.arange(10, 111)))
    assert np.all(np.diff(values) < 0)


def test_cosine_polynomial_constant_shapes():
    common = dict(learning_rate=2.0, warmup_steps=4, total_steps=104)
    cos = opt_lib.make_schedule(OptimizerConfig(schedule="cosine", **common))
    np.testing.assert_allclose(float(cos(4)), 2.0, rtol=1e-6)
    np.testing.assert_allclose(float(cos(54)), 1.0, rtol=1e-6)  # cos(pi/2): half the peak
    np.testing.assert_allclose(float(cos(29)), 1.0 + np.cos(np.pi / 4), rtol=1e-6)
    np.testing.assert_allclose(float(cos(104)), 0.0, atol=1e-7)
    poly = opt_lib.make_schedule(OptimizerConfig(schedule="polynomial", power=2.0, **common))
    np.testing.assert_allclose(float(poly(54)), 2.0 * 0.25, rtol=1e-6)
    np.testing.assert_allclose(float(poly(2)), 1.0, rtol=1e-6)  # warm-up is linear for every schedule
    const = opt_lib.make_schedule(OptimizerConfig(schedule="constant", **common))
    np.testing.assert_allclose(np.asarray(const(jnp.array([4, 50, 104, 1000]))), 2.0, rtol=1e-6)
    np.testing.assert_allclose(float(const(1)), 0.5, rtol=1e-6)


def test_optimizer_uses_schedule_per_update():
    # The first update (0 updates applied) has learning rate 0 during warm-up; the second uses schedule(1).
    b1, b2, eps = 0.9, 0.999, 1e-6
    tx, schedule = opt_lib.make_optimizer(cfg(name="bert_adam", warmup_steps=2, schedule="linear", weight_decay=0.0))
    params = toy_params()
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    updates, state = tx.update(grads, state, params)
    m, v = 1 - b1 ** 2, 1 - b2 ** 2  # moments after two unit gradients, no bias correction
    expected = -float(schedule(1)) * m / (np.sqrt(v) + eps)
    assert float(schedule(1)) == pytest.approx(0.5e-2)
    leaf = updates["params"]["encoder"]["layer_0"]["attention"]["qkv"]["bias"]
    np.testing.assert_allclose(np.asarray(leaf), expected, rtol=1e-5)


# ----------------------------------------------------------------------------- weight-decay mask


def test_weight_decay_mask_by_leaf_name():
    mask = opt_lib.weight_decay_mask(toy_params())
    layer = mask["params"]["encoder"]["layer_0"]
    assert layer["attention"]["qkv"] == {"kernel": True, "bias": False}
    assert layer["attention_norm"] == {"scale": False, "bias": False}
    assert mask["params"]["embeddings"]["token"]["embedding"] is True


def test_weight_decay_mask_scanned_layers_and_unknown_name():
    params = toy_params(num_layers=3)
    mask = opt_lib.weight_decay_mask(params)
    assert mask["params"]["encoder"]["layers"]["attention"]["qkv"] == {"kernel": True, "bias": False}
    params["params"]["encoder"]["layers"]["rel_pos"] = jnp.zeros((3, 4))
    with pytest.raises(OptimizerConfigError, match="rel_pos"):
        opt_lib.weight_decay_mask(params)


def test_weight_decay_applies_only_to_masked_leaves():
    # Zero gradients: Adam's update is 0, so the whole update is -lr * wd * param where decayed.
    params = toy_params()
    tx, _ = opt_lib.make_optimizer(cfg(name="adamw", weight_decay=0.1, learning_rate=0.5))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    mask = opt_lib.weight_decay_mask(params)
    for u, p, decayed in zip(jax.tree.leaves(updates), jax.tree.leaves(params), jax.tree.leaves(mask)):
        np.testing.assert_allclose(np.asarray(u), -0.05 * np.asarray(p) if decayed else 0.0, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- update rules


def grad_sequence(params, n, seed=1):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params)
            for _ in range(n)]


def run_steps(tx, params, grads_seq):
    state = tx.init(params)
    for g in grads_seq:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def numpy_adam(params, grads_seq, *, lr_fn, b1, b2, eps, wd, bias_correction):
    mask = jax.tree.leaves(opt_lib.weight_decay_mask(params))
    p = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, g_tree in enumerate(grads_seq):
        lr = lr_fn(t)
        for i, g in enumerate(jax.tree.leaves(g_tree)):
            g = np.asarray(g, np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mh, vh = (m[i] / (1 - b1 ** (t + 1)), v[i] / (1 - b2 ** (t + 1))) if bias_correction else (m[i], v[i])
            update = mh / (np.sqrt(vh) + eps)
            if mask[i]:
                update = update + wd * p[i]
            p[i] = p[i] - lr * update
    return p


@pytest.mark.parametrize("name, bias_correction", [("bert_adam", False), ("adamw", True)])
def test_adam_variants_match_numpy_reference(name, bias_correction):
    c = cfg(name=name, learning_rate=1e-2, warmup_steps=2, schedule="linear", total_steps=10,
            weight_decay=0.01, b1=0.9, b2=0.99, eps=1e-6)
    params = toy_params()
    grads = grad_sequence(params, 5)
    tx, schedule = opt_lib.make_optimizer(c)
    got = jax.tree.leaves(run_steps(tx, params, grads))
    want = numpy_adam(params, grads, lr_fn=lambda t: float(schedule(t)), b1=0.9, b2=0.99, eps=1e-6,
                      wd=0.01, bias_correction=bias_correction)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=1e-6)


def test_bert_adam_differs_from_adamw_early():
    # Without bias correction the first real update is much smaller than AdamW's: a check that the
    # two names really build different rules.
    params = toy_params()
    grads = grad_sequence(params, 2)
    a = run_steps(opt_lib.make_optimizer(cfg(name="bert_adam", weight_decay=0.0))[0], params, grads)
    b = run_steps(opt_lib.make_optimizer(cfg(name="adamw", weight_decay=0.0))[0], params, grads)
    diff = max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert diff > 1e-3


@pytest.mark.parametrize("name, reference", [("lamb", optax.lamb), ("adamw", optax.adamw)])
def test_lamb_and_adamw_match_optax_reference(name, reference):
    c = cfg(name=name, learning_rate=1e-2, weight_decay=0.01, b1=0.9, b2=0.99, eps=1e-6, grad_clip_norm=1.0)
    params = toy_params()
    grads = grad_sequence(params, 4)
    tx, _ = opt_lib.make_optimizer(c)
    expected_tx = optax.chain(optax.clip_by_global_norm(1.0), reference(
        1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01, mask=opt_lib.weight_decay_mask(params)))
    got, want = run_steps(tx, params, grads), run_steps(expected_tx, params, grads)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)
    moved = max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(params)))
    assert moved > 1e-3


def bert_adam_first_moment(state):
    found = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, opt_lib.BertAdamState))
             if isinstance(x, opt_lib.BertAdamState)]
    assert len(found) == 1
    return found[0].mu


def test_global_norm_clipping():
    # Adam's update is scale-free, so check the first moment, which records the (clipped) gradient.
    params = toy_params()
    huge = jax.tree.map(lambda p: 1e3 * jnp.ones_like(p), params)
    norm = float(optax.tree.norm(huge))
    tx, _ = opt_lib.make_optimizer(cfg(name="bert_adam", grad_clip_norm=0.5, weight_decay=0.0))
    _, state = tx.update(huge, tx.init(params), params)
    mu = bert_adam_first_moment(state)
    np.testing.assert_allclose(float(optax.tree.norm(mu)), 0.1 * 0.5, rtol=1e-5)
    for m, g in zip(jax.tree.leaves(mu), jax.tree.leaves(huge)):
        np.testing.assert_allclose(np.asarray(m), 0.1 * np.asarray(g) * (0.5 / norm), rtol=1e-5)
    small = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)  # under the threshold: untouched
    _, state = tx.update(small, tx.init(params), params)
    for m, g in zip(jax.tree.leaves(bert_adam_first_moment(state)), jax.tree.leaves(small)):
        np.testing.assert_allclose(np.asarray(m), 0.1 * np.asarray(g), rtol=1e-6)
    tx_off, _ = opt_lib.make_optimizer(cfg(name="bert_adam", grad_clip_norm=0.0, weight_decay=0.0))
    _, state_off = tx_off.update(huge, tx_off.init(params), params)
    for m, g in zip(jax.tree.leaves(bert_adam_first_moment(state_off)), jax.tree.leaves(huge)):
        np.testing.assert_allclose(np.asarray(m), 0.1 * np.asarray(g), rtol=1e-6)


# ----------------------------------------------------------------------------- accumulation


def mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"params": {"hidden": {"kernel": jnp.asarray(rng.normal(size=(6, 16)) * 0.3, jnp.float32),
                                  "bias": jnp.zeros(16, jnp.float32)},
                       "out": {"kernel": jnp.asarray(rng.normal(size=(16, 11)) * 0.3, jnp.float32),
                               "bias": jnp.zeros(11, jnp.float32)}}}


def token_loss_sums(params, batch):
    """Masked-token cross-entropy *sum* and the masked-token count of this batch."""
    p = params["params"]
    h = jnp.tanh(batch["x"] @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    logits = h @ p["out"]["kernel"] + p["out"]["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    weights = batch["mask"].astype(jnp.float32)
    return jnp.sum(ce * weights), jnp.sum(weights)


def global_loss_and_grad(global_count):
    """The train step's contract: each micro-batch's loss sum over the whole global batch's count."""
    def fn(params, batch):
        (loss, (loss_sum, count)), grads = jax.value_and_grad(
            lambda p: (lambda s, c: (s / global_count, (s, c)))(*token_loss_sums(p, batch)), has_aux=True)(params)
        return grads, {"loss_sum": loss_sum, "denominator": count}
    return fn


def test_accumulation_equals_one_big_batch():
    rng = np.random.default_rng(3)
    batch_size, seq, k = 16, 7, 4
    mask = rng.random((batch_size, seq)) < rng.uniform(0.05, 0.9, size=(batch_size, 1))
    mask[0] = False  # an example with no masked token
    batch = {"x": jnp.asarray(rng.normal(size=(batch_size, seq, 6)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 11, size=(batch_size, seq))),
             "mask": jnp.asarray(mask)}
    params = mlp_params()
    micro = opt_lib.split_micro_batches(batch, k)
    counts = np.asarray(micro["mask"].sum(axis=(1, 2)))
    assert len(set(counts.tolist())) > 1, counts  # micro-batches really have different token counts

    def mean_loss(p):
        loss_sum, count = token_loss_sums(p, batch)
        return loss_sum / count

    big_grads = jax.grad(mean_loss)(params)
    global_count = jnp.float32(mask.sum())
    acc_grads, sums = jax.jit(lambda p, mb: opt_lib.accumulate_gradients(global_loss_and_grad(global_count), p, mb))(
        params, micro)
    np.testing.assert_allclose(float(sums["denominator"]), mask.sum())
    np.testing.assert_allclose(float(sums["loss_sum"] / sums["denominator"]), float(mean_loss(params)), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(acc_grads), jax.tree.leaves(big_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

    # Mean of per-micro-batch means would be wrong here: make sure the test can tell.
    naive = jax.tree.map(lambda *g: sum(g) / k, *[
        jax.grad(lambda p, i=i: (lambda s, c: s / c)(*token_loss_sums(p, jax.tree.map(lambda x: x[i], micro))))(params)
        for i in range(k)])
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(naive), jax.tree.leaves(big_grads))) > 1e-4

    tx, _ = opt_lib.make_optimizer(cfg(name="adamw", weight_decay=0.01, grad_clip_norm=1.0))
    state = tx.init(params)
    upd_big, _ = tx.update(big_grads, state, params)
    upd_acc, _ = tx.update(acc_grads, state, params)
    for a, b in zip(jax.tree.leaves(optax.apply_updates(params, upd_acc)),
                    jax.tree.leaves(optax.apply_updates(params, upd_big))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_accumulation_passes_distinct_rngs_and_split_is_strided():
    batch = {"x": jnp.arange(12.0).reshape(6, 2)}
    micro = opt_lib.split_micro_batches(batch, 3)
    np.testing.assert_array_equal(np.asarray(micro["x"][1, :, 0]), [2.0, 8.0])  # rows 1 and 4
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=4"):
        opt_lib.split_micro_batches(batch, 4)

    def fn(params, mb, key):
        noise = jax.random.uniform(key, ())
        return {"w": noise * jnp.ones(2)}, {"denominator": jnp.float32(1.0), "noise": noise}

    grads, sums = opt_lib.accumulate_gradients(fn, {"w": jnp.zeros(2)}, micro, rng=jax.random.key(0))
    keys = jax.random.split(jax.random.key(0), 3)
    expected = sum(float(jax.random.uniform(k, ())) for k in keys)
    np.testing.assert_allclose(float(sums["noise"]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["w"]), expected, rtol=1e-6)
