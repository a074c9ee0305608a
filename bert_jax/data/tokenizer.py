"""BERT WordPiece tokenizer on top of HF `tokenizers` (Rust), id-identical to transformers' BertTokenizer.

A vocab directory holds Google's `vocab.txt` (one token per line, the line number is the id) and a
`tokenizer_config.json` recording the casing; transformers' `BertTokenizer.from_pretrained(dir)` reads the
same directory. A bare `vocab.txt` is accepted too: the casing is then taken from the config next to it
or, failing that, inferred (a vocab with no token that lower-casing would change is uncased).

Text is tokenised as BERT does: control characters removed and whitespace normalised, CJK characters
split into single-character words, lower-casing plus accent stripping when uncased, split on whitespace
and punctuation, then greedy longest-match WordPiece with `##` continuations; a word longer than 100
characters, or one that cannot be covered by the vocab, becomes a single [UNK].
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from bert_jax.data.shards import write_json_atomic
from bert_jax.data.wordpiece_trainer import count_words, learn_vocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
MAX_CHARS_PER_WORD = 100  # BERT's WordPiece limit; longer words become [UNK]
CONTINUATION = "##"


class TokenizerError(ValueError):
    """A vocab that cannot be used; the message names the file and the fix."""


def vocab_fingerprint(vocab: Sequence[str], lowercase: bool) -> str:
    """Stable 16-hex-digit hash of the ordered vocab and the casing; equal fingerprints mean equal ids."""
    h = hashlib.sha256(b"uncased\n" if lowercase else b"cased\n")
    for token in vocab:
        h.update(token.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _backend(vocab: Sequence[str], lowercase: bool) -> Tokenizer:
    # A dict keeps the last id of a duplicated line, exactly like transformers' load_vocab.
    ids = {token: i for i, token in enumerate(vocab)}
    backend = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=MAX_CHARS_PER_WORD))
    backend.normalizer = _normalizer(lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return backend


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    # strip_accents=None follows `lowercase`, as in original BERT (uncased strips accents, cased keeps them).
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)


@dataclass(frozen=True)
class WordPieceTokenizer:
    """A loaded vocab plus its Rust tokenizer. Build with `load_tokenizer`."""

    path: str  # the vocab.txt it was loaded from
    lowercase: bool
    vocab: tuple[str, ...]
    fingerprint: str
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    backend: Tokenizer = field(repr=False, compare=False)
    is_continuation: np.ndarray = field(repr=False, compare=False)  # bool [vocab_size]: token starts with ##

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": self.pad_id, "unk": self.unk_id, "cls": self.cls_id, "sep": self.sep_id, "mask": self.mask_id}

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenise a batch (no special tokens) into flat arrays.

        Returns (ids int32 [T], word_start bool [T], offsets int64 [len(texts)+1]); text i owns
        ids[offsets[i]:offsets[i+1]]. One call into Rust per batch keeps tokenisation the bottleneck.
        """
        # encode_batch_fast skips character offsets, which we never read: cheaper to build and to free.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        encodings = encode(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32, count=int(offsets[-1])
        )
        return ids, ~self.is_continuation[ids], offsets

    def encode_batch(self, texts: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-text id arrays and word-start flags (a token starts a word unless it is a ## continuation)."""
        ids, word_start, offsets = self.encode_flat(texts)
        cuts = offsets[1:-1]
        return np.split(ids, cuts), np.split(word_start, cuts)

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text for debugging: ## pieces glued to the previous token."""
        out: list[str] = []
        for i in ids:
            token = self.vocab[int(i)]
            if token.startswith(CONTINUATION) and out:
                out[-1] += token[len(CONTINUATION):]
            else:
                out.append(token)
        return " ".join(out)


def read_vocab(vocab_file: str) -> list[str]:
    if not os.path.isfile(vocab_file):
        raise TokenizerError(f"vocab file {vocab_file} does not exist; pass a vocab.txt or a directory holding one "
                             "(train one with `bert-jax train-tokenizer`)")
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _resolve(path: str) -> tuple[str, str | None]:
    """(vocab.txt path, tokenizer_config.json path or None) for a vocab file or directory."""
    directory, vocab_file = (path, os.path.join(path, VOCAB_FILE)) if os.path.isdir(path) else (os.path.dirname(path), path)
    config = os.path.join(directory, CONFIG_FILE)
    return vocab_file, config if os.path.isfile(config) else None


def infer_lowercase(vocab: Sequence[str]) -> bool:
    """True (uncased) when no non-special token would change under lower-casing."""
    return not any(t != t.lower() for t in vocab if not (t.startswith("[") and t.endswith("]")))


def load_tokenizer(path: str, lowercase: bool | None = None) -> WordPieceTokenizer:
    """Load a vocab.txt or a directory with one; `lowercase=None` reads the casing from the saved config."""
    vocab_file, config_file = _resolve(path)
    vocab = read_vocab(vocab_file)
    if lowercase is None and config_file is not None:
        with open(config_file) as f:
            lowercase = json.load(f).get("do_lower_case")
    if lowercase is None:
        lowercase = infer_lowercase(vocab)
    ids = {token: i for i, token in enumerate(vocab)}
    missing = [t for t in SPECIAL_TOKENS if t not in ids]
    if missing:
        raise TokenizerError(f"vocab {vocab_file} lacks special tokens {missing}; use a BERT vocab that has all of "
                             f"{list(SPECIAL_TOKENS)} (as `bert-jax train-tokenizer` writes)")
    is_continuation = np.array([t.startswith(CONTINUATION) and len(t) > len(CONTINUATION) for t in vocab], dtype=bool)
    return WordPieceTokenizer(
        path=os.path.abspath(vocab_file),
        lowercase=bool(lowercase),
        vocab=tuple(vocab),
        fingerprint=vocab_fingerprint(vocab, bool(lowercase)),
        pad_id=ids["[PAD]"],
        unk_id=ids["[UNK]"],
        cls_id=ids["[CLS]"],
        sep_id=ids["[SEP]"],
        mask_id=ids["[MASK]"],
        backend=_backend(vocab, bool(lowercase)),
        is_continuation=is_continuation,
    )


def save_vocab(out_dir: str, vocab: Sequence[str], lowercase: bool) -> str:
    """Write vocab.txt and tokenizer_config.json (readable by transformers too); returns the directory."""
    bad = [t for t in vocab if "\n" in t or "\r" in t]
    if bad:
        raise TokenizerError(f"vocab tokens {bad[:3]} contain line breaks and cannot be saved to {VOCAB_FILE}")
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".{VOCAB_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(f"{t}\n" for t in vocab))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out_dir, VOCAB_FILE))
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(lowercase),
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "vocab_fingerprint": vocab_fingerprint(vocab, lowercase),
    }
    write_json_atomic(os.path.join(out_dir, CONFIG_FILE), config)
    return out_dir


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    lowercase: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> list[str]:
    """Train a WordPiece vocab on an iterator of texts; returns the ordered tokens ([PAD] is id 0).

    Pass the result to `save_vocab`. Training streams `texts` (only word counts are kept) and is
    deterministic: the same texts and settings give the same vocab, ids included, in any process
    (see `wordpiece_trainer`). The words are those the tokenizer itself sees (same normaliser and
    pre-tokenizer), so the vocab is learned on exactly what it will encode.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise TokenizerError(f"--vocab_size {vocab_size} is too small; use at least a few hundred (BERT uses 30522)")
    word_counts = count_words(texts, _normalizer(lowercase), pre_tokenizers.BertPreTokenizer())
    vocab = learn_vocab(word_counts, vocab_size, SPECIAL_TOKENS, unk_token="[UNK]", min_frequency=min_frequency,
                        limit_alphabet=limit_alphabet, prefix=CONTINUATION, max_word_chars=MAX_CHARS_PER_WORD)
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise TokenizerError("the training text is empty; pass files with text to `bert-jax train-tokenizer --input`")
    return canonical_order(vocab)


def canonical_order(vocab: Sequence[str]) -> list[str]:
    """Specials first, then single characters, then ## single characters, then longer pieces, each group sorted.

    Ids then depend on the token set alone, not on the order training made the tokens in (the HF Rust trainer,
    used before, ordered them by per-process-seeded hash maps, so ids changed from run to run). WordPiece
    encoding depends only on the set, so a canonical order costs nothing."""
    specials = [t for t in SPECIAL_TOKENS if t in vocab]
    rest = [t for t in vocab if t not in SPECIAL_TOKENS]

    def key(token: str):
        core = token[len(CONTINUATION):] if token.startswith(CONTINUATION) and len(token) > len(CONTINUATION) else token
        return (len(core) > 1, token.startswith(CONTINUATION), token)

    return specials + sorted(rest, key=key)
