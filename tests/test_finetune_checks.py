"""`bert-jax finetune` validates before work: bad flags and every bad split fail before the first step (one line,
exit 2, nothing trained), and a setting that trained is on disk before anything after training can fail."""
import json
import os

import pytest

from bert_jax import cli
from tests.test_finetune import args, write_conll, write_squad, write_sst2
from tests.test_finetune_predictions import FAST, init_dir  # noqa: F401  (a fixture)


def _one_line_error(capsys) -> tuple[str, str]:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bert-jax finetune: "), err
    return out, lines[0]


@pytest.mark.parametrize("task,flag,value", [("glue/sst2", *bad) for bad in (
    ("--seeds", "0"), ("--epochs", "0"), ("--batch_size", "0"), ("--learning_rates", ","),
    ("--learning_rates", "nan"), ("--warmup_fraction", "1.5"), ("--max_seq_len", "-4"),
    ("--max_train_examples", "-3"), ("--max_eval_examples", "-1"), ("--doc_stride", "0"), ("--n_best", "0"),
    ("--max_query_len", "0"), ("--max_answer_len", "0"), ("--dropout", "1"), ("--features", "sum_all"),
)] + [("pairs", "--labels", "yes"), ("conll2003", "--labels", "O")])
def test_bad_flags_are_one_line_errors_naming_the_flag(task, flag, value, tmp_path, capsys):
    # The init does not exist: the flags are checked before anything is loaded.
    argv = args(task, str(tmp_path), str(tmp_path / "no-init"), str(tmp_path / "ft"), f"{flag}={value}")
    assert cli.main(["finetune", *argv]) == 2
    _, err = _one_line_error(capsys)
    assert flag in err and "no-init" not in err, err
    assert not os.path.exists(tmp_path / "ft")


def test_pmap_refuses_a_batch_that_does_not_split_over_the_devices(tmp_path, capsys):
    # 8 devices (tests/conftest.py): 12 rows do not split over them; mesh would run it on 4.
    argv = args("glue/sst2", str(tmp_path), str(tmp_path / "no-init"), str(tmp_path / "ft"), "--strategy", "pmap",
                "--batch_size", "12")
    assert cli.main(["finetune", *argv]) == 2
    _, err = _one_line_error(capsys)
    assert "--batch_size 12" in err and "8 devices" in err and "--strategy mesh" in err, err
    assert not os.path.exists(tmp_path / "ft")


def _header_only_dev(tmp_path):
    data = write_sst2(str(tmp_path / "SST-2"), n_train=32, n_dev=4)
    open(os.path.join(data, "dev.tsv"), "w").write("sentence\tlabel\n")
    return "glue/sst2", data, [], os.path.join(data, "dev.tsv")


def _mnli_header_only_mismatched(tmp_path):
    data = tmp_path / "MNLI"
    data.mkdir()
    header, row = "sentence1\tsentence2\tgold_label\n", "the film\tgood\tentailment\n"
    for name, text in (("train.tsv", header + row * 8), ("dev_matched.tsv", header + row),
                       ("dev_mismatched.tsv", header)):
        (data / name).write_text(text)
    return "glue/mnli", str(data), [], str(data / "dev_mismatched.tsv")


def _stsb_nan_score(tmp_path):
    data = tmp_path / "STS-B"
    data.mkdir()
    (data / "train.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\t2.0\n")
    (data / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\tnan\n")
    return "glue/stsb", str(data), [], str(data / "dev.tsv") + ":2"


def _pairs_header_only_test(tmp_path):
    for name, text in (("train.csv", "premise,hypothesis,label\na,b,yes\nc,d,no\n"),
                       ("dev.csv", "premise,hypothesis,label\na,b,yes\n"), ("test.csv", "premise,hypothesis\n")):
        (tmp_path / name).write_text(text)
    files = ["--labels", "no,yes"]
    files += [x for s in ("train", "dev", "test") for x in (f"--{s}_file", str(tmp_path / f"{s}.csv"))]
    return "pairs", str(tmp_path), files, str(tmp_path / "test.csv")


def _squad_without_questions(tmp_path):
    data = write_squad(str(tmp_path / "squad"), n_train=8, n_dev=4)
    json.dump({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "a b", "qas": []}]}]},
              open(os.path.join(data, "dev-v1.1.json"), "w"))
    return "squad/v1.1", data, ["--max_query_len", "8", "--doc_stride", "16"], os.path.join(data, "dev-v1.1.json")


