"""T5's span corruption (objective `span_corruption`): the noise spans and sentinels the pipeline builds (against a
hand-worked example and T5's counts), a decoder that cannot see later targets (bit for bit), and a run on the
permutation-chain corpus that learns the spans far below the unigram floor and exports the encoder alone."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_learning as learning
from bert_jax.data.masking import MaskingConfig, MaskingError, apply_masking
from bert_jax.data.noise_spans import corrupt, noise_counts, span_token_weights, target_length
from bert_jax.interop import load_params
from bert_jax.model import BertForPreTraining, preset
from bert_jax.model.params import unbox
from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives import ObjectiveSet
from bert_jax.objectives.span_corruption import DECODER
from test_masking import SPECIAL, SPECIAL_SET, make_rows

chain_data = learning.chain_data  # the permutation-chain corpus fixture, shared with tests/test_learning.py
T5 = MaskingConfig(kind="t5_spans", noise_density=0.15, mean_span_length=3.0)
VOCAB = 120


def test_sentinels_and_targets_of_a_hand_worked_example():
    cls, sep, pad, mask = SPECIAL["cls"], SPECIAL["sep"], SPECIAL["pad"], SPECIAL["mask"]
    ids = np.array([[cls, 10, 11, 12, 13, 14, 15, 16, sep, pad, pad],
                    [cls, 20, 21, sep, cls, 22, 23, 24, sep, pad, pad],  # two packed examples
                    [pad] * 11])  # a padding row
    input_mask = np.array([[1] * 9 + [0] * 2, [1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0], [0] * 11])
    types = np.array([[0] * 5 + [1] * 4 + [0] * 2, [0] * 11, [0] * 11])
    noise = np.zeros((3, 11), bool)
    noise[0, [2, 3, 6]] = True  # "b c" and "f"
    noise[1, [2, 6, 7]] = True
    out = corrupt(ids, input_mask, types, noise, SPECIAL, 7, np.array([True, True, False]))
    # Encoder: each span becomes one sentinel slot ([MASK] in input_ids; its number k + 1 in input_sentinels)
    np.testing.assert_array_equal(out["input_ids"], [[cls, 10, mask, 13, 14, mask, 16, sep, pad, pad, pad],
                                                     [cls, 20, mask, sep, cls, 22, mask, sep, pad, pad, pad],
                                                     [pad] * 11])
    np.testing.assert_array_equal(out["input_sentinels"], [[0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 0],
                                                           [0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0], [0] * 11])
    np.testing.assert_array_equal(out["input_mask"], [[1] * 8 + [0] * 3, [1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0], [0] * 11])
    np.testing.assert_array_equal(out["token_type_ids"], [[0] * 4 + [1] * 4 + [0] * 3, [0] * 11, [0] * 11])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0],
                                                        [0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 0], [0] * 11])
    # Targets: <s1> b c <s2> f [SEP] (the end token), then padding
    np.testing.assert_array_equal(out["target_ids"][:2], [[0, 11, 12, 0, 15, sep, 0], [0, 21, 0, 23, 24, sep, 0]])
    np.testing.assert_array_equal(out["target_sentinels"][:2], [[1, 0, 0, 2, 0, 0, 0], [1, 0, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["target_weights"], [[1] * 6 + [0], [1] * 6 + [0], [0] * 7])
    # what the unigram floor (and the token metric) scores: the span tokens alone
    np.testing.assert_array_equal(span_token_weights(out["target_sentinels"], out["target_weights"]),
                                  [[0, 1, 1, 0, 1, 0, 0], [0, 1, 0, 1, 1, 0, 0], [0] * 7])


def _runs(noise_row):
    """(start, length) of each run of True."""
    edges = np.diff(np.concatenate([[0], noise_row.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts, ends - starts))


def _rebuild(out, r):
    """The original real tokens of row r, from the encoder input and the targets alone."""
    spans, current = {}, None
    used = int(out["target_weights"][r].sum())
    assert out["target_ids"][r, used - 1] == SPECIAL["sep"] and out["target_sentinels"][r, used - 1] == 0  # the end
    for tid, sentinel in zip(out["target_ids"][r, :used - 1], out["target_sentinels"][r, :used - 1]):
        if sentinel:
            current = spans.setdefault(int(sentinel), [])
        elif current is not None:
            current.append(int(tid))
    text = []
    for tid, sentinel, m in zip(out["input_ids"][r], out["input_sentinels"][r], out["input_mask"][r]):
        if m:
            text.extend(spans.pop(int(sentinel)) if sentinel else [int(tid)])
    return text, spans


@pytest.mark.parametrize("pair", [False, True])
def test_noise_follows_t5s_counts_and_the_corruption_loses_nothing(pair):
    rows, lengths = make_rows(n_rows=400, seq_len=64, min_len=6, pair=pair, unk_rate=0.0)
    out = apply_masking(rows, T5, SPECIAL, 1000, 5, np.arange(400))
    ids, real = rows["input_ids"], rows["input_mask"] != 0
    candidate = real & ~np.isin(ids, list(SPECIAL_SET))
    t = target_length(64, 0.15, 3.0)
    assert out["target_ids"].shape == (400, t) and out["masked_positions"].shape == (400, 0)
    span_lengths = []
    for r in range(400):
        n = candidate[r].sum()
        want_noise, want_spans = noise_counts(n, 0.15, 3.0)
        text, left = _rebuild(out, r)
        assert text == list(ids[r][real[r]]) and not left  # every token comes back, in place
        sentinels = out["input_sentinels"][r][out["input_sentinels"][r] > 0]
        np.testing.assert_array_equal(sentinels, np.arange(1, want_spans + 1))  # one per span, numbered in order
        noisy = out["target_weights"][r].sum() - len(sentinels) - 1
        if pair:  # a span running into [SEP] keeps its head only
            assert want_noise - 10 <= noisy <= want_noise
        else:  # the row starts with kept text and ends with a noise span, as T5's
            assert noisy == want_noise
            assert out["input_sentinels"][r][out["input_mask"][r] != 0][-2] == want_spans  # last before [SEP]
            assert out["input_sentinels"][r][1] == 0  # the first candidate is kept
        span_lengths.append(noisy / max(want_spans, 1))
    # rows of ~30 candidates: ~4.5 noise tokens in 1-2 spans; the mean length is T5's ~3 up to rounding
    assert 2.5 < np.mean(span_lengths) < 3.6
    # deterministic from (seed, epoch, row key), whatever else is in the batch
    again = apply_masking({k: v[::-1] for k, v in rows.items()}, T5, SPECIAL, 1000, 5, np.arange(400)[::-1])
    for key in ("input_ids", "input_sentinels", "target_ids", "target_sentinels"):
        np.testing.assert_array_equal(again[key][::-1], out[key])
    with pytest.raises(MaskingError, match="noise_density"):
        MaskingConfig(kind="t5_spans")
    objectives = ObjectiveSet.parse("span_corruption", {"span_corruption": {"noise_density": 0.3}})
    assert objectives.masking == "t5_spans"
    assert objectives.masking_options == {"noise_density": 0.3, "mean_span_length": 3.0}


def _batch():
    rows, _ = make_rows(n_rows=3, seq_len=24, seed=1, min_len=20, pair=False, unk_rate=0.0)
    rows["input_ids"] = np.where(rows["input_ids"] >= VOCAB, rows["input_ids"] % (VOCAB - 5) + 5, rows["input_ids"])
    rows["token_type_ids"] = np.zeros_like(rows["input_ids"])
    config = MaskingConfig(kind="t5_spans", noise_density=0.3, mean_span_length=2.0)
    out = apply_masking(rows, config, SPECIAL, VOCAB, 0, np.arange(3))
    return {**out, "sentence_label": np.zeros(3, np.int32)}


def test_the_decoder_cannot_see_later_targets_and_the_loss_is_on_the_targets():
    cfg = preset("tiny", vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                 max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0)
    batch = _batch()
    options = {"span_corruption": {"noise_density": 0.3, "mean_span_length": 2.0, "num_sentinels": 8}}
    model = PretrainModel(cfg, ObjectiveSet.parse("span_corruption", options))
    params = unbox(jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, batch)["params"])
    assert set(params) == {"encoder", "span_sentinels", DECODER}
    assert params["span_sentinels"]["embedding"].shape == (8, 32)
    assert params[DECODER]["lm_head"]["bias"].shape == (VOCAB + 8,)  # the vocab, then the sentinels

    @jax.jit
    def run(b):
        sums, state = model.apply({"params": params}, b, capture_intermediates=True, mutable=["intermediates"])
        calls = state["intermediates"]
        return sums, calls[DECODER]["__call__"][0], calls["encoder"]["__call__"][0].sequence

    sums, logits, encoded = run(batch)
    logits = np.asarray(logits)
    weights = batch["target_weights"]
    checked = 0
    for r in range(3):
        for t in range(int(weights[r].sum()) - 1):
            changed = dict(batch)
            if batch["target_sentinels"][r, t]:  # another sentinel, or a word instead
                changed["target_sentinels"] = batch["target_sentinels"].copy()
                changed["target_sentinels"][r, t] = 8 - batch["target_sentinels"][r, t] % 8
            else:
                changed["target_ids"] = batch["target_ids"].copy()
                changed["target_ids"][r, t] = (batch["target_ids"][r, t] - 5 + 13) % (VOCAB - 5) + 5
            _, new, new_encoded = run(changed)
            new = np.asarray(new)
            np.testing.assert_array_equal(new[r, :t + 1], logits[r, :t + 1])  # target t is read from t + 1 on
            assert np.abs(new[r, t + 1] - logits[r, t + 1]).max() > 1e-4
            np.testing.assert_array_equal(new_encoded, encoded)  # targets never reach the encoder
            checked += 1
    assert checked >= 10
    # the sentinel the encoder reads is the objective's row: another number there changes the encoder's output
    slot = np.flatnonzero(batch["input_sentinels"][0])[0]
    renumbered = {**batch, "input_sentinels": batch["input_sentinels"].copy()}
    renumbered["input_sentinels"][0, slot] = 7
    assert np.abs(np.asarray(run(renumbered)[2])[0] - np.asarray(encoded)[0]).max() > 1e-4
    # the loss: cross-entropy over exactly the weighted targets, sentinels as ids V + k
    extended = np.where(batch["target_sentinels"] > 0, VOCAB + batch["target_sentinels"] - 1, batch["target_ids"])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    want = -(np.take_along_axis(np.asarray(log_probs), extended[..., None], -1)[..., 0] * weights).sum()
    assert float(sums["span_corruption_loss"]) == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ValueError, match="num_sentinels"):
        few = {"span_corruption": {**options["span_corruption"], "num_sentinels": 1}}
        PretrainModel(cfg, ObjectiveSet.parse("span_corruption", few)).init({"params": jax.random.PRNGKey(0)}, batch)


@pytest.mark.slow
def test_span_corruption_learns_the_chain_and_exports_the_encoder_alone(chain_data, tmp_path):
    from bert_jax.train import export
    from bert_jax.weights import load_weights

    start = time.perf_counter()
    workdir = str(tmp_path / "run")
    # Rows of ~30 words: 4 noise tokens; at T5's mean span length 3 that is one span, always the row's end (T5's
    # noise starts after kept text and ends the row), at 2 two spans anywhere, each with its own sentinel.
    options = {"span_corruption": {"noise_density": 0.15, "mean_span_length": 2.0, "decoder_layers": 2,
                                   "num_sentinels": 100}}
    final = learning._train(chain_data["single"], workdir, options, objectives="span_corruption", train__steps=400,
                            optimizer__warmup_steps=40, train__eval_every=400)
    # A span's first word follows from the word before its sentinel, the next ones from the word before them.
    assert final["span_corruption_token_accuracy"] > 0.5 and final["span_corruption_accuracy"] > 0.6, final
    assert final["span_corruption_token_unigram_perplexity"] > 40, final
    assert final["span_corruption_token_perplexity_ratio"] < 0.3, final
    trained = time.perf_counter() - start
    out = str(tmp_path / "params.msgpack")
    with pytest.warns(UserWarning, match="freshly initialised"):  # no MLM/NSP head: BERT's are written fresh
        assert export.main(["--workdir", workdir, "--out", out]) == 0
    config, params = load_params(out)
    np.testing.assert_array_equal(params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"],
                                  load_weights(workdir).params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"])
    interop = jax.eval_shape(BertForPreTraining(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    assert set(params) == set(interop["params"]) == {"encoder", "mlm_head", "pooler", "nsp_head"}
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["objectives"] == "span_corruption"
    print(f"span_corruption chain run: {trained:.0f} s, {final}")
