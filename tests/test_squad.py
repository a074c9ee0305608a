"""SQuAD: reading, featurizing into windows, mapping logits back to exact text, the official metrics."""
import json
import os

import numpy as np
import pytest
from tokenizers import normalizers, pre_tokenizers

from bert_jax.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, save_vocab
from bert_jax.finetune.squad import (
    SquadError,
    SquadExample,
    featurize_squad,
    max_context_window,
    postprocess_squad,
    read_squad,
    window_starts,
)
from bert_jax.finetune.squad_eval import (
    SquadMetricsError,
    best_null_threshold,
    exact_match,
    f1,
    normalize_answer,
    squad_metrics,
)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
REAL_DEV = os.path.join(SHARED, "squad", "dev-v1.1.json")
REAL_VOCAB = os.path.join(SHARED, "vocab", "bert-base-uncased-vocab.txt")

# (context, answers): whitespace runs, tabs/newlines, no-break and ideographic spaces, a zero-width space inside
# a word, punctuation glued to words, accented capitals, a dotted capital I (lower-cases to 2 chars), CJK, and
# answers at the very start and the very end of the context.
TRICKY = [
    ("The  Eiffel\tTower\nwas completed in 1889,by Gustave Eiffel's company",
     ["The  Eiffel\tTower", "1889", "Gustave Eiffel's company", "company"]),
    ("Élan vital\u00a0(Bergson)\u00a0is a “creative” force; ÉCOLE Normale Supérieure taught it.",
     ["Élan vital", "Bergson", "“creative” force", "ÉCOLE Normale Supérieure", "it."]),
    ("北京是中国的首都。Beijing\u3000is the capital of 中国",
     ["中国", "首都", "Beijing", "capital of 中国"]),
    ("New\u00a0York\u00a0City  hosts\r\n\tthe marathon, co\u200boperating with İstanbul-style Zürich",
     ["York\u00a0City", "co\u200boperating", "İstanbul", "İstanbul-style Zürich", "Zürich"]),
    ("It cost $5.5 million (2,700 sq mi) in 1990s-era dollars!!", ["$5.5 million", "2,700", "1990s", "dollars"]),
]
QUESTION = "Which part of the text is the answer?"


def _examples(pairs, question=QUESTION):
    out = []
    for c, (context, answers) in enumerate(pairs):
        for a, text in enumerate(answers):
            out.append(SquadExample(f"q{c}_{a}", "t", question, context, ((text, context.index(text)),), False))
    return out


def _vocab(tmp_path, texts, lowercase):
    """Every word of `texts` as the tokenizer pre-splits it; words over 6 chars as two WordPiece pieces."""
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                      lowercase=lowercase)
    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    words = sorted({w for t in texts for w, _ in split(norm.normalize_str(t))})
    tokens = list(SPECIAL_TOKENS)
    for w in words:
        tokens += [w[:3], "##" + w[3:]] if len(w) > 6 else [w]
    return load_tokenizer(save_vocab(str(tmp_path / f"vocab{int(lowercase)}"), list(dict.fromkeys(tokens)), lowercase))


def _oracle_logits(features, hit=10.0):
    n, width = features["input_ids"].shape
    start, end = np.zeros((n, width)), np.zeros((n, width))
    rows = np.flatnonzero(features["start_position"] > 0)
    start[rows, features["start_position"][rows]] = hit
    end[rows, features["end_position"][rows]] = hit
    return start, end


@pytest.mark.parametrize("lowercase", [True, False])
def test_tricky_spans_round_trip_exactly(tmp_path, lowercase):
    examples = _examples(TRICKY)
    tok = _vocab(tmp_path, [c for c, _ in TRICKY] + [QUESTION], lowercase)
    features = featurize_squad(examples, tok, max_seq_len=64, doc_stride=16, max_query_len=16, training=True)
    assert len(features["input_ids"]) == len(examples)  # every context fits one window here
    assert (features["start_position"] > 0).all()
    assert any(tok.vocab[i].startswith("##") for i in features["input_ids"].ravel())  # multi-piece words occur
    predictions, null_odds = postprocess_squad(examples, features, *_oracle_logits(features), version_2=False)
    assert null_odds == {}
    assert predictions == {e.qid: e.answers[0][0] for e in examples}