def _squad_train_without_targets(tmp_path):
    data = write_squad(str(tmp_path / "squad"), n_train=8, n_dev=4)
    qa = {"id": "q", "question": "what", "answers": [{"text": "red", "answer_start": 5}]}  # not at 5
    json.dump({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "a red b", "qas": [qa]}]}]},
              open(os.path.join(data, "train-v1.1.json"), "w"))
    return "squad/v1.1", data, ["--max_query_len", "8", "--doc_stride", "16"], os.path.join(data, "train-v1.1.json")


def _conll_without_sentences(tmp_path):
    data = write_conll(str(tmp_path / "conll"), n_train=8, n_dev=4)
    open(os.path.join(data, "valid.txt"), "w").write("-DOCSTART- -X- -X- O\n\n")
    return "conll2003", data, [], os.path.join(data, "valid.txt")


def _conll_unknown_tag(tmp_path):
    data = write_conll(str(tmp_path / "conll"), n_train=8, n_dev=4)
    open(os.path.join(data, "test.txt"), "w").write("paris NNP B-NP B-LOC\n\nrome NNP B-NP B-CITY\n")
    return "conll2003", data, [], os.path.join(data, "test.txt") + ":3"


@pytest.mark.parametrize("make", [_header_only_dev, _mnli_header_only_mismatched, _stsb_nan_score,
                                  _pairs_header_only_test, _squad_without_questions, _squad_train_without_targets,
                                  _conll_without_sentences, _conll_unknown_tag], ids=lambda f: f.__name__[1:])
def test_a_bad_split_fails_before_training_naming_its_file(make, init_dir, tmp_path, capsys):  # noqa: F811
    task, data, extra, where = make(tmp_path)
    workdir = str(tmp_path / "ft")
    assert cli.main(["finetune", *args(task, data, init_dir, workdir, *FAST, "--max_seq_len", "32", *extra)]) == 2
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]  # read_squad warns (a warning line) before a train file is refused
    assert last.startswith(f"bert-jax finetune: {where}"), err
    assert "train_loss" not in out and not os.path.exists(os.path.join(workdir, "runs"))


def test_a_setting_that_trained_survives_a_failure_while_scoring(init_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The metric raises after training (as `KeyError: 'logits'` once did): the trained outputs are on disk, and
    the same command run again scores them without training again."""
    from bert_jax.finetune import glue

    data = write_sst2(str(tmp_path / "SST-2"), n_train=32, n_dev=8)
    workdir = str(tmp_path / "ft")
    argv = ["finetune", *args("glue/sst2", data, init_dir, workdir, *FAST, "--epochs", "2", "--eval_each_epoch",
                              "--max_seq_len", "32")]
    real = glue.glue_metrics

    def broken(*a, **k):
        raise KeyError("logits")

    monkeypatch.setattr(glue, "glue_metrics", broken)
    with pytest.raises(KeyError):
        cli.main(argv)
    out, err = capsys.readouterr()
    saved = os.path.join(workdir, "runs", "lr0.003_seed0.outputs.npz")
    assert "epoch 2: train_loss" in out and saved in err and "without training it again" in err, err
    assert os.path.isfile(saved) and not os.path.exists(os.path.join(workdir, "runs", "lr0.003_seed0.json"))

    monkeypatch.setattr(glue, "glue_metrics", real)
    assert cli.main(argv) == 0
    out, _ = capsys.readouterr()
    assert "scoring its saved outputs" in out and "train_loss" not in out, out
    with open(os.path.join(workdir, "runs", "lr0.003_seed0.json")) as f:
        record = json.load(f)
    assert [sorted(e) for e in record["epochs"]] == [["dev", "epoch", "train_loss"]] * 2
    assert record["final"]["dev"] == record["epochs"][1]["dev"] and 0 <= record["final"]["dev"]["accuracy"] <= 1
    assert not os.path.exists(saved) and os.path.isfile(os.path.join(workdir, "runs", "lr0.003_seed0", "dev.jsonl"))
