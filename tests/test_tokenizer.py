"""Tokenizer: id parity with transformers' BertTokenizer, training round trip, fingerprint, CLI."""
import collections
import gzip
import os
import random

import numpy as np
import pytest

from bert_jax.data import tokenizer_cli
from bert_jax.data.tokenizer import (
    TokenizerError,
    infer_lowercase,
    load_tokenizer,
    save_vocab,
    train_wordpiece,
    vocab_fingerprint,
)
from bert_jax.data.wordpiece_trainer import count_words, learn_vocab

transformers = pytest.importorskip("transformers")

REAL_VOCAB = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vocab", "bert-base-uncased-vocab.txt")

HAND_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]",
    ".", ",", "!", "?", "'", '"', "-", "(", ")", ":", ";", "#", "$", "%", "&", "*", "/", "@", "~", "^",
    "the", "The", "a", "hello", "Hello", "world", "World", "un", "##aff", "##able", "runn", "##ing", "play",
    "##ed", "##s", "cafe", "café", "Café", "naive", "resume", "x", "##x", "e", "##e", "1", "2", "##3", "##0",
    "中", "国", "人", "日", "本", "ab", "##c", "##d", "über", "uber", "straße", "strasse", "##ß",
]
TEXTS = [
    "", " ", "\t\n  ", "Hello, world!", "hello world", "The unaffable runner played.", "unaffableness",
    "Café crème, naïve résumé — über straße.", "CAFÉ", "中国人 日本 中a国", "abc abd abx abcd",
    "x" * 99, "x" * 100, "x" * 101, "e" * 150, "a\u0000b\u0007c \u200b d\ufeff", "tab\tsep\r\nnew\u00a0line\u2003em",
    "(hello) [world] {x}", "don't stop-believing!!!", "#hash $5 3% a&b @x ~y ^z", "12 123 1230 0.5",
    "\U0001f600 smile \u2764", "ǅemal ﬁne Å Ω", "hello##ing ##ing", "a" + "\u0301" * 5,
]


def _random_texts(n: int, seed: int) -> list[str]:
    pool = list("abcdeinrstuxAEHTW ,.!?'\"-()#中国人日本éèüßÅ\t\n\u00a0\u2003\u200b\u0000\u0007\u0301") + [
        "hello", "World", "the", "un", "able", "café", "play", "ed", "running", " ", " ", "\U0001f600"]
    rnd = random.Random(seed)
    return ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def hand_vocab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hand_vocab")
    (d / "vocab.txt").write_text("".join(t + "\n" for t in HAND_VOCAB), encoding="utf-8")
    return str(d)


def _reference_ids(vocab_dir: str, lowercase: bool, texts):
    ref = transformers.BertTokenizer.from_pretrained(vocab_dir, do_lower_case=lowercase)
    enc = ref(list(texts), add_special_tokens=False)
    word_start = [
        [i == 0 or w != words[i - 1] for i, w in enumerate(words)] for words in (enc.word_ids(b) for b in range(len(texts)))
    ]
    return enc["input_ids"], word_start


@pytest.mark.parametrize("lowercase", [True, False])
def test_hand_vocab_matches_transformers(hand_vocab_dir, lowercase):
    tok = load_tokenizer(hand_vocab_dir, lowercase=lowercase)
    texts = TEXTS + _random_texts(300, seed=int(lowercase))
    ids, word_start = tok.encode_batch(texts)
    ref_ids, ref_start = _reference_ids(hand_vocab_dir, lowercase, texts)
    for text, ours, theirs in zip(texts, ids, ref_ids):
        assert ours.tolist() == theirs, repr(text)
    for text, ours, theirs in zip(texts, word_start, ref_start):
        assert ours.tolist() == theirs, repr(text)
    assert ids[0].dtype == np.int32 and ids[0].size == 0


def test_hand_vocab_pieces(hand_vocab_dir):
    tok = load_tokenizer(hand_vocab_dir, lowercase=True)
    (ids,), (ws,) = tok.encode_batch(["Unaffable x" + "x" * 100])
    assert [tok.vocab[i] for i in ids] == ["un", "##aff", "##able", "[UNK]"]  # 101 chars: one [UNK]
    assert ws.tolist() == [True, False, False, True]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(HAND_VOCAB) and tok.path.endswith("vocab.txt")