def test_offsets_refer_to_original_text(tmp_path):
    context = "ÉCOLE İstanbul"
    tok = _vocab(tmp_path, [context, QUESTION], lowercase=True)
    (ex,) = _examples([(context, ["ÉCOLE"])])
    f = featurize_squad([ex], tok, max_seq_len=32, max_query_len=16, training=False)
    ctx = f["offsets"][0, :, 0] >= 0
    assert [tok.vocab[i] for i in f["input_ids"][0][ctx]] == ["ecole", "ist", "##anbul"]  # lower-cased, unaccented
    # İ lower-cases to two characters (i + combining dot) and loses the dot, yet offsets index the original
    assert [context[s:e] for s, e in f["offsets"][0][ctx]] == ["ÉCOLE", "İst", "anbul"]


def test_feature_layout_follows_the_contract(tmp_path):
    context = "alpha beta gamma delta"
    question = "one two three four five six seven"
    tok = _vocab(tmp_path, [context, question], lowercase=True)
    ex = SquadExample("q", "t", question, context, (("gamma", 11),), False)
    f = featurize_squad([ex], tok, max_seq_len=16, max_query_len=5, training=True)
    assert {k: v.dtype.name for k, v in f.items()} == {
        "input_ids": "int32", "token_type_ids": "int32", "length": "int32", "example_index": "int32",
        "start_position": "int32", "end_position": "int32", "offsets": "int32", "token_is_max_context": "bool"}
    ids = f["input_ids"][0]
    words = [tok.vocab[i] for i in ids[:f["length"][0]]]
    assert words == ["[CLS]", "one", "two", "three", "four", "five", "[SEP]",
                     "alpha", "beta", "gamma", "delta", "[SEP]"]
    assert (ids[12:] == tok.pad_id).all() and f["length"][0] == 12
    assert f["token_type_ids"][0].tolist() == [0] * 7 + [1] * 5 + [0] * 4
    assert (f["start_position"][0], f["end_position"][0]) == (9, 9)
    assert f["offsets"][0, 9].tolist() == [11, 16]
    assert (f["offsets"][0, :7] == -1).all() and (f["offsets"][0, 11:] == -1).all()
    assert f["token_is_max_context"][0].tolist() == [False] * 7 + [True] * 4 + [False] * 5


def _run_squad_windows(num_tokens, max_doc, stride):
    spans, start = [], 0  # a literal transcription of run_squad.py's doc_spans loop
    while start < num_tokens:
        length = min(num_tokens - start, max_doc)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, stride)
    return spans or [(0, 0)]


def _run_squad_max_context(spans, position):
    best_score, best = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best_score is None or score > best_score:
                best_score, best = score, index
    return best


def test_windows_and_max_context_match_run_squad():
    for num_tokens in range(0, 40):
        for max_doc in (1, 3, 7, 12):
            for stride in (1, 2, 5, 20):
                starts, lengths = window_starts(num_tokens, max_doc, stride)
                spans = _run_squad_windows(num_tokens, max_doc, stride)
                assert list(zip(starts.tolist(), lengths.tolist())) == spans
                best = max_context_window(starts, lengths, num_tokens)
                assert best.tolist() == [_run_squad_max_context(spans, p) for p in range(num_tokens)]


