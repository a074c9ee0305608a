"""Mini-scale data, prepared once under a data root (default `<workdir>/data`) and reused by every grid.

From a shared-data folder laid out as `../shared/data` (see its README):
  corpus/gutenberg/*.txt        public-domain books: pretraining text, one document per book (cut into pieces)
  corpus/wikitext-2/valid.txt   articles (each begins with a ` = Title = ` line): the first ~90% of articles are
                                pretraining text, the rest is the held-out set for MLM perplexity
  glue/<TASK>/{train,dev}.tsv   read in place; a task without train.tsv (MNLI, QNLI here) is 'n/a: no train set'
                                unless built as below
  nli/*.csv                     the MNLI column: train on MNLI dev_mismatched + SNLI dev + SNLI test (29,498 gold
                                pairs), score MNLI dev_matched (9,815), read in place (`mnli_column_args`)
  squad/train-v1.1-reconstructed.json
                                the QNLI column's train set, built GLUE's way (finetune/qnli.py) into
                                `<data root>/qnli/train.tsv`; scored on the official glue/QNLI/dev.tsv
  squad/dev-v1.1.json           split by article (even positions: train, odd: eval) into two official-format files
  conll2003/                    optional (absent here: NER columns are n/a)
WikiText is read by the corpus reader (`--format wikitext`: `<unk>` dropped, ` @-@ ` joins undone, headings dropped).

Every product is written under a temporary name and renamed, beside a stamp of what it was built from, so a
rerun skips finished steps and a changed input or setting rebuilds instead of reusing a stale file.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import os
from typing import Callable

from bert_jax.data.corpus import iter_lines
from bert_jax.data.corpus_formats import wikitext_documents
from bert_jax.data.make_data import build_dataset
from bert_jax.data.tokenizer import load_tokenizer, save_vocab
from bert_jax.data.tokenizer_cli import train_wordpiece_files

# The repository's sibling folder, where the project's real data lives on developer machines and in CI.
DEFAULT_SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))


class ExperimentDataError(ValueError):
    """Missing or unusable experiment data; the message names the path and what to pass instead."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """How the mini-scale data is made (kept with the scale in grids.py)."""
    vocab_size: int = 8192
    heldout_fraction: float = 0.1  # of WikiText-2 valid articles, taken from the end
    dupe_factor: int = 1  # make-data passes with fresh pair splits (masks are drawn anew every epoch anyway)
    min_frequency: int = 2


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
    books: tuple[str, ...]
    wikitext: str
    glue: str
    squad_dev: str
    conll: str  # '' when absent
    nli: str = ""  # the folder of the MNLI/SNLI CSVs ('' when absent)
    squad_train: str = ""  # SQuAD v1.1 train, source of the QNLI train set ('' when absent)


def find_sources(shared_data: str) -> Sources:
    if not os.path.isdir(shared_data):
        raise ExperimentDataError(f"shared data folder {shared_data!r} does not exist; pass --shared_data DIR laid out "
                                  "as ../shared/data (corpus/, glue/, squad/), or run --scale paper for the commands")
    books = tuple(sorted(glob.glob(os.path.join(shared_data, "corpus", "gutenberg", "*.txt"))))
    wikitext = os.path.join(shared_data, "corpus", "wikitext-2", "valid.txt")
    squad = os.path.join(shared_data, "squad", "dev-v1.1.json")
    missing = [p for p, ok in (("corpus/gutenberg/*.txt", books), ("corpus/wikitext-2/valid.txt", os.path.isfile(wikitext)),
                               ("squad/dev-v1.1.json", os.path.isfile(squad)),
                               ("glue/", os.path.isdir(os.path.join(shared_data, "glue")))) if not ok]
    if missing:
        raise ExperimentDataError(f"{shared_data} lacks {', '.join(missing)}; pass --shared_data pointing at a folder "
                                  "laid out as ../shared/data")
    conll = os.path.join(shared_data, "conll2003")
    nli = os.path.join(shared_data, "nli")
    squad_train = os.path.join(shared_data, "squad", "train-v1.1-reconstructed.json")
    has_nli = all(os.path.isfile(p) for files in mnli_column_files(nli).values() for p in files.split(","))
    return Sources(os.path.abspath(shared_data), books, wikitext, os.path.join(shared_data, "glue"), squad,
                   conll if os.path.isdir(conll) else "", nli if has_nli else "",
                   squad_train if os.path.isfile(squad_train) else "")


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


# ----------------------------------------------------------------------------------------- text

def wikitext_articles(path: str) -> list[str]:
    """Articles of a WikiText file as paragraphs joined by blank lines (the corpus reader's clean-up)."""
    stats: collections.Counter = collections.Counter()
    articles = (list(doc) for doc in wikitext_documents(iter_lines(path, 1 << 20, stats), stats))
    return ["\n\n".join(paragraphs) for paragraphs in articles if paragraphs]


def prepare_text(sources: Sources, root: str, heldout_fraction: float, log: Callable[[str], None]) -> tuple[str, str]:
    """(pretraining JSONL, held-out JSONL): one document per line under 'text'."""
    out_dir = os.path.join(root, "text")
    train_path, heldout_path = os.path.join(out_dir, "pretrain.jsonl"), os.path.join(out_dir, "heldout.jsonl")
    key = {"books": [_file_id(p) for p in sources.books], "wikitext": _file_id(sources.wikitext),
           "heldout_fraction": heldout_fraction}
    stamp = os.path.join(out_dir, "stamp.json")
    if _stamp_matches(stamp, key) and os.path.isfile(train_path) and os.path.isfile(heldout_path):
        return train_path, heldout_path
    articles = wikitext_articles(sources.wikitext)
    if len(articles) < 2:
        raise ExperimentDataError(f"{sources.wikitext} holds {len(articles)} ' = Title = ' articles; need at least 2")
    n_heldout = max(1, int(round(len(articles) * heldout_fraction)))
    docs = []
    for book in sources.books:
        with open(book, encoding="utf-8", errors="replace") as f:
            docs.append(f.read())
    docs += articles[:-n_heldout]
    _write_atomic(train_path, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    _write_atomic(heldout_path, "".join(json.dumps({"text": d}) + "\n" for d in articles[-n_heldout:]))
    _write_stamp(stamp, key)
    log(f"data: {len(sources.books)} books + {len(articles) - n_heldout} WikiText articles -> {train_path}; "
        f"{n_heldout} held-out articles -> {heldout_path}")
    return train_path, heldout_path


def prepare_vocab(root: str, text_path: str, spec: DataSpec, log: Callable[[str], None]) -> str:
    out_dir = os.path.join(root, f"vocab-{spec.vocab_size}")
    key = {"text": _file_id(text_path), "vocab_size": spec.vocab_size, "min_frequency": spec.min_frequency}
    stamp = os.path.join(out_dir, "stamp.json")
    if _stamp_matches(stamp, key):
        return out_dir
    tokens = train_wordpiece_files([text_path], spec.vocab_size, lowercase=True, min_frequency=spec.min_frequency)
    save_vocab(out_dir, tokens, lowercase=True)
    _write_stamp(stamp, key)
    log(f"data: WordPiece vocab of {load_tokenizer(out_dir).vocab_size} tokens -> {out_dir}")
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
    pretrain_text: str
    heldout_text: str
    squad_dir: str
    qnli_train: str = ""  # built QNLI train TSV ('' without SQuAD train)

    def pretraining(self, mode: str, seq_len: int, log: Callable[[str], None] = print) -> tuple[str, str]:
        """(train dir, held-out eval dir) in `mode` at `seq_len`, built on first use (make-data is resumable)."""
        dirs = []
        for part, text in (("pretrain", self.pretrain_text), ("heldout", self.heldout_text)):
            out = os.path.join(self.root, part, f"{mode}-{seq_len}-v{self.spec.vocab_size}-d{self.spec.dupe_factor}")
            build_dataset([text], out, self.vocab_dir, mode=mode, seq_len=seq_len, seed=0 if part == "pretrain" else 1,
                          workers=1, dupe_factor=self.spec.dupe_factor if part == "pretrain" else 1, log=log)
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
            return TaskData(self.squad_dir)
        if name == "conll2003":
            return TaskData(self.sources.conll) if self.sources.conll else Unavailable("n/a (no CoNLL-2003 data)")
        return Unavailable(f"n/a (no {name} data)")

    def describe(self) -> dict:
        return {"shared_data": self.sources.root, "data_root": self.root, "vocab": self.vocab_dir,
                "vocab_size": self.spec.vocab_size, "pretraining_text": "Gutenberg books (NLTK selection) + the first "
                f"{100 - round(100 * self.spec.heldout_fraction)}% of WikiText-2 valid articles",
                "heldout_text": f"the last {round(100 * self.spec.heldout_fraction)}% of WikiText-2 valid articles",
                "squad": "SQuAD v1.1 dev split by article: even positions train, odd positions eval",
                "glue": self.sources.glue,
                "mnli": self.sources.nli and "train MNLI dev_mismatched + SNLI dev + SNLI test, eval MNLI dev_matched",
                "qnli_train": self.qnli_train}


def planned(shared_data: str, root: str, spec: DataSpec = DataSpec()) -> PreparedData:
    """The paths `prepare` would fill, without writing anything (for --dry_run)."""
    sources = find_sources(shared_data)
    root = os.path.abspath(root)
    return PreparedData(root, sources, spec, os.path.join(root, f"vocab-{spec.vocab_size}"),
                        os.path.join(root, "text", "pretrain.jsonl"), os.path.join(root, "text", "heldout.jsonl"),
                        os.path.join(root, "squad-split"),
                        os.path.join(root, "qnli", "train.tsv") if sources.squad_train else "")


def prepare(shared_data: str, root: str, spec: DataSpec = DataSpec(),
            log: Callable[[str], None] = print) -> PreparedData:
    sources = find_sources(shared_data)
    os.makedirs(root, exist_ok=True)
    train_text, heldout_text = prepare_text(sources, root, spec.heldout_fraction, log)
    vocab = prepare_vocab(root, train_text, spec, log)
    squad_dir = split_squad(sources.squad_dev, root, log)
    qnli_train = prepare_qnli(sources.squad_train, root, log)
    return PreparedData(os.path.abspath(root), sources, spec, vocab, train_text, heldout_text, squad_dir, qnli_train)


def fingerprint(values: dict) -> str:
    """A short stable id of a JSON-able dict (run names that change when a setting does)."""
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
