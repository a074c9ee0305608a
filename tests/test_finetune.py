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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
FILLER = ["the", "a", "film", "movie", "was", "is", "plot", "actor", "story", "very", "quite", "and", "it", "this",
          "of", "scene", "music", "end", "start", "long"]
PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "rome", "york", "oslo"]
COLORS = ["red", "blue", "green", "yellow"]
QUESTION = ["what", "color", "?", "new", ",", "."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = SPECIAL + POSITIVE + NEGATIVE + FILLER + PEOPLE + PLACES + COLORS + QUESTION
CFG = preset("tiny", vocab_size=len(WORDS), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
             max_position_embeddings=64)


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
    save_vocab(directory, WORDS, lowercase=True)
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


def test_init_dir_with_a_params_file_and_its_vocab(hf_init, tmp_path):
    from bert_jax.interop import save_params

    directory, params = hf_init
    folder = tmp_path / "exported"
    save_params(str(folder / "params.msgpack"), CFG, params)
    (folder / "vocab.txt").write_text(open(os.path.join(directory, "vocab.txt")).read())
    init = load_init(str(folder))
    assert init.kind == "params" and init.vocab_path == str(folder / "vocab.txt")
    assert init.fingerprint == load_init(str(folder / "params.msgpack")).fingerprint
    save_params(str(folder / "other.msgpack"), CFG, params)
    with pytest.raises(InitError, match="several params files"):
        load_init(str(folder))


def test_random_init_from_a_config_needs_the_vocab_size_and_says_so(hf_init, tmp_path, capsys):
    directory, _ = hf_init
    vocab = os.path.join(directory, "vocab.txt")
    config = os.path.join(REPO, "configs", "pretrain.py") + ":tiny"
    with pytest.raises(InitError, match="--vocab"):
        load_init(f"random:{config}")
    init = load_init(f"random:{config}", vocab)
    n_vocab = sum(1 for line in open(vocab) if line.strip())
    assert init.kind == "random" and init.config.num_layers == 2 and init.config.hidden_size == 128
    assert init.params["encoder"]["embeddings"]["token"]["embedding"].shape == (n_vocab, 128)
    assert load_init(f"random:{config}", vocab).fingerprint == init.fingerprint  # seed 0: the same floor every time
    for bad in ("random", "random:", f"random:{tmp_path}"):
        assert finetune_main.main(args("glue/sst2", str(tmp_path), bad, str(tmp_path / "w"))) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "random:" in err, err


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
    records = [p for p in os.listdir(os.path.join(workdir, "runs")) if p.endswith(".json")]
    assert len(records) == 4  # and beside each, a folder of that setting's predictions
    # A second invocation finds every setting done and reproduces the summary without training.
    mtimes = {p: os.path.getmtime(os.path.join(workdir, "runs", p)) for p in records}
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
    # The frozen (random) encoder leaves all learning to the BiLSTM head: a higher rate.
    extra = ["--features", "sum_all", "--learning_rates", "1e-2"] if variant == "features" else \
        ["--learning_rates", "3e-3"]
    assert finetune_main.main(args("glue/sst2", sst2, hf_init[0], workdir, "--seeds", "1",
                                   "--epochs", "4", "--batch_size", "16", "--max_seq_len", "32", "--variant", variant,
                                   *extra)) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        summary = json.load(f)
    assert summary["protocol"]["variant"] == variant
    assert summary["best"]["median"] > 0.7, summary["best"]


# ----------------------------------------------------------------------------------------- NER and SQuAD


def write_conll(directory, n_train=300, n_dev=80):
    """Sentences of fillers with people (B-PER), places (B-LOC) and 'new york' (B-LOC I-LOC), in CoNLL-2003's
    four columns with -DOCSTART- lines and IOB1 tags (an entity starts with I-), as the original files."""
    os.makedirs(directory, exist_ok=True)
    for name, n, seed in (("train.txt", n_train, 0), ("valid.txt", n_dev, 1)):
        rng = np.random.default_rng(seed)
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            for _ in range(int(rng.integers(3, 9))):
                r = rng.random()
                if r < 0.15:
                    lines.append(f"{rng.choice(PEOPLE)} NNP B-NP I-PER")
                elif r < 0.25:
                    lines.append(f"{rng.choice(PLACES[:3])} NNP B-NP I-LOC")
                elif r < 0.3:
                    lines += ["new NNP B-NP I-LOC", "york NNP I-NP I-LOC"]
                else:
                    lines.append(f"{rng.choice(FILLER)} NN B-NP O")
            lines.append("")
        with open(os.path.join(directory, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return directory


def write_squad(directory, n_train=240, n_dev=60):
    """'what color ?' over a context of fillers holding one colour word: the answer."""
    os.makedirs(directory, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("dev", n_dev, 1)):
        rng = np.random.default_rng(seed)
        paragraphs = []
        for i in range(n):
            words = list(rng.choice(FILLER, int(rng.integers(6, 30))))
            at = int(rng.integers(len(words) + 1))
            color = str(rng.choice(COLORS))
            context = " ".join(words[:at] + [color] + words[at:]) + " ."
            start = len(" ".join(words[:at])) + (1 if at else 0)
            assert context[start:start + len(color)] == color
            paragraphs.append({"context": context, "qas": [{"id": f"{split}{i}", "question": "what color ?",
                                                           "answers": [{"text": color, "answer_start": start}]}]})
        with open(os.path.join(directory, f"{split}-v1.1.json"), "w") as f:
            json.dump({"version": "1.1", "data": [{"title": "colors", "paragraphs": paragraphs}]}, f)
    return directory


@pytest.mark.parametrize("task,writer,minimum", [("conll2003", write_conll, 0.8), ("squad/v1.1", write_squad, 70.0)])
def test_ner_and_squad_learn(task, writer, minimum, hf_init, tmp_path):
    data = writer(str(tmp_path / "data"))
    workdir = str(tmp_path / "ft")
    assert finetune_main.main(args(task, data, hf_init[0], workdir, "--learning_rates", "3e-3", "--seeds", "1",
                                   "--epochs", "4", "--batch_size", "16", "--max_seq_len", "48",
                                   "--max_query_len", "8", "--doc_stride", "16")) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        summary = json.load(f)
    assert summary["metric"] == "f1" and summary["best"]["median"] > minimum, summary["best"]
    dev = summary["settings"][0]["dev"]
    assert {"precision", "recall"} <= set(dev) if task == "conll2003" else {"exact_match", "f1"} <= set(dev)


def test_finetune_from_an_ltr_pretraining_workdir(tmp_path):
    """A causal (LTR) pretraining run: fine-tuning keeps the causal mask and pools the last real token;
    `workdir@STEP` picks a checkpoint, and the vocab comes from the run's data manifest."""
    from tests._pretrain_helpers import CONFIG, DATA, TINY
    from bert_jax import configlib
    from bert_jax.data.make_data import prepare_builtin_dataset
    from bert_jax.train import pretrain

    data = prepare_builtin_dataset(str(tmp_path / "corpus"), **{**DATA, "mode": "single"}, log=lambda m: None)
    overrides = [f"--config.{k}={v}" for k, v in {**TINY, "data.path": data, "data.eval_path": "",
                                                  "objectives": "ltr", "train.steps": 4,
                                                  "train.checkpoint_every": 2}.items()]
    pretrain.run(configlib.load_config(CONFIG, overrides), str(tmp_path / "pt"))
    init = load_init(str(tmp_path / "pt") + "@2")
    assert init.kind == "workdir" and init.step == 2 and init.config.causal and init.vocab_path
    assert load_init(str(tmp_path / "pt")).step == 4
    with pytest.raises(InitError, match="step"):
        load_init(str(tmp_path / "pt") + "@3")
    # Saved from 8 devices, read by a process with one: the same weights.
    import subprocess
    import sys

    from tests._pretrain_helpers import cli_env

    code = "import sys; from bert_jax.finetune.init import load_init; print(load_init(sys.argv[1]).fingerprint)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pt")], env=cli_env(1), capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == load_init(str(tmp_path / "pt")).fingerprint
    sst2 = write_sst2(str(tmp_path / "sst2"), n_train=64, n_dev=32)
    workdir = str(tmp_path / "ft")
    assert finetune_main.main(args("glue/sst2", sst2, str(tmp_path / "pt"), workdir, "--learning_rates", "1e-3",
                                   "--seeds", "1", "--epochs", "1", "--batch_size", "16", "--max_seq_len", "32")) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        summary = json.load(f)
    assert summary["protocol"]["pool"] == "last token" and summary["init_kind"] == "workdir"
    assert summary["init_step"] == 4


def test_mnli_reports_matched_and_mismatched(hf_init, tmp_path):
    """GLUE's MNLI layout (many columns, gold_label last, two dev sets): one run evaluates both."""
    labels = {"good": "entailment", "bad": "contradiction", "fine": "neutral"}
    directory = tmp_path / "MNLI"
    directory.mkdir()
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
    for name, n, seed in (("train.tsv", 96, 0), ("dev_matched.tsv", 24, 1), ("dev_mismatched.tsv", 20, 2)):
        rng = np.random.default_rng(seed)
        with open(directory / name, "w") as f:
            f.write("\t".join(header) + "\n")
            for i in range(n):
                word = str(rng.choice(list(labels)))
                a, b = " ".join(rng.choice(FILLER, 5)), " ".join(list(rng.choice(FILLER, 3)) + [word])
                f.write("\t".join([str(i), "0", "0", "fiction", "(", "(", "(", "(", a, b, labels[word],
                                   labels[word]]) + "\n")
    workdir = str(tmp_path / "ft")
    assert finetune_main.main(args("glue/mnli", str(directory), hf_init[0], workdir, "--learning_rates", "3e-3",
                                   "--seeds", "1", "--epochs", "1", "--batch_size", "16", "--max_seq_len", "32")) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        summary = json.load(f)
    assert summary["protocol"]["eval_examples"] == {"dev": 24, "dev_mismatched": 20}
    assert set(summary["settings"][0]) >= {"dev", "dev_mismatched"}
    assert 0.0 <= summary["best"]["other_splits"]["dev_mismatched"]["median"] <= 1.0
