"""Fine-tuning readers for the formats users bring: NLI pairs as CSV / JSONL / TSV with a label map, the `pairs`
task, QNLI built from SQuAD GLUE's way, and the experiments' MNLI/QNLI columns. Fixtures are written here; the
last tests check the real files in ../shared/data and skip without them."""
import collections
import csv
import json
import os

import pytest

from bert_jax.experiments import data as data_lib
from bert_jax.finetune import pair_files, qnli
from bert_jax.finetune.glue import GlueFormatError
from bert_jax.finetune.tasks import TaskError, get_task

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

# The same four NLI pairs in each format; the third has no gold label. MNLI's label order:
# contradiction 0, entailment 1, neutral 2.
PAIRS = [("1n", "A man, a plan.", '"Hi," he said, then left.', "neutral"),
         ("2c", "The cat sat.", "The cat stood.", "contradiction"),
         ("3x", "Nobody agreed.", "Nothing.", "-"),
         ("4e", "Line one.", "It has one line.", "entailment")]
EXPECTED = [("A man, a plan.", '"Hi," he said, then left.', 2), ("The cat sat.", "The cat stood.", 0),
            ("Line one.", "It has one line.", 1)]


def _write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


def nli_csv(path, pairs=PAIRS):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # quotes the fields with commas and doubles the inner quotes, as the nli CSVs do
        writer.writerow(["pairID", "sentence1", "sentence2", "label"])
        writer.writerows(pairs)
    return str(path)


def nli_jsonl(path, pairs=PAIRS):
    lines = [json.dumps({"annotator_labels": [y], "genre": "fiction", "gold_label": y, "pairID": pid,
                         "sentence1": a, "sentence2": b}) for pid, a, b, y in pairs]
    return _write(path, "\n".join(lines) + "\n")


def nli_tsv(path, pairs=PAIRS):  # GLUE's MNLI layout (fewer columns), text verbatim under QUOTE_NONE
    rows = ["index\tpairID\tsentence1\tsentence2\tlabel1\tgold_label"]
    rows += [f"{i}\t{pid}\t{a}\t{b}\t{y}\t{y}" for i, (pid, a, b, y) in enumerate(pairs)]
    return _write(path, "\n".join(rows) + "\n")


def read(task, split="train", **options):
    return [(e.text_a, e.text_b, e.label) for e in get_task(task, options).read("unused", split)]


@pytest.mark.parametrize("writer, name", [(nli_csv, "x.csv"), (nli_jsonl, "x.jsonl"), (nli_tsv, "x.tsv")])
def test_every_format_reads_the_same_examples(writer, name, tmp_path):
    path = writer(tmp_path / name)
    assert read("glue/mnli", train_file=path) == EXPECTED
    assert read("glue/mnli", "dev", dev_file=path) == EXPECTED
    assert read("pairs", train_file=path, labels="contradiction,entailment,neutral") == EXPECTED


def test_files_concatenate_in_order_and_globs_sort(tmp_path):
    a = nli_csv(tmp_path / "a.csv", PAIRS[:2])
    b = nli_jsonl(tmp_path / "b.jsonl", PAIRS[3:])
    examples = get_task("glue/mnli", {"train_file": f"{b}, {a}"}).read("unused", "train")
    assert [(e.text_a, e.label) for e in examples] == [("Line one.", 1), ("A man, a plan.", 2), ("The cat sat.", 0)]
    assert [e.guid for e in examples] == ["mnli-train-0", "mnli-train-1", "mnli-train-2"]
    nli_csv(tmp_path / "c.csv", PAIRS[3:])
    assert [x[0] for x in read("glue/mnli", train_file=str(tmp_path / "*.csv"))] == [
        "A man, a plan.", "The cat sat.", "Line one."]


def test_quoted_csv_fields_span_lines(tmp_path):
    path = nli_csv(tmp_path / "x.csv", [("1", "Line one\nline two.", "Two, lines.", "entailment"),
                                        ("2", "A.", "B.", "maybe")])
    with pytest.raises(GlueFormatError, match=r"x\.csv:4: label 'maybe' is not one of"):  # the record's own line
        read("glue/mnli", train_file=path)
    path = nli_csv(tmp_path / "y.csv", [("1", "Line one\nline two.", "Two, lines.", "entailment")])
    assert read("glue/mnli", train_file=path) == [("Line one\nline two.", "Two, lines.", 1)]


