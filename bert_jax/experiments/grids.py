"""The paper's ablation grids as data: one function per grid returns its variants (rows) and tasks (columns) at a
scale. Every number a grid runs with is here: the scales' pretraining settings, size rules, fine-tuning protocols
and subsets. Pretraining runs are identified by their resolved overrides, so variants (and grids) with the same
pretraining share one run: '+ BiLSTM' fine-tunes the 'LTR & No NSP' model, figure5 fine-tunes table5's runs at
intermediate checkpoints, table6's 12/768/12 and table8's 80/10/10 are table5's BERT_BASE.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from bert_jax.experiments.data import DataSpec

GRIDS = ("table5", "table6", "figure5", "table8", "roberta", "objectives")
SCALES = ("paper", "mini", "smoke")
BERT_BASE = (12, 768, 12)
PERPLEXITY = "perplexity"  # a column's task: held-out MLM perplexity from the pretraining run's eval
HELDOUT_RATIO = "heldout_ratio"  # a column's task: held-out perplexity / unigram floor from the run's eval


def run_dir_of(variant: str) -> str:
    """An override value standing for the finished pretraining workdir of the grid's row `variant` (a
    distillation teacher): the runner pretrains that row first and puts its directory here."""
    return "{run:" + variant + "}"


@dataclasses.dataclass(frozen=True)
class Column:
    key: str  # header, and key of the paper's number
    task: str  # `bert-jax finetune --task`, or PERPLEXITY
    finetune: dict = dataclasses.field(default_factory=dict)  # extra fine-tuning options for this column
    scales: tuple[str, ...] = SCALES  # extra columns (no paper number) run only at the CPU scales
    metric: str = ""  # the dev metric reported ('' = the task's own, which also picks the learning rate)
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # the paper's row label
    pretrain: dict  # config overrides on top of the scale's (objectives, data.mode, masking ratios, ...)
    size: tuple[int, int, int] = BERT_BASE  # the paper's #L/#H/#A, scaled by the scale's rule
    finetune: dict = dataclasses.field(default_factory=dict)  # fine-tuning options for every column
    shares_pretraining_with: str = ""  # documentation and tests; the runner shares by identical overrides
    init_step: int = 0  # fine-tune from this pretraining step (figure5); 0 = the final checkpoint
    series: str = ""  # figure5: the line this row belongs to
    # figure5's last point: init_step is the run's last step, so it fine-tunes from the final checkpoint and
    # shares those jobs with the grids that fine-tune the same run (table5's BERT and LTR rows)
    final_checkpoint: bool = False
    random_init: bool = False  # the random-init floor: fine-tune `random:<run>` (the run's config, fresh weights)
    pretraining_flops: float = 0.0  # the run's total model FLOPs, where the grid sets it (objectives: equal FLOPs)

    @property
    def init_suffix(self) -> str:
        """'@STEP' for an intermediate checkpoint, '' for the final one (see `bert-jax finetune --init`)."""
        return f"@{self.init_step}" if self.init_step and not self.final_checkpoint else ""

    @property
    def init_prefix(self) -> str:
        """'random:' for the random-init floor (see `bert-jax finetune --init random:SOURCE`), else ''."""
        return "random:" if self.random_init else ""


@dataclasses.dataclass(frozen=True)
class FinetuneProtocol:
    learning_rates: tuple[float, ...]
    seeds: int
    epochs: int
    batch_size: int
    max_seq_len: dict  # task family ('glue', 'squad', 'conll2003') -> length
    max_train_examples: dict = dataclasses.field(default_factory=dict)  # task -> seeded random subset size
    max_eval_examples: dict = dataclasses.field(default_factory=dict)  # task -> first N dev examples
    squad: dict = dataclasses.field(default_factory=dict)  # doc_stride, max_query_len
    epochs_by_task: dict = dataclasses.field(default_factory=dict)  # task -> epochs, where not `epochs`

    def args(self, task: str) -> list[str]:
        family = task.split("/")[0]
        out = ["--learning_rates", ",".join(f"{lr:g}" for lr in self.learning_rates), "--seeds", str(self.seeds),
               "--epochs", str(self.epochs_by_task.get(task, self.epochs)), "--batch_size", str(self.batch_size)]
        if family in self.max_seq_len:
            out += ["--max_seq_len", str(self.max_seq_len[family])]
        if self.max_train_examples.get(task):
            out += ["--max_train_examples", str(self.max_train_examples[task])]
        if self.max_eval_examples.get(task):
            out += ["--max_eval_examples", str(self.max_eval_examples[task])]
        if family == "squad":
            out += [x for k, v in self.squad.items() for x in (f"--{k}", str(v))]
        return out


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    config: str  # the pretraining config file and variant
    pretrain: dict  # overrides every variant starts from
    size_rule: str  # how the paper's #L/#H/#A map to this scale (stated in every result file)
    resize: Callable[[tuple[int, int, int]], tuple[int, int, int]]
    finetune: FinetuneProtocol
    checkpoint_fractions: tuple[float, ...]  # figure5: fine-tune from these fractions of the pretraining steps
    data: DataSpec = DataSpec()
    phase2_config: str = ""  # paper scale: a second phase at seq 512 from phase one's params
    run_on_cpu: bool = True

    def model_overrides(self, size: tuple[int, int, int]) -> dict:
        layers, hidden, heads = self.resize(size)
        return {"model.num_layers": layers, "model.hidden_size": hidden, "model.num_heads": heads,
                "model.intermediate_size": 4 * hidden}

    @property
    def steps(self) -> int:
        return int(self.pretrain["train.steps"])


# ----------------------------------------------------------------------------------------- scales

# The paper: batch 256, lr 1e-4, 10k warm-up, 1M steps (90% at seq 128, then 10% at seq 512), a TPU pod slice.
PAPER_STEPS = 900_000  # phase one; phase two (configs/pretrain.py:base_phase2) adds 100k at seq 512
# BERT's 80/10/10 mix stated in every scale's runs, so table8's 80/10/10 row has the same overrides (and run) as
# table5's BERT_BASE: a run is named by a hash of its overrides, and a restated default would change it.
BERT_MASK_MIX = {"data.mask_ratio": 0.8, "data.keep_ratio": 0.1, "data.random_ratio": 0.1}
PAPER = Scale(
    name="paper", config="configs/pretrain.py:base", phase2_config="configs/pretrain.py:base_phase2",
    pretrain={"train.steps": PAPER_STEPS, "train.global_batch_size": 256, "optimizer.learning_rate": 1e-4,
              "optimizer.warmup_steps": 10_000, "data.seq_len": 128, "train.checkpoint_every": 100_000,
              "train.keep_checkpoints": 10, "distributed.enabled": True, "mesh.data": -1, "mesh.fsdp": 1,
              "model.dtype": "bfloat16", **BERT_MASK_MIX},
    size_rule="the paper's sizes; intermediate = 4 x hidden",
    resize=lambda size: size,
    finetune=FinetuneProtocol(learning_rates=(5e-5, 4e-5, 3e-5, 2e-5), seeds=5, epochs=3, batch_size=32,
                              max_seq_len={"glue": 128, "squad": 384, "conll2003": 128},
                              squad={"doc_stride": 128, "max_query_len": 64}),
    checkpoint_fractions=(0.2, 0.4, 0.6, 0.8, 1.0), run_on_cpu=False)

# Mini: 2 CPU cores, configs/pretrain.py:mini_text (pre-LN, no dropout, rotary positions, 40% masking 80/10/10, lr
# 2e-3 with 10% warm-up and linear decay, batch 32 x 128) on the Gutenberg + Wikipedia corpus with an 8k WordPiece
# vocab: measured to reach a held-out perplexity ratio of 0.29 within 2.1M tokens, where the first mini recipe (post-LN,
# dropout 0.1, learned positions, 4.1M tokens of 13 books + WikiText-2) never left the unigram plateau (~0.66)
# (experiments/README.md, "The mini recipe on real text", "Why the curve flattened"). Sizes: #layers / 3 (at least 1),
# hidden / 4, #heads / 4 (at least 1), intermediate 4 x hidden (BERT_BASE 12/768/12 -> 4/192/3): the heads keep
# BERT's size of 64: rotary positions give a head one frequency per pair of its features, and helped more with
# 3 heads of 64 than with 12 of 16 (held-out ratio 0.416 against 0.456, measured).
MINI_BATCH, MINI_SEQ = 32, 128
MINI_TOKENS = 8 * 2**20  # 8.4M pretraining tokens per run: 4x the budget the recipe was measured at
MINI_STEPS = MINI_TOKENS // (MINI_BATCH * MINI_SEQ)  # 2048
MINI = Scale(
    name="mini", config="configs/pretrain.py:mini_text",
    pretrain={"train.steps": MINI_STEPS, "train.global_batch_size": MINI_BATCH, "optimizer.learning_rate": 2e-3,
              "optimizer.warmup_steps": MINI_STEPS // 10, "data.seq_len": MINI_SEQ,
              "model.max_position_embeddings": MINI_SEQ, "data.mask_rate": 0.4,
              # the held-out curve 4 times per run on 512 held-out examples (16 batches), as the recipe probes
              "train.eval_every": MINI_STEPS // 4, "train.eval_batches": 512 // MINI_BATCH,
              # every figure5 point (checkpoint_fractions) is a saved checkpoint, and all of them are kept
              "train.checkpoint_every": MINI_STEPS // 8, "train.keep_checkpoints": 8,
              "train.log_every": 50, "train.progress_bar": False, **BERT_MASK_MIX},
    size_rule="#layers / 3 (at least 1), hidden / 4, #heads / 4 (at least 1: BERT's head size of 64), "
              "intermediate = 4 x hidden (12/768/12 -> 4/192/3)",
    resize=lambda size: (max(1, size[0] // 3), size[1] // 4, max(1, size[2] // 4)),
    finetune=FinetuneProtocol(
        learning_rates=(1e-3, 3e-4), seeds=3, epochs=2, batch_size=32,
        max_seq_len={"glue": 128, "squad": 128, "conll2003": 128},
        # SST-2: all 67,349 labels for 1 epoch: with 4,000 (2 epochs) pretrained and random weights tie at bag-of-words
        # level (0.759 vs 0.755), with all of them the recipe's checkpoint is above both (0.836 vs 0.815; experiments/
        # README.md, "With the whole SST-2 train set"). MRPC: all 3668; MNLI's 29,498 and QNLI's 95,914 built pairs:
        # seeded subsets; SQuAD: 1200 of the 87,599 reconstructed train questions. Every dev set is scored whole (SQuAD:
        # all 10,570 questions).
        max_train_examples={"glue/cola": 2000, "glue/mnli": 8000, "glue/qnli": 8000, "squad/v1.1": 1200},
        epochs_by_task={"glue/sst2": 1},
        squad={"doc_stride": 64, "max_query_len": 32}),
    checkpoint_fractions=(0.125, 0.25, 0.5, 0.75, 1.0),
    data=DataSpec(vocab_size=8192, heldout_every_book=29, heldout_every_wiki=25, dupe_factor=1, workers=2))

# Smoke: the CI run of the whole protocol in minutes on fixtures; numbers mean nothing.
SMOKE_STEPS = 8
SMOKE = Scale(
    name="smoke", config="configs/pretrain.py:tiny",
    pretrain={"train.steps": SMOKE_STEPS, "train.global_batch_size": 16, "optimizer.learning_rate": 2e-3,
              "optimizer.warmup_steps": 2, "data.seq_len": 64, "model.max_position_embeddings": 64,
              "train.eval_every": SMOKE_STEPS, "train.eval_batches": 0, "train.checkpoint_every": SMOKE_STEPS // 2,
              "train.keep_checkpoints": 3, "train.log_every": 4, "train.progress_bar": False,
              **BERT_MASK_MIX},
    size_rule="#layers / 6, hidden / 32, same #heads (12/768/12 -> 2/24/12)",
    resize=lambda size: (max(1, size[0] // 6), size[1] // 32, size[2]),
    finetune=FinetuneProtocol(learning_rates=(1e-3,), seeds=2, epochs=1, batch_size=16,
                              max_seq_len={"glue": 32, "squad": 64, "conll2003": 32},
                              max_train_examples={"glue/sst2": 64, "glue/mrpc": 64, "squad/v1.1": 32},
                              max_eval_examples={"glue/sst2": 64, "glue/mrpc": 64, "squad/v1.1": 32},
                              squad={"doc_stride": 32, "max_query_len": 16}),
    checkpoint_fractions=(0.5, 1.0),
    # a fixture of a few files still holds some out: every 3rd book and every 2nd Wikipedia file
    data=DataSpec(vocab_size=600, heldout_every_book=3, heldout_every_wiki=2, dupe_factor=1, min_frequency=1))

SCALE_BY_NAME = {s.name: s for s in (PAPER, MINI, SMOKE)}
CPU_SCALES = ("mini", "smoke")


@dataclasses.dataclass(frozen=True)
class Grid:
    name: str
    title: str
    source: str  # where the paper's numbers are
    scale: Scale
    variants: tuple[Variant, ...]
    all_columns: tuple[Column, ...]
    plot: str = ""  # 'figure5' | 'table6' | ''
    notes: tuple[str, ...] = ()
    floor: str = ""  # the row fine-tuned from random init, that every other row should beat

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.all_columns if self.scale.name in c.scales)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"grid {self.name} has no variant {name!r}")

    def pretrain_overrides(self, variant: Variant) -> dict:
        """Everything that defines the variant's pretraining run (data paths are added by the runner)."""
        return {**self.scale.pretrain, **self.scale.model_overrides(variant.size), **variant.pretrain}


