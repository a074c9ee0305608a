"""Corpus readers: every format, gzip, globs, bad bytes, long lines, sentence splitting."""
import collections
import gzip
import json

import pytest

import random

from bert_jax.data.corpus import (
    CorpusError,
    ReaderOptions,
    expand_inputs,
    iter_documents,
    iter_lines,
    iter_raw_documents,
    split_sentences,
)


def _read(patterns, **options):
    stats = collections.Counter()
    docs = list(iter_documents([str(p) for p in patterns], ReaderOptions(**options), stats))
    return docs, stats


def test_bert_format(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"First one.\r\n  Second one.  \n\n\n\nOther doc.\n \nThird doc line.\nAnd more.")
    docs, stats = _read([tmp_path / "a.txt"])
    assert docs == [["First one.", "Second one."], ["Other doc."], ["Third doc line.", "And more."]]
    assert stats["files"] == 1 and stats["invalid_utf8_replacements"] == 0


def test_plain_text_documents(tmp_path):
    text = "Mr. Smith went to Washington. He said \"Hello!\" Then he\nleft... It cost 5 dollars.\n\n" \
           "J. R. R. Tolkien wrote it, e.g. a book. Yes? (Maybe.) \"Quoted,\" she said. 1990 was a year."
    (tmp_path / "b.txt").write_text(text, encoding="utf-8")
    per_file, _ = _read([tmp_path / "b.txt"], format="text")
    first = ["Mr. Smith went to Washington.", 'He said "Hello!"', "Then he left...", "It cost 5 dollars."]
    second = ["J. R. R. Tolkien wrote it, e.g. a book.", "Yes?", "(Maybe.)", '"Quoted," she said.', "1990 was a year."]
    assert per_file == [first + second]
    per_block, _ = _read([tmp_path / "b.txt"], format="text", doc_boundary="blank_line")
    assert per_block == [first, second]


@pytest.mark.parametrize("paragraph,expected", [
    ("no split here. lower case follows", ["no split here. lower case follows"]),
    ("Dr. Who and Mrs. Hudson met at St. Paul's. They talked.", ["Dr. Who and Mrs. Hudson met at St. Paul's.", "They talked."]),
    ("Wait?! \u201cNo.\u201d Fine.", ["Wait?!", "\u201cNo.\u201d", "Fine."]),
    ("Ends with i.e. Something else, etc. And so on.", ["Ends with i.e. Something else, etc. And so on."]),
    ("  ", []),
])
def test_split_sentences(paragraph, expected):
    assert split_sentences(paragraph) == expected


def test_jsonl_with_field_and_bad_lines(tmp_path):
    lines = [json.dumps({"body": "One. Two sentences.\n\nNew paragraph here.", "id": 1}), "{not json", "",
             json.dumps({"title": "no body"}), json.dumps({"body": "Solo."}), json.dumps([1, 2])]
    (tmp_path / "c.jsonl").write_text("\n".join(lines), encoding="utf-8")
    docs, stats = _read([tmp_path / "c.jsonl"], text_field="body")  # auto picks jsonl from the suffix
    assert docs == [["One.", "Two sentences.", "New paragraph here."], ["Solo."]]
    assert stats["invalid_json_lines"] == 1 and stats["missing_text_field"] == 2


def test_gzip_is_transparent(tmp_path):
    body = "Alpha one.\nAlpha two.\n\nBeta one.\n"
    (tmp_path / "d.txt").write_text(body, encoding="utf-8")
    with gzip.open(tmp_path / "e.txt.gz", "wt", encoding="utf-8") as f:
        f.write(body)
    with gzip.open(tmp_path / "f.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "Gamma one. Gamma two."}) + "\n")
    plain, _ = _read([tmp_path / "d.txt"])
    packed, _ = _read([tmp_path / "e.txt.gz"])
    assert packed == plain == [["Alpha one.", "Alpha two."], ["Beta one."]]
    assert _read([tmp_path / "f.jsonl.gz"])[0] == [["Gamma one.", "Gamma two."]]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "g.txt").write_bytes(b"\xef\xbb\xbfGood line.\nBad \xff\xfe bytes \xc3.\nFine \xc3\xa9.\n")
    docs, stats = _read([tmp_path / "g.txt"])
    assert docs == [["Good line.", "Bad \ufffd\ufffd bytes \ufffd.", "Fine \u00e9."]]  # BOM dropped
    assert stats["invalid_utf8_replacements"] == 3