def test_label_map_and_columns(tmp_path):
    # HF-style export: ids for labels, other column names
    path = _write(tmp_path / "hf.jsonl", "".join(json.dumps(r) + "\n" for r in (
        {"premise": "P0.", "hypothesis": "H0.", "label": 0}, {"premise": "P1.", "hypothesis": "H1.", "label": 2})))
    ids = "0=entailment,1=neutral,2=contradiction"
    assert read("glue/mnli", train_file=path, labels=ids) == [("P0.", "H0.", 1), ("P1.", "H1.", 0)]
    assert read("pairs", train_file=path, labels=ids) == [("P0.", "H0.", 0), ("P1.", "H1.", 2)]  # names in given order
    single = _write(tmp_path / "s.csv", "review,stars\ngood,pos\nbad,neg\n")
    assert read("pairs", train_file=single, labels="neg,pos", text_a_column="review", label_column="stars") == [
        ("good", None, 1), ("bad", None, 0)]
    sst = _write(tmp_path / "sst.csv", 'sentence,label\n"good, fine",1\n')
    assert read("glue/sst2", train_file=sst) == [("good, fine", None, 1)]
    assert read("glue/qnli", train_file=_write(tmp_path / "q.tsv", "index\tquestion\tsentence\tlabel\n"
                                               "0\tWho?\tHe.\tnot_entailment\n")) == [("Who?", "He.", 1)]
    assert read("glue/stsb", train_file=_write(tmp_path / "sts.csv", "sentence1,sentence2,score\na,b,3.5\n")) == [
        ("a", "b", 3.5)]


def test_test_files_are_scored_only_when_labelled(tmp_path):
    labelled, unlabelled = nli_csv(tmp_path / "l.csv"), _write(tmp_path / "u.csv", "sentence1,sentence2\nA.,B.\n")
    assert read("glue/mnli", "test", test_file=labelled) == EXPECTED
    assert read("glue/mnli", "test", test_file=unlabelled) == [("A.", "B.", None)]
    task = get_task("glue/mnli", {"dev_file": labelled, "test_file": unlabelled})
    assert task.eval_splits == ("dev",) and task.locate("unused", "test") == unlabelled
    assert get_task("glue/mnli").eval_splits == ("dev", "dev_mismatched")  # the GLUE folder: both dev sets


@pytest.mark.parametrize("name, text, options, match", [
    ("x.csv", "pairID,sentence1,label\n1,A.,neutral\n", {},
     r"x\.csv:1: no second text column \(looked for \['sentence2', .*\]; the file has .*\); pass --text_b_column"),
    ("x.csv", "pairID,sentence1,sentence2,label\n1,A.,B.,neutral\n", {"label_column": "gold"},
     r"x\.csv:1: no label column .*\['gold'\].*pass --label_column NAME"),
    ("x.csv", "sentence1,sentence2,label\nA.,B.,neutral\nC.,D.,maybe\n", {},
     r"x\.csv:3: label 'maybe' is not one of \['contradiction', 'entailment', 'neutral'\]; .*--labels"),
    ("x.csv", "sentence1,sentence2,label\n", {}, r"x\.csv has no examples \(only a header\)"),
    ("x.csv", "sentence1,sentence2,label\nA.,B.,-\n", {}, r"x\.csv has no examples \(all 1 are labelled '-'"),
    ("x.csv", "", {}, r"x\.csv is empty"),
    ("x.csv", "sentence1,sentence2,label\nA.,B.,neutral,extra\n", {}, r"x\.csv:2: 4 comma-separated fields"),
    ("x.jsonl", '{"sentence1": "A.", "sentence2": "B.", "gold_label": "neutral"}\n'
                '{"sentence1": "C.", "gold_label": "neutral"}\n', {},
     r"x\.jsonl:2: no 'sentence2' field in this row"),
    ("x.jsonl", '{"sentence1": "A.", "sentence2": "B.", "gold_label": "neutral"}\nnot json\n', {},
     r"x\.jsonl:2: not a JSON object"),
    ("x.txt", "a\tb\n", {}, r"x\.txt: unknown extension '\.txt'; name the file \.csv, \.tsv or \.jsonl"),
])
def test_bad_files_are_one_line_errors_naming_file_and_line(tmp_path, name, text, options, match):
    path = _write(tmp_path / name, text)
    with pytest.raises(GlueFormatError, match=match) as error:
        read("glue/mnli", train_file=path, **options)
    assert "\n" not in str(error.value) and path in str(error.value)