def _scale(scale: str) -> Scale:
    if scale not in SCALE_BY_NAME:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return SCALE_BY_NAME[scale]


BERT = {"objectives": "mlm+nsp", "data.mode": "segment-pair"}
NO_NSP = {"objectives": "mlm", "data.mode": "segment-pair"}
LTR = {"objectives": "ltr", "data.mode": "segment-pair"}
GLUE_MINI_EXTRAS = ("mini", "smoke")
# The paper reports MRPC accuracy in its ablation tables (Table 6 heads its columns "Dev Set Accuracy", and its
# 12/768/12 row repeats Table 5's BERT_BASE 86.7); the learning rate is still chosen by F1, the task's metric.
MRPC = Column("MRPC", "glue/mrpc", metric="accuracy", note="accuracy")


def table5(scale: str) -> Grid:
    """BERT Table 5: the pretraining tasks. Same data (segment pairs) for every row; only the losses differ."""
    columns = (Column("MNLI-m", "glue/mnli"), Column("QNLI", "glue/qnli"), MRPC,
               Column("SST-2", "glue/sst2"), Column("SQuAD", "squad/v1.1", note="F1"),
               Column("CoLA", "glue/cola", scales=("mini",), note="MCC; not in the paper's table"))
    variants = (Variant("BERT_BASE", BERT), Variant("No NSP", NO_NSP), Variant("LTR & No NSP", LTR),
                Variant("+ BiLSTM", LTR, finetune={"variant": "bilstm"}, shares_pretraining_with="LTR & No NSP"))
    return Grid("table5", "BERT Table 5: ablation over the pretraining tasks (dev)", "Devlin et al. 2019, Table 5",
                _scale(scale), variants, columns)