def test_long_lines_are_skipped_and_counted(tmp_path):
    (tmp_path / "h.txt").write_bytes(b"short.\n" + b"x" * 5000 + b"\nafter.\n" + b"y" * 64 + b"\n" + b"z" * 65)
    docs, stats = _read([tmp_path / "h.txt"], max_line_bytes=64)
    assert docs == [["short.", "after.", "y" * 64]]
    assert stats["long_lines_skipped"] == 2


def test_long_documents_are_cut_into_pieces_sharing_an_origin(tmp_path):
    sentences = [f"Sentence number {i} is here." for i in range(40)]
    (tmp_path / "i.txt").write_text("\n".join(sentences) + "\n\nAnother doc.\n", encoding="utf-8")
    stats = collections.Counter()
    raw = list(iter_raw_documents([str(tmp_path / "i.txt")], ReaderOptions(max_doc_chars=200), stats))
    assert [s for d in raw[:-1] for s in d.parts] == sentences
    assert all(d.num_chars <= 200 for d in raw)
    assert len({d.origin for d in raw[:-1]}) == 1 and raw[-1].origin == raw[0].origin + 1
    assert stats["documents_split"] == len(raw) - 2
    text = list(iter_raw_documents([str(tmp_path / "i.txt")], ReaderOptions(format="text", max_doc_chars=200), stats))
    assert all(d.num_chars <= 200 + 40 for d in text) and len(text) > 5  # no blank line: cut at lines
    assert " ".join(p for d in text[:-1] for p in d.parts) == " ".join(sentences)


def test_globs_and_empty_inputs(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(f"From {name}.\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.txt").write_text("Nested.\n", encoding="utf-8")
    files = expand_inputs([str(tmp_path / "*.txt"), str(tmp_path / "**" / "z.txt")])
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.txt", "z.txt"]
    docs, _ = _read([tmp_path / "*.txt", tmp_path / "*.md"])
    assert docs == [["From a.txt."], ["From b.txt."], ["From c.md."]]
    with pytest.raises(CorpusError, match=r"--input '.*nothing-\*\.txt' matches no files"):
        expand_inputs([str(tmp_path / "*.txt"), str(tmp_path / "nothing-*.txt")])
    with pytest.raises(CorpusError, match="no --input"):
        expand_inputs([])
    with pytest.raises(CorpusError, match="--format"):
        ReaderOptions(format="csv")


@pytest.mark.parametrize("seed", range(4))
def test_chunked_line_reader_matches_a_line_by_line_reference(tmp_path, seed):
    rnd = random.Random(seed)
    alphabet = [b"a", b"b", b" ", b"\xc3\xa9", b"\xff", b"\r", b"\xe4\xb8\xad"]
    lines = [b"".join(rnd.choice(alphabet) for _ in range(rnd.choice([0, 1, 5, 20, 40]))) for _ in range(200)]
    data = b"\n".join(lines) + rnd.choice([b"", b"\n"])
    (tmp_path / "r.txt").write_bytes(data)
    limit = 30
    expected, replaced, skipped = [], 0, 0
    for line in data.split(b"\n")[: None if not data.endswith(b"\n") else -1]:
        if len(line) > limit:
            skipped += 1
            continue
        text = line.decode("utf-8", "replace")
        replaced += text.count("\ufffd")
        expected.append(text[:-1] if text.endswith("\r") else text)
    for chunk in (1, 7, 64, 1 << 20):
        stats = collections.Counter()
        got = list(iter_lines(str(tmp_path / "r.txt"), limit, stats, chunk_bytes=chunk))
        assert got == expected, chunk
        assert stats["invalid_utf8_replacements"] == replaced and stats["long_lines_skipped"] == skipped
