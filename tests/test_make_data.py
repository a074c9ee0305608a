"""make-data: layout, per-mode content, determinism, worker independence, kill + resume, bad input.

The fixture corpus tags every token with its place: each sentence repeats the word `t{doc}x{sentence}`,
so any token id tells which document and sentence it came from.
"""
import collections
import filecmp
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bert_jax.data import make_data, shards
from bert_jax.data.builtin_corpus import write_builtin_corpus
from bert_jax.data.corpus import CorpusError
from bert_jax.data.instances import InstanceError
from bert_jax.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, save_vocab

import _pretrain_helpers as h

PAD, UNK, CLS, SEP, MASK = range(5)


def write_tagged_corpus(root, num_docs, seed=0, max_sentences=25, num_files=3):
    rnd = random.Random(seed)
    vocab = list(SPECIAL_TOKENS)
    files = [open(root / f"part-{i}.txt", "w", encoding="utf-8") for i in range(num_files)]
    for d in range(num_docs):
        n = 1 if d % 10 == 0 else rnd.randint(2, max_sentences)  # every tenth document has one sentence
        for j in range(n):
            vocab.append(f"t{d}x{j}")
            files[d % num_files].write(" ".join([f"t{d}x{j}"] * rnd.randint(1, 30)) + "\n")
        files[d % num_files].write("\n")
    for f in files:
        f.close()
    vocab_dir = str(root / "vocab")
    save_vocab(vocab_dir, vocab, lowercase=True)
    return str(root / "part-*.txt"), vocab_dir


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagged")
    corpus, vocab = write_tagged_corpus(root, num_docs=150)
    tok = load_tokenizer(vocab)
    doc_of = np.full(tok.vocab_size, -1)
    sent_of = np.full(tok.vocab_size, -1)
    for i, t in enumerate(tok.vocab[5:], start=5):
        d, j = t[1:].split("x")
        doc_of[i], sent_of[i] = int(d), int(j)
    return corpus, vocab, doc_of, sent_of


def _build(tagged, out, **kw):
    corpus, vocab = tagged[:2]
    kw.setdefault("unit_chars", 30_000)
    make_data.build_dataset([corpus], str(out), vocab, log=lambda _: None, **kw)
    return shards.open_examples(str(out))


def _all(examples):
    return examples.take(np.arange(len(examples)))


def _check_layout(a, seq_len, pair):
    ids, types, length = a["input_ids"], a["token_type_ids"], a["length"]
    pos = np.arange(seq_len)[None, :]
    real = pos < length[:, None]
    assert (length <= seq_len).all() and (length >= 3).all()
    assert (ids[:, 0] == CLS).all()
    assert (ids[~real] == PAD).all() and (types[~real] == 0).all() and not a["word_start"][~real].any()
    assert (ids[np.arange(len(ids)), length - 1] == SEP).all()
    assert (ids[real] != PAD).all() and (ids[:, 1:] != CLS).all()
    if pair:
        assert ((ids == SEP).sum(1) == 2).all()
        first_sep = np.argmax(ids == SEP, axis=1)
        assert (types == ((pos > first_sep[:, None]) & real)).all()  # 0 up to the first [SEP], 1 after
    else:
        assert (types == 0).all() and (a["sentence_label"] == -1).all()


def _segments(row, length):
    """Non-special token ids of each [SEP]-terminated segment of one row."""
    body = row[1:length]
    cuts = np.nonzero(body == SEP)[0]
    return [seg for seg in np.split(body, cuts + 1)[:-1] for seg in [seg[seg != SEP]]]


