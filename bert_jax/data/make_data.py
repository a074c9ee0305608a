"""`bert-jax make-data`: text files -> sharded fixed-length instances + manifest (resumable, parallel).

The input is read once, as a stream, and cut into work units of about `unit_chars` characters of whole
documents. Unit u becomes shard u, built from (seed, u) alone, so the output is the same for any number
of workers and a rerun only builds the shards that are missing. At most 2 x workers units are in flight,
so memory does not grow with the corpus. `build_args.json` is written first and the manifest last; a
directory holding a dataset built with other arguments is refused. Workers are forked (spawned instead
when jax is already imported, whose threads make fork unsafe; a script calling `build_dataset` with
workers > 1 then needs the usual `if __name__ == "__main__":` guard) and die with the parent.

    bert-jax make-data --input 'corpus/*.txt' --format text --vocab vocab_dir --output data/seg128 \
        --mode segment-pair --seq_len 128 --workers 8
    bert-jax make-data --input builtin --output data/builtin   # no download: the built-in corpus
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from bert_jax import dirlock, outputs
from bert_jax.data import shards
from bert_jax.data.builtin_corpus import DEFAULT_NUM_DOCS, DEFAULT_VOCAB_SIZE, write_builtin_corpus
from bert_jax.data.corpus import (FORMAT_HELP, FORMATS, CorpusError, RawDocument, ReaderOptions, expand_inputs, iter_documents,
                                  iter_raw_documents)
from bert_jax.data.instances import MODES, PAIR_MODES, InstanceConfig, InstanceError, build_unit
from bert_jax.data.tokenizer import (CONFIG_FILE, TokenizerError, WordPieceTokenizer, load_tokenizer, save_vocab,
                                     train_wordpiece)

BUILD_ARGS = "build_args.json"
DEFAULT_UNIT_CHARS = 1_000_000


def iter_units(docs: Iterator[RawDocument], unit_chars: int) -> Iterator[tuple[RawDocument, ...]]:
    unit: list[RawDocument] = []
    size = 0
    for doc in docs:
        unit.append(doc)
        size += doc.num_chars
        if size >= unit_chars:
            yield tuple(unit)
            unit, size = [], 0
    if unit:
        yield tuple(unit)


def _shard_meta(arrays: dict[str, np.ndarray], stats: dict, unit_index: int) -> dict:
    labels, counts = np.unique(arrays["sentence_label"], return_counts=True)
    return {
        "unit": unit_index,
        "max_token_id": int(arrays["input_ids"].max()) if arrays["input_ids"].size else -1,
        "label_counts": {str(int(k)): int(v) for k, v in zip(labels, counts)},
        "stats": stats,
    }


def _write_unit(docs, unit_index: int, out_dir: str, tokenizer: WordPieceTokenizer, config: InstanceConfig, seed: int) -> dict:
    arrays, stats = build_unit(docs, tokenizer, config, seed, unit_index)
    meta = _shard_meta(arrays, stats, unit_index)
    with outputs.write_errors_as_one_line(f"writing {shards.shard_name(unit_index)} of {out_dir}",
                                          "the shards finished before it are kept (a rerun builds the others)"):
        checksums = shards.write_shard(out_dir, unit_index, arrays, meta)
    return {"examples": len(arrays["input_ids"]), **meta, "checksums": checksums}


@functools.lru_cache(maxsize=2)
def _worker_tokenizer(path: str, lowercase: bool, fingerprint: str) -> WordPieceTokenizer:
    tokenizer = load_tokenizer(path, lowercase)
    if tokenizer.fingerprint != fingerprint:
        raise shards.DataError(f"vocab {path} changed while make-data was running; rerun it")
    return tokenizer


def _worker_init() -> None:
    # One tokenizer thread per worker process: the parallelism comes from the processes.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:  # die with the parent (Linux), so a killed build leaves no worker writing shards behind
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def _worker_task(docs, unit_index, out_dir, vocab_path, lowercase, fingerprint, config, seed) -> dict:
    return _write_unit(docs, unit_index, out_dir, _worker_tokenizer(vocab_path, lowercase, fingerprint), config, seed)


def _start_method() -> str:
    # fork starts fast and needs no `if __name__ == "__main__"` guard in the caller's script, but is unsafe
    # once jax's threads exist (a training script preparing its data): spawn then.
    if "jax" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "fork"


def _read_finished(out_dir: str, unit_index: int) -> dict:
    with open(os.path.join(out_dir, shards.shard_name(unit_index), "meta.json")) as f:
        return json.load(f)


def input_identity(files: Sequence[str]) -> list[list]:
    """[name, bytes] of each input file, the name relative to the folder holding them all: what the corpus is,
    wherever it lies. Records of older versions hold absolute paths; they are read the same way, so a dataset
    and its corpus can move (another path, another machine) and the dataset still resumes."""
    files = [os.path.abspath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    return [[os.path.relpath(f, root), os.path.getsize(f)] for f in files]


def _comparable(args: dict) -> dict:
    # `sources` is how the inputs were typed (a glob relative to where make-data ran): not what they are.
    out = {k: v for k, v in args.items() if k != "sources"}
    entries = out.get("input_files") or []
    if entries and all(os.path.isabs(name) for name, _ in entries):  # written by an older version
        root = os.path.commonpath([os.path.dirname(name) for name, _ in entries])
        out["input_files"] = [[os.path.relpath(name, root), size] for name, size in entries]
    return out


def _check_args(out_dir: str, args: dict) -> dict | None:
    """Refuse a directory built with other arguments; return its manifest when it is already complete."""
    manifest_path = os.path.join(out_dir, shards.MANIFEST)
    args_path = os.path.join(out_dir, BUILD_ARGS)
    old = None
    if os.path.isfile(manifest_path):
        old = shards.read_manifest(out_dir).get("builder_args")
    elif os.path.isfile(args_path):
        with open(args_path) as f:
            old = json.load(f)
    elif os.path.isdir(out_dir) and any(name.startswith("shard-") for name in os.listdir(out_dir)):
        raise shards.DataError(f"{out_dir} holds shards of unknown origin (no {BUILD_ARGS}); pass an empty --output")
    if old is None:
        return None
    old, args = _comparable(old), _comparable(args)
    for key in sorted(set(old) | set(args)):
        if old.get(key) != args.get(key):
            shown = lambda v: json.dumps(v)[:200]  # noqa: E731
            raise shards.DataError(
                f"{out_dir} holds a dataset built with {key}={shown(old.get(key))}, not {shown(args.get(key))}; "
                "pass another --output or delete that directory"
            )
    return shards.read_manifest(out_dir) if os.path.isfile(manifest_path) else None


def build_dataset(
    inputs: Sequence[str],
    output_dir: str,
    vocab: str,
    *,
    mode: str = "segment-pair",
    seq_len: int = 128,
    seed: int = 0,
    workers: int = 1,
    reader: ReaderOptions = ReaderOptions(),
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    unit_chars: int = DEFAULT_UNIT_CHARS,
    lowercase: bool | None = None,
    log: Callable[[str], Any] = print,
    sources: Sequence[str] | None = None,
) -> dict:
    """Build (or finish, or just open) the dataset in `output_dir`; returns its manifest. `sources`: how the
    manifest names the inputs (default: `inputs` as given)."""
    config = InstanceConfig(mode=mode, seq_len=seq_len, short_seq_prob=short_seq_prob, dupe_factor=dupe_factor)
    if workers < 1 or unit_chars < 1:
        raise shards.DataError("--workers and --unit_chars must be at least 1")
    tokenizer = load_tokenizer(vocab, lowercase)
    files = expand_inputs(inputs)
    args = {
        "mode": mode, "seq_len": seq_len, "seed": seed, "short_seq_prob": short_seq_prob,
        "random_next_prob": config.random_next_prob, "swap_prob": config.swap_prob, "dupe_factor": dupe_factor,
        "unit_chars": unit_chars, "format": reader.format, "text_field": reader.text_field,
        "doc_boundary": reader.doc_boundary, "max_line_bytes": reader.max_line_bytes,
        "max_doc_chars": reader.max_doc_chars, "vocab_fingerprint": tokenizer.fingerprint,
        "lowercase": tokenizer.lowercase, "sources": list(sources or inputs),
        "input_files": input_identity(files),
    }
    done = _check_args(output_dir, args)
    if done is not None:
        damaged = shards.damaged_shards(output_dir, done)
        if not damaged:
            log(f"make-data: {output_dir} is already complete ({done['examples']} examples)")
            return done
        # Each shard is a function of (seed, unit): rebuilt, it is the same bytes, so the manifest stays valid.
        log(f"make-data: {output_dir}: {', '.join(damaged)} missing or damaged (checksum mismatch); rebuilding")
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    shards.write_json_atomic(os.path.join(output_dir, BUILD_ARGS), args)
    for name in os.listdir(output_dir):  # half-written leftovers of a killed run
        if name.startswith((".shard-", ".tmp-")):
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)

    start = time.perf_counter()
    reader_stats: collections.Counter = collections.Counter()
    units = iter_units(iter_raw_documents(files, reader, reader_stats), unit_chars)
    metas: list[dict] = []
    built = 0
    if workers == 1:
        for u, docs in enumerate(units):
            if shards.shard_is_complete(output_dir, u):
                metas.append(_read_finished(output_dir, u))
            else:
                metas.append(_write_unit(docs, u, output_dir, tokenizer, config, seed))
                built += 1
    else:
        ctx = multiprocessing.get_context(_start_method())
        task_args = (output_dir, tokenizer.path, tokenizer.lowercase, tokenizer.fingerprint, config, seed)
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            pending: collections.deque = collections.deque()
            for u, docs in enumerate(units):
                if shards.shard_is_complete(output_dir, u):
                    pending.append((u, None))
                else:
                    pending.append((u, pool.apply_async(_worker_task, (docs, u, *task_args))))
                    built += 1
                while len(pending) > 2 * workers or (pending and pending[0][1] is None):
                    u0, result = pending.popleft()
                    metas.append(_read_finished(output_dir, u0) if result is None else result.get())
            while pending:
                u0, result = pending.popleft()
                metas.append(_read_finished(output_dir, u0) if result is None else result.get())
    elapsed = time.perf_counter() - start

    manifest = _manifest(metas, args, tokenizer, reader_stats)
    if manifest["documents"] == 0 or manifest["examples"] == 0:  # refused: a dataset of 0 examples is no dataset
        _discard_empty_build(output_dir, metas, created)
        raise CorpusError(_why_no_examples(inputs, manifest, mode, reader))
    manifest["token_counts"] = token_counts(output_dir, manifest, tokenizer)
    shards.write_json_atomic(os.path.join(output_dir, shards.MANIFEST), manifest)
    log(f"make-data: {manifest['examples']} examples in {len(metas)} shards ({built} built now) from "
        f"{manifest['documents']} documents, {manifest['tokens']} tokens, {elapsed:.1f}s -> {output_dir}")
    return manifest


def _discard_empty_build(output_dir: str, metas: list[dict], created: bool) -> None:
    """Remove what a build of no examples wrote (its empty shards and build_args.json): the rerun the error asks
    for, with other arguments (another --mode) or a fixed corpus, must not be refused as a different build."""
    for meta in metas:
        shutil.rmtree(os.path.join(output_dir, shards.shard_name(meta["unit"])), ignore_errors=True)
    os.remove(os.path.join(output_dir, BUILD_ARGS))
    if created and not os.listdir(output_dir):
        os.rmdir(output_dir)


def _why_no_examples(inputs: Sequence[str], manifest: dict, mode: str, reader: ReaderOptions) -> str:
    source, skipped = f"--input {' '.join(inputs)}", manifest["skipped"]
    if manifest["documents"] == 0:
        if skipped.get("missing_text_field"):
            return (f"{source} holds no text: {skipped['missing_text_field']} JSON lines lack --text_field "
                    f"{reader.text_field!r}; pass --text_field with the field that holds each document's text")
        why = f"skipped: {skipped}" if skipped else "only blank lines"
        return f"{source} holds no text ({why}); point --input at text files, or check --format"
    one = skipped.get("one_sentence_documents", 0)
    if mode in PAIR_MODES and one:
        return (f"{source}: {one} of {manifest['documents']} documents have one sentence, and --mode {mode} pairs "
                "sentences of one document, so no example was made; put several sentences in each document (--format "
                "bert: a sentence per line, a blank line between documents; --format text --doc_boundary blank_line: "
                "prose paragraphs), or pass --mode full-sentences (no sentence pairs)")
    return (f"{source} holds {manifest['documents']} documents but no --mode {mode} example (skipped: "
            f"{skipped or 'none'}); point --input at more text, or check --format (a wrong format can read a whole "
            "file as one sentence)")


def token_counts(out_dir: str, manifest: dict, tokenizer: WordPieceTokenizer) -> list[int]:
    """How often each vocab id occurs in the examples ([PAD] not counted): the unigram model that
    `bert-jax evaluate` and the in-run eval score as the floor a pretrained model must beat. Kept in the
    manifest, so it travels with every checkpoint of a run trained on this data."""
    examples = shards.open_examples(out_dir, manifest, verify=False)  # just written or just verified
    counts = np.zeros(tokenizer.vocab_size, np.int64)
    for arrays in examples.shards:
        counts += np.bincount(np.asarray(arrays["input_ids"]).ravel(), minlength=tokenizer.vocab_size)[:len(counts)]
    counts[tokenizer.special_ids["pad"]] = 0
    return counts.tolist()


def _manifest(metas: list[dict], args: dict, tokenizer: WordPieceTokenizer, reader_stats: collections.Counter) -> dict:
    totals: collections.Counter = collections.Counter()
    labels: collections.Counter = collections.Counter()
    for meta in metas:
        totals.update(meta["stats"])
        labels.update(meta["label_counts"])
    skipped_keys = ("empty_documents", "one_sentence_documents", "unsplittable_chunks")
    skipped = {k: totals[k] for k in skipped_keys if totals[k]}
    skipped.update({k: reader_stats[k] for k in ("long_lines_skipped", "invalid_json_lines", "missing_text_field")
                    if reader_stats[k]})
    return {
        "format_version": shards.FORMAT_VERSION,
        "mode": args["mode"],
        "seq_len": args["seq_len"],
        "vocab_size": tokenizer.vocab_size,
        "vocab_fingerprint": tokenizer.fingerprint,
        "lowercase": tokenizer.lowercase,
        "vocab_path": tokenizer.path,
        "special_ids": tokenizer.special_ids,
        "max_token_id": max((m["max_token_id"] for m in metas), default=-1),
        "seed": args["seed"],
        "examples": sum(m["examples"] for m in metas),
        "shards": [{"name": shards.shard_name(m["unit"]), "examples": m["examples"],
                    **({"checksums": m["checksums"]} if "checksums" in m else {})} for m in metas],
        "documents": totals["documents"],
        "sentences": totals["sentences"],
        "tokens": totals["tokens"],
        "sentence_label_counts": dict(sorted(labels.items())),
        "skipped": skipped,
        "documents_split": reader_stats["documents_split"],
        "sentences_cut": totals["sentences_cut"],
        "invalid_utf8_replacements": reader_stats["invalid_utf8_replacements"],
        "sources": args["sources"],
        "builder_args": args,
    }


# ----------------------------------------------------------------------------------------- the built-in corpus


def builtin_vocab_dir(work_dir: str, vocab_size: int | None = None, num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0) -> str:
    """Where `prepare_builtin_dataset` keeps the vocab it trains (pass it as `vocab=` for a held-out set)."""
    return os.path.join(work_dir, f"vocab-v{vocab_size or DEFAULT_VOCAB_SIZE}-docs{num_docs}-seed{seed}")


def _path_in(path: str, work_dir: str) -> str:
    """`path` relative to `work_dir` when it lies inside (the cache moves with its workdir), else absolute."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(work_dir))
    return os.path.abspath(path) if rel.split(os.sep)[0] == os.pardir else rel


