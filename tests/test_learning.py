"""The encoder learns from context, not only from token frequencies.

"The loss falls" is weak evidence: a model that ignores its input still lowers the loss by learning unigram
frequencies. Here every sentence walks a fixed random permutation of the word list (each word is followed by
one word only), and the words are uniform, so frequencies alone give accuracy 1/WORDS. A masked word is
determined by its left neighbour (and by its right one), so a working encoder, masking pipeline and loss reach
high accuracy, and a bug that hides or misaligns context (masked inputs not masked, labels or positions
shifted, attention masks wrong, LTR seeing its future) shows up as accuracy near chance or as a leak.
"""
import json
import os
import random

import jax
import ml_collections
import pytest

import _pretrain_helpers as h
from bert_jax.data import make_data
from bert_jax.finetune.init import load_init
from bert_jax.train import evaluate, pretrain

WORDS = 60
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def chain_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    rnd = random.Random(0)
    words = [f"w{i}" for i in range(WORDS)]
    successor = list(range(WORDS))
    rnd.shuffle(successor)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + words + ["."]) + "\n")
    lines = []
    for _ in range(600):  # documents
        for _ in range(4):  # sentences of 14 words
            w, sentence = rnd.randrange(WORDS), []
            for _ in range(14):
                sentence.append(words[w])
                w = successor[w]
            lines.append(" ".join(sentence) + " .")
        lines.append("")
    corpus = root / "chain.txt"
    corpus.write_text("\n".join(lines) + "\n")
    reader = make_data.ReaderOptions(format="bert")  # one sentence per line, a blank line between documents
    out = {}
    for mode in ("segment-pair", "single"):
        out[mode] = str(root / mode)
        make_data.build_dataset([str(corpus)], out[mode], str(vocab), mode=mode, seq_len=32, reader=reader,
                                log=lambda *_: None)
    return out


def _train(data_dir, workdir, options=None, **extra):
    """The final eval row of a small run on `data_dir`; `options`: objective_options (the objectives' own keys)."""
    values = dict(model__hidden_size=64, model__num_heads=2, model__intermediate_size=128, model__num_layers=2,
                  model__max_position_embeddings=32, data__seq_len=32, train__global_batch_size=32,
                  train__steps=800, optimizer__learning_rate=3e-3, optimizer__warmup_steps=80,
                  train__eval_every=800, train__eval_batches=4, train__log_every=50)
    values.update(extra)
    config = h.load_config(h.overrides((data_dir, data_dir), **values))
    if options:
        config.objective_options = ml_collections.ConfigDict(options)
    pretrain.run(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    return evals[-1]


@pytest.fixture(scope="module")
def mlm_run(chain_data, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mlm_run"))
    return workdir, _train(chain_data["segment-pair"], workdir)


def test_mlm_predicts_masked_words_from_their_neighbours(mlm_run):
    final = mlm_run[1]
    # Chance is 1/60; the ceiling is below 1 (a word whose neighbours are masked too, or a random-token input).
    assert final["mlm_accuracy"] > 0.6, final
    # The in-run eval scores the same targets with the training data's token frequencies: far below that floor.
    assert final["mlm_unigram_perplexity"] > 40 and final["mlm_perplexity_ratio"] < 0.3, final


def _evaluate(checkpoint, data_dir, out):
    assert evaluate.main(["--checkpoint", checkpoint, "--data", data_dir, "--out", str(out)]) == 0
    with open(out) as f:
        return json.load(f)


def test_evaluate_puts_a_trained_model_far_below_the_unigram_floor_and_a_random_one_at_it(mlm_run, chain_data,
                                                                                         tmp_path, capsys):
    workdir, _ = mlm_run
    trained = _evaluate(workdir, chain_data["segment-pair"], tmp_path / "trained.json")
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "ratio" in line and str(tmp_path / "trained.json") in line
    random_init = _evaluate(f"random:{workdir}", chain_data["segment-pair"], tmp_path / "random.json")
    # Uniform words: the floor is ~WORDS, whatever the model.
    for result in (trained, random_init):
        assert abs(result["mlm_unigram_perplexity"] - WORDS) < 8, result
        assert result["examples"] > 500 and result["unigram_source"] == "the checkpoint's pretraining data"
    assert trained["mlm_perplexity_ratio"] < 0.3 and trained["nsp_accuracy"] > 0.6, trained
    assert random_init["mlm_perplexity_ratio"] > 0.9 and random_init["mlm_accuracy"] < 0.1, random_init
    # The same seed draws the same masks: the floor is scored on the same targets.
    assert trained["mlm_unigram_loss"] == random_init["mlm_unigram_loss"]
    # Text files in, tokenised with the run's vocab into a temporary dataset: the same verdict.
    text = os.path.join(os.path.dirname(chain_data["single"]), "chain.txt")
    from_text = _evaluate(workdir, text, tmp_path / "text.json")
    assert from_text["examples"] > 500 and from_text["mlm_perplexity_ratio"] < 0.3, from_text


def test_evaluate_refuses_bad_input_in_one_line(mlm_run, chain_data, tmp_path, capsys):
    workdir, _ = mlm_run
    cases = [
        (["--checkpoint", str(tmp_path / "nope"), "--data", chain_data["single"]],
         f"--checkpoint {tmp_path / 'nope'} does not exist"),
        (["--checkpoint", workdir, "--data", str(tmp_path)], "without manifest.json"),
        (["--checkpoint", workdir, "--data", chain_data["single"]], "mode 'single'"),  # no NSP pairs in it
        (["--checkpoint", workdir, "--data", chain_data["segment-pair"], "--objectives", "mlm+sop"], "sentence-order"),
        (["--checkpoint", workdir, "--data", chain_data["single"], "--objectives", "ltr"], "causal"),
        (["--checkpoint", workdir, "--data", chain_data["segment-pair"], "--mask_rate", "0"], "--mask_rate"),
    ]
    for argv, expected in cases:
        assert evaluate.main([*argv, "--out", str(tmp_path / "x.json")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (argv, err)
    assert not (tmp_path / "x.json").exists()


def test_finetune_random_init_has_the_pretrained_shapes(mlm_run):
    pretrained, fresh = load_init(mlm_run[0]), load_init(f"random:{mlm_run[0]}")
    shapes = lambda params: jax.tree.map(lambda x: tuple(x.shape), params)  # noqa: E731
    assert shapes(fresh.params) == shapes(pretrained.params)
    assert fresh.kind == "random" and fresh.vocab_path == pretrained.vocab_path
    assert fresh.fingerprint != pretrained.fingerprint


def test_ltr_predicts_the_next_word_and_cannot_see_it(chain_data, tmp_path):
    final = _train(chain_data["single"], str(tmp_path), objectives="ltr")
    accuracy = final["ltr_accuracy"]
    assert final["ltr_perplexity_ratio"] < 0.3, final
    # Each next word follows from the current one, except a sentence's first word after '.'.
    assert accuracy > 0.6, final
    # A leak of the future would make the word after '.' predictable as well: 100% is impossible without one.
    assert accuracy < 0.97, final
    # `evaluate` reads the run's objectives: a causal model is scored on next-token perplexity.
    scored = _evaluate(str(tmp_path), chain_data["single"], tmp_path / "ltr.json")
    assert scored["objectives"] == "ltr" and "mlm_loss" not in scored
    assert scored["ltr_perplexity_ratio"] < 0.3 and scored["ltr_unigram_perplexity"] > 30, scored
