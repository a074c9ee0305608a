"""Streaming corpus readers: text files -> documents -> sentences.

Formats (`ReaderOptions.format`):
  bert   one sentence per line, a blank line between documents (google-research/bert's input format);
  text   plain prose; a document is a whole file (`doc_boundary="file"`) or each blank-line-separated
         block (`doc_boundary="blank_line"`); lines inside a block are joined and split into sentences;
  jsonl  one JSON object per line, the document text under `text_field`, treated like `text`;
  wikiextractor, gutenberg, wikitext   corpora as downloaded (see `corpus_formats`);
  auto   jsonl for *.jsonl / *.json (optionally .gz); else wikiextractor, wikitext or gutenberg when the file's
         first 64 KiB look like one (`corpus_formats.sniff_format`); bert otherwise.
Files ending in .gz are decompressed on the fly. Nothing holds more than one document (bounded by
`max_doc_chars`: longer documents are cut at paragraph/sentence boundaries into pieces that share an
`origin`) or one line (lines over `max_line_bytes` are skipped and counted).

Sentence rule for text/jsonl (`split_sentences`): a sentence ends at `.`, `!` or `?` (runs allowed, closing
quotes/brackets kept with it) followed by whitespace and then a capital letter (ASCII or Latin-1), a
digit, or an opening quote/bracket before one. A `.` does not end a sentence right after a common
abbreviation (Mr. Dr. St. e.g. i.e. etc. vs. ...) or a single-letter initial (J. Smith) standing as a word
of its own (after whitespace or an opening bracket/quote).

Reading is split in two so that the cheap part (bytes -> `RawDocument`) can run in one process and the
sentence splitting in the workers: `iter_raw_documents` then `document_sentences`.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from bert_jax.data.corpus_formats import gutenberg_body, sniff_format, wikiextractor_documents, wikitext_documents

FORMATS = ("auto", "bert", "text", "jsonl", "wikiextractor", "gutenberg", "wikitext")
DOC_BOUNDARIES = ("file", "blank_line")
FORMAT_HELP = ("how to read --input: bert (a sentence per line, blank line between documents), text (prose; see "
               "--doc_boundary), jsonl (--text_field of each line), wikiextractor (<doc> ... </doc>, title line "
               "dropped), gutenberg (Project Gutenberg book, licence header and footer dropped), wikitext (' = Title = ' "
               "articles, <unk> dropped, @-@ joins undone); auto (default) picks per file: jsonl by extension, else "
               "by the first 64 KiB, else bert")


class CorpusError(ValueError):
    """Unusable corpus input; the message names the input and the fix."""


@dataclass(frozen=True)
class ReaderOptions:
    format: str = "auto"
    text_field: str = "text"  # jsonl only
    doc_boundary: str = "file"  # text only
    max_line_bytes: int = 1 << 20
    max_doc_chars: int = 1 << 18

    def __post_init__(self):
        if self.format not in FORMATS:
            raise CorpusError(f"--format {self.format!r} is not one of {FORMATS}")
        if self.doc_boundary not in DOC_BOUNDARIES:
            raise CorpusError(f"--doc_boundary {self.doc_boundary!r} is not one of {DOC_BOUNDARIES}")
        if self.max_line_bytes < 1 or self.max_doc_chars < 1:
            raise CorpusError("--max_line_bytes and --max_doc_chars must be positive")


@dataclass(frozen=True)
class RawDocument:
    origin: int  # index of the source document; pieces of one long document share it
    parts: tuple[str, ...]  # sentences when `presplit`, else paragraphs still to be split
    presplit: bool

    @property
    def num_chars(self) -> int:
        return sum(len(p) for p in self.parts)


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files matched by each glob, sorted within a glob, in the order the globs were given."""
    if not patterns:
        raise CorpusError("no --input given; pass a file or glob such as --input 'corpus/*.txt'")
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise CorpusError(f"--input {pattern!r} matches no files; check the path (quote globs so the shell "
                              "does not expand them)")
        files.extend(matches)
    return files


def file_format(path: str, options: ReaderOptions) -> str:
    return options.format if options.format != "auto" else sniff_format(path)


def _decode(block: bytes, stats: collections.Counter) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("utf-8", "replace")
        stats["invalid_utf8_replacements"] += text.count("\ufffd") - block.count(b"\xef\xbf\xbd")
        return text