TABLE6_SIZES = ((3, 768, 12), (6, 768, 3), (6, 768, 12), (12, 768, 12), (12, 1024, 16), (24, 1024, 16))


def table6(scale: str) -> Grid:
    """BERT Table 6: model size. Held-out MLM perplexity and dev accuracy."""
    columns = (Column("LM ppl", PERPLEXITY, note="held-out MLM perplexity"), Column("MNLI-m", "glue/mnli"),
               MRPC, Column("SST-2", "glue/sst2"))
    variants = tuple(Variant("/".join(map(str, size)), BERT, size=size) for size in TABLE6_SIZES)
    return Grid("table6", "BERT Table 6: ablation over model size", "Devlin et al. 2019, Table 6", _scale(scale),
                variants, columns, plot="table6",
                notes=("the paper's perplexity is on held-out training data (BooksCorpus + Wikipedia); ours is on "
                       "held-out books and Wikipedia files (whole files never trained on), so only the trend across "
                       "sizes compares",))


def figure5(scale: str) -> Grid:
    """BERT Figure 5: downstream accuracy after k pretraining steps, MLM (BERT_BASE) against LTR."""
    s = _scale(scale)
    steps = [int(round(f * s.steps)) for f in s.checkpoint_fractions]
    if s.phase2_config:  # the paper's 1M steps: phase one's checkpoints, the last point after phase two
        steps = [int(round(f * (s.steps + s.steps // 9))) for f in s.checkpoint_fractions]
    variants = tuple(Variant(f"{series} @ {step}", pretrain, init_step=step, series=series,
                             shares_pretraining_with=series if i else "", final_checkpoint=step == steps[-1])
                     for series, pretrain in (("MLM", BERT), ("LTR", LTR)) for i, step in enumerate(steps))
    columns = (Column("MNLI-m", "glue/mnli"), Column("SST-2", "glue/sst2", scales=GLUE_MINI_EXTRAS),
               dataclasses.replace(MRPC, scales=GLUE_MINI_EXTRAS))
    return Grid("figure5", "BERT Figure 5: accuracy against pretraining steps, MLM vs LTR",
                "Devlin et al. 2019, Figure 5 (a plot, no table: only its claims are recorded)", s, variants, columns,
                plot="figure5")


MASKING = (("80/10/10", 0.8, 0.1, 0.1), ("100/0/0", 1.0, 0.0, 0.0), ("80/0/20", 0.8, 0.0, 0.2),
           ("80/20/0", 0.8, 0.2, 0.0), ("0/20/80", 0.0, 0.2, 0.8), ("0/0/100", 0.0, 0.0, 1.0))


def table8(scale: str) -> Grid:
    """BERT Table 8: what replaces a selected token (MASK / SAME / RND)."""
    features = {"variant": "features", "features": "concat_last_four"}  # the paper's best feature-based choice
    columns = (Column("MNLI", "glue/mnli"), Column("NER fine-tune", "conll2003"),
               Column("NER feature-based", "conll2003", finetune=features),
               Column("SST-2 fine-tune", "glue/sst2", scales=GLUE_MINI_EXTRAS, note="stands in for NER"),
               Column("SST-2 feature-based", "glue/sst2", finetune=features, scales=GLUE_MINI_EXTRAS,
                      note="stands in for NER"))
    variants = tuple(Variant(name, {**BERT, "data.mask_ratio": mask, "data.keep_ratio": same,
                                    "data.random_ratio": rnd}) for name, mask, same, rnd in MASKING)
    return Grid("table8", "BERT Table 8: masking strategies (MASK/SAME/RND)", "Devlin et al. 2019, Table 8",
                _scale(scale), variants, columns)


def roberta(scale: str) -> Grid:
    """RoBERTa Table 2: input formats and NSP. SENTENCE-PAIR needs the 'sentence-pair' data mode."""
    s = _scale(scale)
    if s.name == "paper":  # RoBERTa's Table 2: BERT_BASE, seq 512 throughout, batch 256, 1M steps, beta2 0.98
        s = dataclasses.replace(s, config="configs/roberta.py:base", phase2_config="",
                                pretrain={**s.pretrain, "train.steps": 1_000_000, "data.seq_len": 512})
    columns = (Column("SQuAD 1.1", "squad/v1.1", note="F1"), Column("SQuAD 2.0", "squad/v2.0", note="F1"),
               Column("MNLI-m", "glue/mnli"), Column("SST-2", "glue/sst2"), Column("RACE", "race"),
               dataclasses.replace(MRPC, scales=GLUE_MINI_EXTRAS, note="accuracy; not in the paper's table"))
    variants = (Variant("SEGMENT-PAIR", {"objectives": "mlm+nsp", "data.mode": "segment-pair"}),
                Variant("SENTENCE-PAIR", {"objectives": "mlm+nsp", "data.mode": "sentence-pair"}),
                Variant("FULL-SENTENCES", {"objectives": "mlm", "data.mode": "full-sentences"}),
                Variant("DOC-SENTENCES", {"objectives": "mlm", "data.mode": "doc-sentences"}))
    return Grid("roberta", "RoBERTa Table 2: input format and NSP", "Liu et al. 2019, Table 2", s, variants, columns,
                notes=("RoBERTa grows DOC-SENTENCES batches to match FULL-SENTENCES' tokens; we keep one batch size",))


GRID_FUNCTIONS = {"table5": table5, "table6": table6, "figure5": figure5, "table8": table8, "roberta": roberta}
# Grids in their own module, found by name on first use as objectives are (bert_jax/objectives/base.py): the
# objectives grid sizes its runs by the objectives' FLOPs, which imports jax, and importing this module (the CLI's
# parser does) must not start jax before `configure_cpu_runtime` sets its device count.
GRID_MODULES = {"objectives": "bert_jax.experiments.objectives_grid"}


def get_grid(name: str, scale: str) -> Grid:
    if name in GRID_MODULES:
        return importlib.import_module(GRID_MODULES[name]).grid(scale)
    if name not in GRID_FUNCTIONS:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    return GRID_FUNCTIONS[name](scale)
