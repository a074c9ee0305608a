"""`bert-jax experiment`: grids build the paper's variants, the sentence-pair data mode, the table writer on recorded
results, plots, paper-scale commands, and a smoke run of table5 on fixtures (_experiment_fixtures.py; data prep:
test_experiment_data.py)."""
import csv
import io
import json
import os
import random
import subprocess
import sys

import matplotlib.image as plt_image
import numpy as np
import pytest

from bert_jax.data.instances import MODES, InstanceConfig, build_unit
from bert_jax.data.corpus import RawDocument
from bert_jax.data.tokenizer import load_tokenizer, save_vocab
from bert_jax.experiments import grids, main as exp_main, paper, runner, tables
from bert_jax.experiments.plots import write_plots

from _experiment_fixtures import write_shared_data

# ----------------------------------------------------------------------------------------- grids


def overrides(grid, name):
    return grid.pretrain_overrides(grid.variant(name))


def test_table5_variants_objectives_and_shared_pretraining():
    grid = grids.table5("mini")
    assert [v.name for v in grid.variants] == ["BERT_BASE", "No NSP", "LTR & No NSP", "+ BiLSTM"]
    assert [overrides(grid, v.name)["objectives"] for v in grid.variants] == ["mlm+nsp", "mlm", "ltr", "ltr"]
    assert {overrides(grid, v.name)["data.mode"] for v in grid.variants} == {"segment-pair"}
    assert grid.variant("+ BiLSTM").finetune == {"variant": "bilstm"}
    runs = runner.pretraining_runs(grid)
    assert [r.variants for r in runs] == [("BERT_BASE",), ("No NSP",), ("LTR & No NSP", "+ BiLSTM")]
    # Mini sizes: layers / 3, hidden / 4, heads / 4 (heads of 64).
    o = overrides(grid, "BERT_BASE")
    assert (o["model.num_layers"], o["model.hidden_size"], o["model.num_heads"], o["model.intermediate_size"]) == \
        (4, 192, 3, 768)
    assert [c.key for c in grid.columns] == ["MNLI-m", "QNLI", "MRPC", "SST-2", "SQuAD", "CoLA"]
    assert [c.key for c in grids.table5("paper").columns] == ["MNLI-m", "QNLI", "MRPC", "SST-2", "SQuAD"]
    assert grids.table5("paper").pretrain_overrides(grid.variant("BERT_BASE"))["model.hidden_size"] == 768