def test_bad_requests(tmp_path):
    with pytest.raises(GlueFormatError, match=r"nope\*\.csv matches no file"):
        read("glue/mnli", train_file=str(tmp_path / "nope*.csv"))
    with pytest.raises(GlueFormatError, match="no label set; pass --labels"):
        get_task("pairs", {"train_file": "x.csv"})
    with pytest.raises(GlueFormatError, match=r"names \['yes'\], not labels of this task"):
        get_task("glue/mnli", {"labels": "yes"})
    with pytest.raises(TaskError, match="pass --dev_file"):
        get_task("pairs", {"labels": "a,b"}).read("unused", "dev")
    assert pair_files.parse_labels("b,a").index == {"b": 0, "a": 1}


def test_finetune_cli_reports_a_bad_label_set_with_exit_code_2(tmp_path, capsys):
    from bert_jax.finetune.main import main

    code = main(["--task", "glue/mnli", "--data_dir", str(tmp_path), "--init", "unused", "--workdir", str(tmp_path),
                 "--labels", "yes,no"])
    assert code == 2 and "--labels 'yes,no' names ['yes', 'no']" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- QNLI from SQuAD

S0 = "Running back C. J. Anderson led the team in rushing."
S1 = "The Broncos won the game in Denver."
S2 = "Fans in Denver celebrated the win downtown."
S3 = "The stadium holds 76,000\npeople."
CONTEXT = " ".join([S0, S1, S2, S3])


def _qa(question, *answers):
    return {"id": question, "question": question,
            "answers": [{"text": text, "answer_start": CONTEXT.index(text, after)} for text, after in answers]}


def squad_fixture(path):
    qas = [_qa("Who led the Broncos team in rushing?", ("C. J. Anderson", 0)),  # kept; other: S1 (3 words)
           _qa("Where did fans celebrate the win?", ("downtown", 0)),  # S1 shares 1 word: filtered at 3
           _qa("How many people does the stadium hold?", ("76,000", 0)),  # S2 shares 1 word: filtered at 3
           _qa("In which city did the Broncos win the game?", ("Denver", 0)),  # the span is in S1, though S2 has it too
           _qa("What ended the first sentence?", ("rushing. The Broncos", 0)),  # crosses S0 | S1
           _qa("Where was the game won, by annotators?", ("Denver", 0), ("Denver", len(S0 + S1)))]  # S1 and S2
    one = {"context": "Denver is a city.", "qas": [{"id": "x", "question": "What is Denver?",
                                                     "answers": [{"text": "a city", "answer_start": 10}]}]}
    data = {"version": "1.1", "data": [{"title": "Broncos", "paragraphs": [{"context": CONTEXT, "qas": qas}, one]}]}
    return _write(path, json.dumps(data))


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def test_split_sentences_keeps_initials_abbreviations_and_decimals():
    text = 'He said "Go." Then he left.  Dr. Smith came at 5 p.m. today! Was it 3.5 miles? Yes'
    assert [text[s:e] for s, e in qnli.split_sentences(text)] == [
        'He said "Go."', "Then he left.", "Dr. Smith came at 5 p.m. today!", "Was it 3.5 miles?", "Yes"]
    assert [CONTEXT[s:e] for s, e in qnli.split_sentences(CONTEXT)] == [S0, S1, S2, S3]


def test_build_qnli_pairs_answer_sentence_with_the_closest_other(tmp_path):
    squad = squad_fixture(tmp_path / "squad.json")
    counts = qnli.build_qnli(squad, str(tmp_path / "QNLI" / "train.tsv"), min_overlap=3)
    q1, q4 = "Who led the Broncos team in rushing?", "In which city did the Broncos win the game?"
    assert _rows(tmp_path / "QNLI" / "train.tsv") == [
        ["index", "question", "sentence", "label"],
        ["0", q1, S0, "entailment"], ["1", q1, S1, "not_entailment"],
        ["2", q4, S1, "entailment"], ["3", q4, S2, "not_entailment"]]
    assert counts == {"questions": 7, "rows": 4, "entailment": 2, "not_entailment": 2, "skipped": {
        "low lexical overlap": 2, "answer crosses a sentence boundary": 1, "answers in different sentences": 1,
        "one-sentence paragraph": 1}}
    # the existing glue/qnli reader reads it (labels in GLUE's order: entailment 0, not_entailment 1)
    examples = get_task("glue/qnli").read(str(tmp_path / "QNLI"), "train")
    assert [(e.text_a, e.text_b, e.label) for e in examples][:2] == [(q1, S0, 0), (q1, S1, 1)]