@pytest.mark.parametrize("mode", ["segment-pair", "sentence-order"])
def test_pair_modes_content(tagged, tmp_path, mode):
    _, _, doc_of, sent_of = tagged
    a = _all(_build(tagged, tmp_path / mode, mode=mode, seq_len=64, dupe_factor=2))
    _check_layout(a, 64, pair=True)
    labels = a["sentence_label"]
    assert set(np.unique(labels)) == {0, 1}
    assert abs(labels.mean() - 0.5) < 0.06, labels.mean()  # about a thousand examples
    strict = 0
    for row, n, label in zip(a["input_ids"], a["length"], labels):
        seg_a, seg_b = _segments(row, n)
        assert len(seg_a) and len(seg_b)
        da, db = set(doc_of[seg_a]), set(doc_of[seg_b])
        assert len(da) == 1 and len(db) == 1
        sa, sb = sent_of[seg_a], sent_of[seg_b]
        assert (np.diff(sa) >= 0).all() and (np.diff(sb) >= 0).all()
        if mode == "segment-pair" and label == 1:
            assert da != db  # random B from another document
        elif label == 0:
            assert da == db and sa.max() <= sb.min()
            strict += sa.max() < sb.min()
        else:  # SOP swapped: B holds the earlier text
            assert da == db and sb.max() <= sa.min()
            strict += sb.max() < sa.min()
    assert strict > 0.5 * len(labels) * (0.5 if mode == "segment-pair" else 1.0)
    manifest = shards.read_manifest(str(tmp_path / mode))
    assert manifest["skipped"]["one_sentence_documents"] == 15  # every tenth document


@pytest.mark.parametrize("mode", ["full-sentences", "doc-sentences", "single"])
def test_single_segment_modes_cover_every_token_once(tagged, tmp_path, mode):
    corpus, _, doc_of, sent_of = tagged
    a = _all(_build(tagged, tmp_path / mode, mode=mode, seq_len=48))
    _check_layout(a, 48, pair=False)
    seen = collections.Counter()
    for row, n in zip(a["input_ids"], a["length"]):
        segments = _segments(row, n)
        if mode != "full-sentences":
            assert len(segments) == 1
        for seg in segments:
            assert len(set(doc_of[seg])) == 1 and (np.diff(sent_of[seg]) >= 0).all()
        seen.update(row[1:n][row[1:n] != SEP].tolist())
    tok = load_tokenizer(tagged[1])
    expected = collections.Counter()
    for f in sorted(glob.glob(corpus)):
        for ids in tok.encode_batch(open(f).read().split())[0]:
            expected.update(ids.tolist())
    assert seen == expected
    if mode == "full-sentences":  # packed across documents: rows are mostly full (sentences of up to 30 tokens)
        assert a["length"].mean() > 34


def test_word_start_marks_segment_starts(tagged, tmp_path):
    a = _all(_build(tagged, tmp_path / "ws", mode="single", seq_len=32))
    real = np.arange(32)[None, :] < a["length"][:, None]
    assert (a["word_start"] == real).all()  # every tagged token is a whole word


def test_same_seed_same_bytes_any_worker_count(tagged, tmp_path):
    one = _build(tagged, tmp_path / "w1", seed=3, workers=1, unit_chars=20_000)
    _build(tagged, tmp_path / "w2", seed=3, workers=2, unit_chars=20_000)
    other = _build(tagged, tmp_path / "s4", seed=4, workers=1, unit_chars=20_000)
    assert len(one.manifest["shards"]) >= 4
    _assert_same_tree(tmp_path / "w1", tmp_path / "w2")
    a, b = _all(one), _all(other)
    assert a["input_ids"].shape != b["input_ids"].shape or not np.array_equal(a["input_ids"], b["input_ids"])


