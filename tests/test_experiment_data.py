"""Mini data prep (`bert_jax/experiments/data.py`): the corpus split by file, the vocab from the training files,
idempotent steps that rebuild what a changed input changes, and the SQuAD column's files."""
import glob
import gzip
import json
import os
import random
import shutil
import sys

import pytest

from bert_jax.experiments import data as data_lib, grids

from _experiment_fixtures import HELDOUT, LICENCE, TITLE, TRAINED, vocab_words, write_shared_data


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return write_shared_data(str(tmp_path_factory.mktemp("shared")))


def test_split_rule_holds_out_every_nth_file_of_each_source():
    books = [f"/c/gb/b{i:03d}.txt.gz" for i in range(292)]
    wiki = [f"/c/wiki/text_{i:02d}.txt.gz" for i in range(100)]
    shuffled_books, shuffled_wiki = books[::-1], random.Random(0).sample(wiki, len(wiki))
    train, heldout = data_lib.split_corpus(shuffled_books, shuffled_wiki)  # the mini rule: every 29th / 25th
    assert heldout == [books[i] for i in range(0, 292, 29)] + [wiki[i] for i in (0, 25, 50, 75)]
    assert len(heldout) == 11 + 4 and len(train) == 292 + 100 - 15  # books 0, 29, ..., 290
    assert not set(train) & set(heldout) and set(train) | set(heldout) == set(books) | set(wiki)
    assert (train, heldout) == data_lib.split_corpus(books, wiki)  # deterministic: from the sorted lists
    assert data_lib.split_files(books[:7], 3) == ([books[i] for i in (1, 2, 4, 5)], [books[i] for i in (0, 3, 6)])
    spec = grids.SMOKE.data
    assert (spec.heldout_every_book, spec.heldout_every_wiki) == (3, 2)
    assert (grids.MINI.data.heldout_every_book, grids.MINI.data.heldout_every_wiki) == (29, 25)
    with pytest.raises(data_lib.ExperimentDataError, match="positive"):
        data_lib.split_files(books, 0)


