"""The unigram floor: token counts recorded by make-data, scored on a batch's targets, against hand-computed values."""
import math

import numpy as np
import pytest

from bert_jax.data import make_data
from bert_jax.data.unigram import UnigramError, UnigramFloor, add_perplexities

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4; then a=5, b=6, c=7


@pytest.fixture
def tiny(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + ["a", "b", "c"]) + "\n")
    corpus = tmp_path / "c.txt"
    # bert format, single mode: each document is one example [CLS] ... [SEP]
    corpus.write_text("a a a b\n\na b\n")
    manifest = make_data.build_dataset([str(corpus)], str(tmp_path / "data"), str(vocab), mode="single", seq_len=16,
                                       log=lambda *_: None)
    return manifest


def test_make_data_counts_every_token_but_pad(tiny):
    assert tiny["token_counts"] == [0, 0, 2, 2, 0, 4, 2, 0]  # two examples: [CLS] a a a b [SEP], [CLS] a b [SEP]


def test_floor_on_masked_targets_by_hand(tiny):
    floor = UnigramFloor.from_manifest(tiny, "tiny")
    total, v = 6, 8 - 3  # add-one over the 8 ids but [PAD], [CLS], [SEP], which are never masked
    p = {5: (4 + 1) / (total + v), 6: (2 + 1) / (total + v), 7: (0 + 1) / (total + v)}
    batch = {"masked_ids": np.array([[5, 6, 7], [6, 0, 0]]), "masked_weights": np.array([[1.0, 1.0, 1.0], [1.0, 0, 0]])}
    sums = floor.batch_sums(batch, "mlm_loss")
    expected = -(math.log(p[5]) + 2 * math.log(p[6]) + math.log(p[7]))
    assert sums["sum/mlm_unigram_loss"] == pytest.approx(expected, rel=1e-12)
    assert sums["count/mlm_unigram_loss"] == 4
    summary = add_perplexities({"mlm_loss": 1.0, "mlm_unigram_loss": expected / 4})
    assert summary["mlm_unigram_perplexity"] == pytest.approx(math.exp(expected / 4))
    assert summary["mlm_perplexity_ratio"] == pytest.approx(math.e / math.exp(expected / 4))


def test_ltr_floor_scores_each_next_token_of_the_same_example(tiny):
    floor = UnigramFloor.from_manifest(tiny, "tiny")
    # Two packed examples in one row (input_mask 1 then 2): 'a [SEP]' | 'c', then padding.
    batch = {"input_ids": np.array([[5, 3, 7, 0]]), "input_mask": np.array([[1, 1, 2, 0]])}
    sums = floor.batch_sums(batch, "ltr_loss")
    assert sums["count/ltr_unigram_loss"] == 1  # only a -> [SEP] stays inside one example
    # [SEP] is a next token (count 2 of 8 counted tokens); add-one over the 8 ids but [PAD] and [CLS].
    assert sums["sum/ltr_unigram_loss"] == pytest.approx(-math.log((2 + 1) / (8 + 6)))


def test_a_manifest_without_counts_names_the_fix():
    with pytest.raises(UnigramError, match="rerun `bert-jax make-data`"):
        UnigramFloor.from_manifest({"examples": 3}, "old_data")
