"""Corpora as users download them: WikiExtractor dumps, Project Gutenberg books (licence header and footer),
WikiText (`<unk>`, `@-@`, ` = Title = `): read by make-data and train-tokenizer, detected under --format auto."""
import collections
import gzip

import pytest

from bert_jax.data import make_data, tokenizer_cli
from bert_jax.data.corpus import ReaderOptions, file_format, iter_documents
from bert_jax.data.corpus_formats import sniff_format

WIKIEXTRACTOR = """<doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="Anarchism">
Anarchism

Anarchism is a political philosophy. It rejects rulers.
Etymology.
The term is Greek. It is old.
</doc>
<doc id="25" url="https://en.wikipedia.org/wiki?curid=25" title="Autism">
Autism
Autism is a condition. It affects people.
</doc>
"""

GUTENBERG_NEW = """\ufeffThe Project Gutenberg EBook of Flower Fables, by Louisa May Alcott

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.

Title: Flower Fables

*** START OF THIS PROJECT GUTENBERG EBOOK FLOWER FABLES ***

The sun was setting. The
elves came out.

They danced. Then they slept.

*** END OF THIS PROJECT GUTENBERG EBOOK FLOWER FABLES ***

***** This file should be named 163.txt or 163.zip *****
Project Gutenberg is a registered trademark. Donations are welcome.
"""

GUTENBERG_OLD = """The Project Gutenberg Etext of Faust Part 1, by Goethe

Please take a look at the important information in this header.

***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***
Why is this "Small Print!" statement here? You know: lawyers.
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

Faust sat in his study. He was tired.

End of the Project Gutenberg Etext of Faust Part 1.
Nothing after this line is the book.
"""

WIKITEXT = """ 
 = Valkyria Chronicles III = 
 
 Senjō no Valkyria 3 : <unk> Chronicles is a role @-@ playing game . It sold 1 @,@ 000 copies . 
 
 = = Gameplay = = 
 
 The game costs 3 @.@ 5 dollars . Players like it . 
 
 = Tower Building = 
 
 The tower is tall . It is old . 
"""


def _write(path, text, gz=False):
    data = text.encode("utf-8")
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return str(path)


def _read(path, **options):
    stats = collections.Counter()
    return list(iter_documents([path], ReaderOptions(**options), stats)), stats


@pytest.mark.parametrize("gz", [False, True])
def test_wikiextractor_one_document_per_doc_without_the_title(tmp_path, gz):
    path = _write(tmp_path / ("wiki_00.gz" if gz else "wiki_00"), WIKIEXTRACTOR, gz)
    assert sniff_format(path) == "wikiextractor"
    docs, stats = _read(path)
    assert docs == [["Anarchism is a political philosophy.", "It rejects rulers.", "Etymology.", "The term is Greek.",
                     "It is old."], ["Autism is a condition.", "It affects people."]]
    assert not stats["lines_outside_docs"] and not stats["unclosed_docs"]


def test_wikiextractor_counts_an_unclosed_doc(tmp_path):
    path = _write(tmp_path / "w.txt", WIKIEXTRACTOR.rsplit("</doc>", 1)[0])
    docs, stats = _read(path, format="wikiextractor")
    assert docs[-1] == ["Autism is a condition.", "It affects people."] and stats["unclosed_docs"] == 1


@pytest.mark.parametrize("text, body", [
    (GUTENBERG_NEW, ["The sun was setting.", "The elves came out.", "They danced.", "Then they slept."]),
    (GUTENBERG_OLD, ["Faust sat in his study.", "He was tired."]),
])
def test_gutenberg_header_and_footer_are_stripped(tmp_path, text, body):
    path = _write(tmp_path / "book.txt.gz", text, gz=True)
    assert sniff_format(path) == "gutenberg"
    docs, stats = _read(path)
    assert docs == [body]
    assert stats["gutenberg_footers_stripped"] == 1 and not stats["gutenberg_start_not_found"]


def test_gutenberg_without_markers_loses_nothing(tmp_path):
    path = _write(tmp_path / "book.txt", "A Project Gutenberg book.\n\nIt has no markers. None at all.\n")
    docs, stats = _read(path, format="gutenberg")
    assert docs == [["A Project Gutenberg book.", "It has no markers.", "None at all."]]
    assert stats["gutenberg_start_not_found"] == 1


def test_wikitext_articles_unk_and_joins(tmp_path):
    path = _write(tmp_path / "wiki.valid.tokens", WIKITEXT)
    assert sniff_format(path) == "wikitext"
    docs, _ = _read(path)
    assert docs == [
        ["Senjō no Valkyria 3 : Chronicles is a role-playing game .", "It sold 1,000 copies .",
         "The game costs 3.5 dollars .", "Players like it ."],
        ["The tower is tall .", "It is old ."],
    ]


def test_auto_keeps_the_old_defaults(tmp_path):
    assert file_format(_write(tmp_path / "a.jsonl", '{"text": "x"}\n'), ReaderOptions()) == "jsonl"
    assert file_format(_write(tmp_path / "a.txt", "One sentence.\nAnother.\n\nDoc two.\n"), ReaderOptions()) == "bert"
    assert file_format(_write(tmp_path / "b.txt", "x\n"), ReaderOptions(format="text")) == "text"


def _vocab(tmp_path):
    words = "the sun was setting elves came out they danced then slept faust sat in his study he tired . ,".split()
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return str(path)


def test_make_data_reads_a_gutenberg_book_without_its_licence(tmp_path):
    books = [_write(tmp_path / f"b{i}.txt.gz", GUTENBERG_NEW, gz=True) for i in range(3)]
    manifest = make_data.build_dataset(books, str(tmp_path / "out"), _vocab(tmp_path), mode="single", seq_len=32,
                                       log=lambda *_: None)
    assert manifest["documents"] == 3 and manifest["examples"] >= 3
    # The licence words are not in the vocab: had the header or footer been read they would be [UNK]s.
    assert manifest["token_counts"][1] == 0
    counts = manifest["token_counts"]
    assert sum(counts) - counts[2] - counts[3] == manifest["tokens"]  # all but [CLS] and [SEP], counted too


def test_a_corpus_that_yields_no_example_is_an_error(tmp_path, capsys):
    one_sentence = _write(tmp_path / "a.txt", "The sun was setting.\n")
    code = make_data.main(["--input", one_sentence, "--output", str(tmp_path / "out"), "--vocab", _vocab(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "have one sentence" in err and "--mode full-sentences" in err and str(tmp_path / "a.txt") in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("parser", [make_data._parser, tokenizer_cli.parser])
def test_every_flag_has_help(parser):
    actions = [a for a in parser()._actions if a.option_strings and a.dest != "help"]
    assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]


def test_train_tokenizer_reads_wikiextractor(tmp_path):
    path = _write(tmp_path / "wiki_00", WIKIEXTRACTOR * 3)
    assert tokenizer_cli.main(["--input", path, "--vocab_size", "200", "--output", str(tmp_path / "v")]) == 0
    vocab = (tmp_path / "v" / "vocab.txt").read_text().split("\n")
    assert "anarchism" in vocab and "curid" not in vocab  # text words in; the <doc> tag's attributes are not
