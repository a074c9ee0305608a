"""`bert-jax finetune` end to end: init sources, bucketing, the multi-seed protocol on learnable fixtures."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.data.tokenizer import save_vocab
from bert_jax.finetune import main as finetune_main
from bert_jax.finetune.batching import bucket_widths, iterate_batches, num_batches
from bert_jax.finetune.init import InitError, load_init
from bert_jax.model import BertForPreTraining, preset
from bert_jax.model.params import unbox

POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
FILLER = ["the", "a", "film", "movie", "was", "is", "plot", "actor", "story", "very", "quite", "and", "it", "this",
          "of", "scene", "music", "end", "start", "long"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CFG = preset("tiny", vocab_size=len(SPECIAL) + len(POSITIVE + NEGATIVE + FILLER), hidden_size=32, num_layers=1,
             num_heads=2, intermediate_size=64, max_position_embeddings=64)


def sentiment_rows(n, seed):
    """Sentences with one sentiment word among fillers; the label is the word's polarity (learnable, chance 0.5)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, rng.integers(3, 12)))
        words.insert(int(rng.integers(len(words) + 1)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_sst2(directory, n_train=384, n_dev=96):
    os.makedirs(directory, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("dev", n_dev, 1)):
        with open(os.path.join(directory, f"{split}.tsv"), "w") as f:
            f.write("sentence\tlabel\n")
            for text, label in sentiment_rows(n, seed):
                f.write(f"{text} \t{label}\n")
    return directory


def write_hf_init(directory, cfg=CFG, seed=0):
    from bert_jax.interop import save_hf_checkpoint

    params = unbox(BertForPreTraining(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32)))["params"]
    save_hf_checkpoint(directory, cfg, params)
    save_vocab(directory, SPECIAL + POSITIVE + NEGATIVE + FILLER, lowercase=True)
    return directory, params


@pytest.fixture(scope="module")
def hf_init(tmp_path_factory):
    return write_hf_init(str(tmp_path_factory.mktemp("hf_init")))


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    return write_sst2(str(tmp_path_factory.mktemp("sst2")))


def args(task, data_dir, init, workdir, *extra):
    return ["--task", task, "--data_dir", data_dir, "--init", init, "--workdir", workdir, *extra]


# ----------------------------------------------------------------------------------------- init and batching


def test_missing_or_unreadable_init_is_a_one_line_error(sst2, tmp_path, capsys):
    for init in (str(tmp_path / "nope"), str(tmp_path)):
        assert finetune_main.main(args("glue/sst2", sst2, init, str(tmp_path / "w"))) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--init" in err, err
    (tmp_path / "garbage.msgpack").write_bytes(b"not msgpack")
    with pytest.raises(InitError, match="could not be read"):
        load_init(str(tmp_path / "garbage.msgpack"))


def test_init_sources_agree_on_the_weights(hf_init, tmp_path):
    from bert_jax.interop import save_params

    directory, params = hf_init
    from_hf = load_init(directory)
    assert from_hf.kind == "hf" and from_hf.vocab_path.endswith("vocab.txt")
    save_params(str(tmp_path / "p.msgpack"), CFG, params)
    from_file = load_init(str(tmp_path / "p.msgpack"))
    assert from_file.kind == "params" and from_file.vocab_path is None  # no vocab.txt beside it
    np.testing.assert_array_equal(from_hf.params["encoder"]["embeddings"]["token"]["embedding"],
                                  from_file.params["encoder"]["embeddings"]["token"]["embedding"])
    assert load_init(directory).fingerprint == from_hf.fingerprint  # deterministic


def test_buckets_keep_every_row_once_in_fixed_shapes():
    rng = np.random.default_rng(0)
    n, max_len = 203, 128
    lengths = rng.integers(3, max_len + 1, n).astype(np.int32)
    feats = {"input_ids": rng.integers(5, 50, (n, max_len)).astype(np.int32), "length": lengths,
             "token_type_ids": np.zeros((n, max_len), np.int32), "label": rng.integers(0, 2, n).astype(np.int32),
             "example_index": np.arange(n, dtype=np.int32)}
    widths = bucket_widths(max_len)
    assert widths == (16, 32, 64, 128)
    for seed in (None, 3):
        seen, shapes = [], set()
        batches = list(iterate_batches(feats, 16, widths, shuffle_seed=seed))
        assert len(batches) == num_batches(feats, 16, widths)
        for b in batches:
            shapes.add(b["input_ids"].shape)
            real = b["row_index"][b["weight"] > 0]
            assert (lengths[real] <= b["input_ids"].shape[1]).all()
            np.testing.assert_array_equal(b["input_mask"].sum(1)[b["weight"] > 0], lengths[real])
            seen.extend(real.tolist())
        assert sorted(seen) == list(range(n))  # nothing dropped, nothing twice
        assert shapes <= {(16, w) for w in widths}
    a = [b["row_index"].tolist() for b in iterate_batches(feats, 16, widths, shuffle_seed=3)]
    assert a == [b["row_index"].tolist() for b in iterate_batches(feats, 16, widths, shuffle_seed=3)]
    assert a != [b["row_index"].tolist() for b in iterate_batches(feats, 16, widths, shuffle_seed=4)]


# ----------------------------------------------------------------------------------------- protocol end to end


def test_sst2_protocol_beats_chance_and_resumes(hf_init, sst2, tmp_path):
    workdir = str(tmp_path / "ft")
    cli = args("glue/sst2", sst2, hf_init[0], workdir, "--learning_rates", "3e-3,1e-3", "--seeds", "2",
               "--epochs", "4", "--batch_size", "16", "--max_seq_len", "32")
    assert finetune_main.main(cli) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        summary = json.load(f)
    assert summary["task"] == "glue/sst2" and summary["metric"] == "accuracy"
    assert summary["init_fingerprint"] == load_init(hf_init[0]).fingerprint and summary["init_kind"] == "hf"
    assert len(summary["settings"]) == 4 and set(summary["per_learning_rate"]) == {"0.003", "0.001"}
    assert all(s["seeds"] == 2 for s in summary["per_learning_rate"].values())
    assert summary["best"]["median"] > 0.8, summary["best"]  # chance is 0.5
    assert summary["best"]["min"] <= summary["best"]["median"] <= summary["best"]["max"]
    assert len(os.listdir(os.path.join(workdir, "runs"))) == 4
    # A second invocation finds every setting done and reproduces the summary without training.
    mtimes = {p: os.path.getmtime(os.path.join(workdir, "runs", p)) for p in os.listdir(os.path.join(workdir, "runs"))}
    assert finetune_main.main(cli) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        again = json.load(f)
    assert again["best"] == summary["best"]
    assert mtimes == {p: os.path.getmtime(os.path.join(workdir, "runs", p)) for p in mtimes}


def test_same_seed_same_result(hf_init, sst2, tmp_path):
    results = []
    for name in ("a", "b"):
        workdir = str(tmp_path / name)
        assert finetune_main.main(args("glue/sst2", sst2, hf_init[0], workdir, "--learning_rates", "2e-3",
                                       "--seeds", "1", "--epochs", "1", "--batch_size", "16",
                                       "--max_seq_len", "32", "--max_train_examples", "128")) == 0
        with open(os.path.join(workdir, "runs", "lr0.002_seed0.json")) as f:
            results.append(json.load(f))
    assert results[0]["epochs"] == results[1]["epochs"]


@pytest.mark.parametrize("variant", ["bilstm", "features"])
def test_paper_variants_learn(variant, hf_init, sst2, tmp_path):
    workdir = str(tmp_path / variant)
    extra = ["--features", "sum_all"] if variant == "features" else []
    assert finetune_main.main(args("glue/sst2", sst2, hf_init[0], workdir, "--learning_rates", "3e-3", "--seeds", "1",
                                   "--epochs", "4", "--batch_size", "16", "--max_seq_len", "32", "--variant", variant,
                                   *extra)) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        summary = json.load(f)
    assert summary["protocol"]["variant"] == variant
    assert summary["best"]["median"] > 0.7, summary["best"]
