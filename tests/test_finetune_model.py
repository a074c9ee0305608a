"""The fine-tuning model: shapes per kind x variant, feature choices, padding invariance, LTR pooling,
the frozen feature-based encoder, losses, loading pretrained weights, and that the heads can learn."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bert_jax.finetune.model import (FEATURES, KINDS, VARIANTS, FineTuneModel, HeadConfig, HeadConfigError,
                                     PretrainedMismatchError, init_params, masked_optimizer, merge_pretrained,
                                     predict, task_loss, trainable_mask)
from bert_jax.model import BertForPreTraining, Encoder, SpeedConfig, preset
from bert_jax.model.heads import Classifier, Pooler
from bert_jax.model.params import to_scanned, unbox

VOCAB = 40
CFG = preset("tiny", vocab_size=VOCAB, hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2,
             max_position_embeddings=32)
CFG4 = CFG.replace(num_layers=4)  # the 'last four' feature choices need four layers


def make_batch(lengths=(10, 7, 3), width=10, seed=0, pad_id=0):
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, VOCAB, size=(len(lengths), width)).astype(np.int32)
    ids = np.where(mask > 0, ids, pad_id).astype(np.int32)
    ids[:, 0] = 2  # [CLS]
    types = ((np.arange(width)[None] >= lengths[:, None] // 2) & (mask > 0)).astype(np.int32)
    return {"input_ids": ids, "token_type_ids": types, "input_mask": mask,
            "weight": np.ones(len(lengths), np.float32)}


def pad_batch(batch, extra):
    """The same rows, `extra` more padding columns on the right."""
    def pad(x):
        return np.pad(x, ((0, 0), (0, extra))) if x.ndim == 2 else x
    return {k: pad(v) for k, v in batch.items()}


def model_and_params(head, cfg=CFG, speed=SpeedConfig(), seed=0):
    model = FineTuneModel(cfg, head, speed)
    return model, init_params(model, jax.random.key(seed))


def run(model, params, batch, **kwargs):
    # Eager: one-off applies of many small models are cheaper op by op than compiling each whole model.
    return model.apply({"params": params}, batch, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes_and_dtypes(kind, variant):
    model, params = model_and_params(HeadConfig(kind, num_labels=5, variant=variant))
    batch = make_batch()
    out = run(model, params, batch)
    want = {"classification": {"logits": (3, 5)}, "regression": {"logits": (3,)},
            "tagging": {"logits": (3, 10, 5)}, "span": {"start_logits": (3, 10), "end_logits": (3, 10)}}[kind]
    assert {k: v.shape for k, v in out.items()} == want
    assert all(v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v))) for v in out.values())
    if variant != "standard" and kind == "classification":  # training mode with dropout through the BiLSTM
        train = run(model, params, batch, deterministic=False, rngs={"dropout": jax.random.key(3)})
        assert {k: v.shape for k, v in train.items()} == want
    expected_top = {"standard": {"encoder", "classifier"} | ({"pooler"} if kind in ("classification", "regression")
                                                            else set()),
                    "bilstm": {"encoder", "bilstm", "classifier"},
                    "features": {"encoder", "bilstm", "classifier"}}[variant]
    assert set(params) == expected_top


def test_bf16_compute_keeps_logits_and_lstm_in_float32():
    cfg = CFG.replace(dtype="bfloat16")
    model, params = model_and_params(HeadConfig("tagging", num_labels=3, variant="bilstm"), cfg)
    assert run(model, params, make_batch())["logits"].dtype == jnp.float32


def test_head_config_validation():
    with pytest.raises(HeadConfigError, match="head.features='top'.*sum_last_four"):
        HeadConfig("tagging", variant="features", features="top")
    with pytest.raises(HeadConfigError, match="head.features.*variant='features'"):
        HeadConfig("tagging", features="embeddings")
    with pytest.raises(HeadConfigError, match="head.kind"):
        HeadConfig("ner")
    with pytest.raises(HeadConfigError, match="head.variant"):
        HeadConfig("span", variant="lstm")
    with pytest.raises(HeadConfigError, match="head.num_labels"):
        HeadConfig("classification", num_labels=1)
    with pytest.raises(HeadConfigError, match="head.lstm_size.*bilstm"):
        HeadConfig("classification", lstm_size=64)
    with pytest.raises(HeadConfigError, match="head.pool"):
        HeadConfig("classification", pool="mean")
    with pytest.raises(HeadConfigError, match="head.dropout"):
        HeadConfig("classification", dropout=1.0)
    span = HeadConfig("span", variant="bilstm", lstm_size=8, lstm_layers=2)
    assert (span.lstm_units(CFG), span.num_lstm_layers, span.num_outputs) == (8, 2, 2)
    assert HeadConfig("tagging", variant="features").num_lstm_layers == 2
    assert HeadConfig("tagging", variant="bilstm").lstm_units(CFG) == CFG.hidden_size // 2
    assert HeadConfig("regression").num_outputs == 1
    assert HeadConfig("classification").pool_kind(CFG) == "cls"
    assert HeadConfig("classification", pool=None).pool_kind(CFG.replace(causal=True)) == "last"
    assert HeadConfig("classification", dropout=0.3).dropout_rate(CFG) == 0.3
    assert HeadConfig("classification").dropout_rate(CFG) == CFG.dropout_rate


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_feature_choices_are_what_they_claim(norm):
    cfg = CFG4.replace(norm=norm)
    batch = make_batch()
    enc_params = None
    for features in FEATURES if norm == "post" else ("last", "second_to_last"):
        # one LSTM layer: the features are what is tested here, and every LSTM layer costs compile time
        head = HeadConfig("tagging", variant="features", features=features, lstm_layers=1)
        model, params = model_and_params(head, cfg)
        if enc_params is None:
            enc_params = params["encoder"]
            enc = Encoder(cfg).apply({"params": enc_params}, batch["input_ids"], batch["token_type_ids"],
                                     batch["input_mask"], output_hidden_states=True)
            layers = enc.hidden_states[:-1] + (enc.sequence,)
        params = {**params, "encoder": enc_params}
        _, state = run(model, params, batch, mutable=["intermediates"])
        got = np.asarray(state["intermediates"]["features"][0])
        want = {"embeddings": layers[0], "second_to_last": layers[-2], "last": enc.sequence,
                "sum_last_four": sum(layers[-4:]) / 4, "concat_last_four": jnp.concatenate(layers[-4:], -1),
                "sum_all": sum(layers) / len(layers)}[features]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, np.asarray(want), atol=2e-5, err_msg=features)
        assert ("layer_weights" in params) == features.startswith("sum_")
        assert got.shape[-1] == (4 if features == "concat_last_four" else 1) * cfg.hidden_size
    if norm == "pre":  # 'last' is the final-normed output, not the raw last layer
        assert np.abs(np.asarray(enc.sequence - enc.hidden_states[-1])).max() > 1e-2


def test_feature_choice_needs_enough_layers():
    model = FineTuneModel(CFG, HeadConfig("tagging", variant="features", features="concat_last_four"))
    with pytest.raises(HeadConfigError, match="num_layers >= 4"):
        init_params(model, jax.random.key(0))


def test_features_from_a_scanned_pretrained_model():
    scanned = SpeedConfig(scan_layers=True)
    ids = jnp.asarray(make_batch()["input_ids"])
    pretrained = unbox(BertForPreTraining(CFG, scanned).init(jax.random.key(1), ids))["params"]
    assert "layers" in pretrained["encoder"]
    model, fresh = model_and_params(HeadConfig("tagging", variant="features", lstm_layers=1), CFG, scanned)
    assert "layer_0" in fresh["encoder"]  # the features model always unrolls the stack
    params, _ = merge_pretrained(fresh, pretrained)
    batch = make_batch()
    _, state = model.apply({"params": params}, batch, mutable=["intermediates"])
    want = Encoder(CFG, speed=scanned).apply({"params": pretrained["encoder"]}, ids, batch["token_type_ids"],
                                  batch["input_mask"]).sequence
    np.testing.assert_allclose(np.asarray(state["intermediates"]["features"][0]), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("variant", ["standard", "bilstm"])
@pytest.mark.parametrize("kind", ["classification", "tagging", "span"])
def test_appended_padding_changes_nothing_real(kind, variant):
    model, params = model_and_params(HeadConfig(kind, num_labels=3, variant=variant))
    batch = make_batch(lengths=(10, 6, 2))
    short = run(model, params, batch)
    long_batch = pad_batch(batch, 6)
    long_batch["input_ids"][:, 10:] = 11  # whatever sits at padded positions must not matter either
    long = run(model, params, long_batch)
    real = batch["input_mask"] > 0
    for name, value in short.items():
        if kind == "classification":
            np.testing.assert_allclose(np.asarray(long[name]), np.asarray(value), atol=1e-5)
        else:
            np.testing.assert_allclose(np.asarray(long[name])[:, :10][real], np.asarray(value)[real], atol=1e-5)
    if kind == "span":  # padding is masked out of the span softmax, so the loss ignores the bucket width
        targets = {"start_position": np.array([3, 1, 0]), "end_position": np.array([5, 4, 1])}
        a = task_loss(model.head, short, {**batch, **targets})
        b = task_loss(model.head, long, {**long_batch, **targets})
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_all_padding_row_stays_finite():
    for variant in VARIANTS:
        model, params = model_and_params(HeadConfig("classification", variant=variant), CFG.replace(causal=True))
        batch = make_batch(lengths=(10, 0, 3))
        assert bool(jnp.all(jnp.isfinite(run(model, params, batch)["logits"])))


def test_left_to_right_model_pools_the_last_real_token():
    cfg = CFG.replace(causal=True)
    model, params = model_and_params(HeadConfig("classification", num_labels=3), cfg)
    # a larger classifier than initialised, so that small changes of the pooled vector show in the logits
    params["classifier"]["dense"]["kernel"] = params["classifier"]["dense"]["kernel"] * 100
    batch = make_batch(lengths=(10, 7, 3))
    logits = np.asarray(run(model, params, batch)["logits"])
    # the same thing by hand: encoder, pooler at length - 1, classifier
    seq = Encoder(cfg).apply({"params": params["encoder"]}, batch["input_ids"], batch["token_type_ids"],
                             batch["input_mask"]).sequence
    pooled = Pooler(cfg).apply({"params": params["pooler"]}, seq, jnp.asarray([9, 6, 2]))
    manual = Classifier(cfg, 3).apply({"params": params["classifier"]}, pooled)
    np.testing.assert_allclose(logits, np.asarray(manual), atol=1e-4)
    # anything after the last real token (padding) changes nothing
    noisy = {**batch, "input_ids": np.where(batch["input_mask"] > 0, batch["input_ids"], 17).astype(np.int32)}
    np.testing.assert_allclose(np.asarray(run(model, params, noisy)["logits"]), logits, atol=1e-6)
    # a real token before the pooled one does change the logits
    earlier = {**batch, "input_ids": batch["input_ids"].copy()}
    earlier["input_ids"][:, 1] = (earlier["input_ids"][:, 1] + 7) % VOCAB
    assert np.abs(np.asarray(run(model, params, earlier)["logits"]) - logits).max() > 1e-3
    # the causal mask is on: pooled at [CLS], nothing after it can be seen
    cls_model = FineTuneModel(cfg, HeadConfig("classification", num_labels=3, pool="cls"))
    np.testing.assert_allclose(np.asarray(run(cls_model, params, earlier)["logits"]),
                               np.asarray(run(cls_model, params, batch)["logits"]), atol=1e-6)


def test_feature_based_encoder_is_frozen():
    head = HeadConfig("tagging", num_labels=3, variant="features", features="sum_all", lstm_layers=1)
    model, params = model_and_params(head, CFG)
    batch = make_batch()
    batch["tag_ids"] = np.random.default_rng(1).integers(0, 3, size=batch["input_ids"].shape).astype(np.int32)
    batch["tag_weights"] = batch["input_mask"].astype(np.float32)

    def loss(p, rng):
        out = model.apply({"params": p}, batch, deterministic=False, rngs={"dropout": rng})
        total, count = task_loss(head, out, batch)
        return total / count

    grads = jax.jit(jax.grad(loss))(params, jax.random.key(0))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["encoder"]))
    for name in ("bilstm", "classifier", "layer_weights"):
        assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads[name]))) > 0, name
    mask = trainable_mask(params, head)
    assert not any(jax.tree.leaves(mask["encoder"])) and all(jax.tree.leaves(mask["bilstm"]))
    # the optimizer keeps no state for the encoder and never moves it, weight decay included
    tx = masked_optimizer(optax.adamw(1e-2, weight_decay=0.1), params, head)
    opt_state = tx.init(params)
    trainable = sum(x.size for n, sub in params.items() if n != "encoder" for x in jax.tree.leaves(sub))
    state_size = sum(np.size(x) for x in jax.tree.leaves(opt_state))
    assert 2 * trainable <= state_size <= 2 * trainable + 8
    updates, _ = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new["encoder"]),
                                                     jax.tree.leaves(params["encoder"])))
    assert not np.array_equal(new["classifier"]["dense"]["kernel"], params["classifier"]["dense"]["kernel"])
    assert all(jax.tree.leaves(trainable_mask(params, HeadConfig("tagging", variant="bilstm"))))


def test_task_loss_values_and_zero_weight_rows():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    logits[2] = 1e30  # a padding row may hold anything
    batch = {"label": np.array([1, 3, 0]), "weight": np.array([1.0, 1.0, 0.0], np.float32)}
    head = HeadConfig("classification", num_labels=4)
    total, count = task_loss(head, {"logits": jnp.asarray(logits)}, batch)
    lse = np.log(np.exp(logits[:2].astype(np.float64)).sum(-1))
    np.testing.assert_allclose(float(total), (lse - logits[[0, 1], [1, 3]]).sum(), rtol=1e-5)
    assert float(count) == 2.0

    reg = task_loss(HeadConfig("regression"), {"logits": jnp.asarray([1.0, 2.0, 99.0])},
                    {"label": np.array([0.5, 2.5, 0.0], np.float32), "weight": batch["weight"]})
    np.testing.assert_allclose(np.asarray(reg), [0.5, 2.0], rtol=1e-6)

    start, end = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    span_batch = {"start_position": np.array([2, 0, 5]), "end_position": np.array([4, 0, 5]),
                  "weight": batch["weight"]}
    span_total, span_count = task_loss(HeadConfig("span"), {"start_logits": start, "end_logits": end}, span_batch)
    def ce(x, i):
        return np.log(np.exp(x.astype(np.float64)).sum()) - x[i]
    want = sum(0.5 * (ce(start[r], span_batch["start_position"][r]) + ce(end[r], span_batch["end_position"][r]))
               for r in range(2))
    np.testing.assert_allclose(float(span_total), want, rtol=1e-5)
    assert float(span_count) == 2.0

    tag_logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
    tag_logits[2] = np.inf
    tag_weights = np.array([[0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 0]], np.float32)
    tag_ids = rng.integers(0, 4, size=(3, 5))
    tag_total, tag_count = task_loss(HeadConfig("tagging", num_labels=4), {"logits": tag_logits},
                                     {"tag_ids": tag_ids, "tag_weights": tag_weights, "weight": batch["weight"]})
    want = sum(ce(tag_logits[r, t], tag_ids[r, t]) for r, t in [(0, 1), (0, 2), (1, 1)])
    np.testing.assert_allclose(float(tag_total), want, rtol=1e-5)
    assert float(tag_count) == 3.0


def test_predict_is_jittable():
    logits = jnp.asarray([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert np.array_equal(jax.jit(lambda o: predict(HeadConfig("classification", num_labels=3), o))(
        {"logits": logits}), [1, 0])
    tags = jax.jit(lambda o: predict(HeadConfig("tagging", num_labels=3), o))({"logits": logits[None]})
    assert tags.shape == (1, 2) and tags.dtype == jnp.int32
    np.testing.assert_allclose(predict(HeadConfig("regression"), {"logits": logits[:, 0]}), [0.1, 3.0])
    span = predict(HeadConfig("span"), {"start_logits": logits, "end_logits": -logits})
    assert set(span) == {"start_logits", "end_logits"}


def test_merge_pretrained_copies_encoder_and_pooler_exactly():
    ids = jnp.asarray(make_batch()["input_ids"])
    pretrained = unbox(BertForPreTraining(CFG).init(jax.random.key(7), ids))["params"]
    _, fresh = model_and_params(HeadConfig("classification", num_labels=3))
    merged, report = merge_pretrained(fresh, {"params": pretrained})
    for name in ("encoder", "pooler"):
        for a, b in zip(jax.tree.leaves(merged[name]), jax.tree.leaves(pretrained[name])):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(merged["classifier"]["dense"]["kernel"], fresh["classifier"]["dense"]["kernel"])
    assert (report.loaded, report.fresh, report.unused) == (("encoder", "pooler"), ("classifier",),
                                                             ("mlm_head", "nsp_head"))
    _, tag_fresh = model_and_params(HeadConfig("tagging", variant="bilstm"))
    _, tag_report = merge_pretrained(tag_fresh, pretrained)
    assert tag_report.loaded == ("encoder",) and tag_report.fresh == ("bilstm", "classifier")
    assert "pooler" in tag_report.unused
    # a scanned pretraining tree loads into the unrolled model, and vice versa
    merged_scanned, _ = merge_pretrained(fresh, to_scanned(pretrained))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(merged_scanned), jax.tree.leaves(merged)))


def test_merge_pretrained_rejects_a_mismatch():
    ids = jnp.asarray(make_batch()["input_ids"])
    _, fresh = model_and_params(HeadConfig("classification"))
    wider = unbox(BertForPreTraining(CFG.replace(intermediate_size=48)).init(jax.random.key(0), ids))["params"]
    with pytest.raises(PretrainedMismatchError, match=r"encoder/layer_0/mlp/.*shape \(48,\), the model wants \(64,\)"):
        merge_pretrained(fresh, wider)
    deeper = unbox(BertForPreTraining(CFG.replace(num_layers=3)).init(jax.random.key(0), ids))["params"]
    with pytest.raises(PretrainedMismatchError, match="encoder/layer_2/.* is unexpected"):
        merge_pretrained(fresh, deeper)
    with pytest.raises(PretrainedMismatchError, match="no 'encoder'"):
        merge_pretrained(fresh, {"bert": {}})


def synthetic_task(n, seed, width=12):
    """label = whether token 7 appears among the real tokens: needs attention to every position."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, width + 1, size=n)
    batch = make_batch(lengths=lengths, width=width, seed=seed)
    ids = batch["input_ids"]
    ids[ids == 7] = 8
    plant = rng.random(n) < 0.5
    where = (rng.random(n) * (lengths - 1)).astype(int) + 1
    ids[np.arange(n)[plant], where[plant]] = 7
    batch["label"] = plant.astype(np.int32)
    return batch


@pytest.mark.parametrize("variant", ["standard", "bilstm"])
def test_a_tiny_model_learns_a_sentence_task(variant):
    cfg = CFG.replace(num_layers=1, dropout_rate=0.0, attention_dropout_rate=0.0)
    head = HeadConfig("classification", variant=variant)
    model, params = model_and_params(head, cfg)
    train, test = synthetic_task(2048, 1), synthetic_task(256, 2)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss(p):
            total, count = task_loss(head, model.apply({"params": p}, batch), batch)
            return total / count
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(80):
        rows = slice((i * 64) % 2048, (i * 64) % 2048 + 64)
        params, opt_state = step(params, opt_state, {k: v[rows] for k, v in train.items()})
    accuracy = float(np.mean(np.asarray(predict(head, run(model, params, test))) == test["label"]))
    assert accuracy > 0.8, accuracy