def test_table6_sizes_keep_the_papers_ratios():
    grid = grids.table6("mini")
    assert [v.name for v in grid.variants] == ["3/768/12", "6/768/3", "6/768/12", "12/768/12", "12/1024/16",
                                               "24/1024/16"]
    got = {}
    for variant in grid.variants:
        o = grid.pretrain_overrides(variant)
        got[variant.name] = (o["model.num_layers"], o["model.hidden_size"], o["model.num_heads"],
                             o["model.intermediate_size"])
    assert got == {"3/768/12": (1, 192, 3, 768), "6/768/3": (2, 192, 1, 768), "6/768/12": (2, 192, 3, 768),
                   "12/768/12": (4, 192, 3, 768), "12/1024/16": (4, 256, 4, 1024), "24/1024/16": (8, 256, 4, 1024)}
    # BERT's head size of 64 wherever the paper's is (6/768/3's heads of 256 become one head of 192)
    assert all(h // a == 64 for name, (_, h, a, _) in got.items() if name != "6/768/3")
    assert len(runner.pretraining_runs(grid)) == 6
    # its 80/10/10 row is BERT's own mix: the same run as table5's BERT_BASE at every scale, not a seventh run
    for scale in ("paper", "mini", "smoke"):
        t5, t8 = grids.table5(scale), grids.table8(scale)
        assert runner.run_id(overrides(t8, "80/10/10")) == runner.run_id(overrides(t5, "BERT_BASE"))
        assert runner.run_id(overrides(t8, "100/0/0")) != runner.run_id(overrides(t5, "BERT_BASE"))
    assert grid.columns[0].task == grids.PERPLEXITY and grid.plot == "table6"
    # 12/768/12 is table5's BERT_BASE: one run serves both grids.
    assert runner.run_id(overrides(grid, "12/768/12")) == runner.run_id(overrides(grids.table5("mini"), "BERT_BASE"))


def test_mini_scale_runs_the_measured_recipe():
    """The run's resolved config: configs/pretrain.py:mini_text under the grid's overrides."""
    from bert_jax import configlib

    grid = grids.table5("mini")
    assert grid.scale.config == "configs/pretrain.py:mini_text"
    assert grids.MINI_TOKENS == 8 * 2**20 and grids.MINI_STEPS == 2048
    run = runner.pretraining_runs(grid)[0]
    config = configlib.load_config(grid.scale.config, runner._config_args(
        {**run.overrides, "data.path": "/train", "data.eval_path": "/heldout"}))
    m, d, t = config.model, config.data, config.train
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (4, 192, 3, 768)
    assert (m.position_embedding, m.norm, m.dropout_rate, m.attention_dropout_rate) == ("rotary", "pre", 0.0, 0.0)
    assert (d.mask_rate, d.mask_ratio, d.random_ratio, d.keep_ratio, d.seq_len) == (0.4, 0.8, 0.1, 0.1, 128)
    assert t.steps * t.global_batch_size * d.seq_len == grids.MINI_TOKENS
    assert config.optimizer.learning_rate == 2e-3 and config.optimizer.warmup_steps == t.steps // 10
    assert t.eval_batches * t.global_batch_size == 512 and t.steps // t.eval_every == 4
    assert (d.path, d.eval_path, config.objectives) == ("/train", "/heldout", "mlm+nsp")
    # table8 varies only the mix; the rate stays the recipe's 40%
    t8 = grids.table8("mini")
    assert {t8.pretrain_overrides(v)["data.mask_rate"] for v in t8.variants} == {0.4}
    ft = grids.MINI.finetune
    assert (ft.learning_rates, ft.seeds, ft.epochs) == ((1e-3, 3e-4), 3, 2)


def test_figure5_fine_tunes_table5_runs_at_intermediate_steps():
    grid = grids.figure5("mini")
    steps = [int(f * grids.MINI_STEPS) for f in grids.MINI.checkpoint_fractions]
    assert [(v.series, v.init_step) for v in grid.variants] == [("MLM", s) for s in steps] + [("LTR", s) for s in steps]
    runs = runner.pretraining_runs(grid)
    t5 = grids.table5("mini")
    assert [r.run_id for r in runs] == [runner.run_id(overrides(t5, "BERT_BASE")),
                                        runner.run_id(overrides(t5, "LTR & No NSP"))]
    checkpoint_every = grids.MINI.pretrain["train.checkpoint_every"]
    assert all(s % checkpoint_every == 0 for s in steps)  # every point is a saved checkpoint
    assert grids.MINI.pretrain["train.keep_checkpoints"] >= len(steps)  # and none is deleted
    assert grid.plot == "figure5"
    assert paper.PAPER_NUMBERS["figure5"] == {} and paper.PAPER_CLAIMS["figure5"]
    # the last point is the final checkpoint: its fine-tuning jobs are table5's, not run twice; the others are not
    sst2 = next(c for c in grid.columns if c.key == "SST-2")
    t5_sst2 = next(c for c in t5.columns if c.key == "SST-2")
    bert = next(v for v in t5.variants if v.name == "BERT_BASE")
    last, first = grid.variants[len(steps) - 1], grid.variants[0]
    assert last.final_checkpoint and last.init_suffix == "" and first.init_suffix == f"@{steps[0]}"
    assert runner.finetune_dir("W", last, sst2, runs[0].run_id) == runner.finetune_dir("W", bert, t5_sst2,
                                                                                        runs[0].run_id)
    assert runner.finetune_dir("W", first, sst2, runs[0].run_id).startswith(f"W/finetune/{runs[0].run_id}@")


def test_table8_masking_ratios():
    grid = grids.table8("mini")
    assert [v.name for v in grid.variants] == ["80/10/10", "100/0/0", "80/0/20", "80/20/0", "0/20/80", "0/0/100"]
    for variant in grid.variants:
        o = grid.pretrain_overrides(variant)
        mask, same, rnd = (int(x) / 100 for x in variant.name.split("/"))
        assert (o["data.mask_ratio"], o["data.keep_ratio"], o["data.random_ratio"]) == (mask, same, rnd)
    assert len(runner.pretraining_runs(grid)) == 6
    features = [c for c in grid.columns if c.finetune.get("variant") == "features"]
    assert [c.key for c in features] == ["NER feature-based", "SST-2 feature-based"]


def test_roberta_formats():
    grid = grids.roberta("mini")
    got = {v.name: (overrides(grid, v.name)["objectives"], overrides(grid, v.name)["data.mode"]) for v in grid.variants}
    assert got == {"SEGMENT-PAIR": ("mlm+nsp", "segment-pair"), "SENTENCE-PAIR": ("mlm+nsp", "sentence-pair"),
                   "FULL-SENTENCES": ("mlm", "full-sentences"), "DOC-SENTENCES": ("mlm", "doc-sentences")}
    assert all(mode in MODES for _, mode in got.values())
    assert grids.roberta("paper").scale.config == "configs/roberta.py:base"


def test_every_grid_has_the_papers_numbers_for_its_rows():
    for name in grids.GRIDS:
        grid = grids.get_grid(name, "paper")
        for variant in grid.variants:
            for column in grid.columns:
                number = paper.paper_number(name, variant.name, column.key)
                assert (number is None) == (name in ("figure5", "objectives")), (name, variant.name, column.key)
    assert paper.paper_number("table5", "+ BiLSTM", "SQuAD") == 84.9
    assert paper.paper_number("table6", "24/1024/16", "LM ppl") == 3.23
    with pytest.raises(ValueError, match="unknown grid"):
        grids.get_grid("table9", "mini")


def test_paper_scale_writes_commands(tmp_path, capsys):
    assert exp_main.main(["table5", "--scale", "paper", "--workdir", str(tmp_path)]) == 0
    text = (tmp_path / "results" / "table5_paper_commands.sh").read_text()
    assert text.count("bert-jax pretrain --config configs/pretrain.py:base ") == 3  # + BiLSTM shares LTR's
    assert text.count("configs/pretrain.py:base_phase2") == 3
    assert "--config.train.global_batch_size=256" in text and "--config.optimizer.learning_rate=0.0001" in text
    assert text.count("--variant bilstm") == 5 and "--max_seq_len 384" in text
    configs = json.loads((tmp_path / "results" / "table5_paper_configs.json").read_text())
    assert len(configs) == 3 and all(c["overrides"]["train.steps"] == 900_000 for c in configs.values())
    assert not (tmp_path / "pretrain").exists()  # nothing ran


# ----------------------------------------------------------------------------------------- sentence-pair mode


def test_sentence_pair_mode_pairs_single_sentences():
    words = [f"w{i}" for i in range(40)]
    vocab_dir = save_vocab(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sp_vocab_{os.getpid()}"),
                           ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + words, lowercase=True)
    tok = load_tokenizer(vocab_dir)
    rnd = random.Random(0)
    docs = []
    for d in range(30):
        sentences = [" ".join(rnd.choice(words) for _ in range(rnd.randint(2, 6))) + " ." for _ in range(6)]
        docs.append(RawDocument(origin=d, parts=tuple(sentences), presplit=True))
    arrays, stats = build_unit(docs, tok, InstanceConfig(mode="sentence-pair", seq_len=32), seed=0, unit_index=0)
    flat = {}
    for d, doc in enumerate(docs):  # sentence text -> (document, position); ids decide membership
        for i, s in enumerate(doc.parts):
            flat.setdefault(tuple(tok.encode_flat([s])[0].tolist()), []).append((d, i))
    labels = arrays["sentence_label"]
    assert set(np.unique(labels)) == {0, 1} and 0.35 < labels.mean() < 0.65
    for row, label in zip(range(len(labels)), labels):
        ids = arrays["input_ids"][row, :arrays["length"][row]].tolist()
        seps = [i for i, t in enumerate(ids) if t == tok.sep_id]
        a, b = tuple(ids[1:seps[0]]), tuple(ids[seps[0] + 1:seps[1]])
        assert len(seps) == 2 and a in flat and b in flat  # each segment is exactly one sentence
        if label == 0:
            assert any((d, i + 1) in flat[b] for d, i in flat[a])
        else:
            assert any(db != da for da, _ in flat[a] for db, _ in flat[b])
    again, _ = build_unit(docs, tok, InstanceConfig(mode="sentence-pair", seq_len=32), seed=0, unit_index=0)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return write_shared_data(str(tmp_path_factory.mktemp("shared")))


# ----------------------------------------------------------------------------------------- tables and plots


def recorded_results(grid):
    """A results record as run_grid writes it, with made-up scores."""
    rows = []
    for i, variant in enumerate(grid.variants):
        cells = {}
        for j, column in enumerate(grid.columns):
            number = paper.paper_number(grid.name, variant.name, column.key)
            if column.key in ("MNLI-m", "QNLI", "MNLI"):
                cells[column.key] = {"status": "n/a", "reason": "n/a (no train set)", "paper": number}
            else:
                scores = [50.0 + i + j + s for s in (0.0, 1.0, 3.0)]
                cells[column.key] = {"status": "ok", "median": scores[1], "min": scores[0], "max": scores[2],
                                     "spread": 1.5, "seeds": 3, "scores": scores, "metric": "accuracy",
                                     "paper": number}
        rows.append({"variant": variant.name, "model": "/".join(map(str, grid.scale.resize(variant.size))),
                     "paper_model": "/".join(map(str, variant.size)), "pretraining_run": f"run{i}",
                     "shares_pretraining_with": variant.shares_pretraining_with, "init_step": variant.init_step,
                     "series": variant.series, "cells": cells})
    return {"grid": grid.name, "scale": grid.scale.name, "title": grid.title, "source": grid.source,
            "date": "2026-01-01 00:00", "header": runner.header(grid, None),
            "columns": [{"key": c.key, "task": c.task, "metric": c.metric, "note": c.note} for c in grid.columns],
            "rows": rows, "paper_claims": list(paper.PAPER_CLAIMS[grid.name]), "notes": list(grid.notes),
            "timing": {"wall_seconds": 60.0, "load_average_start": [1.0], "load_average_end": [2.0], "cpu_count": 2}}


def test_table_writer_on_recorded_results(tmp_path):
    grid = grids.table5("mini")
    results = recorded_results(grid)
    paths = tables.write_tables(results, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["table5_mini.csv", "table5_mini.json", "table5_mini.md"]
    md = open(paths["md"]).read()
    header = next(line for line in md.splitlines() if line.startswith("| variant"))
    for column in grid.columns:
        assert f"{column.key} paper" in header
    body = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [line.split(" | ")[0][2:] for line in body] == [v.name for v in grid.variants]
    bert = body[0].split(" | ")
    assert bert[2] == "n/a (no train set)" and bert[3] == "84.4"  # MNLI-m: ours n/a beside the paper's
    assert bert[6] == "53.0 ± 1.5 (3 seeds)" and bert[7] == "86.7"  # MRPC: median ± half-range beside 86.7
    assert bert[-1] == "– |"  # CoLA: no paper number
    assert "12/768/12 -> 4/192/3" in md and "+ BiLSTM fine-tunes LTR & No NSP's pretrained model" in md
    rows = list(csv.DictReader(io.StringIO(open(paths["csv"]).read())))
    assert [r["variant"] for r in rows] == [v.name for v in grid.variants]
    assert rows[3]["SQuAD paper"] == "84.9" and rows[3]["QNLI status"] == "n/a (no train set)"
    assert float(rows[0]["SST-2 median"]) == 54.0 and rows[0]["SST-2 seeds"] == "3"
    assert json.load(open(paths["json"]))["rows"][0]["cells"]["SQuAD"]["paper"] == 88.5


def test_cell_from_summary_uses_the_chosen_learning_rate():
    settings = [{"setting": {"learning_rate": lr, "seed": s}, "dev": {"f1": f1, "accuracy": acc}}
                for lr, s, f1, acc in ((1e-4, 0, 0.8, 0.7), (1e-4, 1, 0.9, 0.75), (1e-4, 2, 0.6, 0.72),
                                       (3e-4, 0, 0.1, 0.1), (3e-4, 1, 0.2, 0.2), (3e-4, 2, 0.3, 0.3))]
    summary = {"task": "glue/mrpc", "metric": "f1", "best": {"learning_rate": 1e-4}, "settings": settings}
    cell = runner.cell_from_summary(summary, "accuracy")
    assert cell["seeds"] == 3 and cell["median"] == pytest.approx(72.0) and cell["spread"] == pytest.approx(2.5)
    assert runner.cell_from_summary(summary, "")["median"] == pytest.approx(80.0)
    squad = {**summary, "task": "squad/v1.1"}  # SQuAD's official metrics are percentages already
    assert runner.cell_from_summary(squad, "")["median"] == pytest.approx(0.8)


def test_plots_are_written(tmp_path):
    for name, expected in (("figure5", ["figure5_mini.png"]), ("table6", ["table6_mini_perplexity.png"])):
        grid = grids.get_grid(name, "mini")
        results = recorded_results(grid)
        if name == "table6":
            for i, row in enumerate(results["rows"]):
                row["cells"]["LM ppl"].update(median=30.0 - i, metric="mlm_perplexity")
        paths = write_plots(results, grid.plot, str(tmp_path))
        assert [os.path.basename(p) for p in paths] == expected
        image = plt_image.imread(paths[0])[..., :3]
        drawn = (image < 0.9).any(-1)  # not (near) white: axes, labels, lines
        assert 0.01 < drawn.mean() < 0.5, drawn.mean()
        # the data is what is drawn: other numbers draw another picture
        for row in results["rows"]:
            for cell in row["cells"].values():
                if isinstance(cell.get("median"), (int, float)):
                    cell["median"] = cell["median"] * 0.5 + 7.0
        os.makedirs(tmp_path / name, exist_ok=True)
        other = write_plots(results, grid.plot, str(tmp_path / name))
        assert not np.array_equal(plt_image.imread(other[0]), plt_image.imread(paths[0]))


# ----------------------------------------------------------------------------------------- smoke run


def run_cli(argv, log_path):
    """`bert-jax experiment` in a fresh process, as CI and users run it (its own device count and compile cache)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    with open(log_path, "a") as log:
        return subprocess.run([sys.executable, "-m", "bert_jax.cli", "experiment", *argv], stdout=log,
                              stderr=subprocess.STDOUT, env=env, timeout=900).returncode


@pytest.mark.slow
def test_table5_smoke_run_writes_every_file(shared, tmp_path, capsys):
    workdir = str(tmp_path / "exp")
    argv = ["table5", "--scale", "smoke", "--workdir", workdir, "--shared_data", shared]
    assert exp_main.main(argv + ["--dry_run"]) == 0
    assert "[new]" in capsys.readouterr().out
    log_path = str(tmp_path / "cli.log")
    assert run_cli(argv, log_path) == 0, open(log_path).read()[-3000:]
    results_dir = os.path.join(workdir, "results")
    assert sorted(os.listdir(results_dir)) == ["table5_smoke.csv", "table5_smoke.json", "table5_smoke.md"]
    results = json.load(open(os.path.join(results_dir, "table5_smoke.json")))
    grid = grids.table5("smoke")
    assert [r["variant"] for r in results["rows"]] == [v.name for v in grid.variants]
    for row in results["rows"]:
        assert set(row["cells"]) == {c.key for c in grid.columns}
        assert row["cells"]["QNLI"]["status"] == "n/a" and row["cells"]["MNLI-m"]["status"] == "n/a"
        for key in ("MRPC", "SST-2", "SQuAD"):
            cell = row["cells"][key]
            assert cell["status"] == "ok" and cell["seeds"] == 2 and 0.0 <= cell["median"] <= 100.0, (row, key)
    assert len(os.listdir(os.path.join(workdir, "pretrain"))) == 3  # + BiLSTM reuses LTR's run
    data = results["header"]["data"]  # the fixture corpus split by file, SQuAD trained on its train file
    assert data["squad"].startswith("train squad/train-v1.1-reconstructed.json")
    assert data["heldout_text"].startswith("2 books") and "2 Wikipedia files" in data["heldout_text"]
    built = sorted(os.listdir(os.path.join(workdir, "data", "heldout")))
    assert len(built) == 1 and built[0].startswith("segment-pair-64-v600-d1-")
    md = open(os.path.join(results_dir, "table5_smoke.md")).read()
    assert all(f"| {v.name} |" in md for v in grid.variants)
    # A rerun skips everything finished and reproduces the table.
    log_lines = len(open(os.path.join(workdir, "experiment.log")).read().splitlines())
    assert run_cli(argv, log_path) == 0, open(log_path).read()[-3000:]
    new_lines = open(os.path.join(workdir, "experiment.log")).read().splitlines()[log_lines:]
    assert not any(line.split("] ", 1)[1].startswith("finetune ") for line in new_lines)
    assert sum("finished before, skipped" in line for line in new_lines) == 3
    again = json.load(open(os.path.join(results_dir, "table5_smoke.json")))
    assert [r["cells"] for r in again["rows"]] == [r["cells"] for r in results["rows"]]


def test_a_preempted_pretraining_run_stops_the_grid(tmp_path, monkeypatch):
    """pretrain.run returns normally after SIGTERM with its step saved; the grid must stop there (exit 0, resume
    on the next call), not log the run as finished and start the next one."""
    from bert_jax.train import pretrain

    grid = grids.table5("smoke")
    run = runner.pretraining_runs(grid)[0]
    messages = []

    class Data:
        def pretraining(self, mode, seq_len, log):
            return str(tmp_path / "train"), str(tmp_path / "eval")

    monkeypatch.setattr(pretrain, "run", lambda config, workdir: {"step": 3.0, "loss": 7.0})
    with pytest.raises(runner.Preempted):
        runner.pretrain_run(grid, run, str(tmp_path), Data(), messages.append)
    assert "preempted at step 3" in messages[-1] and "rerun the same command" in messages[-1]


def test_context_use_conditions_touch_only_the_unmasked_words():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    from context_use import conditions

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(2, 12)).astype(np.int32)
    ids[:, 0], ids[:, 6], ids[1, 9:] = 2, 3, 0  # [CLS], [SEP], row 1 padded
    ids[0, 3] = ids[1, 2] = 4  # [MASK] at targets
    batch = {"input_ids": ids, "input_mask": (ids != 0).astype(np.int32),
             "masked_positions": np.array([[3, 5], [2, 0]]), "masked_weights": np.array([[1.0, 1.0], [1.0, 0.0]])}
    out = conditions(batch, rng, vocab_size=100)
    np.testing.assert_array_equal(out["intact"], ids)
    fixed = np.zeros(ids.shape, bool)
    fixed[:, [0, 6]] = True
    fixed[0, [3, 5]] = fixed[1, 2] = True
    fixed[1, 9:] = True
    for name in ("shuffled", "random"):
        np.testing.assert_array_equal(out[name][fixed], ids[fixed])  # targets, specials and padding stay
    for row in range(2):
        free = ~fixed[row]
        assert sorted(out["shuffled"][row][free]) == sorted(ids[row][free])  # the same bag of words
        assert not np.array_equal(out["shuffled"][row][free], ids[row][free])  # in another order
    assert (out["random"][~fixed] != ids[~fixed]).mean() > 0.8


def test_linear_probe_fits_a_separable_direction_and_scores_chance_on_noise():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    from linear_probe import logistic_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20))
    y = (x[:, 3] - 0.5 * x[:, 7] > 0).astype(int)
    assert logistic_probe(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = rng.normal(size=(600, 20))
    assert abs(logistic_probe(noise[:400], y[:400], noise[400:], y[400:]) - 0.5) < 0.12


def test_finetune_protocol_gives_each_task_its_epochs_and_subset():
    protocol = grids.FinetuneProtocol(learning_rates=(1e-3, 3e-4), seeds=3, epochs=2, batch_size=32,
                                      max_seq_len={"glue": 128}, max_train_examples={"glue/sst2": 16000},
                                      epochs_by_task={"glue/sst2": 1})
    sst2, mrpc = protocol.args("glue/sst2"), protocol.args("glue/mrpc")
    assert sst2[sst2.index("--epochs") + 1] == "1" and sst2[sst2.index("--max_train_examples") + 1] == "16000"
    assert mrpc[mrpc.index("--epochs") + 1] == "2" and "--max_train_examples" not in mrpc
    assert sst2[sst2.index("--learning_rates") + 1] == "0.001,0.0003" and sst2[sst2.index("--seeds") + 1] == "3"
