"""Mini-scale data, prepared once under a data root (default `<workdir>/data`) and reused by every grid.

From a shared-data folder laid out as `../shared/data` (see its README):
  corpus/gutenberg-292/*.txt.gz       Project Gutenberg books, gzip, licence header and footer still on (make-data
                                      and the tokenizer trainer detect the format and keep the book's text)
  corpus/enwiki-2015-sample/*.txt.gz  English Wikipedia as WikiExtractor writes it (`<doc ...>`, title line dropped)
      Both are split by file (`split_corpus`): the books at positions 0, 29, 58, ... and the Wikipedia files at 0,
      25, 50, 75 of the sorted lists are the held-out set (MLM perplexity), the rest is the pretraining text, read
      in place (no copy). The 8k WordPiece vocab is trained on the pretraining files only.
  glue/<TASK>/{train,dev}.tsv   read in place; a task without train.tsv (MNLI, QNLI here) is 'n/a: no train set'
                                unless built as below
  nli/*.csv                     the MNLI column: train on MNLI dev_mismatched + SNLI dev + SNLI test (29,498 gold
                                pairs), score MNLI dev_matched (9,815), read in place (`mnli_column_args`)
  squad/train-v1.1-reconstructed.json
                                the SQuAD column's train set (read in place), and the QNLI column's, built GLUE's way
                                (finetune/qnli.py) into `<data root>/qnli/train.tsv`, scored on the official
                                glue/QNLI/dev.tsv
  squad/dev-v1.1.json           the SQuAD column's eval set, whole; without the train file the column falls back to
                                splitting it by article (even positions: train, odd: eval), with a logged note
  conll2003/                    optional (absent here: NER columns are n/a)

Every product is written under a temporary name and renamed, beside a stamp of what it was built from, so a
rerun skips finished steps and a changed input or setting rebuilds instead of reusing a stale file.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Callable, Sequence

from bert_jax.data.make_data import build_dataset, input_identity
from bert_jax.data.tokenizer import load_tokenizer, save_vocab
from bert_jax.data.tokenizer_cli import train_wordpiece_files

# The repository's sibling folder, where the project's real data lives on developer machines and in CI.
DEFAULT_SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
BOOKS_GLOB = os.path.join("corpus", "gutenberg-292", "*.txt.gz")
WIKI_GLOB = os.path.join("corpus", "enwiki-2015-sample", "*.txt.gz")
# The held-out rule the mini recipe was measured under (experiments/recipe_probes.py): every 29th book (11 of 292)
# and every 25th Wikipedia file (4 of 100), whole files, so no held-out document shares a book or file with training.
HELDOUT_EVERY_BOOK, HELDOUT_EVERY_WIKI = 29, 25


class ExperimentDataError(ValueError):
    """Missing or unusable experiment data; the message names the path and what to pass instead."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """How the mini-scale data is made (kept with the scale in grids.py)."""
    vocab_size: int = 8192
    heldout_every_book: int = HELDOUT_EVERY_BOOK  # books at sorted positions 0, N, 2N, ... are held out
    heldout_every_wiki: int = HELDOUT_EVERY_WIKI  # likewise for the Wikipedia files
    dupe_factor: int = 1  # make-data passes with fresh pair splits (masks are drawn anew every epoch anyway)
    min_frequency: int = 2
    workers: int = 1  # make-data processes (the output does not depend on it)


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A grid cell that cannot be computed with this data; `reason` is printed in the table."""
    reason: str


@dataclasses.dataclass(frozen=True)
class TaskData:
    data_dir: str
    args: tuple[str, ...] = ()  # extra `bert-jax finetune` flags (e.g. --train_file)


@dataclasses.dataclass(frozen=True)
class Sources:
    root: str
    books: tuple[str, ...]  # sorted
    wiki: tuple[str, ...]  # sorted
    glue: str
    squad_dev: str
    conll: str  # '' when absent
    nli: str = ""  # the folder of the MNLI/SNLI CSVs ('' when absent)
    squad_train: str = ""  # SQuAD v1.1 train (the SQuAD column's and QNLI's train set; '' when absent)


def split_files(files: Sequence[str], every: int) -> tuple[list[str], list[str]]:
    """(train, held-out) of one source: sorted, the files at positions 0, every, 2 * every, ... held out."""
    if every < 1:
        raise ExperimentDataError(f"held-out rule 'every {every}th file' needs a positive number")
    ordered = sorted(files)
    return ([f for i, f in enumerate(ordered) if i % every],
            [f for i, f in enumerate(ordered) if i % every == 0])


