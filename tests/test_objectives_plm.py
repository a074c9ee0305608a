"""XLNet's permutation LM (objective `plm`): the orders the pipeline draws, the two attention streams (on the masks
and by perturbing inputs: nothing may depend on what it must not see, bit for bit), and that it learns on the
permutation-chain corpus far below the unigram floor."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_learning as learning
from bert_jax.data.masking import MaskingConfig, MaskingError, apply_masking
from bert_jax.model import preset
from bert_jax.model.params import unbox
from bert_jax.model.pretraining import PretrainModel
from bert_jax.objectives import ObjectiveSet
from bert_jax.objectives.plm import PLM_HEAD, permutation_masks
from test_masking import SPECIAL, SPECIAL_SET, make_rows

chain_data = learning.chain_data  # the permutation-chain corpus fixture, shared with tests/test_learning.py
VOCAB = 120
KEY = jax.random.PRNGKey(0)


def permute(rows, keys, k=6, seed=3, epoch=0):
    return apply_masking(rows, MaskingConfig(kind="permutation", permutation_k=k), SPECIAL, 1000, seed,
                         np.asarray(keys), epoch)


def test_permutation_masking_draws_an_order_per_row_and_targets_its_last_sixth():
    rows, lengths = make_rows(n_rows=300, seq_len=48, min_len=4)
    out = permute(rows, np.arange(300))
    rank, ids = out["perm_rank"], rows["input_ids"]
    p = out["masked_positions"].shape[1]
    assert p == 8 and rank.dtype == np.int32
    np.testing.assert_array_equal(out["input_ids"], ids)  # nothing is replaced: PLM hides by attention alone
    np.testing.assert_array_equal(np.sort(rank, axis=1), np.tile(np.arange(48), (300, 1)))  # a permutation
    real = rows["input_mask"] != 0
    candidate = real & ~np.isin(ids, list(SPECIAL_SET))
    n = candidate.sum(1)
    for r in range(300):
        specials, cands, pads = rank[r][real[r] & ~candidate[r]], rank[r][candidate[r]], rank[r][~real[r]]
        # specials first (context for all), then the candidates, then padding
        assert specials.max(initial=-1) < cands.min(initial=99) and cands.max(initial=-1) < pads.min(initial=99)
        budget = min(p, max(1, round(n[r] / 6))) if n[r] else 0
        last = np.sort(np.flatnonzero(candidate[r] & (rank[r] >= rank[r][candidate[r]].max(initial=0) - budget + 1)))
        valid = out["masked_weights"][r] > 0
        np.testing.assert_array_equal(out["masked_positions"][r][valid], last)
        np.testing.assert_array_equal(out["masked_ids"][r][valid], ids[r, last])
    # a uniform order: each candidate is a target with probability ~1/6
    assert abs(out["masked_weights"].sum() / n.sum() - 1 / 6) < 0.02
    # deterministic from (seed, epoch, row key), whatever else is in the batch; a new epoch draws a new order
    again = permute({k: v[::-1] for k, v in rows.items()}, np.arange(300)[::-1])
    np.testing.assert_array_equal(again["perm_rank"][::-1], rank)
    assert (permute(rows, np.arange(300), epoch=1)["perm_rank"] != rank).any()
    # K is the objective's option, and the masking has no default of its own
    assert permute(rows, np.arange(300), k=4)["masked_positions"].shape[1] == 12
    with pytest.raises(MaskingError, match="partial_prediction_k"):
        MaskingConfig(kind="permutation")
    objectives = ObjectiveSet.parse("plm", {"plm": {"partial_prediction_k": 7}})
    assert objectives.masking == "permutation" and objectives.masking_options == {"permutation_k": 7}
    with pytest.raises(ValueError, match="different maskings"):
        ObjectiveSet.parse("mlm+plm")


def test_attention_masks_follow_the_order():
    rank = jnp.array([[2, 0, 1]])
    content, query = permutation_masks(rank)
    # rows: the attending position; columns: the position attended to
    np.testing.assert_array_equal(content[0, 0], [[1, 1, 1], [0, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(query[0, 0], [[0, 1, 1], [0, 0, 0], [0, 1, 0]])
    rng = np.random.default_rng(0)
    rank = jnp.asarray(np.argsort(rng.random((4, 12)), axis=1))
    content, query = permutation_masks(rank)
    assert not np.asarray(query[:, 0]).diagonal(axis1=1, axis2=2).any()  # the query stream never sees itself
    assert np.asarray(content[:, 0]).diagonal(axis1=1, axis2=2).all()
    later = np.asarray(rank)[:, None, :] > np.asarray(rank)[:, :, None]
    assert not (np.asarray(content[:, 0]) & later).any() and not (np.asarray(query[:, 0]) & later).any()


def _batch(rows_seed=0):
    rows, _ = make_rows(n_rows=3, seq_len=20, seed=rows_seed, min_len=14, unk_rate=0.0)
    rows["input_ids"] = np.where(rows["input_ids"] >= VOCAB, rows["input_ids"] % (VOCAB - 5) + 5, rows["input_ids"])
    out = permute(rows, np.arange(3), k=3)
    return {"input_ids": out["input_ids"], "input_mask": rows["input_mask"],
            "token_type_ids": np.zeros_like(rows["input_ids"]), "position_ids": np.tile(np.arange(20), (3, 1)),
            **{k: out[k] for k in ("perm_rank", "masked_positions", "masked_ids", "masked_weights")}}


@pytest.mark.parametrize("position, norm", [("learned", "post"), ("relative", "pre")])
def test_streams_see_nothing_later_and_the_query_stream_not_its_own_token(position, norm):
    cfg = preset("tiny", vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                 max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0, position_embedding=position,
                 norm=norm)
    batch = _batch()
    model = PretrainModel(cfg, ObjectiveSet.parse("plm"))
    params = unbox(jax.jit(model.init)({"params": KEY}, batch)["params"])

    @jax.jit
    def streams(ids):
        _, state = model.apply({"params": params}, {**batch, "input_ids": ids}, capture_intermediates=True,
                               mutable=["intermediates"])
        calls = state["intermediates"]
        return calls["encoder"]["__call__"][0].sequence, calls[PLM_HEAD]["__call__"][0]

    ids = jnp.asarray(batch["input_ids"])
    content, logits = map(np.asarray, streams(ids))
    rank, targets = batch["perm_rank"], batch["masked_positions"]
    real = batch["input_mask"] != 0
    checked_query = checked_content = 0
    for r in range(3):
        order = np.argsort(rank[r])
        for slot in np.flatnonzero(batch["masked_weights"][r]):
            t = targets[r, slot]
            changed = ids.at[r, t].set((ids[r, t] - 5 + 17) % (VOCAB - 5) + 5)
            new_content, new_logits = map(np.asarray, streams(changed))
            # the target's own token: its logits (the query stream) cannot depend on it ...
            np.testing.assert_array_equal(new_logits[r, slot], logits[r, slot])
            # ... nor can any position earlier in the order, in either stream
            earlier = rank[r] < rank[r, t]
            np.testing.assert_array_equal(new_content[r][earlier], content[r][earlier])
            earlier_targets = [s for s in range(targets.shape[1])
                               if batch["masked_weights"][r, s] and rank[r, targets[r, s]] < rank[r, t]]
            np.testing.assert_array_equal(new_logits[r, earlier_targets], logits[r, earlier_targets])
            # while the content stream at the token itself, and targets later in the order, do see it
            assert np.abs(new_content[r, t] - content[r, t]).max() > 1e-4
            later = [s for s in range(targets.shape[1])
                     if batch["masked_weights"][r, s] and rank[r, targets[r, s]] > rank[r, t]]
            if later:
                assert np.abs(new_logits[r, later] - logits[r, later]).max() > 1e-4
                checked_query += 1
        # a context token in the middle of the order: only what comes after it may change
        j = order[real[r].sum() // 2]
        changed = ids.at[r, j].set((ids[r, j] - 5 + 23) % (VOCAB - 5) + 5)
        new_content, new_logits = map(np.asarray, streams(changed))
        earlier = rank[r] < rank[r, j]
        np.testing.assert_array_equal(new_content[r][earlier], content[r][earlier])
        assert np.abs(new_content[r][~earlier & real[r]] - content[r][~earlier & real[r]]).max() > 1e-4
        np.testing.assert_array_equal(new_content[np.arange(3) != r], content[np.arange(3) != r])
        checked_content += 1
    assert checked_query >= 3 and checked_content == 3


@pytest.mark.slow
def test_plm_learns_the_chain_far_below_the_unigram_floor(chain_data, tmp_path):
    start = time.perf_counter()
    final = learning._train(chain_data["single"], str(tmp_path), objectives="plm", train__steps=500,
                            optimizer__learning_rate=5e-3, optimizer__warmup_steps=50, train__eval_every=500)
    # Each word follows from either neighbour, and 5/6 of a row (every non-target) precedes the targets in the order.
    assert final["plm_accuracy"] > 0.6, final
    assert final["plm_unigram_perplexity"] > 40 and final["plm_perplexity_ratio"] < 0.3, final
    print(f"plm chain run: {time.perf_counter() - start:.0f} s, {final}")
