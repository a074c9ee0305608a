"""Readers for corpora as users download them: WikiExtractor dumps, Project Gutenberg books, WikiText.

Each reader turns a file's lines into documents, each document an iterator over its paragraphs (sentence
splitting happens later, in `corpus.document_sentences`):

  wikiextractor  `<doc id=.. url=.. title=..>` ... `</doc>`: one document per <doc>; its first line (the title,
                 which WikiExtractor repeats from the tag) is dropped; every other non-blank line is a paragraph.
  gutenberg      one book per file; the licence header (up to `*** START OF ...` or the old `*END*THE SMALL
                 PRINT!` line) and footer (from `*** END OF ...` / `End of the Project Gutenberg ...`) are
                 dropped; the rest is read like `text` (paragraphs are blank-line-separated blocks).
  wikitext       WikiText-2/103 (tokenized; ` = Title = ` starts an article, ` = = Heading = = ` lines are
                 dropped): one document per article; `<unk>` words are dropped (the vocab has no such word, and
                 Google's basic tokenizer would cut `<unk>` into `<`, `unk`, `>`); ` @-@ `, ` @,@ `, ` @.@ ` are
                 joined back into `-`, `,`, `.`.

`sniff_format` picks one of them (or `bert`) from a file's first 64 KiB for `--format auto`.
"""
from __future__ import annotations

import collections
import gzip
import re
from typing import Iterator

SNIFF_BYTES = 1 << 16
# A Gutenberg header is at most a few hundred lines; a book whose start marker is not found within this many
# lines is read from its first line (nothing of it is lost).
GUTENBERG_HEADER_LINES = 1000

_DOC_OPEN = re.compile(r"^<doc\b[^>]*>\s*$")
_DOC_CLOSE = "</doc>"
_WT_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WT_HEADING = re.compile(r"^ ?(= ){2,}.*( =){2,} ?$")
_WT_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
_PG_START = re.compile(r"^\W*\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*?\s*THE SMALL PRINT|"
                       r"SMALL PRINT!.*\*END\*|^\s*\[\"Small Print\" V\.", re.IGNORECASE)
_PG_END = re.compile(r"^\W*\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|^\s*End of (the |this )?Project Gutenberg|"
                     r"^\s*End of Project Gutenberg'?s|^\s*End of (the |this )?E-?text of", re.IGNORECASE)


def sniff_format(path: str) -> str:
    """`jsonl` by extension; else `wikiextractor`, `wikitext` or `gutenberg` by content; else `bert`."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(SNIFF_BYTES).decode("utf-8", "replace").lstrip("\ufeff")
    first = next((line for line in head.splitlines() if line.strip()), "")
    if _DOC_OPEN.match(first.strip()):
        return "wikiextractor"
    if _WT_TITLE.match(first.rstrip("\r")) and not _WT_HEADING.match(first.rstrip("\r")):
        return "wikitext"
    if "project gutenberg" in head.lower():
        return "gutenberg"
    return "bert"


def wikiextractor_documents(lines: Iterator[str], stats: collections.Counter) -> Iterator[Iterator[str]]:
    """One document per <doc>; text outside a <doc> is counted and skipped."""
    def document() -> Iterator[str]:
        title_seen = False
        for line in lines:
            line = line.strip()
            if line == _DOC_CLOSE:
                return
            if not line:
                continue
            if not title_seen:  # WikiExtractor writes the title as the doc's first line
                title_seen = True
                continue
            yield line
        stats["unclosed_docs"] += 1

    for line in lines:
        stripped = line.strip()
        if _DOC_OPEN.match(stripped):
            yield document()
        elif stripped and stripped != _DOC_CLOSE:
            stats["lines_outside_docs"] += 1


def gutenberg_body(lines: Iterator[str], stats: collections.Counter) -> Iterator[str]:
    """The book's lines between the licence header and footer."""
    head: list[str] = []
    for line in lines:
        if _PG_START.search(line):
            head = []
            break
        head.append(line)
        if len(head) >= GUTENBERG_HEADER_LINES:
            stats["gutenberg_start_not_found"] += 1
            break
    else:  # the file ended inside what would be the header: no marker, keep it all
        if head:
            stats["gutenberg_start_not_found"] += 1
    for line in [*head, *lines] if head else lines:
        if _PG_END.search(line):
            stats["gutenberg_footers_stripped"] += 1
            return
        yield line


def clean_wikitext_line(line: str) -> str:
    text = line.replace("<unk>", " ")
    for joined, plain in _WT_JOINS:
        text = text.replace(joined, plain)
    return " ".join(text.split())


def wikitext_documents(lines: Iterator[str], stats: collections.Counter) -> Iterator[Iterator[str]]:
    """One document per ` = Title = ` article; headings dropped; text before the first title is its own document."""
    pending: list[str | None] = [None]  # a title line read by one document that starts the next

    def document() -> Iterator[str]:
        for line in lines:
            line = line.rstrip("\r")
            if _WT_TITLE.match(line) and not _WT_HEADING.match(line):
                pending[0] = line
                return
            if not line.strip() or _WT_HEADING.match(line):
                continue
            text = clean_wikitext_line(line)
            if text:
                yield text

    while True:
        doc = document()
        yield doc
        for _ in doc:  # the caller may not have read it all
            pass
        if pending[0] is None:
            return
        pending[0] = None