def _assert_same_tree(x, y):
    names_x = sorted(os.path.relpath(os.path.join(r, f), x) for r, _, fs in os.walk(x) for f in fs)
    names_y = sorted(os.path.relpath(os.path.join(r, f), y) for r, _, fs in os.walk(y) for f in fs)
    assert names_x == names_y
    for name in names_x:
        assert filecmp.cmp(os.path.join(x, name), os.path.join(y, name), shallow=False), name


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_build_resumes_to_identical_output(tmp_path, workers):
    corpus, vocab = write_tagged_corpus(tmp_path, num_docs=600, seed=1)
    args = ["--input", corpus, "--vocab", vocab, "--seq_len", "64", "--unit_chars", "4000", "--seed", "5"]
    make_data.main(args + ["--output", str(tmp_path / "reference")])
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bert_jax.data.make_data", *args, "--output", str(killed),
                             "--workers", str(workers)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not shards.shard_is_complete(str(killed), 3) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert shards.shard_is_complete(str(killed), 3), "the build never reached shard 3"
    assert not os.path.exists(killed / shards.MANIFEST), "the build finished before it could be killed"
    with pytest.raises(shards.DataError, match="no manifest.json"):
        shards.open_examples(str(killed))
    time.sleep(0.2)  # workers of a killed build die with it and write nothing more
    done = sorted(os.listdir(killed))
    time.sleep(0.3)
    assert sorted(os.listdir(killed)) == done
    assert make_data.main(args + ["--output", str(killed)]) == 0
    _assert_same_tree(tmp_path / "reference", killed)



def test_shards_carry_checksums_and_a_rerun_rebuilds_only_a_damaged_one(tagged, tmp_path):
    """The manifest and each meta.json record a sha256 per file; a shard with flipped bytes is refused when opened,
    naming it; running the same make-data again rebuilds that shard alone, to the same bytes."""
    from bert_jax.checksums import file_digest

    corpus, vocab = tagged[:2]
    args = ["--input", corpus, "--vocab", vocab, "--seq_len", "64", "--unit_chars", "20000"]
    out = tmp_path / "out"
    assert make_data.main(args + ["--output", str(out)]) == 0
    manifest = shards.read_manifest(str(out))
    assert len(manifest["shards"]) >= 3
    for entry in manifest["shards"]:
        meta = json.loads((out / entry["name"] / "meta.json").read_text())
        assert entry["checksums"] == meta["checksums"]
        assert sorted(entry["checksums"]) == sorted(f"{name}.npy" for name in shards.FIELDS)
        assert all(file_digest(str(out / entry["name"] / f)) == d for f, d in entry["checksums"].items())
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)

    victim = out / shards.shard_name(1) / "word_start.npy"
    h.flip_middle_bytes(str(victim))
    with pytest.raises(shards.DataError, match=f"^{re.escape(str(victim))} does not match its checksum in .*make-data"):
        shards.open_examples(str(out))
    untouched = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "shard-*" / "*.npy")) if "-00001" not in p}
    assert make_data.main(args + ["--output", str(out)]) == 0
    _assert_same_tree(reference, out)
    assert {p: os.stat(p).st_mtime_ns for p in untouched} == untouched
    assert len(shards.open_examples(str(out))) == manifest["examples"]


def test_a_damaged_builtin_cache_is_rebuilt_by_the_next_run(tmp_path):
    """`bert-jax pretrain` caches the built-in corpus's dataset in its workdir; a damaged shard there is rebuilt,
    to the same bytes, by the next call instead of failing every run."""
    kwargs = dict(num_docs=120, seq_len=64, vocab_size=600, log=lambda _: None)
    built = make_data.prepare_builtin_dataset(str(tmp_path / "cache"), **kwargs)
    shutil.copytree(built, tmp_path / "reference")
    h.flip_middle_bytes(os.path.join(built, shards.shard_name(0), "input_ids.npy"))
    assert make_data.prepare_builtin_dataset(str(tmp_path / "cache"), **kwargs) == built
    _assert_same_tree(tmp_path / "reference", built)