@pytest.mark.skipif(not os.path.isfile(REAL_VOCAB), reason="shared bert-base-uncased vocab not available")
def test_bert_base_uncased_matches_transformers(tmp_path):
    os.symlink(os.path.abspath(REAL_VOCAB), tmp_path / "vocab.txt")
    tok = load_tokenizer(str(tmp_path))
    assert tok.lowercase and (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    texts = TEXTS + _random_texts(500, seed=7) + [
        "The quick brown fox jumps over the lazy dog; 42 tokenizers!", "Ελληνικά и русский текст", "antidisestablishmentarianism"]
    ids, word_start = tok.encode_batch(texts)
    ref_ids, ref_start = _reference_ids(str(tmp_path), True, texts)
    assert [i.tolist() for i in ids] == ref_ids
    assert [w.tolist() for w in word_start] == ref_start


def test_encode_flat_offsets(hand_vocab_dir):
    tok = load_tokenizer(hand_vocab_dir, lowercase=True)
    ids, ws, offsets = tok.encode_flat(["hello world", "", "the cafe"])
    assert offsets.tolist() == [0, 2, 2, 4]
    assert [tok.vocab[i] for i in ids] == ["hello", "world", "the", "cafe"]
    assert ws.all()


def test_infer_lowercase_and_missing_specials(tmp_path):
    assert infer_lowercase(["[PAD]", "[UNK]", "hello", "ℝ"]) is True
    assert infer_lowercase(["[PAD]", "Hello"]) is False
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"lacks special tokens \['\[CLS\]'"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope" / "vocab.txt"))


def test_fingerprint_stable_and_sensitive():
    base = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##b"]
    fp = vocab_fingerprint(base, True)
    assert fp == "922fbac359325b20"  # pinned: a change here silently invalidates every dataset and checkpoint
    assert fp == vocab_fingerprint(list(base), True)
    assert fp != vocab_fingerprint(base, False)
    assert fp != vocab_fingerprint(base[:5] + ["##b", "a"], True)
    assert fp != vocab_fingerprint(base[:-1] + ["##c"], True)
    assert fp != vocab_fingerprint(base + ["c"], True)


def _training_texts():
    rnd = random.Random(0)
    words = ["playing", "played", "player", "runner", "running", "Café", "naïve", "中国", "unhappy", "happiness"]
    return [" ".join(rnd.choice(words) for _ in range(12)) + "." for _ in range(400)]


@pytest.mark.parametrize("lowercase", [True, False])
def test_train_save_load_round_trip(tmp_path, lowercase):
    vocab = train_wordpiece(iter(_training_texts()), vocab_size=120, lowercase=lowercase, min_frequency=1)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) <= 120 and any(t.startswith("##") for t in vocab)
    assert infer_lowercase(vocab) is lowercase
    save_vocab(str(tmp_path), vocab, lowercase)
    tok = load_tokenizer(str(tmp_path))
    assert tok.lowercase is lowercase and list(tok.vocab) == vocab
    assert tok.fingerprint == vocab_fingerprint(vocab, lowercase)
    assert load_tokenizer(str(tmp_path / "vocab.txt")).fingerprint == tok.fingerprint  # config next to the file
    texts = _training_texts()[:50] + TEXTS
    ref_ids, _ = _reference_ids(str(tmp_path), lowercase, texts)  # transformers reads the same directory
    assert [i.tolist() for i in tok.encode_batch(texts)[0]] == ref_ids
    assert "[UNK]" not in tok.decode(tok.encode_batch(["running player"])[0][0])


def test_train_tokenizer_cli(tmp_path, capsys):
    src = tmp_path / "corpus.txt.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write("\n\n".join(_training_texts()))
    out = tmp_path / "vocab"
    assert tokenizer_cli.main(["--input", str(src), "--vocab_size", "100", "--output", str(out), "--cased"]) == 0
    tok = load_tokenizer(str(out))
    assert not tok.lowercase and 50 < tok.vocab_size <= 100
    assert "fingerprint" in capsys.readouterr().out
    assert tokenizer_cli.main(["--input", str(tmp_path / "missing*.txt"), "--vocab_size", "100", "--output", str(out)]) == 2
    assert "matches no files" in capsys.readouterr().err