def split_corpus(books: Sequence[str], wiki: Sequence[str], every_book: int = HELDOUT_EVERY_BOOK,
                 every_wiki: int = HELDOUT_EVERY_WIKI) -> tuple[list[str], list[str]]:
    """(pretraining files, held-out files): books then Wikipedia files, each split by `split_files`."""
    book_train, book_heldout = split_files(books, every_book)
    wiki_train, wiki_heldout = split_files(wiki, every_wiki)
    return book_train + wiki_train, book_heldout + wiki_heldout


def find_sources(shared_data: str) -> Sources:
    if not os.path.isdir(shared_data):
        raise ExperimentDataError(f"shared data folder {shared_data!r} does not exist; pass --shared_data DIR laid out "
                                  "as ../shared/data (corpus/, glue/, squad/), or run --scale paper for the commands")
    books = tuple(sorted(glob.glob(os.path.join(shared_data, BOOKS_GLOB))))
    wiki = tuple(sorted(glob.glob(os.path.join(shared_data, WIKI_GLOB))))
    squad = os.path.join(shared_data, "squad", "dev-v1.1.json")
    missing = [p for p, ok in ((BOOKS_GLOB, books), (WIKI_GLOB, wiki), ("squad/dev-v1.1.json", os.path.isfile(squad)),
                               ("glue/", os.path.isdir(os.path.join(shared_data, "glue")))) if not ok]
    if missing:
        raise ExperimentDataError(f"{shared_data} lacks {', '.join(missing)}; pass --shared_data pointing at a folder "
                                  "laid out as ../shared/data")
    conll = os.path.join(shared_data, "conll2003")
    nli = os.path.join(shared_data, "nli")
    squad_train = os.path.join(shared_data, "squad", "train-v1.1-reconstructed.json")
    has_nli = all(os.path.isfile(p) for files in mnli_column_files(nli).values() for p in files.split(","))
    return Sources(os.path.abspath(shared_data), books, wiki, os.path.join(shared_data, "glue"), squad,
                   conll if os.path.isdir(conll) else "", nli if has_nli else "",
                   squad_train if os.path.isfile(squad_train) else "")