def test_bad_inputs(tagged, tmp_path, capsys):
    corpus, vocab = tagged[:2]
    (tmp_path / "blank.txt").write_text("\n \n\t\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="holds no text"):
        make_data.build_dataset([str(tmp_path / "blank.txt")], str(tmp_path / "o1"), vocab, log=lambda _: None)
    with pytest.raises(CorpusError, match="matches no files"):
        make_data.build_dataset([str(tmp_path / "none*.txt")], str(tmp_path / "o2"), vocab)
    with pytest.raises(InstanceError, match="--seq_len 4 is too small"):
        make_data.build_dataset([corpus], str(tmp_path / "o3"), vocab, seq_len=4)
    _build(tagged, tmp_path / "o4", seq_len=32)
    with pytest.raises(shards.DataError, match="built with seq_len=32, not 64"):
        _build(tagged, tmp_path / "o4", seq_len=64)
    assert make_data.main(["--input", corpus, "--vocab", vocab, "--output", str(tmp_path / "o4"), "--seq_len", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("make-data: ") and "seq_len=32" in err and "\n" not in err
    again = _build(tagged, tmp_path / "o4", seq_len=32)  # same arguments: returns the finished dataset
    assert len(again) > 0


def test_a_corpus_without_examples_is_refused_and_leaves_nothing(tmp_path, capsys):
    """One sentence per document cannot make a sentence pair; a blank corpus has no text. Both: exit 2, one line
    naming the input and the fix, and no half-dataset left behind, so the rerun the message asks for works."""
    from bert_jax import cli

    save_vocab(str(tmp_path / "v"), list(SPECIAL_TOKENS) + ["the", "cat", "sat", "."], lowercase=True)
    (tmp_path / "one.txt").write_text("the cat sat .\n\n" * 20, encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n \n\t\n", encoding="utf-8")
    out = str(tmp_path / "out")
    for corpus, words in (("one.txt", ["20 of 20 documents have one sentence", "--mode full-sentences"]),
                          ("blank.txt", ["holds no text (only blank lines)", "--format"])):
        argv = ["make-data", "--input", str(tmp_path / corpus), "--vocab", str(tmp_path / "v"), "--output", out]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"make-data: --input {tmp_path / corpus}"), err
        assert all(w in err for w in words), err
        assert not os.path.exists(out)
    assert cli.main([*argv[:2], str(tmp_path / "one.txt"), *argv[3:], "--mode", "full-sentences"]) == 0
    assert shards.read_manifest(out)["examples"] >= 1


def test_messy_input_is_counted(tmp_path):
    vocab = list(SPECIAL_TOKENS) + ["good", "words", "\ufffd", "."]
    save_vocab(str(tmp_path / "v"), vocab, lowercase=True)
    (tmp_path / "m.txt").write_bytes(
        b"good words.\ngood \xff words.\n" + b"good " * 400 + b"\n\n\x00\x01\n\nlonely words.\n\ngood.\nwords.\n")
    make_data.build_dataset([str(tmp_path / "m.txt")], str(tmp_path / "out"), str(tmp_path / "v"), seq_len=16,
                            reader=make_data.ReaderOptions(max_line_bytes=1000), log=lambda _: None)
    m = shards.read_manifest(str(tmp_path / "out"))
    assert m["invalid_utf8_replacements"] == 1
    assert m["skipped"] == {"long_lines_skipped": 1, "empty_documents": 1, "one_sentence_documents": 1}
    assert m["documents"] == 3 and m["examples"] >= 2
    assert m["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert m["max_token_id"] < m["vocab_size"] and len(m["vocab_fingerprint"]) == 16
    for key in ("format_version", "mode", "seq_len", "seed", "examples", "shards", "sources", "builder_args"):
        assert key in m


def test_builtin_input(tmp_path):
    a = write_builtin_corpus(str(tmp_path / "c1"), num_docs=120, seed=1)
    b = write_builtin_corpus(str(tmp_path / "c2"), num_docs=120, seed=1)
    c = write_builtin_corpus(str(tmp_path / "c3"), num_docs=120, seed=2)
    assert [open(f).read() for f in a] == [open(f).read() for f in b] != [open(f).read() for f in c]
    out = tmp_path / "builtin"
    args = ["--input", "builtin", "--output", str(out), "--num_docs", "300", "--seq_len", "64", "--vocab_size", "600"]
    assert make_data.main(args) == 0
    first = json.loads((out / shards.MANIFEST).read_text())
    assert first["examples"] > 300 and first["vocab_size"] <= 600 and first["skipped"] == {}
    assert abs(first["sentence_label_counts"]["1"] / first["examples"] - 0.5) < 0.1
    assert make_data.main(args) == 0
    assert json.loads((out / shards.MANIFEST).read_text()) == first
