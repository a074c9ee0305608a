"""Fine-tuning data: GLUE readers in every layout, pair featurizer, CoNLL reader/featurizer, metrics by hand."""
import logging
import math
import os
import string

import numpy as np
import pytest

from bert_jax.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, save_vocab
from bert_jax.finetune import conll, glue, metrics

REAL_GLUE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue")
WORDS = ["the", "cat", "sat", "on", "mat", "he", "said", "pie", "food", "##service", "un", "##aff", "##able"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    letters = list(string.ascii_lowercase + string.digits)
    vocab = list(SPECIAL_TOKENS) + letters + ["##" + c for c in letters] + list(string.punctuation) + WORDS
    return load_tokenizer(save_vocab(str(tmp_path_factory.mktemp("vocab")), vocab, lowercase=True))


def _write(path, lines, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        f.write("".join(line + "\n" for line in lines))


def _tsv(*cols):
    return "\t".join(cols)


MNLI_TRAIN = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV = MNLI_TRAIN[:10] + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
STSB = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]


def _mnli_row(header, i, s1, s2, label=None):
    values = {"index": str(i), "sentence1": s1, "sentence2": s2, "gold_label": label or ""}
    return _tsv(*[values.get(c, label if c.startswith("label") else "x") for c in header])


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("glue"))
    j = os.path.join
    cola = [_tsv("gj04", "1", "", "The cat sat."), _tsv("gj04", "0", "*", "Cat the sat on.")]
    _write(j(root, "CoLA", "train.tsv"), cola)
    _write(j(root, "CoLA", "dev.tsv"), cola[:1])
    _write(j(root, "CoLA", "test.tsv"), ["index\tsentence", "0\tThe mat sat."])
    _write(j(root, "SST-2", "train.tsv"), ["sentence\tlabel", "the cat sat \t1", "un pie \t0"])
    _write(j(root, "SST-2", "dev.tsv"), ["sentence\tlabel", "he said \t1"])
    _write(j(root, "SST-2", "test.tsv"), ["index\tsentence", "0\tthe mat ."])
    mrpc_header = _tsv("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
    mrpc = [mrpc_header, _tsv("1", "1355540", "1355592", "He said the foodservice pie.", '"The foodservice pie.'),
            _tsv("0", "2", "3", 'He said "100 percent" of it.', "The cat.")]
    _write(j(root, "MRPC", "train.tsv"), mrpc, bom=True)
    _write(j(root, "MRPC", "dev.tsv"), mrpc[:2], bom=True)
    _write(j(root, "MRPC", "test.tsv"), [_tsv("index", *mrpc_header.split("\t")[1:]), _tsv("0", "4", "5", "A.", "B.")])
    sts = [_tsv(*STSB), _tsv("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A cat.", "A mat.", "5.000"),
           _tsv("1", "main-news", "x", "2012", "0002", "none", "none", "He said.", '"Pie', "0.750")]
    _write(j(root, "STS-B", "train.tsv"), sts)
    _write(j(root, "STS-B", "dev.tsv"), sts[:2])
    _write(j(root, "STS-B", "test.tsv"), [_tsv(*STSB[:-1]), _tsv("0", "g", "f", "y", "o", "n", "n", "A.", "B.")])
    qqp_header = _tsv("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
    _write(j(root, "QQP", "train.tsv"), [qqp_header, _tsv("0", "1", "2", "Is the cat on the mat?", "Cat on mat?", "1"),
                                         _tsv("1", "3", "4", '"How do I', ""),  # a question broken by a newline ...
                                         _tsv("Was it real?", "0"),  # ... continues on the next line
                                         _tsv("2", "5", "6", "Why pie?", "Why food?", "0")])
    _write(j(root, "QQP", "dev.tsv"), [qqp_header, _tsv("0", "1", "2", "a?", "b?", "0")])
    _write(j(root, "QQP", "test.tsv"), [_tsv("id", "question1", "question2"), _tsv("0", "a?", "b?")])
    for name, header in (("train.tsv", MNLI_TRAIN), ("dev_matched.tsv", MNLI_DEV), ("dev_mismatched.tsv", MNLI_DEV)):
        tag = name.split(".")[0]
        _write(j(root, "MNLI", name), [_tsv(*header), _mnli_row(header, 0, f"{tag} one.", "Two.", "neutral"),
                                       _mnli_row(header, 1, f"{tag} three.", "Four.", "contradiction")])
    for name in ("test_matched.tsv", "test_mismatched.tsv"):
        _write(j(root, "MNLI", name), [_tsv(*MNLI_TRAIN[:10]), _mnli_row(MNLI_TRAIN[:10], 0, name, "x.")])
    for task, dirname, a, b, labels in (("qnli", "QNLI", "question", "sentence", ("entailment", "not_entailment")),
                                        ("rte", "RTE", "sentence1", "sentence2", ("not_entailment", "entailment")),
                                        ("wnli", "WNLI", "sentence1", "sentence2", ("1", "0"))):
        rows = [_tsv("index", a, b, "label")] + [_tsv(str(i), f"A{i}.", f"B{i}.", lab) for i, lab in enumerate(labels)]
        for split in ("train", "dev"):
            _write(j(root, dirname, f"{split}.tsv"), rows)
        _write(j(root, dirname, "test.tsv"), [_tsv("index", a, b), _tsv("0", "A.", "B.")])
    _write(j(root, "diagnostic", "diagnostic.tsv"), [_tsv("index", "sentence1", "sentence2"),
                                                     _tsv("0", "The cat sat.", "The cat did not sit."),
                                                     _tsv("1", "He said.", "He did not say.")])
    return root


def test_every_glue_layout(glue_root, caplog):
    def read(task, split, folder=None):  # the task folder itself, or the GLUE root holding it
        d = glue_root if folder is None else os.path.join(glue_root, folder)
        return [(e.text_a, e.text_b, e.label) for e in glue.read_glue(task, d, split)]

    assert read("cola", "train", "CoLA") == [("The cat sat.", None, 1), ("Cat the sat on.", None, 0)]
    assert read("cola", "test") == [("The mat sat.", None, None)]
    assert read("sst2", "train") == [("the cat sat ", None, 1), ("un pie ", None, 0)]
    assert read("sst2", "test") == [("the mat .", None, None)]
    mrpc = read("mrpc", "train", "MRPC")
    assert mrpc[0] == ("He said the foodservice pie.", '"The foodservice pie.', 1)  # BOM dropped, quote verbatim
    assert mrpc[1] == ('He said "100 percent" of it.', "The cat.", 0)
    assert read("mrpc", "dev") == mrpc[:1] and read("mrpc", "test") == [("A.", "B.", None)]
    assert read("stsb", "train") == [("A cat.", "A mat.", 5.0), ("He said.", '"Pie', 0.75)]
    assert read("stsb", "test") == [("A.", "B.", None)]
    with caplog.at_level(logging.WARNING, logger="bert_jax.finetune.glue"):
        qqp = read("qqp", "train")
    assert qqp == [("Is the cat on the mat?", "Cat on mat?", 1), ("Why pie?", "Why food?", 0)]
    assert "skipped 2 malformed rows" in caplog.text and "[3, 4]" in caplog.text
    assert read("qqp", "test") == [("a?", "b?", None)]
    assert read("mnli", "train") == [("train one.", "Two.", 2), ("train three.", "Four.", 0)]
    assert read("mnli", "dev")[0] == ("dev_matched one.", "Two.", 2)
    assert read("mnli-mm", "dev")[1] == ("dev_mismatched three.", "Four.", 0)
    assert read("mnli", "test") == [("test_matched.tsv", "x.", None)]
    assert read("mnli-mm", "test") == [("test_mismatched.tsv", "x.", None)]
    assert read("qnli", "dev") == [("A0.", "B0.", 0), ("A1.", "B1.", 1)]
    assert read("rte", "train") == [("A0.", "B0.", 1), ("A1.", "B1.", 0)]
    assert read("wnli", "dev") == [("A0.", "B0.", 1), ("A1.", "B1.", 0)]
    assert read("ax", "test") == [("The cat sat.", "The cat did not sit.", None), ("He said.", "He did not say.", None)]
    assert glue.GLUE_TASKS["ax"].labels == glue.GLUE_TASKS["mnli"].labels
    guids = [e.guid for e in glue.read_glue("cola", glue_root, "train")]
    assert guids == ["cola-train-0", "cola-train-1"]


def test_glue_columns_by_header_name(tmp_path):
    _write(str(tmp_path / "train.tsv"), ["label\tsentence", "1\treordered columns"])
    assert glue.read_glue("sst2", str(tmp_path), "train")[0].text_a == "reordered columns"


@pytest.mark.parametrize("lines, task, split, match", [
    (["sentence\tlabel", "x\t2"], "sst2", "train", r"train\.tsv:2: label '2' .* not one of \['0', '1'\]"),
    (["sentence\tlabel", "x\t1", "x\ty\t1"], "sst2", "train", r"train\.tsv:3: 3 tab-separated columns, expected 2"),
    (["sentence\tscore", "x\t1"], "sst2", "train", r"train\.tsv:1: header .* lacks column\(s\) \['label'\]"),
    (["gj04\t1\tThe cat."], "cola", "train", r"train\.tsv:1: 3 tab-separated columns, expected 4"),
    ([], "sst2", "dev", r"dev\.tsv is empty"),
])
def test_glue_errors_name_file_and_line(tmp_path, lines, task, split, match):
    _write(str(tmp_path / f"{split}.tsv"), lines)
    with pytest.raises(glue.GlueFormatError, match=match):
        glue.read_glue(task, str(tmp_path), split)


def test_glue_request_errors(tmp_path):
    with pytest.raises(glue.GlueFormatError, match="unknown GLUE task 'sst'"):
        glue.read_glue("sst", str(tmp_path), "train")
    with pytest.raises(glue.GlueFormatError, match=r"dev\.tsv does not exist; pass the SST-2 folder"):
        glue.read_glue("sst2", str(tmp_path), "dev")
    with pytest.raises(glue.GlueFormatError, match="no 'train' split"):
        glue.read_glue("ax", str(tmp_path), "train")


def _reference_truncate(len_a, len_b, budget):  # google-research/bert's _truncate_seq_pair, on lengths
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_truncate_pair_lengths_matches_bert_loop():
    rng = np.random.default_rng(0)
    la, lb, budget = rng.integers(0, 40, 2000), rng.integers(0, 40, 2000), rng.integers(1, 50, 2000)
    ka, kb = glue.truncate_pair_lengths(la, lb, budget)
    assert [tuple(x) for x in zip(ka.tolist(), kb.tolist())] == [_reference_truncate(*x) for x in zip(la, lb, budget)]


def test_featurize_pairs_round_trip_and_truncation(tok):
    texts = ["the cat sat on the mat", "he said unaffable food", "pie", "", "the foodservice cat said on the mat"]
    examples = [glue.SentenceExample(str(i), a, b, i % 2) for i, (a, b) in enumerate(zip(texts, texts[::-1]))]
    direct = dict(zip(texts, tok.encode_batch(texts)[0]))
    f = glue.featurize_pairs(examples, tok, max_seq_len=64)
    assert f["input_ids"].dtype == np.int32 and f["label"].tolist() == [0, 1, 0, 1, 0]
    for i, e in enumerate(examples):
        a, b = direct[e.text_a].tolist(), direct[e.text_b].tolist()
        expect = [tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id]
        assert f["length"][i] == len(expect) and f["input_ids"][i].tolist() == expect + [0] * (64 - len(expect))
        assert f["token_type_ids"][i].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (64 - len(expect))
    short = glue.featurize_pairs(examples, tok, max_seq_len=12)
    for i, e in enumerate(examples):
        a, b = direct[e.text_a].tolist(), direct[e.text_b].tolist()
        ka, kb = _reference_truncate(len(a), len(b), 9)
        row = short["input_ids"][i].tolist()
        assert short["length"][i] == ka + kb + 3 <= 12
        assert row[: ka + kb + 3] == [tok.cls_id] + a[:ka] + [tok.sep_id] + b[:kb] + [tok.sep_id]
    # Example 0: a = 6 tokens, b = 8 tokens, budget 9: b (longer) trims to 6, then they alternate: 5 + 4.
    assert (short["length"][0], int(short["token_type_ids"][0].sum())) == (12, 5)


def test_featurize_single_and_regression(tok):
    single = [glue.SentenceExample("0", "the cat sat on the mat", None, None)]
    f = glue.featurize_pairs(single, tok, max_seq_len=5)
    the, cat, sat = (tok.vocab.index(w) for w in ("the", "cat", "sat"))
    assert f["input_ids"].tolist() == [[tok.cls_id, the, cat, sat, tok.sep_id]] and f["label"].tolist() == [0]
    assert not f["token_type_ids"].any() and f["example_index"].tolist() == [0]
    sts = [glue.SentenceExample("0", "a", "b", 4.5), glue.SentenceExample("1", "a", "b", None)]
    assert glue.featurize_pairs(sts, tok, 8)["label"].tolist() == [4.5, 0.0]
    assert glue.featurize_pairs(sts[1:], tok, 8, regression=True)["label"].dtype == np.float32


def test_glue_metrics():
    assert glue.glue_metrics("cola", np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1])) == pytest.approx(
        {"mcc": 1 / 6, "accuracy": 0.6})
    logits = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    out = glue.glue_metrics("mrpc", logits, np.array([1, 1, 1]))  # predicted [1, 0, 1]: tp 2, fn 1: f1 = 4/5
    assert list(out) == ["f1", "accuracy"] and out == pytest.approx({"f1": 0.8, "accuracy": 2 / 3})
    sts = glue.glue_metrics("stsb", np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 5, 9]))
    assert list(sts)[0] == "pearson_spearman" and sts["spearman"] == pytest.approx(1.0)
    assert sts["pearson_spearman"] == pytest.approx((11 / math.sqrt(130) + 1) / 2)