def test_training_is_deterministic_across_processes(tmp_path):
    """The Rust trainer iterates seeded-per-process hash maps; the saved vocab (ids included) must not vary."""
    import subprocess
    import sys

    from bert_jax.data.builtin_corpus import generate_documents

    # Natural-looking text (the built-in corpus): ties between equally frequent merges at the vocab's cut are
    # rare, as in real corpora. (On a toy corpus of a few repeated words they are not, and the Rust trainer
    # then picks among the tied pieces differently per process.)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(doc) for doc in generate_documents(150, seed=0)))
    vocabs = []
    for i in range(3):
        out = tmp_path / f"v{i}"
        subprocess.run([sys.executable, "-m", "bert_jax.cli", "train-tokenizer", "--input", str(corpus),
                        "--vocab_size", "600", "--output", str(out)], check=True, capture_output=True)
        vocabs.append((out / "vocab.txt").read_text())
    assert vocabs[0] == vocabs[1] == vocabs[2]
    assert vocabs[0].split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# --- the deterministic WordPiece trainer (bert_jax/data/wordpiece_trainer.py) ---

GUTENBERG = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "corpus", "gutenberg")


def _tie_heavy_texts() -> list[str]:
    """150 random six-letter words over ten letters, each seen twice: most pairs tie with many others."""
    rnd = random.Random(0)
    words = ["".join(rnd.choice("abcdefghij") for _ in range(6)) for _ in range(150)]
    return [" ".join(words)] * 2


