"""`bert-jax finetune` writes what it predicted on every split, scores every labelled split, checks every split
before training, and fills the persistent compilation cache."""
import collections
import json
import logging
import os
import re
import shutil
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.compile_cache import cache_dir, enable_compile_cache
from bert_jax.data.tokenizer import save_vocab
from bert_jax.finetune import main as finetune_main
from bert_jax.finetune.metrics import entity_f1
from bert_jax.finetune.predictions import table_name, write_sentence_predictions
from bert_jax.finetune.tasks import get_task
from bert_jax.interop import save_params
from bert_jax.model import BertForPreTraining
from bert_jax.model.params import unbox
from tests.test_finetune import CFG, WORDS, args, sentiment_rows, write_conll, write_squad, write_sst2

FAST = ["--learning_rates", "3e-3", "--seeds", "1", "--epochs", "1", "--batch_size", "16"]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A directory with a params file of the small fixture model and its vocab.txt (no transformers import)."""
    directory = str(tmp_path_factory.mktemp("init"))
    init = jax.jit(BertForPreTraining(CFG).init)  # one compile, not one per eager op
    params = unbox(init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))["params"]
    save_params(os.path.join(directory, "params.msgpack"), CFG, params)
    save_vocab(directory, WORDS, lowercase=True)
    return directory


def _summary(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


# ----------------------------------------------------------------------------------------- GLUE


def _write_sst2_with_long_rows_and_test(directory, n_test=30):
    """SST-2 with a few 20+ token dev rows (a second bucket width) and a test.tsv in GLUE's test layout."""
    write_sst2(directory, n_train=96, n_dev=40)
    long_rows = [(" ".join(["the film"] * 11) + " good", 1), (" ".join(["a plot"] * 11) + " bad", 0)]
    with open(os.path.join(directory, "dev.tsv"), "a") as f:
        f.writelines(f"{text}\t{label}\n" for text, label in long_rows)
    with open(os.path.join(directory, "test.tsv"), "w") as f:
        f.write("index\tsentence\n")
        f.writelines(f"{i}\t{text}\n" for i, (text, _) in enumerate(sentiment_rows(n_test, 7)))
    return directory


@pytest.fixture
def compile_cache(tmp_path, monkeypatch):
    path = str(tmp_path / "xla")
    monkeypatch.setenv("BERT_JAX_COMPILE_CACHE", path)
    yield path
    enable_compile_cache({"BERT_JAX_COMPILE_CACHE": "off"})  # later tests in this process compile uncached again


def test_glue_dev_and_submission_predictions_one_compile_per_width(init_dir, tmp_path, caplog, compile_cache):
    data = _write_sst2_with_long_rows_and_test(str(tmp_path / "SST-2"))
    workdir = str(tmp_path / "ft")
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
        assert finetune_main.main(args("glue/sst2", data, init_dir, workdir, *FAST, "--learning_rates", "3e-3,1e-3",
                                       "--max_seq_len", "32")) == 0
    summary = _summary(workdir)
    best = "lr{learning_rate:g}_seed{seed}".format(**summary["best_single_run"]["setting"])
    assert summary["predictions"]["setting"] == best
    assert sorted(summary["predictions"]["files"]) == ["SST-2.tsv", "dev.jsonl"]
    assert summary["protocol"]["predict_examples"] == {"test": 30} and "test" not in summary["settings"][0]

    dev_labels = [line.split("\t")[-1].strip() for line in _lines(os.path.join(data, "dev.tsv"))[1:]]
    rows = [json.loads(line) for line in _lines(os.path.join(workdir, "predictions", "dev.jsonl"))]
    assert [r["index"] for r in rows] == list(range(len(dev_labels)))
    assert [r["gold_label"] for r in rows] == dev_labels and [r["gold"] for r in rows] == [int(x) for x in dev_labels]
    assert all(r["prediction_label"] == str(r["prediction"]) for r in rows)
    accuracy = np.mean([r["prediction"] == r["gold"] for r in rows])
    assert accuracy == pytest.approx(summary["best_single_run"]["dev"]["accuracy"])  # the best run's file

    test = _lines(os.path.join(workdir, "predictions", "SST-2.tsv"))
    assert test[0] == "index\tprediction" and len(test) == 31
    assert [line.split("\t")[0] for line in test[1:]] == [str(i) for i in range(30)]
    assert {line.split("\t")[1] for line in test[1:]} <= {"0", "1"}
    for setting in summary["settings"]:  # every setting keeps its own
        name = "lr{learning_rate:g}_seed{seed}".format(**setting["setting"])
        assert sorted(os.listdir(os.path.join(workdir, "runs", name))) == ["SST-2.tsv", "dev.jsonl"]

    # Two settings, train rows in one width, dev/test rows in two: each step compiled once per width it meets.
    found = (re.search(r"Finished XLA compilation of jit\((\w+)\)", r.getMessage()) for r in caplog.records)
    compiled = collections.Counter(m.group(1) for m in found if m)
    assert compiled["train_step"] == 1 and compiled["eval_step"] == 2, compiled
    assert any(name.startswith("jit_train_step") for name in os.listdir(compile_cache))