def test_build_qnli_threshold_and_ties(tmp_path):
    squad = squad_fixture(tmp_path / "squad.json")
    qnli.build_qnli(squad, str(tmp_path / "all.tsv"), min_overlap=1)
    pairs = {(q, s) for _, q, s, _ in _rows(tmp_path / "all.tsv")[1:]}
    # ties on shared words go to the sentence nearest the answer, then the earlier; newlines become spaces
    assert ("Where did fans celebrate the win?", S1) in pairs
    assert ("How many people does the stadium hold?", S3.replace("\n", " ")) in pairs
    assert ("How many people does the stadium hold?", S2) in pairs and len(pairs) == 8


def test_build_qnli_cli_errors(tmp_path, capsys):
    assert qnli.main(["--squad", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o.tsv")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.json", '{"data": [{"title": "t"}]}')
    assert qnli.main(["--squad", bad, "--output", str(tmp_path / "o.tsv")]) == 2
    assert "is not a SQuAD v1.1 JSON file" in capsys.readouterr().err
    assert qnli.main(["--squad", squad_fixture(tmp_path / "s.json"), "--output", str(tmp_path / "o.tsv")]) == 0
    assert "4 rows (2 entailment, 2 not_entailment) from 7 questions" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- experiments' columns


def test_experiment_columns_point_the_glue_tasks_at_built_and_nli_files(tmp_path):
    nli = tmp_path / "nli"
    nli.mkdir()
    for name in ("multinli_1.0_dev_matched", "multinli_1.0_dev_mismatched", "snli_1.0_dev", "snli_1.0_test"):
        nli_csv(nli / f"{name}.csv", [(name, f"{name} a.", "b.", "neutral"), ("x", "c.", "d.", "-")])
    (tmp_path / "glue" / "QNLI").mkdir(parents=True)
    _write(tmp_path / "glue" / "QNLI" / "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tentailment\n")
    built = qnli.build_qnli(squad_fixture(tmp_path / "s.json"), str(tmp_path / "qnli-train.tsv"))
    sources = data_lib.Sources(str(tmp_path), (), "", str(tmp_path / "glue"), "", "", nli=str(nli))
    prepared = data_lib.PreparedData(str(tmp_path), sources, data_lib.DataSpec(), "", "", "", "",
                                     qnli_train=str(tmp_path / "qnli-train.tsv"))
    for task, train, dev in (("glue/mnli", 3, 1), ("glue/qnli", built["rows"], 1)):
        where = prepared.task(task)
        options = dict(zip((a.lstrip("-") for a in where.args[0::2]), where.args[1::2]))
        got = get_task(task, options)
        assert (len(got.read(where.data_dir, "train")), len(got.read(where.data_dir, "dev"))) == (train, dev)
        assert got.eval_splits == ("dev",)
    assert prepared.task("glue/mnli").args[3].endswith("multinli_1.0_dev_matched.csv")
    bare = data_lib.PreparedData(str(tmp_path), data_lib.Sources(str(tmp_path), (), "", str(tmp_path / "glue"), "",
                                                                  ""), data_lib.DataSpec(), "", "", "", "")
    assert bare.task("glue/mnli") == bare.task("glue/qnli") == data_lib.Unavailable("n/a (no train set)")


# ----------------------------------------------------------------------------------------- the real files


def _shared(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not available (shared data missing)")
    return path


def test_real_mnli_column_counts():
    options = dict(zip(("train_file", "dev_file"), data_lib.mnli_column_args(_shared("nli"))[1::2]))
    task = get_task("glue/mnli", options)
    train, dev = task.read("unused", "train"), task.read("unused", "dev")
    assert (len(train), len(dev)) == (29498, 9815)
    assert set(collections.Counter(e.label for e in train)) == {0, 1, 2}


def test_real_qnli_dev_build_matches_official_size(tmp_path):
    counts = qnli.build_qnli(_shared("squad", "dev-v1.1.json"), str(tmp_path / "dev.tsv"))
    official = sum(1 for _ in open(_shared("glue", "QNLI", "dev.tsv"), encoding="utf-8")) - 1
    assert official == 5463
    assert counts["entailment"] == counts["not_entailment"]  # the official dev: 2,702 / 2,761
    assert abs(counts["rows"] - 2 * official) < 0.1 * 2 * official  # dev.tsv + test.tsv: 10,926 from SQuAD dev