def test_classification_metrics_by_hand():
    pred, label = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1])
    assert metrics.accuracy(pred, label) == pytest.approx(3 / 5)
    assert metrics.binary_f1(pred, label) == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1: 4 / (4 + 1 + 1)
    assert metrics.binary_f1(pred, label, positive=0) == pytest.approx(1 / 2)  # tp 1, fp 1, fn 1: 2 / (2 + 1 + 1)
    assert metrics.matthews_corrcoef(pred, label) == pytest.approx(1 / 6)  # (2*1 - 1*1) / sqrt(3*3*2*2)
    assert metrics.matthews_corrcoef(np.ones(4), np.array([0, 1, 0, 1])) == 0.0  # undefined
    assert metrics.binary_f1(np.zeros(3), np.zeros(3)) == 0.0
    # 3 classes, rows true / cols pred: C[0,0]=2, C[1,2]=1, C[2,2]=1; s=4, trace 3, t=(2,1,1), p=(2,0,2):
    # (3*4 - 6) / sqrt((16 - 8) * (16 - 6)) = 6 / sqrt(80)
    assert metrics.matthews_corrcoef([0, 2, 2, 0], [0, 1, 2, 0]) == pytest.approx(6 / math.sqrt(80))
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        metrics.accuracy([1, 0, 1], [1, 0])