def test_long_context_maps_back_from_any_window(tmp_path):
    words = [f"w{i}" + (",", ".", "", ";")[i % 4] for i in range(60)]
    context = "  ".join(words)  # double spaces, punctuation glued to words
    starts = np.cumsum([0] + [len(w) + 2 for w in words])
    spans = [(j, j + 1) for j in range(0, 59, 3)] + [(0, 0), (59, 59), (20, 22)]
    examples = [SquadExample(f"q{j}_{k}", "t", "where is it?", context,
                             (("  ".join(words[j:k + 1]), int(starts[j])),), False) for j, k in spans]
    assert all(context[s:s + len(t)] == t for e in examples for t, s in e.answers)
    tok = _vocab(tmp_path, [context, "where is it?"], lowercase=True)
    f = featurize_squad(examples, tok, max_seq_len=20, doc_stride=5, max_query_len=8, training=True)
    rows_per_example = np.bincount(f["example_index"])
    assert (rows_per_example > 3).all()
    answer_rows = np.flatnonzero(f["start_position"] > 0)
    first_row = np.searchsorted(f["example_index"], f["example_index"][answer_rows])
    assert (answer_rows > first_row).any()  # some answers are only in a later window
    assert (f["start_position"] == 0).sum() > 0  # windows without the answer target [CLS]
    # spans starting at a token that lacks max context in its row score higher, yet lose to the answer
    start, end = _oracle_logits(f)
    not_max = (f["offsets"][:, :, 0] >= 0) & ~f["token_is_max_context"]
    rows = np.flatnonzero(not_max.any(axis=1))
    assert len(rows) > len(examples)
    start[rows, not_max[rows].argmax(axis=1)] = 15.0
    predictions, _ = postprocess_squad(examples, f, start, end, version_2=False)
    assert predictions == {e.qid: e.answers[0][0] for e in examples}
    # v2: the null score is the minimum over an example's windows (row r's null score is 2r here)
    start, end = _oracle_logits(f)
    start[:, 0] = end[:, 0] = np.arange(len(start))
    predictions, odds = postprocess_squad(examples, f, start, end, version_2=True, null_threshold=np.inf)
    assert predictions == {e.qid: e.answers[0][0] for e in examples}
    first_rows = np.searchsorted(f["example_index"], np.arange(len(examples)))
    assert odds == {e.qid: pytest.approx(2.0 * r - 20.0) for e, r in zip(examples, first_rows)}
    # each context token is max-context in exactly one window, the one run_squad would pick
    ex0 = f["example_index"] == 0
    flat_offsets = f["offsets"][ex0][f["token_is_max_context"][ex0]]
    (enc,) = tok.backend.encode_batch([context], add_special_tokens=False)
    assert flat_offsets.tolist() == [list(o) for o in enc.offsets]


def test_training_drops_answers_that_do_not_match_the_context(tmp_path):
    context = "alpha beta gamma"
    tok = _vocab(tmp_path, [context, QUESTION], lowercase=True)
    good = SquadExample("good", "t", QUESTION, context, (("beta", 6),), False)
    bad = SquadExample("bad", "t", QUESTION, context, (("beta", 0),), False)
    impossible = SquadExample("none", "t", QUESTION, context, (), True)
    with pytest.warns(UserWarning, match="1 of 2 answerable"):
        f = featurize_squad([good, bad, impossible], tok, max_seq_len=32, max_query_len=16, training=True)
    beta = 2 + 9 + 1  # [CLS], 9 question tokens, [SEP], alpha
    assert f["example_index"].tolist() == [0, 2]
    assert f["start_position"].tolist() == [beta, 0] and f["end_position"].tolist() == [beta, 0]
    f_eval = featurize_squad([good, bad, impossible], tok, max_seq_len=32, max_query_len=16, training=False)
    assert f_eval["example_index"].tolist() == [0, 1, 2] and f_eval["start_position"].tolist() == [beta, 0, 0]