def iter_lines(path: str, max_line_bytes: int, stats: collections.Counter, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """Decoded lines without their line break; bad UTF-8 replaced (counted), overlong lines skipped (counted).

    Reads fixed-size chunks and splits them in C; only a partial last line (bounded by max_line_bytes)
    is carried between chunks, so memory stays bounded whatever the file holds."""
    opener = gzip.open if path.endswith(".gz") else open
    carry, skipping, first = b"", False, True
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            buf = carry + chunk
            cut = buf.rfind(b"\n")
            if cut < 0:  # still inside one line
                carry = b"" if skipping else buf
                if len(carry) > max_line_bytes:
                    stats["long_lines_skipped"] += 1
                    carry, skipping = b"", True
                continue
            block, carry = buf[:cut], buf[cut + 1:]
            lines = block.split(b"\n")
            if skipping:  # the first line is the tail of an overlong one
                lines, skipping = lines[1:], False
            if len(carry) > max_line_bytes:
                stats["long_lines_skipped"] += 1
                carry, skipping = b"", True
            if lines and max(map(len, lines)) > max_line_bytes:
                kept = [line for line in lines if len(line) <= max_line_bytes]
                stats["long_lines_skipped"] += len(lines) - len(kept)
                lines = kept
            if not lines:
                continue
            text = _decode(b"\n".join(lines), stats)
            if first:
                text, first = text.lstrip("\ufeff"), False
            if text.endswith("\r"):
                text = text[:-1]
            yield from text.replace("\r\n", "\n").split("\n")
        if carry and not skipping:
            text = _decode(carry, stats)
            yield (text.lstrip("\ufeff") if first else text).rstrip("\r")


def _paragraphs(lines: Iterator[str], max_chars: int) -> Iterator[str]:
    """Blank-line-separated blocks, each joined into one line; a block is cut at a line once it passes
    max_chars, so a file without blank lines is never held whole."""
    block: list[str] = []
    size = 0
    for line in lines:
        line = line.strip()
        if line:
            block.append(line)
            size += len(line)
            if size < max_chars:
                continue
        if block:
            yield " ".join(block)
            block, size = [], 0
    if block:
        yield " ".join(block)


def _pieces(parts: Iterator[str], max_chars: int, stats: collections.Counter) -> Iterator[list[str]]:
    """Cut one document's parts into pieces of at most ~max_chars (a single larger part stays whole)."""
    piece: list[str] = []
    size = 0
    for part in parts:
        if piece and size + len(part) > max_chars:
            stats["documents_split"] += 1
            yield piece
            piece, size = [], 0
        piece.append(part)
        size += len(part)
    if piece:
        yield piece


def iter_raw_documents(files: Sequence[str], options: ReaderOptions, stats: collections.Counter) -> Iterator[RawDocument]:
    origin = 0
    for path in files:
        stats["files"] += 1
        fmt = file_format(path, options)
        lines = iter_lines(path, options.max_line_bytes, stats)
        if fmt == "bert":
            docs = _bert_documents(lines)
        elif fmt == "jsonl":
            docs = _jsonl_documents(lines, options.text_field, stats)
        elif fmt == "wikiextractor":
            docs = wikiextractor_documents(lines, stats)
        elif fmt == "wikitext":
            docs = wikitext_documents(lines, stats)
        elif fmt == "gutenberg":
            docs = iter([_paragraphs(gutenberg_body(lines, stats), options.max_doc_chars)])
        elif options.doc_boundary == "file":
            docs = iter([_paragraphs(lines, options.max_doc_chars)])
        else:
            docs = ([p] for p in _paragraphs(lines, options.max_doc_chars))
        for doc_parts in docs:
            for piece in _pieces(iter(doc_parts), options.max_doc_chars, stats):
                yield RawDocument(origin=origin, parts=tuple(piece), presplit=fmt == "bert")
            origin += 1


def _bert_documents(lines: Iterator[str]) -> Iterator[Iterator[str]]:
    """Each document as a lazy iterator over its stripped sentences; consume it before asking for the next."""
    def document(first: str) -> Iterator[str]:
        yield first
        for line in lines:
            line = line.strip()
            if not line:
                return
            yield line

    for line in lines:
        line = line.strip()
        if line:
            yield document(line)


_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def _jsonl_documents(lines: Iterator[str], field: str, stats: collections.Counter) -> Iterator[Iterator[str]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            stats["invalid_json_lines"] += 1
            continue
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats["missing_text_field"] += 1
            continue
        yield _paragraphs(iter(_BLANK_LINES.sub("\n\n", text).split("\n")), len(text) + 1)


ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr mt rev hon gen col lt sgt capt cmdr gov sen rep fig figs vol pp "
    "vs etc al inc ltd co corp dept approx ca cf e.g i.e u.s u.k a.m p.m jan feb mar apr jun jul aug sep sept "
    "oct nov dec".split()
)
# Splitting is one regex substitution per document (C speed, no Python per sentence): each boundary's
# whitespace becomes a newline. Abbreviations and initials are fixed-width negative lookbehinds tried
# only at a period; a leading space lets them see a word at the very start. Paragraphs are joined by
# newlines, which the boundary pattern never crosses.
_WORD_BEFORE = "[\\s(\\[\"'\u2018\u201c]"
_GUARDS = "".join(f"(?<!{_WORD_BEFORE}(?i:{re.escape(a)})\\.)" for a in sorted(ABBREVIATIONS))
_BOUNDARY = re.compile(
    r"((?:\." + _GUARDS + "(?<![\\s(\\[\"\u2018\u201c][A-Za-z]\\.)" + r"|[!?])[.!?]*[\"')\]\u2019\u201d]*)[^\S\n]+"
    r"(?=[\"'(\[\u2018\u201c]*[A-Z0-9\u00c0-\u00d6\u00d8-\u00de])")


def _split_paragraphs(paragraphs: Sequence[str]) -> list[str]:
    text = _BOUNDARY.sub("\\1\n", " " + "\n".join(paragraphs))
    return [t for t in (s.strip() for s in text.split("\n")) if t]


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences by the rule in the module docstring."""
    return _split_paragraphs([paragraph.replace("\n", " ")])


def document_sentences(doc: RawDocument) -> list[str]:
    return list(doc.parts) if doc.presplit else _split_paragraphs(doc.parts)


def iter_documents(patterns: Sequence[str], options: ReaderOptions = ReaderOptions(),
                   stats: collections.Counter | None = None) -> Iterator[list[str]]:
    """Documents as lists of sentences, streamed from the files matched by `patterns`."""
    stats = collections.Counter() if stats is None else stats
    for doc in iter_raw_documents(expand_inputs(patterns), options, stats):
        yield document_sentences(doc)
