"""QNLI from SQuAD v1.1, as GLUE built it: `bert-jax build-qnli --squad train-v1.1.json --output train.tsv`.

GLUE pairs each SQuAD question with sentences of its paragraph; the label says whether the sentence holds the
answer. GLUE does not publish its selection, so it was measured on the official QNLI dev.tsv and test.tsv, which
both come from SQuAD dev (5,463 rows each; 5,460 distinct questions, 2,741 of them in both files):
  * every kept question gives exactly two pairs, the sentence with its answer (entailment) and one other sentence
    (not_entailment): questions seen twice in dev.tsv always have one of each, and dev+test hold 2 per question,
    so the labels are balanced (dev.tsv: 2,702 entailment / 2,761 not_entailment);
  * questions whose annotators' answers lie in different sentences are never kept;
  * the other sentence is usually the one sharing the most words with the question (the best such sentence in
    56% of questions, one tied with it in 72%).
Which of the remaining questions GLUE kept (about 56%) shows no lexical pattern we could find; this module keeps
the questions whose two sentences both share at least `min_overlap` words with the question (the 'low lexical
overlap' filter), which at the default 3 gives sizes close to the official ones:

  source                              rows     entailment / not_entailment   official
  SQuAD dev (dev-v1.1.json)           11,596   5,798 / 5,798                 dev+test 10,926 (dev.tsv 5,463)
  SQuAD train (reconstructed file)    95,914   47,957 / 47,957               train 104,743

(`min_overlap` 0 keeps every question with an answer sentence and another sentence: 18,980 rows from SQuAD dev,
171,010 from train.)
Words are lower-cased `\\w+` runs, counted once. Sentences are split by rule: after . ! or ? (and any closing
quote or bracket) before whitespace and a capital letter, digit or opening quote, except after a single capital
letter (initials) or a common abbreviation; 94% of the official dev+test sentences come out exactly. Whitespace
runs (SQuAD's newlines) become one space so each pair is one TSV line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Iterator

QNLI_HEADER = ("index", "question", "sentence", "label")
ENTAILMENT, NOT_ENTAILMENT = "entailment", "not_entailment"
DEFAULT_MIN_OVERLAP = 3

_END = re.compile(r"[.!?][\"')\]’”]*(?=\s+[\"'(\[‘“]?[A-Z0-9])")
# A period after these is part of the word: initials ("C. J. Anderson") and common abbreviations.
_NO_BREAK = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|Prof|St|Sr|Jr|vs|etc|e\.g|i\.e|No|Co|Inc|Ltd|Gen|Col|Lt|Sgt|"
                       r"Capt|Rev|Gov|Sen|Rep|Ft|Mt|U\.S|U\.K|approx|ca|c))\.$")
_WORD = re.compile(r"\w+")


class QnliBuildError(ValueError):
    """A SQuAD file that cannot be turned into QNLI pairs; the message names the file and the fix."""


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`, surrounding whitespace excluded."""
    spans, start = [], 0
    for match in _END.finditer(text):
        if match.group(0)[0] == "." and _NO_BREAK.search(text, start, match.start() + 1):
            continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    stripped = []
    for begin, end in spans:
        piece = text[begin:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            stripped.append((begin + lead, begin + len(piece.rstrip())))
    return stripped


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def question_pairs(question: str, context: str, sentences: list[tuple[int, int]], answers: list[tuple[int, int]],
                   min_overlap: int) -> tuple[str, tuple[str, str] | None]:
    """('kept', (answer sentence, other sentence)) or (reason skipped, None) for one question."""
    holding = {next((k for k, (s, e) in enumerate(sentences) if s <= a0 and a1 <= e), None) for a0, a1 in answers}
    if not answers or None in holding:
        return "answer crosses a sentence boundary", None
    if len(holding) > 1:
        return "answers in different sentences", None
    if len(sentences) < 2:
        return "one-sentence paragraph", None
    answer = holding.pop()
    question_words = words(question)
    overlap = [len(question_words & words(context[s:e])) for s, e in sentences]
    # the hardest negative: most shared words, then the nearest to the answer sentence
    other = max((k for k in range(len(sentences)) if k != answer), key=lambda k: (overlap[k], -abs(k - answer), -k))
    if min(overlap[answer], overlap[other]) < min_overlap:
        return "low lexical overlap", None
    text = lambda k: _one_line(context[sentences[k][0]:sentences[k][1]])  # noqa: E731
    return "kept", (text(answer), text(other))


def _squad_questions(path: str) -> Iterator[tuple[str, str, list[tuple[int, int]]]]:
    """(question, context, answer character spans) per question of an official-layout SQuAD v1.1 file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)["data"]
        for article in data:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    spans = [(a["answer_start"], a["answer_start"] + len(a["text"])) for a in qa["answers"]]
                    yield qa["question"], context, spans
    except FileNotFoundError:
        raise QnliBuildError(f"{path} does not exist; pass --squad PATH/train-v1.1.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise QnliBuildError(f"{path} is not a SQuAD v1.1 JSON file ({type(e).__name__}: {e}); pass the official "
                             "train-v1.1.json or dev-v1.1.json") from None


def build_qnli(squad_json: str, out_tsv: str, min_overlap: int = DEFAULT_MIN_OVERLAP) -> dict:
    """Write GLUE's QNLI TSV (index, question, sentence, label) from a SQuAD v1.1 file; returns the counts."""
    counts = {"questions": 0, "rows": 0, ENTAILMENT: 0, NOT_ENTAILMENT: 0, "skipped": {}}
    sentences_of: dict[str, list[tuple[int, int]]] = {}  # questions share paragraphs: split each once
    lines = ["\t".join(QNLI_HEADER)]
    for question, context, answers in _squad_questions(squad_json):
        counts["questions"] += 1
        sentences = sentences_of.setdefault(context, split_sentences(context))
        outcome, pair = question_pairs(question, context, sentences, answers, min_overlap)
        if pair is None:
            counts["skipped"][outcome] = counts["skipped"].get(outcome, 0) + 1
            continue
        for sentence, label in zip(pair, (ENTAILMENT, NOT_ENTAILMENT)):
            lines.append(f"{len(lines) - 1}\t{_one_line(question)}\t{sentence}\t{label}")
            counts[label] += 1
    counts["rows"] = len(lines) - 1
    if not counts["rows"]:
        raise QnliBuildError(f"{squad_json} gave no QNLI pairs ({counts['questions']} questions, skipped "
                             f"{counts['skipped']}); pass a SQuAD v1.1 file, or lower --min_overlap")
    os.makedirs(os.path.dirname(os.path.abspath(out_tsv)), exist_ok=True)
    tmp = f"{out_tsv}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, out_tsv)  # never a half-written file under the real name
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bert-jax build-qnli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--squad", required=True, help="a SQuAD v1.1 JSON file (official layout), e.g. train-v1.1.json")
    p.add_argument("--output", required=True,
                   help="the QNLI TSV to write, e.g. QNLI/train.tsv (read by `bert-jax finetune --task glue/qnli`)")
    p.add_argument("--min_overlap", type=int, default=DEFAULT_MIN_OVERLAP,
                   help="keep a question only if its answer sentence and its other sentence each share at least this "
                        f"many distinct words with it (default {DEFAULT_MIN_OVERLAP}; 0 keeps all)")
    args = p.parse_args(argv)
    try:
        counts = build_qnli(args.squad, args.output, args.min_overlap)
    except (QnliBuildError, OSError) as e:
        print(f"bert-jax build-qnli: {e}", file=sys.stderr)
        return 2
    print(f"{args.output}: {counts['rows']} rows ({counts[ENTAILMENT]} entailment, {counts[NOT_ENTAILMENT]} "
          f"not_entailment) from {counts['questions']} questions; skipped {counts['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
