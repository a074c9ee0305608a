"""Behaviour of the encoder: masks, packing, position kinds, ALBERT options, scan/remat, precision, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.model import BertForPreTraining, Encoder, SpeedConfig, preset
from bert_jax.model.params import count_params, to_scanned, to_unscanned, unbox

CFG = preset("tiny", vocab_size=211, max_position_embeddings=64, hidden_size=64, num_heads=4,
             intermediate_size=96)


def random_batch(seed=0, batch=3, length=24, vocab=211, lengths=(24, 17, 9)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    types = (np.arange(length)[None] >= np.asarray(lengths)[:, None] // 2).astype(np.int32) * mask
    return jnp.asarray(ids * mask), jnp.asarray(types), jnp.asarray(mask)


def init(cfg, ids):
    return unbox(Encoder(cfg).init(jax.random.key(0), ids))


def encode(cfg, params, *args, speed=SpeedConfig(), **kwargs):
    return Encoder(cfg, speed=speed).apply(params, *args, **kwargs).sequence


def test_padding_invariance():
    ids, types, mask = random_batch()
    params = init(CFG, ids)
    short = encode(CFG, params, ids, types, mask)
    pad = 8  # append padding: real positions must not change
    zeros = jnp.zeros((ids.shape[0], pad), jnp.int32)
    long = encode(CFG, params, jnp.concatenate([ids, zeros], 1), jnp.concatenate([types, zeros], 1),
                  jnp.concatenate([mask, zeros], 1))
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(long[:, :24])[real], np.asarray(short)[real], atol=1e-5)
    # and the values at padded keys do not leak into real positions
    noisy = ids + (1 - mask) * 7
    np.testing.assert_allclose(np.asarray(encode(CFG, params, noisy, types, mask))[real], np.asarray(short)[real],
                               atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "relative", "rotary"])
def test_causal_attention_ignores_the_future(position):
    cfg = CFG.replace(causal=True, position_embedding=position)
    ids, types, mask = random_batch(lengths=(24, 24, 24))
    params = init(cfg, ids)
    base = np.asarray(encode(cfg, params, ids, types, mask))
    t = 10
    changed = ids.at[:, t + 1:].set((ids[:, t + 1:] + 13) % 200 + 5)
    out = np.asarray(encode(cfg, params, changed, types, mask))
    np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
    assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3
    # the bidirectional model does see the future
    bidir = CFG.replace(position_embedding=position)
    a = np.asarray(encode(bidir, params, ids, types, mask))
    b = np.asarray(encode(bidir, params, changed, types, mask))
    assert np.abs(a[:, :t] - b[:, :t]).max() > 1e-3


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "relative", "rotary"])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_rows_equal_examples_run_alone(position, causal):
    cfg = CFG.replace(position_embedding=position, causal=causal)
    rng = np.random.default_rng(1)
    lens = [7, 5, 9]
    examples = [rng.integers(5, 200, size=n).astype(np.int32) for n in lens]
    length = 24
    packed_ids = np.zeros((1, length), np.int32)
    packed_mask = np.zeros((1, length), np.int32)
    packed_pos = np.zeros((1, length), np.int32)
    packed_types = np.zeros((1, length), np.int32)
    start = 0
    for k, ex in enumerate(examples):
        packed_ids[0, start:start + len(ex)] = ex
        packed_mask[0, start:start + len(ex)] = k + 1
        packed_pos[0, start:start + len(ex)] = np.arange(len(ex))
        packed_types[0, start + 3:start + len(ex)] = 1
        start += len(ex)
    params = init(cfg, jnp.asarray(packed_ids))
    packed = np.asarray(encode(cfg, params, packed_ids, packed_types, packed_mask, packed_pos))
    start = 0
    for ex in examples:
        n = len(ex)
        types = np.zeros((1, n), np.int32)
        types[0, 3:] = 1
        alone = np.asarray(encode(cfg, params, ex[None], types, np.ones((1, n), np.int32)))
        np.testing.assert_allclose(packed[0, start:start + n], alone[0], atol=2e-5)
        start += n


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_relative_kinds_are_shift_invariant(position):
    cfg = CFG.replace(position_embedding=position)
    ids, types, mask = random_batch(lengths=(24, 24, 24))
    params = init(cfg, ids)
    pos = jnp.broadcast_to(jnp.arange(24), ids.shape)
    a = encode(cfg, params, ids, types, mask, pos)
    b = encode(cfg, params, ids, types, mask, pos + 5)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    learned = CFG
    p2 = init(learned, ids)
    assert np.abs(np.asarray(encode(learned, p2, ids, types, mask, pos))
                  - np.asarray(encode(learned, p2, ids, types, mask, pos + 5))).max() > 1e-3


def test_position_kinds_own_the_right_params():
    ids, _, _ = random_batch()
    names = {kind: set(init(CFG.replace(position_embedding=kind), ids)["params"]["embeddings"])
             for kind in ["learned", "sinusoidal", "relative", "rotary"]}
    assert "position" in names["learned"]
    assert all("position" not in names[k] for k in ["sinusoidal", "relative", "rotary"])
    assert "relative_bias" in init(CFG.replace(position_embedding="relative"), ids)["params"]


def test_sinusoidal_position_init_is_a_learned_table_with_the_normal_rows_norm():
    ids, _, _ = random_batch()
    normal = init(CFG, ids)["params"]["embeddings"]["position"]["embedding"]
    sinus_cfg = CFG.replace(position_init="sinusoidal")
    sinus = init(sinus_cfg, ids)["params"]["embeddings"]["position"]["embedding"]
    assert sinus.shape == normal.shape  # the same parameter: only its start differs
    row_norms = np.linalg.norm(np.asarray(sinus), axis=1)
    np.testing.assert_allclose(row_norms, np.linalg.norm(np.asarray(normal), axis=1).mean(), rtol=0.1)
    # nearby positions start similar and far ones less so (a normal table's rows are all ~orthogonal)
    unit = np.asarray(sinus) / row_norms[:, None]
    assert unit[10] @ unit[11] > 0.9 and unit[10] @ unit[40] < 0.6
    with pytest.raises(ValueError, match="position_init"):
        CFG.replace(position_init="uniform")


def test_albert_factorised_embeddings_and_shared_layers():
    ids, types, mask = random_batch()
    base = count_params(init(CFG, ids))
    fact = CFG.replace(embedding_size=16)
    p = init(fact, ids)
    emb = p["params"]["embeddings"]
    assert emb["token"]["embedding"].shape == (211, 16)
    assert emb["projection"]["kernel"].shape == (16, 64)
    assert count_params(p) < base
    shared = CFG.replace(share_layers=True, num_layers=4)
    ps = init(shared, ids)
    layers = [k for k in ps["params"] if k.startswith("layer")]
    assert layers == ["layer_shared"]
    per_layer = count_params(ps["params"]["layer_shared"])
    assert count_params(init(CFG.replace(num_layers=4), ids)) - count_params(ps) == 3 * per_layer
    # sharing means applying the same layer 4 times: equal to an unshared stack with four copies of it
    unshared = CFG.replace(num_layers=4)
    copies = dict(ps["params"])
    layer = copies.pop("layer_shared")["layer"]
    copies.update({f"layer_{i}": layer for i in range(4)})
    np.testing.assert_allclose(np.asarray(encode(shared, ps, ids, types, mask)),
                               np.asarray(encode(unshared, {"params": copies}, ids, types, mask)), atol=1e-5)
    # scanning the shared layer gives the same outputs
    np.testing.assert_allclose(np.asarray(encode(shared, ps, ids, types, mask, speed=SpeedConfig(scan_layers=True))),
                               np.asarray(encode(shared, ps, ids, types, mask)), atol=1e-5)


def _loss_and_grads(cfg, params, batch, dropout_key=None, speed=SpeedConfig()):
    ids, types, mask = batch
    model = BertForPreTraining(cfg, speed)
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}

    def loss(p):
        out = model.apply(p, ids, types, mask, deterministic=dropout_key is None, rngs=rngs)
        return jnp.mean(out.mlm_logits ** 2) + jnp.mean(out.sentence_logits ** 2)

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("variant", [dict(scan_layers=True), dict(remat_policy="full"), dict(remat_policy="dots"),
                                     dict(scan_layers=True, remat_policy="dots_no_batch"),
                                     dict(scan_layers=True, remat_policy="save_qkv_out")])
def test_scan_and_remat_equal_the_plain_stack(variant):
    cfg = CFG.replace(num_layers=3)
    batch = random_batch()
    params = unbox(BertForPreTraining(cfg).init(jax.random.key(0), batch[0]))
    other = SpeedConfig(**variant)
    other_params = to_scanned(params) if other.scan_layers else params
    ref_loss, ref_grads = _loss_and_grads(cfg, params, batch)
    loss, grads = _loss_and_grads(cfg, other_params, batch, speed=other)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    if other.scan_layers:
        grads = to_unscanned(grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, ref_grads)
    # dropout draws differ in layout between scan and loop, but with it on both must still train the same params
    key = jax.random.key(3)
    l1, _ = _loss_and_grads(cfg, other_params, batch, key, other)
    l2, _ = _loss_and_grads(cfg, other_params, batch, key, other)
    assert l1 == l2 and l1 != loss


def test_save_qkv_out_keeps_the_projection_and_full_keeps_nothing():
    """The policies differ in what the backward pass reads back: the residuals jax saves between the forward and
    backward of a scanned, rematerialised stack (save_qkv_out: the tagged [B, L, 3, heads, hd] per layer)."""
    from jax._src.ad_checkpoint import saved_residuals  # what jax.ad_checkpoint.print_saved_residuals prints

    cfg = CFG.replace(num_layers=3)
    batch = random_batch()
    params = to_scanned(unbox(BertForPreTraining(cfg).init(jax.random.key(0), batch[0])))
    ids, types, mask = batch

    def shapes(policy):
        model = BertForPreTraining(cfg, SpeedConfig(scan_layers=True, remat_policy=policy))

        def loss(p):
            out = model.apply(p, ids, types, mask, deterministic=True)
            return jnp.mean(out.mlm_logits ** 2)

        return [tuple(aval.shape) for aval, _ in saved_residuals(loss, params)]

    qkv = (3, ids.shape[0], ids.shape[1], 3, cfg.num_heads, cfg.head_dim)  # stacked over the 3 scanned layers
    assert qkv in shapes("save_qkv_out")
    assert qkv not in shapes("full")


def test_scan_conversion_round_trip():
    cfg = CFG.replace(num_layers=3)
    params = unbox(BertForPreTraining(cfg).init(jax.random.key(0), random_batch()[0]))
    scanned = to_scanned(params)
    abstract = unbox(jax.eval_shape(BertForPreTraining(cfg, SpeedConfig(scan_layers=True)).init, jax.random.key(0),
                                     random_batch()[0]))
    assert jax.tree.structure(scanned) == jax.tree.structure(abstract)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), to_unscanned(scanned), params)


def test_bf16_compute_close_to_fp32():
    batch = random_batch()
    params = unbox(BertForPreTraining(CFG).init(jax.random.key(0), batch[0]))
    f32 = BertForPreTraining(CFG).apply(params, *batch)
    b16 = BertForPreTraining(CFG.replace(dtype="bfloat16")).apply(params, *batch)
    assert b16.sequence.dtype == jnp.bfloat16
    assert b16.mlm_logits.dtype == jnp.float32  # losses are computed from float32 logits
    rel = np.linalg.norm(np.asarray(b16.mlm_logits) - np.asarray(f32.mlm_logits)) / np.linalg.norm(f32.mlm_logits)
    assert rel < 1e-2, rel
    assert jax.tree.leaves(params)[0].dtype == jnp.float32


def test_mlm_head_at_positions_equals_gather_of_all_positions():
    ids, types, mask = random_batch()
    model = BertForPreTraining(CFG)
    params = unbox(model.init(jax.random.key(0), ids))
    positions = jnp.asarray([[1, 4, 0], [2, 3, 16], [8, 0, 0]], jnp.int32)
    at = model.apply(params, ids, types, mask, masked_positions=positions).mlm_logits
    full = model.apply(params, ids, types, mask).mlm_logits
    np.testing.assert_allclose(at, jnp.take_along_axis(full, positions[:, :, None], 1), atol=1e-5)
    assert full.shape == (3, 24, 211) and at.shape == (3, 3, 211)


def test_dropout_is_keyed_and_off_in_eval():
    ids, types, mask = random_batch()
    model = Encoder(CFG)
    params = init(CFG, ids)
    run = lambda key: model.apply(params, ids, types, mask, deterministic=False, rngs={"dropout": key}).sequence
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(encode(CFG, params, ids, types, mask))).max() > 1e-3


def test_gated_gelu_pre_ln_trains_a_finite_gradient():
    cfg = CFG.replace(activation="geglu", norm="pre")
    batch = random_batch()
    params = unbox(BertForPreTraining(cfg).init(jax.random.key(0), batch[0]))
    assert params["params"]["encoder"]["layer_0"]["mlp"]["wi"]["kernel"].shape == (64, 2, 96)
    assert "final_norm" in params["params"]["encoder"]
    loss, grads = _loss_and_grads(cfg, params, batch)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def _numpy_pre_ln_geglu_encoder(cfg, p, ids, types, mask):
    """The pre-LN, GeGLU encoder written out in numpy from its params (float64): the reference the model must match."""
    from scipy.special import erf

    def norm(x, w):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + cfg.layer_norm_eps) * w["scale"] + w["bias"]

    gelu = lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))  # noqa: E731
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
    e = p["embeddings"]
    positions = np.arange(ids.shape[1])
    x = e["token"]["embedding"][ids] + e["segment"]["embedding"][types] + e["position"]["embedding"][positions][None]
    x = norm(x, e["layer_norm"])
    head_dim = cfg.hidden_size // cfg.num_heads
    for i in range(cfg.num_layers):
        layer = p[f"layer_{i}"]
        h = norm(x, layer["attention_norm"])
        qkv = np.einsum("blh,hcnd->blcnd", h, layer["attention"]["qkv"]["kernel"]) + layer["attention"]["qkv"]["bias"]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(head_dim)
        scores = np.where(mask[:, None, None, :] > 0, scores, -1e30)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.einsum("bnqk,bknd->bqnd", probs, v)
        x = x + np.einsum("bqnd,ndh->bqh", out, layer["attention"]["out"]["kernel"]) + layer["attention"]["out"]["bias"]
        h = norm(x, layer["mlp_norm"])
        wi = np.einsum("blh,hgi->blgi", h, layer["mlp"]["wi"]["kernel"]) + layer["mlp"]["wi"]["bias"]
        h = gelu(wi[:, :, 0]) * wi[:, :, 1]  # GeGLU: GELU(x W) * (x V)
        x = x + h @ layer["mlp"]["wo"]["kernel"] + layer["mlp"]["wo"]["bias"]
    return norm(x, p["final_norm"])  # pre-LN ends with one more LayerNorm


def test_pre_ln_geglu_encoder_equals_a_hand_computation():
    cfg = CFG.replace(activation="geglu", norm="pre", num_layers=2)
    ids, types, mask = random_batch()
    params = unbox(Encoder(cfg).init(jax.random.key(3), ids, types, mask))["params"]
    # non-trivial norms and biases, so a misplaced LayerNorm or a dropped bias shows
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(x.size), x.shape), params)
    ours = Encoder(cfg).apply({"params": params}, ids, types, mask).sequence
    reference = _numpy_pre_ln_geglu_encoder(cfg, params, np.asarray(ids), np.asarray(types), np.asarray(mask))
    real = np.asarray(mask) > 0  # padded positions attend but are never read
    np.testing.assert_allclose(np.asarray(ours)[real], reference[real], rtol=2e-4, atol=2e-4)
    post = Encoder(cfg.replace(norm="post")).init(jax.random.key(3), ids, types, mask)
    assert "final_norm" not in unbox(post)["params"]


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="model.num_heads"):
        preset("tiny", num_heads=3)
    with pytest.raises(ValueError, match="position_embedding"):
        preset("tiny", position_embedding="alibi")


@pytest.mark.parametrize("rng", ["jax", "fused"])
def test_attention_dropout_per_element_or_shared_across_examples_and_heads(rng):
    import flax.linen as nn
    from bert_jax.model.dropout import attention_dropout

    class Drop(nn.Module):
        broadcast: bool

        @nn.compact
        def __call__(self, probs):
            return attention_dropout(self, probs, 0.1, self.broadcast, rng)

    probs = jnp.ones((3, 4, 64, 64))
    rngs = {"dropout": jax.random.PRNGKey(0)}
    for broadcast in (False, True):
        out = np.asarray(Drop(broadcast).apply({}, probs, rngs=rngs))
        dropped = out == 0
        assert abs(dropped.mean() - 0.1) < 0.02, dropped.mean()
        np.testing.assert_allclose(out[~dropped], 1.0 / 0.9, rtol=1e-4)
        same_everywhere = all(np.array_equal(dropped[b, h], dropped[0, 0]) for b in range(3) for h in range(4))
        assert same_everywhere == broadcast


def test_weighted_cross_entropy_matches_numpy_and_its_gradient_is_softmax_minus_onehot():
    from bert_jax.objectives.base import weighted_cross_entropy

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 50)).astype(np.float32) * 4
    targets = rng.integers(0, 50, (3, 5))
    targets[0, 0] = logits[0, 0].argmax()  # at least one correct prediction
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    loss, correct = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    m = logits.max(-1, keepdims=True)
    log_p = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (nll * weights).sum(), rtol=1e-5)
    assert float(correct) == ((logits.argmax(-1) == targets) * weights).sum()
    grad = jax.grad(lambda x: weighted_cross_entropy(x, jnp.asarray(targets), jnp.asarray(weights))[0])(
        jnp.asarray(logits))
    expected = (np.exp(log_p) - np.eye(50)[targets]) * weights[..., None]
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)


def test_vocab_bias_add_has_the_gradients_of_plus():
    from bert_jax.model.heads import add_vocab_bias

    rng = np.random.default_rng(1)
    x, b = jnp.asarray(rng.normal(size=(4, 3, 37)), jnp.float32), jnp.asarray(rng.normal(size=37), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 3, 37)), jnp.float32)
    ours = jax.grad(lambda x, b: jnp.sum(jnp.sin(add_vocab_bias(x, b)) * w), argnums=(0, 1))(x, b)
    plain = jax.grad(lambda x, b: jnp.sum(jnp.sin(x + b) * w), argnums=(0, 1))(x, b)
    np.testing.assert_array_equal(np.asarray(add_vocab_bias(x, b)), np.asarray(x + b))
    for a, e in zip(ours, plain):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)


def test_fused_threefry_is_jaxs_threefry_bit_for_bit():
    from jax.extend.random import threefry_2x32

    from bert_jax.model.dropout import threefry2x32

    key = jax.random.key_data(jax.random.PRNGKey(42))
    counts = np.arange(4000, dtype=np.uint32) * np.uint32(2654435761)  # spread over the 32-bit range
    ours = threefry2x32(key[0], key[1], jnp.asarray(counts[:2000]), jnp.asarray(counts[2000:]))
    np.testing.assert_array_equal(np.concatenate([np.asarray(o) for o in ours]), np.asarray(threefry_2x32(key, counts)))


def test_fused_dropout_rate_keys_and_sharding_invariance():
    from jax.sharding import NamedSharding, PartitionSpec as P

    from bert_jax.model.dropout import apply_dropout, fused_bits

    x = jnp.ones((8, 4, 64, 96))
    key = jax.random.PRNGKey(0)
    y = np.asarray(jax.jit(lambda x, k: apply_dropout(x, k, 0.1, None, "fused"))(x, key))
    dropped = y == 0
    assert abs(dropped.mean() - 0.1) < 0.003, dropped.mean()  # 196k draws: sd of the fraction ~0.0007
    np.testing.assert_allclose(y[~dropped], 1 / 0.9, rtol=1e-6)
    # Rows, heads and positions get different masks; another key another mask; the same key the same mask.
    assert not np.array_equal(dropped[0], dropped[1]) and not np.array_equal(dropped[0, 0], dropped[0, 1])
    again = np.asarray(fused_bits(key, x.shape))
    assert np.array_equal(again, np.asarray(fused_bits(key, x.shape)))
    assert not np.array_equal(again, np.asarray(fused_bits(jax.random.PRNGKey(1), x.shape)))
    # The bits are a function of the element's index only: the same under any sharding of the computation.
    mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    sharded = jax.jit(lambda k: fused_bits(k, x.shape),
                      out_shardings=NamedSharding(mesh, P("a", "b")))(key)
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(sharded), again)


def test_dropout_rng_changes_masks_not_the_deterministic_model():
    cfg = preset("tiny", vocab_size=100)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 100, (2, 16)), jnp.int32)
    params = BertForPreTraining(cfg).init(jax.random.PRNGKey(0), ids)
    fused = BertForPreTraining(cfg, SpeedConfig(dropout_rng="fused"))
    plain = BertForPreTraining(cfg, SpeedConfig(dropout_rng="jax"))
    np.testing.assert_array_equal(np.asarray(fused.apply(params, ids, deterministic=True).mlm_logits),
                                  np.asarray(plain.apply(params, ids, deterministic=True).mlm_logits))
    with pytest.raises(ValueError, match="speed.dropout_rng"):
        SpeedConfig(dropout_rng="numpy")
    rngs = {"dropout": jax.random.PRNGKey(2)}
    a = fused.apply(params, ids, deterministic=False, rngs=rngs).mlm_logits
    b = plain.apply(params, ids, deterministic=False, rngs=rngs).mlm_logits
    assert not np.allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(fused.apply(params, ids, deterministic=False,
                                                                          rngs=rngs).mlm_logits))