def corpus_split(sources: Sources, spec: DataSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The spec's split of the sources' corpus; refused when either side is empty (a fixture too small for it)."""
    train, heldout = split_corpus(sources.books, sources.wiki, spec.heldout_every_book, spec.heldout_every_wiki)
    if not train or not heldout:
        raise ExperimentDataError(
            f"{sources.root}/corpus: holding out every {spec.heldout_every_book}th book and every "
            f"{spec.heldout_every_wiki}th Wikipedia file leaves {len(train)} pretraining and {len(heldout)} held-out "
            "files; pass --shared_data with more corpus files")
    return tuple(train), tuple(heldout)


def mnli_column_files(nli_dir: str) -> dict[str, str]:
    """The MNLI column's files: no MNLI train set is public here, so train on the other gold NLI pairs."""
    names = {"train": ("multinli_1.0_dev_mismatched.csv", "snli_1.0_dev.csv", "snli_1.0_test.csv"),
             "dev": ("multinli_1.0_dev_matched.csv",)}
    return {split: ",".join(os.path.join(nli_dir, n) for n in files) for split, files in names.items()}


def mnli_column_args(nli_dir: str) -> tuple[str, ...]:
    """`bert-jax finetune --task glue/mnli` flags for the MNLI column (MNLI-m accuracy on the official dev set)."""
    files = mnli_column_files(nli_dir)
    return "--train_file", files["train"], "--dev_file", files["dev"]


# ----------------------------------------------------------------------------------------- idempotent steps


def _file_id(path: str) -> list:
    return [os.path.abspath(path), os.path.getsize(path)]


def _stamp_matches(stamp_path: str, key: dict) -> bool:
    if not os.path.isfile(stamp_path):
        return False
    with open(stamp_path) as f:
        return json.load(f) == key


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_stamp(path: str, key: dict) -> None:
    _write_atomic(path, json.dumps(key, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------------- products


def prepare_vocab(root: str, train_files: Sequence[str], spec: DataSpec, log: Callable[[str], None]) -> str:
    """The WordPiece vocab trained on the pretraining files only (the held-out text stays unseen)."""
    out_dir = os.path.join(root, f"vocab-{spec.vocab_size}")
    # Files by name and size relative to their common folder (make-data's identity): moving the shared folder
    # does not retrain the vocab, a changed file set does.
    key = {"files": input_identity(train_files), "vocab_size": spec.vocab_size, "min_frequency": spec.min_frequency}
    stamp = os.path.join(out_dir, "stamp.json")
    if _stamp_matches(stamp, key) and os.path.isfile(os.path.join(out_dir, "vocab.txt")):
        return out_dir
    tokens = train_wordpiece_files(list(train_files), spec.vocab_size, lowercase=True, min_frequency=spec.min_frequency)
    save_vocab(out_dir, tokens, lowercase=True)
    _write_stamp(stamp, key)
    log(f"data: WordPiece vocab of {load_tokenizer(out_dir).vocab_size} tokens from {len(train_files)} pretraining "
        f"files -> {out_dir}")
    return out_dir


def split_squad(squad_dev: str, root: str, log: Callable[[str], None]) -> str:
    """A folder with train-v1.1.json (articles at even positions) and dev-v1.1.json (odd positions)."""
    out_dir = os.path.join(root, "squad-split")
    key = {"source": _file_id(squad_dev), "rule": "article index % 2: 0 -> train, 1 -> dev"}
    stamp = os.path.join(out_dir, "stamp.json")
    if _stamp_matches(stamp, key):
        return out_dir
    with open(squad_dev, encoding="utf-8") as f:
        full = json.load(f)
    articles = full.get("data") if isinstance(full, dict) else None
    if not articles or len(articles) < 2:
        raise ExperimentDataError(f"{squad_dev} is not a SQuAD v1.1 file with at least 2 articles under 'data'")
    version = full.get("version", "1.1")
    halves = {"train": articles[0::2], "dev": articles[1::2]}
    for split, part in halves.items():
        _write_atomic(os.path.join(out_dir, f"{split}-v1.1.json"), json.dumps({"version": version, "data": part}))
    _write_stamp(stamp, key)
    counts = {s: sum(len(q["qas"]) for a in part for q in a["paragraphs"]) for s, part in halves.items()}
    log(f"data: SQuAD v1.1 dev split by article: {len(halves['train'])} articles / {counts['train']} questions "
        f"(train), {len(halves['dev'])} / {counts['dev']} (eval) -> {out_dir}")
    return out_dir


SQUAD_FALLBACK_NOTE = ("no squad/train-v1.1-reconstructed.json: the SQuAD column trains on dev-v1.1.json's even "
                       "articles and scores its odd ones, not the official dev set")


def squad_column(sources: Sources, root: str, log: Callable[[str], None], build: bool = True) -> TaskData:
    """Train on SQuAD v1.1 train, score the whole official dev set; without the train file, the dev set's halves."""
    if sources.squad_train:
        return TaskData(os.path.dirname(os.path.abspath(sources.squad_dev)),
                        ("--train_file", os.path.abspath(sources.squad_train),
                         "--dev_file", os.path.abspath(sources.squad_dev)))
    log(f"data: note: {SQUAD_FALLBACK_NOTE}")
    return TaskData(split_squad(sources.squad_dev, root, log) if build else os.path.join(root, "squad-split"))


def prepare_qnli(squad_train: str, root: str, log: Callable[[str], None]) -> str:
    """`<root>/qnli/train.tsv` built from SQuAD v1.1 train as GLUE built QNLI; '' when there is no SQuAD train."""
    if not squad_train:
        return ""
    from bert_jax.finetune.qnli import DEFAULT_MIN_OVERLAP, build_qnli

    out_dir = os.path.join(root, "qnli")
    path, stamp = os.path.join(out_dir, "train.tsv"), os.path.join(out_dir, "stamp.json")
    key = {"source": _file_id(squad_train), "min_overlap": DEFAULT_MIN_OVERLAP,
           "rule": "answer sentence + the other sentence sharing most words, both sharing >= min_overlap"}
    if _stamp_matches(stamp, key) and os.path.isfile(path):
        return path
    counts = build_qnli(squad_train, path, DEFAULT_MIN_OVERLAP)
    _write_stamp(stamp, key)
    log(f"data: QNLI train from {squad_train}: {counts['rows']} pairs ({counts['entailment']} entailment) -> {path}")
    return path


# ----------------------------------------------------------------------------------------- the prepared set


@dataclasses.dataclass(frozen=True)
class PreparedData:
    root: str
    sources: Sources
    spec: DataSpec
    vocab_dir: str
    train_files: tuple[str, ...]  # pretraining text, read in place
    heldout_files: tuple[str, ...]
    squad: TaskData
    qnli_train: str = ""  # built QNLI train TSV ('' without SQuAD train)

    def pretraining(self, mode: str, seq_len: int, log: Callable[[str], None] = print) -> tuple[str, str]:
        """(train dir, held-out eval dir) in `mode` at `seq_len`, built on first use (make-data is resumable)."""
        vocab = load_tokenizer(self.vocab_dir).fingerprint
        dirs = []
        for part, files in (("pretrain", self.train_files), ("heldout", self.heldout_files)):
            # make-data refuses a folder built from other inputs: a changed file set or vocab gets a folder of its own
            tag = fingerprint({"files": input_identity(files), "vocab": vocab})
            out = os.path.join(self.root, part,
                               f"{mode}-{seq_len}-v{self.spec.vocab_size}-d{self.spec.dupe_factor}-{tag}")
            build_dataset(list(files), out, self.vocab_dir, mode=mode, seq_len=seq_len,
                          seed=0 if part == "pretrain" else 1, workers=self.spec.workers,
                          dupe_factor=self.spec.dupe_factor if part == "pretrain" else 1, log=log)
            dirs.append(out)
        return dirs[0], dirs[1]

    def task(self, name: str) -> TaskData | Unavailable:
        """Where `bert-jax finetune --task name` finds its data here, or why it cannot run."""
        family, _, short = name.partition("/")
        if family == "glue":
            from bert_jax.finetune.glue import GLUE_TASKS

            spec = GLUE_TASKS[short]
            folder = os.path.join(self.sources.glue, spec.dirname)
            has = {s: os.path.isfile(os.path.join(folder, spec.files[s])) for s in ("train", "dev")}
            if short == "mnli" and not has["train"] and self.sources.nli:
                return TaskData(self.sources.nli, mnli_column_args(self.sources.nli))
            built = ()  # QNLI's train set, built from SQuAD train when GLUE's is not there
            if short == "qnli" and self.qnli_train and not has["train"]:
                built = ("--train_file", self.qnli_train)
            if not (has["train"] or built):
                return Unavailable("n/a (no train set)")
            return TaskData(self.sources.glue, built) if has["dev"] else Unavailable("n/a (no dev set)")
        if name == "squad/v1.1":
            return self.squad
        if name == "conll2003":
            return TaskData(self.sources.conll) if self.sources.conll else Unavailable("n/a (no CoNLL-2003 data)")
        return Unavailable(f"n/a (no {name} data)")

    def describe(self) -> dict:
        s = self.spec
        books = len(set(self.heldout_files) & set(self.sources.books))
        return {"shared_data": self.sources.root, "data_root": self.root, "vocab": self.vocab_dir,
                "vocab_size": s.vocab_size,
                "pretraining_text": f"{len(self.train_files)} files of corpus/gutenberg-292 + "
                                    "corpus/enwiki-2015-sample (all but the held-out ones)",
                "heldout_text": f"{books} books (sorted positions 0, {s.heldout_every_book}, ...) + "
                                f"{len(self.heldout_files) - books} Wikipedia files (0, {s.heldout_every_wiki}, ...)",
                "squad": ("train squad/train-v1.1-reconstructed.json, eval the whole official squad/dev-v1.1.json"
                          if self.sources.squad_train else SQUAD_FALLBACK_NOTE),
                "glue": self.sources.glue,
                "mnli": self.sources.nli and "train MNLI dev_mismatched + SNLI dev + SNLI test, eval MNLI dev_matched",
                "qnli_train": self.qnli_train}


def planned(shared_data: str, root: str, spec: DataSpec = DataSpec()) -> PreparedData:
    """The paths `prepare` would fill, without writing anything (for --dry_run)."""
    sources = find_sources(shared_data)
    root = os.path.abspath(root)
    train, heldout = corpus_split(sources, spec)
    return PreparedData(root, sources, spec, os.path.join(root, f"vocab-{spec.vocab_size}"), train, heldout,
                        squad_column(sources, root, lambda _: None, build=False),
                        os.path.join(root, "qnli", "train.tsv") if sources.squad_train else "")


def prepare(shared_data: str, root: str, spec: DataSpec = DataSpec(),
            log: Callable[[str], None] = print) -> PreparedData:
    sources = find_sources(shared_data)
    train, heldout = corpus_split(sources, spec)
    os.makedirs(root, exist_ok=True)
    vocab = prepare_vocab(root, train, spec, log)
    squad = squad_column(sources, root, log)
    qnli_train = prepare_qnli(sources.squad_train, root, log)
    return PreparedData(os.path.abspath(root), sources, spec, vocab, train, heldout, squad, qnli_train)


def fingerprint(values: dict) -> str:
    """A short stable id of a JSON-able dict (run names that change when a setting does)."""
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