def test_compile_cache_directory_precedence():
    assert cache_dir({"BERT_JAX_COMPILE_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": "/j"}) is None
    assert cache_dir({"BERT_JAX_COMPILE_CACHE": "/b", "JAX_COMPILATION_CACHE_DIR": "/j"}, configured="/u") == "/b"
    assert cache_dir({}, configured="/u") == "/u" and cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"
    assert cache_dir({"XDG_CACHE_HOME": "/c"}) == os.path.join("/c", "bert_jax", "xla")


def test_glue_submission_files_use_glue_names_and_label_strings(tmp_path):
    expected = {("glue/cola", "test"): "CoLA.tsv", ("glue/sst2", "test"): "SST-2.tsv",
                ("glue/stsb", "test"): "STS-B.tsv", ("glue/mnli", "test"): "MNLI-m.tsv",
                ("glue/mnli", "test_mismatched"): "MNLI-mm.tsv", ("glue/mnli", "ax"): "AX.tsv",
                ("glue/mnli-mm", "test"): "MNLI-mm.tsv", ("glue/qnli", "test"): "QNLI.tsv",
                ("glue/rte", "test"): "RTE.tsv", ("glue/wnli", "test"): "WNLI.tsv", ("glue/qqp", "test"): "QQP.tsv",
                ("glue/mrpc", "test"): "MRPC.tsv", ("conll2003", "test"): "test.tsv", ("pairs", "test"): "test.tsv"}
    assert {key: table_name(*key) for key in expected} == expected
    name = write_sentence_predictions(str(tmp_path), get_task("glue/mnli"), "test", [None] * 3, np.array([2, 0, 1]),
                                      labelled=False)
    assert _lines(str(tmp_path / name)) == ["index\tprediction", "0\tneutral", "1\tcontradiction", "2\tentailment"]
    name = write_sentence_predictions(str(tmp_path), get_task("glue/stsb"), "test", [None] * 2,
                                      np.array([3.25, 0.5], np.float32), labelled=False)
    assert _lines(str(tmp_path / name))[1:] == ["0\t3.250", "1\t0.500"]


