"""Fixtures for the experiment tests: a tiny folder laid out as ../shared/data (the corpus, GLUE and SQuAD formats)."""
import gzip
import json
import os

import numpy as np

from bert_jax.data.builtin_corpus import generate_documents

BOOKS, WIKI_FILES = 6, 3  # the smoke scale holds out books 0 and 3 (every 3rd), wiki files 0 and 2 (every 2nd)
LICENCE, TITLE = "zzlicence", "zztitle"  # words only in Gutenberg headers/footers and WikiExtractor title lines
TRAINED, HELDOUT = "zztrained", "zzheldout"  # words only in the training files / only in the held-out files


def write_shared_data(root, seed=0):
    """A tiny folder laid out as ../shared/data: gzip Gutenberg books (licence header and footer on) and WikiExtractor
    files, SST-2, MRPC, QNLI (no train, no dev: n/a), SQuAD train and dev. The GLUE tasks carry a learnable signal
    (a sentiment word; a shared key word for paraphrases)."""
    rng = np.random.default_rng(seed)
    docs = generate_documents(160, seed=seed)
    books = os.path.join(root, "corpus", "gutenberg-292")
    os.makedirs(books)
    for b in range(BOOKS):
        marker = " ".join([HELDOUT if b % 3 == 0 else TRAINED] * 20)
        body = "\n\n".join(" ".join(doc) for doc in docs[b * 20:(b + 1) * 20])
        licence = " ".join([LICENCE] * 40)
        with gzip.open(os.path.join(books, f"author-{b}--book-{b}.txt.gz"), "wt") as f:
            f.write(f"The Project Gutenberg EBook of Book {b}\n\n{licence}\n\n"
                    f"*** START OF THE PROJECT GUTENBERG EBOOK BOOK {b} ***\n\n{body}\n\n{marker}.\n\n"
                    f"*** END OF THE PROJECT GUTENBERG EBOOK BOOK {b} ***\n\n{licence}\n")
    wiki = os.path.join(root, "corpus", "enwiki-2015-sample")
    os.makedirs(wiki)
    articles = docs[120:]
    for w in range(WIKI_FILES):
        with gzip.open(os.path.join(wiki, f"text_AA_wiki_{w:02d}.txt.gz"), "wt") as f:
            for a in range(w, len(articles), WIKI_FILES):
                f.write(f'<doc id="{a}" url="http://en.wikipedia.org/wiki?curid={a}" title="{TITLE} {a}">\n'
                        f"{TITLE} {TITLE} {a}\n\n{' '.join(articles[a])}\n</doc>\n")
    glue = os.path.join(root, "glue")
    good, bad, filler = ["good", "great", "fine"], ["bad", "awful", "poor"], docs[0][0].lower().split()[:12]

    def sentence(extra):
        words = list(rng.choice(filler, 6))
        words.insert(int(rng.integers(7)), extra)
        return " ".join(words)

    os.makedirs(os.path.join(glue, "SST-2"))
    for split, n in (("train", 160), ("dev", 64)):
        with open(os.path.join(glue, "SST-2", f"{split}.tsv"), "w") as f:
            f.write("sentence\tlabel\n")
            for _ in range(n):
                label = int(rng.integers(2))
                f.write(f"{sentence(rng.choice(good if label else bad))}\t{label}\n")
    os.makedirs(os.path.join(glue, "MRPC"))
    for split, n in (("train", 160), ("dev", 64)):
        with open(os.path.join(glue, "MRPC", f"{split}.tsv"), "w") as f:
            f.write("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
            for i in range(n):
                label = int(rng.integers(2))
                key = rng.choice(good + bad)
                other = key if label else rng.choice([w for w in good + bad if w != key])
                f.write(f"{label}\t{i}\t{i + 1000}\t{sentence(key)}\t{sentence(other)}\n")
    os.makedirs(os.path.join(glue, "QNLI"))  # no dev.tsv: the QNLI column is n/a, its train set is still built
    for name, first in (("train-v1.1-reconstructed.json", 0), ("dev-v1.1.json", 60)):
        os.makedirs(os.path.join(root, "squad"), exist_ok=True)
        with open(os.path.join(root, "squad", name), "w") as f:
            json.dump({"version": "1.1", "data": squad_articles(docs[first:first + 12], name[:3])}, f)
    return root


def squad_articles(docs, prefix):
    """4 articles of 3 paragraphs of 3 questions, each asking for a sentence's third word in that sentence's words
    (so QNLI's builder finds pairs: the question shares words with the answer sentence and the next one)."""
    articles = []
    for a in range(4):
        paragraphs = []
        for p in range(3):
            sentences = docs[a * 3 + p][:3]
            context = " ".join(sentences)
            answer = sentences[0].split()[2]
            start = context.index(answer)
            words = " ".join(sentences[0].rstrip(".").split()[:2] + sentences[1].rstrip(".").split()[:3])
            paragraphs.append({"context": context, "qas": [
                {"id": f"{prefix}{a}_{p}_{k}", "question": f"which word comes after {words} {k} ?",
                 "answers": [{"text": answer, "answer_start": start}]} for k in range(3)]})
        articles.append({"title": f"{prefix} article {a}", "paragraphs": paragraphs})
    return articles


def vocab_words(vocab_dir):
    with open(os.path.join(vocab_dir, "vocab.txt")) as f:
        return {line.strip() for line in f}
