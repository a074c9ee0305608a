"""The papers' reference numbers (dev sets), keyed grid -> row -> column as grids.py names them.

BERT: Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
Tables 5, 6 and 8. RoBERTa: Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach", Table 2.
Figure 5 is a plot without a table: only its stated claims are recorded, no numbers read off the plot. The
objectives grid records only claims: ELECTRA (Clark et al. 2020) Table 1, SpanBERT (Joshi et al. 2020), ALBERT
(Lan et al. 2020), XLNet (Yang et al. 2019) Table 1 and T5 (Raffel et al. 2020) compare other sizes and budgets.
"""
from __future__ import annotations

_T5_COLUMNS = ("MNLI-m", "QNLI", "MRPC", "SST-2", "SQuAD")
_T6_COLUMNS = ("LM ppl", "MNLI-m", "MRPC", "SST-2")
_T8_COLUMNS = ("MNLI", "NER fine-tune", "NER feature-based")
_ROBERTA_COLUMNS = ("SQuAD 1.1", "SQuAD 2.0", "MNLI-m", "SST-2", "RACE")


def _rows(columns, rows):
    return {name: dict(zip(columns, values)) for name, values in rows.items()}


PAPER_NUMBERS: dict[str, dict[str, dict[str, float]]] = {
    "table5": _rows(_T5_COLUMNS, {
        "BERT_BASE": (84.4, 88.4, 86.7, 92.7, 88.5),
        "No NSP": (83.9, 84.9, 86.5, 92.6, 87.9),
        "LTR & No NSP": (82.1, 84.3, 77.5, 92.1, 77.8),
        "+ BiLSTM": (82.1, 84.1, 75.7, 91.6, 84.9),
    }),
    "table6": _rows(_T6_COLUMNS, {
        "3/768/12": (5.84, 77.9, 79.8, 88.4),
        "6/768/3": (5.24, 80.6, 82.2, 90.7),
        "6/768/12": (4.68, 81.9, 84.8, 91.3),
        "12/768/12": (3.99, 84.4, 86.7, 92.9),
        "12/1024/16": (3.54, 85.7, 86.9, 93.3),
        "24/1024/16": (3.23, 86.6, 87.8, 93.7),
    }),
    "table8": _rows(_T8_COLUMNS, {
        "80/10/10": (84.2, 95.4, 94.9),
        "100/0/0": (84.3, 94.9, 94.0),
        "80/0/20": (84.1, 95.2, 94.6),
        "80/20/0": (84.4, 95.2, 94.7),
        "0/20/80": (83.7, 94.8, 94.6),
        "0/0/100": (83.6, 94.9, 94.6),
    }),
    "roberta": _rows(_ROBERTA_COLUMNS, {
        "SEGMENT-PAIR": (90.4, 78.7, 84.0, 92.9, 64.2),
        "SENTENCE-PAIR": (88.7, 76.2, 82.9, 92.1, 63.0),
        "FULL-SENTENCES": (90.4, 79.1, 84.7, 92.5, 64.8),
        "DOC-SENTENCES": (90.6, 79.7, 84.7, 92.7, 65.6),
    }),
    "figure5": {},
    "objectives": {},  # the papers' setups (sizes, data, compute) differ from ours and each other: claims only
}

# What each paper says the grid shows, quoted or closely paraphrased (the README checks ours against these).
PAPER_CLAIMS: dict[str, tuple[str, ...]] = {
    "table5": (
        "Removing NSP hurts performance significantly on QNLI, MNLI and SQuAD 1.1.",
        "The LTR model performs worse than the MLM model on all tasks, with large drops on MRPC and SQuAD.",
        "Adding a randomly initialised BiLSTM on top of the LTR model improves SQuAD significantly, but the results "
        "are still far worse than the pretrained bidirectional models, and the BiLSTM hurts the GLUE tasks.",
    ),
    "table6": (
        "Larger models lead to a strict accuracy improvement across all four datasets, even for MRPC (3,600 "
        "training examples).",
        "(The table's LM ppl column:) held-out masked LM perplexity falls with every step up in size.",
    ),
    "figure5": (
        "BERT_BASE achieves almost 1.0% additional accuracy on MNLI when trained on 1M steps compared to 500k steps.",
        "The MLM model converges slightly slower than the LTR model (it predicts only 15% of the words per batch), "
        "but in absolute accuracy it begins to outperform the LTR model almost immediately.",
    ),
    "table8": (
        "Fine-tuning is surprisingly robust to the masking strategy.",
        "Using only [MASK] (100/0/0) is problematic for the feature-based NER approach; using only random tokens "
        "(0/0/100) is also worse than the 80/10/10 mix.",
    ),
    "objectives": (
        "ELECTRA: replaced-token detection beats MLM at equal compute (ELECTRA Table 1: ELECTRA-Small 79.9 vs "
        "BERT-Small 75.1 GLUE dev).",
        "SpanBERT: span masking with the span-boundary objective helps span selection (SQuAD 1.1 F1 +3.3 over "
        "Google's BERT at the same size).",
        "ALBERT: sentence-order prediction is at least as good as next-sentence prediction downstream (SOP >= NSP).",
        "XLNet: the permutation LM matches or beats BERT trained on the same data (XLNet Table 1).",
        "T5: span corruption does as well as or better than BERT-style MLM at equal compute (T5's objectives "
        "study); LTR, the unidirectional baseline, is the weakest (BERT Table 5).",
        "Distillation: a student trained on its teacher's soft targets does better than the same model trained on "
        "hard labels alone (Hinton et al. 2015; DistilBERT).",
    ),
    "roberta": (
        "Using individual sentences (SENTENCE-PAIR) hurts downstream performance.",
        "Removing NSP (FULL-SENTENCES, DOC-SENTENCES) matches or slightly improves downstream performance; "
        "restricting sequences to one document (DOC-SENTENCES) does slightly better than packing across documents.",
    ),
}

PERCENT = "percent"  # the papers' scores are percentages; ours (fractions) are multiplied by 100 in the tables


def paper_number(grid: str, row: str, column: str) -> float | None:
    return PAPER_NUMBERS.get(grid, {}).get(row, {}).get(column)