def test_v2_null_prediction_and_threshold(tmp_path):
    context = "alpha beta gamma delta"
    tok = _vocab(tmp_path, [context, QUESTION], lowercase=True)
    examples = [SquadExample("has", "t", QUESTION, context, (("gamma", 11),), False),
                SquadExample("none", "t", QUESTION, context, (), True)]
    f = featurize_squad(examples, tok, max_seq_len=32, max_query_len=16, training=False)
    q = f["start_position"][0] - 2  # first context token
    start, end = np.zeros((2, 32)), np.zeros((2, 32))
    start[:, q], end[:, q + 1] = 3.0, 2.0  # best span 'alpha beta', score 5, in both rows
    start[0, q + 2], end[0, q + 2] = 4.0, 4.0  # 'gamma', score 8 in the answerable row
    start[:, 0], end[:, 0] = 1.0, 2.0  # null score 3 ...
    start[1, 0], end[1, 0] = 6.0, 3.0  # ... and 9 for the impossible one
    start[0, q + 3], end[0, q + 3] = 9.0, -10.0  # 'delta' starts higher spans, but only ones that end before it
    predictions, odds = postprocess_squad(examples, f, start, end, version_2=True)
    assert predictions == {"has": "gamma", "none": ""}
    assert odds == {"has": pytest.approx(3 - 8), "none": pytest.approx(9 - 5)}
    predictions, _ = postprocess_squad(examples, f, start, end, version_2=True, null_threshold=4.5)
    assert predictions == {"has": "gamma", "none": "alpha beta"}
    predictions, _ = postprocess_squad(examples, f, start, end, version_2=True, null_threshold=-6.0)
    assert predictions == {"has": "", "none": ""}
    # max_answer_len 1 rules out 'alpha beta': the impossible row's best single token is alpha (3 + 0)
    predictions, odds = postprocess_squad(examples, f, start, end, max_answer_len=1, version_2=True,
                                          null_threshold=100)
    assert predictions["none"] == "alpha" and odds["none"] == pytest.approx(9 - 3)
    with pytest.raises(SquadError, match="NaN"):
        postprocess_squad(examples, f, start * np.nan, end, version_2=True)
    with pytest.raises(SquadError, match="shape"):
        postprocess_squad(examples, f, start[:1], end, version_2=True)