def _rust_trainer_vocab(texts, vocab_size: int, lowercase: bool = True) -> list[str]:
    """The vocab HF's Rust WordPieceTrainer gives (the trainer we replaced), as the quality reference."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import WordPiece

    from bert_jax.data.tokenizer import SPECIAL_TOKENS, _normalizer, canonical_order

    backend = Tokenizer(WordPiece(unk_token="[UNK]"))
    backend.normalizer = _normalizer(lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                        continuing_subword_prefix="##", show_progress=False)
    backend.train_from_iterator(texts, trainer)
    ids = backend.get_vocab()
    return canonical_order(sorted(ids, key=ids.get))


def _encoding_stats(vocab, texts, tmp_path) -> tuple[float, float]:
    """(tokens per word, [UNK] rate) of `texts` under `vocab`."""
    tok = load_tokenizer(save_vocab(str(tmp_path), vocab, lowercase=True))
    ids, word_start, _ = tok.encode_flat(texts)
    return len(ids) / word_start.sum(), float((ids == tok.unk_id).mean())


def test_tie_heavy_training_is_deterministic_across_processes(tmp_path):
    """Where the Rust trainer's token set changes from process to process, ours must not (hash seeds vary too)."""
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_tie_heavy_texts()), encoding="utf-8")
    code = ("import sys; from bert_jax.data.tokenizer import train_wordpiece; "
            "sys.stdout.write('\\n'.join(train_wordpiece(open(sys.argv[1], encoding='utf-8'), 120)))")
    outputs = [
        subprocess.run([sys.executable, "-c", code, str(corpus)], check=True, capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
        for seed in (1, 2, 3)
    ]
    assert outputs[0] == outputs[1] == outputs[2]
    vocab = outputs[0].split("\n")
    assert len(vocab) == 120 and vocab == train_wordpiece(iter(_tie_heavy_texts()), 120)
    assert sum(len(t.lstrip("#")) > 1 for t in vocab[5:]) == 120 - 5 - 10 - 10  # the rest are merges


def test_learn_vocab_breaks_ties_by_token_age_whatever_the_input_order():
    counts = {"cd": 2, "ab": 2, "ax": 1}
    specials = ["[PAD]", "[UNK]"]
    vocab = learn_vocab(counts, vocab_size=11, special_tokens=specials, unk_token="[UNK]", min_frequency=1)
    # specials, alphabet by code point, ## alphabet by code point, then the one merge: (a, ##b) and (c, ##d)
    # tie at 2 and the pair of older tokens wins.
    assert vocab == specials + ["a", "b", "c", "d", "x", "##b", "##d", "##x", "ab"]
    assert learn_vocab(dict(reversed(list(counts.items()))), 11, specials, "[UNK]", min_frequency=1) == vocab
    merges = learn_vocab(counts, 100, specials, "[UNK]", min_frequency=1)[10:]
    assert merges == ["ab", "cd", "ax"]  # then by count; HF-style pieces: "a" + "##b" -> "ab"


def test_count_words_matches_per_text_pre_tokenization():
    from tokenizers import pre_tokenizers

    from bert_jax.data.tokenizer import _normalizer

    texts = TEXTS + _random_texts(400, seed=3) + ["a\u0301\u0302", "\u0300 x", "ΟΔΟΣ ΟΔΟΣ.", "x\u3000y\u2028z"]
    for lowercase in (True, False):
        normalizer, pre_tokenizer = _normalizer(lowercase), pre_tokenizers.BertPreTokenizer()
        expected = collections.Counter(
            w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        assert count_words(iter(texts), normalizer, pre_tokenizer) == expected


def test_trained_vocab_encodes_like_the_rust_trainers(tmp_path):
    """Same algorithm: on held-out text of the training distribution, the same tokens per word and [UNK] rate,
    and a token set that differs from the Rust trainer's only where equally frequent merges tie at the cut."""
    from bert_jax.data.builtin_corpus import generate_documents

    train = [s for doc in generate_documents(150, seed=0) for s in doc]
    held_out = [s for doc in generate_documents(60, seed=1) for s in doc]
    ours = train_wordpiece(iter(train), 600)
    theirs = _rust_trainer_vocab(iter(train), 600)
    assert len(ours) == len(theirs) == 600
    assert len(set(ours) ^ set(theirs)) <= 0.1 * 600
    ours_tpw, ours_unk = _encoding_stats(ours, held_out, tmp_path / "ours")
    theirs_tpw, theirs_unk = _encoding_stats(theirs, held_out, tmp_path / "theirs")
    assert abs(ours_tpw / theirs_tpw - 1) < 0.05 and ours_unk <= theirs_unk
    assert 1.0 < ours_tpw < 2.0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(GUTENBERG), reason="shared Gutenberg corpus not available")
def test_gutenberg_vocab_equals_the_rust_trainers():
    """On a real corpus the two trainers agree on the 8192 tokens, to one pair: the Rust trainer breaks ties between
    equally frequent merges in an order that varies between processes (once in a full suite run it swapped one
    token, '##zing' for '##ez'), so the reference itself moves by a token now and then."""
    from bert_jax.data.corpus import ReaderOptions, iter_documents

    docs = iter_documents([os.path.join(GUTENBERG, "*.txt")], ReaderOptions(), collections.Counter())
    sentences = [s for doc in docs for s in doc]
    ours, reference = set(train_wordpiece(iter(sentences), 8192)), set(_rust_trainer_vocab(iter(sentences), 8192))
    assert len(ours) == len(reference) == 8192 and len(ours - reference) <= 1, (ours - reference, reference - ours)


def test_limit_alphabet_keeps_the_most_frequent_characters(tmp_path):
    # Frequencies a > b > c > q: with limit 3, q is out; "aqb" must not teach (a, ##b) across the dropped q.
    texts = ["aaaa bbb cc"] * 5 + ["aqb"] * 4
    vocab = train_wordpiece(iter(texts), 100, limit_alphabet=3, min_frequency=1)
    singles = {t for t in vocab[5:] if len(t) == 1}
    assert singles == {"a", "b", "c"}
    assert not any("q" in t for t in vocab) and "ab" not in vocab
    tok = load_tokenizer(save_vocab(str(tmp_path), vocab, lowercase=True))
    assert [tok.vocab[i] for i in tok.encode_batch(["aqb aaa"])[0][0]] == ["[UNK]", "aaa"]
    full = train_wordpiece(iter(texts), 100, min_frequency=1)
    assert {"q", "##q", "aq"} <= set(full)  # without the limit the same corpus keeps q


def test_min_frequency_stops_merging_rarer_pairs():
    texts = ["abc abc abc xyz"]
    assert {"ab", "abc"} <= set(train_wordpiece(iter(texts), 100, min_frequency=3))
    vocab = train_wordpiece(iter(texts), 100, min_frequency=2)
    assert "xy" not in vocab and "xyz" not in vocab and "abc" in vocab
    assert not any(len(t.lstrip("#")) > 1 for t in train_wordpiece(iter(texts), 100, min_frequency=4)[5:])


def test_training_errors():
    with pytest.raises(TokenizerError, match="the training text is empty"):
        train_wordpiece(iter(["", "  \n", "\u200b"]), 100)
    with pytest.raises(TokenizerError, match="too small"):
        train_wordpiece(iter(["hello"]), 3)