def prepare_builtin_dataset(
    work_dir: str,
    mode: str = "segment-pair",
    seq_len: int = 128,
    vocab_size: int | None = None,
    seed: int = 0,
    *,
    num_docs: int = DEFAULT_NUM_DOCS,
    workers: int = 1,
    vocab: str | None = None,
    dataset_dir: str | None = None,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    log: Callable[[str], Any] = print,
) -> str:
    """Corpus -> vocab (trained, uncased, unless `vocab` is given) -> make-data; every step cached.

    Returns the dataset directory (default: under `work_dir`, named after the arguments)."""
    vocab_size = vocab_size or DEFAULT_VOCAB_SIZE
    key = {"mode": mode, "seq_len": seq_len, "vocab_size": vocab_size, "seed": seed, "num_docs": num_docs,
           "vocab": vocab and _path_in(vocab, work_dir), "short_seq_prob": short_seq_prob,
           "dupe_factor": dupe_factor}
    dataset_dir = dataset_dir or os.path.join(
        work_dir, f"builtin-{mode}-len{seq_len}-v{vocab_size}-docs{num_docs}-seed{seed}")
    key_file = os.path.join(dataset_dir, "builtin.json")
    if os.path.isfile(os.path.join(dataset_dir, shards.MANIFEST)) and os.path.isfile(key_file):
        with open(key_file) as f:
            same = json.load(f) == key
        if same and not shards.damaged_shards(dataset_dir, shards.read_manifest(dataset_dir)):
            return dataset_dir  # else: build_dataset below rebuilds the damaged shards
    files = write_builtin_corpus(os.path.join(work_dir, f"corpus-docs{num_docs}-seed{seed}"), num_docs, seed)
    if vocab is None:
        vocab = builtin_vocab_dir(work_dir, vocab_size, num_docs, seed)
        if not os.path.isfile(os.path.join(vocab, CONFIG_FILE)):  # written last by save_vocab
            sentences = (s for doc in iter_documents(files) for s in doc)
            save_vocab(vocab, train_wordpiece(sentences, vocab_size, lowercase=True), lowercase=True)
    build_dataset(files, dataset_dir, vocab, mode=mode, seq_len=seq_len, seed=seed, workers=workers,
                  short_seq_prob=short_seq_prob, dupe_factor=dupe_factor, log=log,
                  sources=[f"builtin:{os.path.basename(os.path.dirname(files[0]))}"])
    shards.write_json_atomic(key_file, key)
    return dataset_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bert-jax make-data", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", action="extend", nargs="+", required=True,
                   help="files or globs, .gz read as is (repeatable; a glob the shell expanded works too); 'builtin' "
                        "for the built-in corpus")
    p.add_argument("--output", required=True,
                   help="dataset directory (created; a rerun with the same arguments finishes or reuses it)")
    p.add_argument("--vocab", help="vocab.txt or a directory with one (required unless --input builtin)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--cased", dest="lowercase", action="store_false", default=None,
                      help="keep case (default: what the vocab's tokenizer_config.json says, else uncased)")
    case.add_argument("--uncased", dest="lowercase", action="store_true", help="lowercase and strip accents")
    p.add_argument("--mode", choices=MODES, default="segment-pair",
                   help="example layout: segment-pair (NSP pairs, BERT), sop (swapped pairs, ALBERT), or a "
                        "single-segment mode (default: %(default)s)")
    p.add_argument("--seq_len", type=int, default=128, help="tokens per example with [CLS]/[SEP] (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair splits and random next segments")
    p.add_argument("--workers", type=int, default=1, help="tokenising processes (the output does not depend on it)")
    p.add_argument("--format", choices=FORMATS, default="auto", help=FORMAT_HELP)
    p.add_argument("--text_field", default="text", help="--format jsonl: the field holding each document's text")
    p.add_argument("--doc_boundary", choices=("file", "blank_line"), default="file",
                   help="--format text: a document is a whole file, or each blank-line-separated block")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="share of examples given a shorter random target length, as BERT (default: %(default)s)")
    p.add_argument("--dupe_factor", type=int, default=1,
                   help="passes over the corpus, each with fresh pair splits (default: %(default)s)")
    p.add_argument("--unit_chars", type=int, default=DEFAULT_UNIT_CHARS,
                   help="characters of text per shard (the unit of parallel and resumed work; a random next "
                        "segment comes from another document of the same unit, so a unit of 1-3 books gives NSP "
                        "negatives from 1-2 other books) (default: %(default)s)")
    p.add_argument("--max_line_bytes", type=int, default=ReaderOptions.max_line_bytes,
                   help="longer lines are skipped and counted in the manifest")
    p.add_argument("--max_doc_chars", type=int, default=ReaderOptions.max_doc_chars,
                   help="longer documents are cut into pieces at paragraph/sentence boundaries")
    p.add_argument("--vocab_size", type=int, default=None,
                   help="--input builtin without --vocab: most tokens of the vocab to train (default 4096)")
    p.add_argument("--num_docs", type=int, default=None, help="--input builtin: number of documents to generate")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    existed = os.path.exists(a.output)
    try:  # one writer per dataset: a second make-data on this --output stops here, having changed nothing
        outputs.writable_directory(a.output, "--output")  # a file, read-only, ...: one line before any work
        lock = dirlock.acquire(a.output, "--output", "bert-jax make-data")
    except (dirlock.DirectoryInUse, outputs.OutputError) as e:
        print(f"make-data: {e}", file=sys.stderr)
        return 2
    code = 1
    try:
        code = _main(a)
        return code
    finally:
        dirlock.release(lock)
        if code != 0 and not existed:  # refused (e.g. a corpus of no examples): leave no empty --output behind
            dirlock.remove_if_unused(a.output)