def test_metrics_by_hand():
    assert normalize_answer("  The Eiffel\tTOWER!  ") == "eiffel tower"
    assert normalize_answer("an apple, a pear and the theme") == "apple pear and theme"
    assert exact_match("the Eiffel tower!", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower", "Paris"]) == 0.0
    # pred tokens [eiffel, tower, in, paris], gold [eiffel, tower]: P = 2/4, R = 2/2, F1 = 2*.5*1/1.5 = 2/3
    assert f1("Eiffel Tower in Paris", ["the Eiffel tower"]) == pytest.approx(2 / 3)
    # repeated tokens count once per gold occurrence: P = 1/3, R = 1, F1 = (2/3)/(4/3) = 1/2; max over golds
    assert f1("paris paris france", ["Paris", "london"]) == pytest.approx(0.5)
    assert f1("", [""]) == 1.0 and f1("", ["x"]) == 0.0 and f1("the", ["a"]) == 1.0
    ctx = "c"
    examples = [SquadExample("a", "t", "q", ctx, (("Eiffel Tower", 0),), False),
                SquadExample("b", "t", "q", ctx, (("Paris", 0), ("paris city", 0)), False),
                SquadExample("c", "t", "q", ctx, (), True),
                SquadExample("d", "t", "q", ctx, (), True)]
    predictions = {"a": "the eiffel tower", "b": "paris paris france", "c": "", "d": "oops"}
    # F1 per question: 1, max(1/2, pred [paris paris france] vs [paris city]: P=1/3 R=1/2 -> 0.4) = 1/2, 1, 0
    metrics = squad_metrics(examples, predictions)
    assert metrics == pytest.approx({"exact_match": 50.0, "f1": 62.5, "total": 4, "HasAns_exact": 50.0,
                                     "HasAns_f1": 75.0, "HasAns_total": 2, "NoAns_exact": 50.0, "NoAns_f1": 50.0,
                                     "NoAns_total": 2})
    assert squad_metrics(examples[:2], predictions) == pytest.approx({"exact_match": 50.0, "f1": 75.0, "total": 2})
    # by odds: a -3 (+1 -> 3, the peak), d -1 (-1 -> 2), b 1 (+.5 -> 2.5), c 2 (+0, '' -> 2.5); start at 2 no-answers
    odds = {"a": -3.0, "b": 1.0, "c": 2.0, "d": -1.0}
    assert best_null_threshold(examples, predictions, odds) == (pytest.approx(75.0), -3.0)
    # when answering nothing is best, the threshold is 0 and the score counts the unanswerable questions
    assert best_null_threshold(examples, {**predictions, "a": "x", "b": "y"}, odds) == (pytest.approx(50.0), 0.0)
    with pytest.raises(SquadMetricsError, match="1 of 4"):
        squad_metrics(examples, {"a": "", "b": "", "c": ""})


def _write(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_read_v1_and_v2(tmp_path):
    ctx = "Alpha beta gamma."
    v1 = {"version": "1.1", "data": [
        {"title": "T1", "paragraphs": [{"context": ctx, "qas": [
            {"id": "1", "question": "Q1?", "answers": [{"text": "beta", "answer_start": 6},
                                                       {"text": "beta gamma", "answer_start": 6}]},
            {"id": "2", "question": "Q2?", "answers": [{"text": "gamma", "answer_start": 0}]}]}]},
        {"title": "T2", "paragraphs": [{"context": "x", "qas": [
            {"id": "3", "question": "Q3?", "answers": [{"text": "x", "answer_start": 0}]}]}]}]}
    with pytest.warns(UserWarning, match="1 of 3 questions .*first: 2"):
        examples, version = read_squad(_write(tmp_path / "v1.json", v1))
    assert version == "1.1" and [e.qid for e in examples] == ["1", "2", "3"]
    assert examples[0] == SquadExample("1", "T1", "Q1?", ctx, (("beta", 6), ("beta gamma", 6)), False)
    assert examples[2].title == "T2" and examples[2].context == "x"
    v2 = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": ctx, "qas": [
        {"id": "a", "question": "Qa?", "answers": [{"text": "Alpha", "answer_start": 0}], "is_impossible": False},
        {"id": "b", "question": "Qb?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "gamma", "answer_start": 11}]}]}]}]}
    examples, version = read_squad(_write(tmp_path / "v2.json", v2))
    assert version == "2.0"
    assert examples[1] == SquadExample("b", "T", "Qb?", ctx, (), True, (("gamma", 11),))
    assert not examples[0].is_impossible
    del v2["version"]
    assert read_squad(_write(tmp_path / "v2b.json", v2))[1] == "2.0"


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("{not json", "not valid UTF-8 JSON"),
    ({"version": "1.1"}, "no top-level 'data'"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, r"data\[0\].paragraphs\[0\] needs a string 'context'"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": []},
                                                       {"id": "1", "question": "q", "answers": []}]}]}]},
     "repeats question id '1'"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q",
                                                        "answers": [{"text": "c"}]}]}]}]}, "int 'answer_start'"),
    ({"version": "1.1", "data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "1", "question": "q", "answers": [], "is_impossible": True}]}]}]}, "says version 1.1"),
])
def test_read_errors_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.json"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        _write(path, content)
    with pytest.raises(SquadError, match=match):
        read_squad(str(path))


@pytest.mark.skipif(not (os.path.exists(REAL_DEV) and os.path.exists(REAL_VOCAB)),
                    reason="needs ../shared/data/squad/dev-v1.1.json and the bert-base-uncased vocab")
def test_real_dev_oracle_exact_match():
    examples, version = read_squad(REAL_DEV)
    assert version == "1.1" and len(examples) == 10570 and len({e.title for e in examples}) == 48
    examples = examples[:200]
    tok = load_tokenizer(REAL_VOCAB)
    f = featurize_squad(examples, tok, max_seq_len=384, doc_stride=128, training=False)
    predictions, _ = postprocess_squad(examples, f, *_oracle_logits(f), version_2=False)
    metrics = squad_metrics(examples, predictions)
    assert metrics["exact_match"] >= 95.0, metrics
