"""Deterministic WordPiece vocabulary training: the same corpus and settings give the same vocab in any process.

The algorithm is the one HF `tokenizers`' WordPieceTrainer runs (its BPE trainer with a `##` continuation
prefix): count the words, start from their characters (a word's first character as is, the others as
`##c`), then repeatedly add the token made by the most frequent adjacent pair, counted over word
occurrences, until the vocab is full or the best pair is rarer than `min_frequency`. The Rust trainer breaks
ties between equally frequent pairs by token ids that it hands out while iterating hash maps seeded per
process, so the same corpus gave a different token set from run to run. Here every choice is a function of
the data alone: ids follow a fixed order (specials, alphabet by code point, `##` alphabet by code point,
merges in the order made) and ties go to the pair of lower ids, i.e. older tokens first, as in HF.

Two deliberate differences from HF, both following what the WordPiece encoder does with such words: a
character outside the kept alphabet becomes a barrier that no merge crosses (HF drops it and merges its
neighbours), and words longer than the encoder's per-word limit are ignored (the encoder maps them to a
single [UNK] whatever the vocab).
"""
from __future__ import annotations

import collections
import heapq
from typing import Iterable, Mapping, Protocol, Sequence

_BATCH_CHARS = 1 << 20  # texts are joined into ~1 MB batches: one call into Rust per batch, not per sentence


class _Normalizer(Protocol):
    def normalize_str(self, text: str) -> str: ...


class _PreTokenizer(Protocol):
    def pre_tokenize_str(self, text: str) -> list[tuple[str, tuple[int, int]]]: ...


def count_words(texts: Iterable[str], normalizer: _Normalizer, pre_tokenizer: _PreTokenizer) -> collections.Counter:
    """Occurrences of every pre-tokenised word in `texts`, streamed: only the counts are kept.

    Equal to counting `pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))` text by text, but
    faster: texts are normalised in ~1 MB batches joined by newlines (BERT's normaliser turns a newline into
    a space), the result is split on spaces and counted in Python, and only each distinct chunk goes through
    the pre-tokenizer (which splits off punctuation and any other whitespace). Letter/digit-only chunks, most
    of them, are words as they stand."""
    chunk_counts: collections.Counter = collections.Counter()
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text) + 1
        if size >= _BATCH_CHARS:
            chunk_counts.update(normalizer.normalize_str("\n".join(batch)).split(" "))
            batch.clear()
            size = 0
    if batch:
        chunk_counts.update(normalizer.normalize_str("\n".join(batch)).split(" "))
    word_counts: collections.Counter = collections.Counter()
    for chunk, n in chunk_counts.items():
        if chunk.isalnum():
            word_counts[chunk] += n
        elif chunk:
            for word, _ in pre_tokenizer.pre_tokenize_str(chunk):
                word_counts[word] += n
    return word_counts


def choose_alphabet(word_counts: Mapping[str, int], limit_alphabet: int) -> list[str]:
    """The `limit_alphabet` most frequent characters (ties to the lower code point), sorted by code point."""
    char_counts: collections.Counter = collections.Counter()
    for word, n in word_counts.items():
        for ch in word:
            char_counts[ch] += n
    kept = sorted(char_counts, key=lambda ch: (-char_counts[ch], ch))[:max(limit_alphabet, 0)]
    return sorted(kept)


def _merge_word(symbols: list[int], left: int, right: int, merged: int) -> list[int]:
    """`symbols` with every (left, right) occurrence replaced by `merged`, scanning left to right."""
    out: list[int] = []
    i, n = 0, len(symbols)
    while i < n:
        if symbols[i] == left and i + 1 < n and symbols[i + 1] == right:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_vocab(
    word_counts: Mapping[str, int],
    vocab_size: int,
    special_tokens: Sequence[str],
    unk_token: str,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    prefix: str = "##",
    max_word_chars: int = 100,
) -> list[str]:
    """Tokens in the order they were made: specials, alphabet, `##` alphabet, then merges.

    Like HF's trainer the alphabet is never cut to fit `vocab_size` (a missing character would make every
    word holding it [UNK]), so a vocab_size smaller than specials + alphabet yields just those."""
    if unk_token not in special_tokens:
        raise ValueError(f"unk_token {unk_token!r} is not among special_tokens {list(special_tokens)}; add it there")
    words_by_text = sorted(w for w, n in word_counts.items() if n > 0 and 0 < len(w) <= max_word_chars)
    alphabet = choose_alphabet({w: word_counts[w] for w in words_by_text}, limit_alphabet)
    tokens: list[str] = []
    ids: dict[str, int] = {}

    def add(token: str) -> int:
        if token not in ids:
            ids[token] = len(tokens)
            tokens.append(token)
        return ids[token]

    for token in special_tokens:
        add(token)
    unk = ids[unk_token]
    in_alphabet = set(alphabet)
    for ch in alphabet:
        add(ch)
    for ch in sorted({ch for w in words_by_text for ch in w[1:]} & in_alphabet):  # only those seen inside words
        add(prefix + ch)

    # Words are symbol-id lists; single-character words hold no pair and drop out here.
    words: list[list[int]] = []
    counts: list[int] = []
    for w in words_by_text:
        if len(w) > 1:
            words.append([ids[w[0]] if w[0] in in_alphabet else unk]
                         + [ids[prefix + ch] if ch in in_alphabet else unk for ch in w[1:]])
            counts.append(int(word_counts[w]))

    pair_counts: dict[tuple[int, int], int] = collections.defaultdict(int)
    pair_words: dict[tuple[int, int], set[int]] = collections.defaultdict(set)  # may hold stale words
    for w, (symbols, n) in enumerate(zip(words, counts)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += n
            pair_words[pair].add(w)
    # Max-heap on count, then lower ids first; entries go stale when counts fall and are refreshed on pop.
    heap = [(-n, a, b) for (a, b), n in pair_counts.items() if n > 0 and unk not in (a, b)]
    heapq.heapify(heap)

    while len(tokens) < vocab_size and heap:
        neg_count, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg_count:
            if 0 < count < -neg_count:
                heapq.heappush(heap, (-count, a, b))
            continue
        if count < min_frequency:
            break
        right = tokens[b][len(prefix):] if tokens[b].startswith(prefix) and len(tokens[b]) > len(prefix) else tokens[b]
        t = add(tokens[a] + right)  # the same string can come from two pairs (ab+##c, a+##bc): it is one token
        touched: set[tuple[int, int]] = set()
        for w in pair_words.pop((a, b), ()):
            old = words[w]
            new = _merge_word(old, a, b, t)
            if len(new) == len(old):
                continue
            n = counts[w]
            for pair in zip(old, old[1:]):
                pair_counts[pair] -= n
            for pair in zip(new, new[1:]):
                pair_counts[pair] += n
                if t in pair:
                    pair_words[pair].add(w)
                    touched.add(pair)
            words[w] = new
        del pair_counts[(a, b)]
        for pair in touched:
            if pair_counts[pair] > 0 and unk not in pair:
                heapq.heappush(heap, (-pair_counts[pair], *pair))
    return tokens
