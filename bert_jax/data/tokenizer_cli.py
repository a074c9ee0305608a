"""`bert-jax train-tokenizer`: train a WordPiece vocab on a corpus and save it as a vocab directory.

    bert-jax train-tokenizer --input 'corpus/*.txt' --vocab_size 30522 --output vocab/ [--cased]

The output directory holds vocab.txt (Google's format) and tokenizer_config.json (the casing); pass it
to `bert-jax make-data --vocab`, or to transformers' BertTokenizer.from_pretrained.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from typing import Sequence

from bert_jax.data.corpus import FORMAT_HELP, FORMATS, CorpusError, ReaderOptions, iter_documents
from bert_jax.data.tokenizer import TokenizerError, load_tokenizer, save_vocab, train_wordpiece


def train_wordpiece_files(patterns: Sequence[str], vocab_size: int, lowercase: bool = True,
                          reader: ReaderOptions = ReaderOptions(), min_frequency: int = 2) -> list[str]:
    """Train on every sentence of the files matched by `patterns`, streamed through the corpus readers."""
    stats: collections.Counter = collections.Counter()
    sentences = (s for doc in iter_documents(patterns, reader, stats) for s in doc)
    return train_wordpiece(sentences, vocab_size, lowercase=lowercase, min_frequency=min_frequency)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bert-jax train-tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", action="append", required=True,
                   help="file or glob (repeatable; quote globs; .gz read transparently)")
    p.add_argument("--vocab_size", type=int, required=True, help="most tokens in the vocab, special tokens included")
    p.add_argument("--output", required=True, help="directory for vocab.txt and tokenizer_config.json")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: uncased, like bert-base-uncased)")
    p.add_argument("--min_frequency", type=int, default=2,
                   help="a merge must occur at least this often to enter the vocab (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS, default="auto", help=FORMAT_HELP)
    p.add_argument("--text_field", default="text", help="--format jsonl: the field holding each document's text")
    p.add_argument("--doc_boundary", choices=("file", "blank_line"), default="file",
                   help="--format text: a document is a whole file, or each blank-line-separated block")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    start = time.perf_counter()
    try:
        reader = ReaderOptions(format=a.format, text_field=a.text_field, doc_boundary=a.doc_boundary)
        vocab = train_wordpiece_files(a.input, a.vocab_size, lowercase=not a.cased, reader=reader,
                                      min_frequency=a.min_frequency)
        save_vocab(a.output, vocab, lowercase=not a.cased)
        tokenizer = load_tokenizer(a.output)
    except (CorpusError, TokenizerError) as e:
        print(f"train-tokenizer: {e}", file=sys.stderr)
        return 2
    print(f"train-tokenizer: {tokenizer.vocab_size} tokens ({'cased' if a.cased else 'uncased'}, fingerprint "
          f"{tokenizer.fingerprint}) in {time.perf_counter() - start:.1f}s -> {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