def test_mnli_finds_its_test_sets_and_the_diagnostic_set_in_the_glue_root(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2"
    files = (("MNLI", "test_matched.tsv"), ("MNLI", "test_mismatched.tsv"), ("diagnostic", "diagnostic.tsv"))
    for folder, name in files:
        os.makedirs(tmp_path / folder, exist_ok=True)
        columns = "index\tsentence1\tsentence2" if folder == "diagnostic" else header
        row = "0\ta\tb" if folder == "diagnostic" else "0\t1\t2\tfiction\ta\tb"
        (tmp_path / folder / name).write_text(f"{columns}\n{row}\n")
    task, mnli = get_task("glue/mnli"), str(tmp_path / "MNLI")
    for split in ("test", "test_mismatched", "ax"):
        assert task.locate(mnli, split) is not None
        examples = task.read(mnli, split)
        assert len(examples) == 1 and not task.has_labels(examples)
    assert task.locate(mnli, "dev") is None


# ----------------------------------------------------------------------------------------- SQuAD


def _official_v11(dataset, predictions):
    """evaluate-v1.1.py's evaluate(), as the official script computes it."""
    def normalize(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

    def f1(prediction, truth):
        p, t = normalize(prediction).split(), normalize(truth).split()
        same = sum((collections.Counter(p) & collections.Counter(t)).values())
        return 0 if same == 0 else 2 * (same / len(p)) * (same / len(t)) / (same / len(p) + same / len(t))

    em = f = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                truths, prediction = [a["text"] for a in qa["answers"]], predictions[qa["id"]]
                em += max(float(normalize(prediction) == normalize(t)) for t in truths)
                f += max(f1(prediction, t) for t in truths)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f / total}


def test_squad_predictions_json_scores_as_reported_and_other_files_are_predicted(init_dir, tmp_path):
    data = write_squad(str(tmp_path / "data"), n_train=64, n_dev=24)
    with open(os.path.join(data, "dev-v1.1.json")) as f:
        dev = json.load(f)
    unanswered = json.loads(json.dumps(dev))
    for paragraph in unanswered["data"][0]["paragraphs"]:
        for qa in paragraph["qas"]:
            qa["id"], qa["answers"] = "t-" + qa["id"], []
    test_file = str(tmp_path / "hidden.json")
    with open(test_file, "w") as f:
        json.dump(unanswered, f)
    workdir = str(tmp_path / "ft")
    assert finetune_main.main(args("squad/v1.1", data, init_dir, workdir, *FAST, "--max_seq_len", "48",
                                   "--max_query_len", "8", "--doc_stride", "16", "--test_file", test_file)) == 0
    summary = _summary(workdir)
    with open(os.path.join(workdir, "predictions", "dev_predictions.json")) as f:
        predictions = json.load(f)
    qids = [qa["id"] for p in dev["data"][0]["paragraphs"] for qa in p["qas"]]
    assert sorted(predictions) == sorted(qids)
    reported = summary["settings"][0]["dev"]
    official = _official_v11(dev["data"], predictions)
    assert official == pytest.approx({k: reported[k] for k in official})
    with open(os.path.join(workdir, "predictions", "test_predictions.json")) as f:
        assert sorted(json.load(f)) == sorted("t-" + q for q in qids)
    assert "test" not in summary["settings"][0] and summary["protocol"]["predict_examples"] == {"test": 24}


# ----------------------------------------------------------------------------------------- CoNLL


def test_conll_scores_the_test_split_and_writes_conll_predictions(init_dir, tmp_path):
    data = write_conll(str(tmp_path / "data"), n_train=60, n_dev=20)
    other = write_conll(str(tmp_path / "other"), n_train=1, n_dev=15)
    shutil.copy(os.path.join(other, "valid.txt"), os.path.join(data, "eng.testb"))  # the original file name
    workdir = str(tmp_path / "ft")
    assert finetune_main.main(args("conll2003", data, init_dir, workdir, *FAST, "--max_seq_len", "32")) == 0
    summary = _summary(workdir)
    assert summary["protocol"]["eval_examples"] == {"dev": 20, "test": 15}
    test_metrics = summary["settings"][0]["test"]
    assert {"precision", "recall", "f1"} <= set(test_metrics) and "test" in summary["best"]["other_splits"]
    for split, count in (("dev", 20), ("test", 15)):
        sentences = [[]]
        for line in _lines(os.path.join(workdir, "predictions", f"{split}.conll")):
            if line:
                sentences[-1].append(line.split(" "))
            else:
                sentences.append([])
        sentences = sentences[:-1]
        assert len(sentences) == count
        gold, predicted = [[w[1] for w in s] for s in sentences], [[w[2] for w in s] for s in sentences]
        assert entity_f1(gold, predicted)["f1"] == pytest.approx(summary["settings"][0][split]["f1"])
    words = [line.split()[0] for line in _lines(os.path.join(data, "eng.testb")) if line and "DOCSTART" not in line]
    assert words == [line.split(" ")[0] for line in _lines(os.path.join(workdir, "predictions", "test.conll")) if line]


# ----------------------------------------------------------------------------------------- checks before training


def test_a_header_only_dev_file_fails_before_training(init_dir, tmp_path, capsys):
    data = write_sst2(str(tmp_path / "SST-2"), n_train=32, n_dev=4)
    with open(os.path.join(data, "dev.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
    workdir = str(tmp_path / "ft")
    assert finetune_main.main(args("glue/sst2", data, init_dir, workdir, *FAST)) == 2
    out, err = capsys.readouterr()
    assert err.strip().count("\n") == 0 and os.path.join(data, "dev.tsv") in err, err
    assert "epoch" not in out and not os.path.exists(os.path.join(workdir, "runs"))
    with open(os.path.join(data, "test.tsv"), "w") as f:  # a malformed test set fails just as early
        f.write("index\tsentence\n0\ttoo\tmany\tcolumns\n")
    write_sst2(data, n_train=32, n_dev=4)
    assert finetune_main.main(args("glue/sst2", data, init_dir, workdir, *FAST)) == 2
    out, err = capsys.readouterr()
    assert "test.tsv:2" in err and "epoch" not in out, err

