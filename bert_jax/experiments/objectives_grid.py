"""The objectives grid: one model size, one token budget per step, equal pretraining FLOPs per row.

Rows: MLM, MLM+NSP, MLM+SOP, SpanBERT (span masking + SBO), ELECTRA, XLNet's PLM, T5 span corruption, LTR,
distillation from the MLM row's model, and the random-init floor (MLM+NSP's config, fresh weights). Every row
pretrains the scale's model (BERT_BASE resized by the scale's rule) at the scale's batch and sequence length; its
`train.steps` is the MLM+NSP row's total pretraining FLOPs (the scale's steps x its FLOPs per step) divided by the
row's own FLOPs per step, rounded: the FLOPs count includes ELECTRA's generator, the T5 decoder, XLNet's query
stream, SBO's head and the distillation teacher's forward (`bert_jax.train.flops`, `Objective.flops`). The
distillation row's teacher is the MLM row's finished run (`run_dir_of`: the runner pretrains that row first).
Columns: the mini suite (MNLI-m, QNLI, MRPC, SST-2, SQuAD) and each run's held-out perplexity / unigram floor.
"""
from __future__ import annotations

import dataclasses

from bert_jax import configlib
from bert_jax.experiments.grids import (BERT, HELDOUT_RATIO, MRPC, NO_NSP, Column, Grid, Variant, _scale,
                                        run_dir_of)
from bert_jax.train.flops import planned_train_flops

REFERENCE, TEACHER_ROW, FLOOR = "MLM+NSP", "MLM", "Random init"
ROWS = (
    ("MLM", NO_NSP),
    (REFERENCE, BERT),
    ("MLM+SOP", {"objectives": "mlm+sop", "data.mode": "sentence-order"}),  # SOP's pairs: swapped or not
    ("SpanBERT", {"objectives": "mlm+sbo", "data.mode": "single"}),  # as configs/spanbert.py: one segment
    ("ELECTRA", {"objectives": "electra", "data.mode": "segment-pair"}),
    ("XLNet PLM", {"objectives": "plm", "data.mode": "segment-pair"}),
    ("T5 span corruption", {"objectives": "span_corruption", "data.mode": "segment-pair"}),
    ("LTR", {"objectives": "ltr", "data.mode": "segment-pair"}),
    ("Distillation", {"objectives": "distill", "data.mode": "segment-pair",
                      "objective_options.distill.teacher": run_dir_of(TEACHER_ROW)}),
)
# What each row's held-out ratio measures (model perplexity / unigram perplexity on the same targets; the
# runner reads the first of these its final eval reports).
RATIO_MEASURES = {
    "MLM": "MLM at the masked positions", REFERENCE: "MLM at the masked positions",
    "MLM+SOP": "MLM at the masked positions", "SpanBERT": "MLM at the span-masked positions",
    "ELECTRA": "the generator's MLM (the discriminator has no token distribution to hold against a floor)",
    "XLNet PLM": "PLM: the last 1/K tokens of each factorisation order, from the query stream",
    "T5 span corruption": "the decoder's span tokens (sentinels and the end token excluded: they have no "
                          "unigram frequency)",
    "LTR": "next-token prediction at every position", "Distillation": "the student's MLM at the masked positions",
}
SCHEDULE = ("train.steps", "optimizer.warmup_steps", "train.eval_every")  # what equal FLOPs sets in each row
COLUMNS = (Column("MNLI-m", "glue/mnli"), Column("QNLI", "glue/qnli"), MRPC, Column("SST-2", "glue/sst2"),
           Column("SQuAD", "squad/v1.1", note="F1"),
           Column("Held-out ratio", HELDOUT_RATIO, note="perplexity / unigram floor; lower is better"))


def step_flops(scale, pretrain: dict) -> float:
    """FLOPs per pretraining step of a row's resolved config, counted as `bert-jax pretrain` will."""
    overrides = {k: v for k, v in pretrain.items() if not k.startswith("objective_options.")}  # a teacher path
    config = configlib.load_config(scale.config, [f"{k}={v}" for k, v in overrides.items()])
    return planned_train_flops(config, scale.data.vocab_size)


def equal_flops(scale, pretrain: dict, budget: float) -> tuple[dict, float]:
    """(the row's overrides with train.steps = budget / its FLOPs per step, rounded, and the schedule's warm-up and
    final eval scaled to them; the run's total FLOPs)."""
    per_step = step_flops(scale, pretrain)
    steps = max(1, round(budget / per_step))
    warmup = scale.pretrain.get("optimizer.warmup_steps", 0) / scale.steps
    return ({**pretrain, "train.steps": steps, "optimizer.warmup_steps": max(1, round(warmup * steps)),
             "train.eval_every": steps}, steps * per_step)  # the held-out ratio is read at the last step


def grid(scale_name: str) -> Grid:
    scale = _scale(scale_name)
    if scale.phase2_config:  # one phase at the paper's scale too: the rows' lengths are set by FLOPs alone
        scale = dataclasses.replace(scale, phase2_config="")
    size_overrides = {**scale.pretrain, **scale.model_overrides(Variant("", {}).size)}
    budget = scale.steps * step_flops(scale, {**size_overrides, **BERT})
    variants = []
    for name, pretrain in ROWS:
        schedule, total = equal_flops(scale, {**size_overrides, **pretrain}, budget)
        variants.append(Variant(name, {**pretrain, **{k: schedule[k] for k in SCHEDULE}}, pretraining_flops=total))
    reference = variants[[n for n, _ in ROWS].index(REFERENCE)]
    variants.append(dataclasses.replace(reference, name=FLOOR, random_init=True, shares_pretraining_with=REFERENCE))
    steps = ", ".join(f"{v.name} {v.pretrain['train.steps']}" for v in variants[:-1])
    notes = (f"equal pretraining FLOPs: {budget:.3g} per row (MLM+NSP's {scale.steps} steps); steps per row: {steps}",
             "one model size and one batch x sequence length for every row; data modes differ where an objective "
             "needs its own (SOP: sentence-order pairs; SpanBERT: single segments)",
             f"{FLOOR}: MLM+NSP's config fine-tuned from fresh weights (`--init random:<its run>`); a row at or "
             "below it in a column is marked in the table",
             "held-out ratio: " + "; ".join(f"{k}: {v}" for k, v in RATIO_MEASURES.items()),
             "the papers' claims compare other sizes, data and compute: they are listed as claims, not as numbers "
             "beside ours")
    return Grid("objectives", "Pretraining objectives at equal compute", "ELECTRA (Clark et al. 2020) Table 1; "
                "SpanBERT (Joshi et al. 2020); ALBERT (Lan et al. 2020); XLNet (Yang et al. 2019) Table 1; "
                "T5 (Raffel et al. 2020)", scale, tuple(variants), COLUMNS, plot="objectives", notes=notes,
                floor=FLOOR)