def test_correlations_by_hand():
    # dx = (-1.5, -.5, .5, 1.5), dy = (-3, -1, 0, 4): sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert metrics.rank([3, 1, 2, 2]).tolist() == [4.0, 1.0, 2.5, 2.5]
    # ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): sum dx*dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 300).astype(float)  # many ties
    y = x + rng.normal(size=300)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_matthews_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    p, t = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert metrics.matthews_corrcoef(p, t) == pytest.approx(skm.matthews_corrcoef(t, p))


def test_entities_conlleval_rules():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG", "B-MISC", "I-PER"]
    assert metrics.entities(tags) == {("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 6),
                                      ("MISC", 7, 7), ("PER", 8, 8)}
    assert metrics.entities([]) == set() and metrics.entities(["O", "O"]) == set()
    with pytest.raises(ValueError, match="tag 'X-PER'"):
        metrics.entities(["X-PER"])


def _conlleval_chunks(tags):  # conlleval's startOfChunk/endOfChunk rules for B/I/O, one token at a time
    chunks, begin, prev_tag, prev_type = set(), 0, "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):
        cur, kind = ("O", "") if tag == "O" else tag.split("-", 1)
        if prev_tag != "O" and (cur in ("B", "O") or kind != prev_type):
            chunks.add((prev_type, begin, i - 1))
        if cur == "B" or (cur == "I" and (prev_tag == "O" or kind != prev_type)):
            begin = i
        prev_tag, prev_type = cur, kind
    return chunks


def test_entities_match_conlleval_rules_on_random_tags():
    rng = np.random.default_rng(4)
    for _ in range(300):
        tags = [str(t) for t in rng.choice(["O", "B-A", "I-A", "B-B", "I-B"], rng.integers(0, 12))]
        assert metrics.entities(tags) == _conlleval_chunks(tags), tags


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG"]]
    # gold {PER 0-1, LOC 3, ORG 0}, pred {PER 0-1, ORG 3, ORG 0-1}: 1 correct of 3 and 3
    assert metrics.entity_f1(gold, pred) == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3})
    # An I- opening a sentence never continues the previous sentence's entity.
    assert metrics.entity_f1([["B-PER"], [], ["I-PER"]], [["B-PER"], [], ["B-PER"]])["f1"] == 1.0
    assert metrics.entity_f1([["O"]], [["B-PER"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="sentence 0 has 1 predicted tags for 2 words"):
        metrics.entity_f1([["O", "O"]], [["O"]])


CONLL_IOB1 = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- -X- O

John NNP I-NP I-PER
Paul NNP I-NP B-PER
Smith NNP I-NP I-PER
"""


def test_read_conll_iob1_to_iob2(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL_IOB1)
    sentences = conll.read_conll(str(path))
    assert [s.words for s in sentences] == [("EU", "rejects", "German", "call", "."), ("Peter", "Blackburn"),
                                            ("John", "Paul", "Smith")]
    assert [s.tags for s in sentences] == [("B-ORG", "O", "B-MISC", "O", "O"), ("B-PER", "I-PER"),
                                           ("B-PER", "B-PER", "I-PER")]
    assert conll.read_conll(str(path), scheme="iob1") == sentences
    with pytest.raises(conll.ConllFormatError, match=r"train\.txt:3: entity starts with I-ORG"):
        conll.read_conll(str(path), scheme="iob2")
    two_columns = tmp_path / "two.txt"  # IOB2 already: unchanged, tag taken from the last column
    two_columns.write_text("".join(f"{w} {t}\n" for w, t in zip(sentences[2].words, sentences[2].tags)))
    assert conll.read_conll(str(two_columns), scheme="iob2")[0].tags == sentences[2].tags
    assert conll.label_set(sentences) == ("O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER")


@pytest.mark.parametrize("text, match", [("EU NNP I-NP I-ORG\nrejects\n", r"bad\.txt:2: 'rejects' is not"),
                                         ("EU NNP I-NP PER\n", r"bad\.txt:1: 'EU NNP I-NP PER'")])
def test_read_conll_errors(tmp_path, text, match):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(conll.ConllFormatError, match=match):
        conll.read_conll(str(tmp_path / "bad.txt"))


def test_featurize_tagging_splits_long_sentences(tok):
    words = ("the", "unaffable", "cat", "\x07", "foodservice", "abcdefghij", "on", "the", "mat")
    tags = ("O", "B-PER", "I-PER", "O", "B-ORG", "B-LOC", "I-LOC", "O", "B-MISC")
    sentences = [conll.TaggedSentence("s0", words, tags), conll.TaggedSentence("s1", ("he", "said"), ("B-PER", "O")),
                 conll.TaggedSentence("empty", (), ())]
    labels = conll.CONLL2003_LABELS
    f = conll.featurize_tagging(sentences, tok, labels, max_seq_len=8)  # 6 sub-tokens per row
    # s0 sub-tokens per word: 1, 3, 1, [UNK], 2, 10 -> 6, 1, 1, 1: rows [the unaffable cat UNK] [foodservice]
    # [abcdef] [on the mat]; s1 fits in one row; the empty sentence gets a bare [CLS] [SEP] row.
    assert f["example_index"].tolist() == [0, 0, 0, 0, 1, 2]
    assert f["length"].tolist() == [8, 4, 8, 5, 4, 2]
    direct = tok.encode_batch(list(words))[0]
    assert f["input_ids"][0, :8].tolist() == [tok.cls_id, *direct[0], *direct[1], *direct[2], tok.unk_id, tok.sep_id]
    assert f["input_ids"][2, 1:7].tolist() == direct[5][:6].tolist()
    assert f["word_ids"][0].tolist() == [-1, 0, 1, -1, -1, 2, 3, -1]
    assert f["tag_ids"][0].tolist() == [0, 0, 1, 0, 0, 2, 0, 0] and f["tag_weights"][0].tolist() == [0, 1, 1, 0, 0, 1, 1, 0]
    assert (f["tag_weights"] > 0).sum() == len(words) + 2
    assert np.array_equal(f["tag_weights"] > 0, f["word_ids"] >= 0)
    assert (f["input_ids"][np.arange(6), f["length"] - 1] == tok.sep_id).all()
    assert not f["token_type_ids"].any()
    gold = conll.word_predictions(f, f["tag_ids"], len(sentences), labels)
    assert gold == [list(s.tags) for s in sentences]
    logits = np.eye(len(labels))[f["tag_ids"][:, :8]] * 5.0  # logits of bucket width 8 work too
    assert conll.word_predictions(f, logits, len(sentences), labels) == gold
    with pytest.raises(ValueError, match="some words sit beyond"):
        conll.word_predictions(f, f["tag_ids"][:, :4], len(sentences), labels)
    with pytest.raises(conll.ConllFormatError, match="tag 'B-PER' of sentence s0 is not in labels"):
        conll.featurize_tagging(sentences, tok, ("O",), 8)


def test_featurize_tagging_random_round_trip(tok):
    rng = np.random.default_rng(3)
    pool = ["the", "cat", "unaffable", "foodservice", "x", "mat", ".", "abcdefghijklmnop", "\x00"]
    labels = conll.CONLL2003_LABELS
    sentences = [conll.TaggedSentence(str(i), tuple(map(str, rng.choice(pool, n))), tuple(map(str, rng.choice(labels, n))))
                 for i, n in enumerate(rng.integers(0, 40, 60))]
    for max_seq_len in (5, 16, 128):
        f = conll.featurize_tagging(sentences, tok, labels, max_seq_len)
        assert (f["length"] <= max_seq_len).all()
        width = int(f["length"].max())  # predictions come back at bucket width, narrower than max_seq_len
        got = conll.word_predictions(f, f["tag_ids"][:, :width], len(sentences), labels)
        assert got == [list(s.tags) for s in sentences]


def _real(task_dir, name):
    path = os.path.join(REAL_GLUE, task_dir, name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not available (shared data missing)")
    return os.path.join(REAL_GLUE, task_dir)


@pytest.mark.parametrize("task, folder, counts", [
    ("sst2", "SST-2", {"train": 67349, "dev": 872, "test": 1821}),
    ("cola", "CoLA", {"train": 8551, "dev": 1043, "test": 1063}),
    ("mrpc", "MRPC", {"train": 3668, "dev": 408, "test": 1725}),
    ("wnli", "WNLI", {"train": 635, "dev": 71, "test": 146}),
    ("qnli", "QNLI", {"dev": 5463, "test": 5463}),
    ("ax", "diagnostic", {"test": 1104}),
])
def test_real_glue_row_counts(task, folder, counts, tok):
    for split, count in counts.items():
        examples = glue.read_glue(task, _real(folder, glue.GLUE_TASKS[task].files[split]), split)
        assert len(examples) == count, (task, split)
        labelled = split != "test"
        assert all((e.label is not None) == labelled for e in examples)
    f = glue.featurize_pairs(examples, tok, 128)
    assert (f["length"] <= 128).all() and f["input_ids"].shape == (len(examples), 128)