def test_recipe_probes_split_uses_the_same_rule(shared, tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    from recipe_probes import split_corpus as probe_split

    train_glob, heldout_glob = probe_split(shared, str(tmp_path))
    assert (train_glob, heldout_glob) == tuple(str(tmp_path / split / "*" / "*.gz") for split in ("train", "heldout"))
    sources = data_lib.find_sources(shared)
    train, heldout = data_lib.split_corpus(sources.books, sources.wiki, 29, 25)
    for pattern, files in ((train_glob, train), (heldout_glob, heldout)):
        links = sorted(glob.glob(pattern))
        assert sorted(os.path.realpath(p) for p in links) == sorted(os.path.realpath(p) for p in files)
    assert {os.path.basename(os.path.dirname(p)) for p in glob.glob(heldout_glob)} == {"gb", "wiki"}
    assert probe_split(shared, str(tmp_path)) == (train_glob, heldout_glob)  # a rerun keeps the folders valid


def test_data_prep_splits_by_file_and_is_idempotent(shared, tmp_path):
    logs = []
    spec = grids.SMOKE.data
    prepared = data_lib.prepare(shared, str(tmp_path / "data"), spec, logs.append)
    names = lambda files: [os.path.basename(f) for f in files]  # noqa: E731
    assert names(prepared.heldout_files) == [f"author-{b}--book-{b}.txt.gz" for b in (0, 3)] + \
        [f"text_AA_wiki_{w:02d}.txt.gz" for w in (0, 2)]
    assert names(prepared.train_files) == [f"author-{b}--book-{b}.txt.gz" for b in (1, 2, 4, 5)] + \
        ["text_AA_wiki_01.txt.gz"]
    assert not set(prepared.heldout_files) & set(prepared.train_files)
    # The vocab is trained on the training files' text only: no licence header/footer, no title lines, nothing
    # held out (each of these words is frequent enough to enter it were it read).
    words = vocab_words(prepared.vocab_dir)
    assert TRAINED in words and not {LICENCE, TITLE, HELDOUT} & words
    train_dir, eval_dir = prepared.pretraining("segment-pair", 64, logs.append)
    manifests = [json.load(open(os.path.join(d, "manifest.json"))) for d in (train_dir, eval_dir)]
    # one document per book, one per <doc>: 4 books + 13 articles train, 2 books + 27 articles held out
    assert [m["documents"] for m in manifests] == [4 + 13, 2 + 27]
    assert all(m["examples"] > 0 for m in manifests)
    squad = prepared.task("squad/v1.1")
    assert squad == data_lib.TaskData(os.path.join(shared, "squad"), (
        "--train_file", os.path.join(shared, "squad", "train-v1.1-reconstructed.json"),
        "--dev_file", os.path.join(shared, "squad", "dev-v1.1.json")))
    assert isinstance(prepared.task("glue/sst2"), data_lib.TaskData)
    assert os.path.isfile(prepared.qnli_train)  # built from SQuAD train, but GLUE's QNLI dev is absent here
    assert prepared.task("glue/qnli") == data_lib.Unavailable("n/a (no dev set)")
    assert prepared.task("glue/mnli") == data_lib.Unavailable("n/a (no train set)")
    assert prepared.task("conll2003").reason.startswith("n/a")
    products = [prepared.vocab_dir, prepared.qnli_train, *glob.glob(os.path.join(train_dir, "shard-*", "*"))]
    mtimes = {p: os.path.getmtime(p) for p in products}
    logs.clear()
    again = data_lib.prepare(shared, str(tmp_path / "data"), spec, logs.append)
    assert logs == [] and again == prepared  # second call: nothing rebuilt
    assert again.pretraining("segment-pair", 64, logs.append) == (train_dir, eval_dir)
    assert all("already complete" in line for line in logs) and len(logs) == 2
    assert mtimes == {p: os.path.getmtime(p) for p in mtimes}
    assert data_lib.planned(shared, str(tmp_path / "data"), spec) == prepared  # --dry_run names the same paths
    with pytest.raises(data_lib.ExperimentDataError, match="--shared_data"):
        data_lib.find_sources(str(tmp_path / "missing"))


def test_data_prep_rebuilds_what_a_changed_input_changes(shared, tmp_path):
    copy = str(tmp_path / "shared")
    shutil.copytree(shared, copy)
    spec, root, logs = grids.SMOKE.data, str(tmp_path / "data"), []
    first = data_lib.prepare(copy, root, spec, logs.append)
    dirs = first.pretraining("segment-pair", 64, logs.append)
    # A held-out file changes: the held-out set is rebuilt, the vocab (trained without it) and training set are not.
    with gzip.open(os.path.join(copy, "corpus", "enwiki-2015-sample", "text_AA_wiki_02.txt.gz"), "at") as f:
        f.write('<doc id="99" url="u" title="t">\nt\n\nA new article about the town. It has a mill.\n</doc>\n')
    logs.clear()
    second = data_lib.prepare(copy, root, spec, logs.append)
    assert logs == []
    dirs2 = second.pretraining("segment-pair", 64, logs.append)
    assert dirs2[0] == dirs[0] and dirs2[1] != dirs[1]
    assert json.load(open(os.path.join(dirs2[1], "manifest.json")))["documents"] == 2 + 27 + 1
    # A training book changes: the vocab is retrained and the training set rebuilt.
    book = os.path.join(copy, "corpus", "gutenberg-292", "author-1--book-1.txt.gz")
    with gzip.open(book, "rt") as f:
        text = f.read()
    with gzip.open(book, "wt") as f:
        f.write(text.replace("*** END OF", "zznewword " * 30 + ".\n\n*** END OF"))
    logs.clear()
    third = data_lib.prepare(copy, root, spec, logs.append)
    assert any("WordPiece vocab" in line for line in logs) and "zznewword" in vocab_words(third.vocab_dir)
    dirs3 = third.pretraining("segment-pair", 64, logs.append)
    assert dirs3[0] not in (dirs[0], dirs2[0])
    # Without the SQuAD train file the column falls back to the dev file's halves, and says so.
    os.remove(os.path.join(copy, "squad", "train-v1.1-reconstructed.json"))
    logs.clear()
    fallback = data_lib.prepare(copy, root, spec, logs.append)
    assert any("note: no squad/train-v1.1-reconstructed.json" in line for line in logs)
    squad_dir = fallback.task("squad/v1.1").data_dir
    halves = {s: json.load(open(os.path.join(squad_dir, f"{s}-v1.1.json"))) for s in ("train", "dev")}
    assert [a["title"] for a in halves["train"]["data"]] == ["dev article 0", "dev article 2"]
    assert [a["title"] for a in halves["dev"]["data"]] == ["dev article 1", "dev article 3"]
    assert fallback.task("glue/qnli") == data_lib.Unavailable("n/a (no train set)") and fallback.qnli_train == ""
    # The corpus missing: one line naming what is missing and the flag.
    shutil.rmtree(os.path.join(copy, "corpus", "enwiki-2015-sample"))
    missing = r"lacks corpus/enwiki-2015-sample/\*\.txt\.gz; pass --shared_data"
    with pytest.raises(data_lib.ExperimentDataError, match=missing):
        data_lib.prepare(copy, root, spec, logs.append)


def test_squad_column_trains_on_the_train_file_and_scores_the_whole_dev_set(shared, tmp_path):
    prepared = data_lib.planned(shared, str(tmp_path / "data"), grids.MINI.data)
    column = next(c for c in grids.table5("mini").columns if c.key == "SQuAD")
    where = prepared.task(column.task)
    args = list(where.args) + grids.MINI.finetune.args(column.task)
    assert args[args.index("--train_file") + 1] == os.path.join(shared, "squad", "train-v1.1-reconstructed.json")
    assert args[args.index("--dev_file") + 1] == os.path.join(shared, "squad", "dev-v1.1.json")
    assert "--max_eval_examples" not in args  # all 10,570 dev questions
    assert args[args.index("--max_train_examples") + 1] == "1200"  # a seeded subset of the train file