def _main(a: argparse.Namespace) -> int:
    try:
        if a.input == ["builtin"]:
            prepare_builtin_dataset(
                os.path.join(a.output, "builtin-source"), mode=a.mode, seq_len=a.seq_len, vocab_size=a.vocab_size,
                seed=a.seed, num_docs=a.num_docs or DEFAULT_NUM_DOCS, workers=a.workers, vocab=a.vocab,
                dataset_dir=a.output, short_seq_prob=a.short_seq_prob, dupe_factor=a.dupe_factor,
            )
            return 0
        if not a.vocab:
            print("make-data: --vocab is required (train one with `bert-jax train-tokenizer`, or use --input builtin)",
                  file=sys.stderr)
            return 2
        reader = ReaderOptions(format=a.format, text_field=a.text_field, doc_boundary=a.doc_boundary,
                               max_line_bytes=a.max_line_bytes, max_doc_chars=a.max_doc_chars)
        build_dataset(a.input, a.output, a.vocab, mode=a.mode, seq_len=a.seq_len, seed=a.seed, workers=a.workers,
                      reader=reader, short_seq_prob=a.short_seq_prob, dupe_factor=a.dupe_factor,
                      unit_chars=a.unit_chars, lowercase=a.lowercase)
    except (CorpusError, InstanceError, TokenizerError, shards.DataError, outputs.OutputError) as e:  # one line
        print(f"make-data: {e}", file=sys.stderr)
        return outputs.EXIT_BAD_INPUT
    except outputs.WriteError as e:  # e.g. a full disk: finished shards are kept
        print(f"make-data: {e}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED
    except OSError as e:  # another file it could not read or write (the manifest, build_args.json, the vocab...)
        print(f"make-data: {e.filename or a.output}: {outputs.reason(e)}; {outputs.fix(e)}", file=sys.stderr)
        return outputs.EXIT_WRITE_FAILED if outputs.is_disk_full(e) else outputs.EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
