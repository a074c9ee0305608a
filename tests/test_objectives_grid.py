"""The objectives grid: equal pretraining FLOPs per row, the teacher's run first, the random-init floor, the dry
run, the table's floor marks and the score-against-FLOPs plot's data."""
import pytest

from bert_jax.experiments import grids, main as exp_main, runner, tables
from bert_jax.experiments.objectives_grid import REFERENCE, step_flops
from bert_jax.experiments.plots import plot_objectives


@pytest.fixture(scope="module")
def grid():
    return grids.get_grid("objectives", "smoke")


def test_every_row_has_equal_pretraining_flops_within_rounding(grid):
    names = [v.name for v in grid.variants]
    assert names == ["MLM", "MLM+NSP", "MLM+SOP", "SpanBERT", "ELECTRA", "XLNet PLM", "T5 span corruption", "LTR",
                     "Distillation", "Random init"]
    budget = grid.scale.steps * step_flops(grid.scale, grid.pretrain_overrides(grid.variant(REFERENCE)))
    for v in grid.variants:
        per_step = step_flops(grid.scale, grid.pretrain_overrides(v))
        assert v.pretraining_flops == pytest.approx(v.pretrain["train.steps"] * per_step)
        assert abs(v.pretraining_flops - budget) <= per_step / 2 + 1e-6, v.name  # steps rounded to the nearest
        assert v.pretrain["train.eval_every"] == v.pretrain["train.steps"]  # the ratio is read at the last step
    # the extra networks cost steps: fewer than MLM+NSP for ELECTRA, PLM, T5, SBO and the teacher's forward
    fewer = {"SpanBERT", "ELECTRA", "XLNet PLM", "T5 span corruption", "LTR", "Distillation"}
    assert all(grid.variant(n).pretrain["train.steps"] < grid.scale.steps for n in fewer)
    assert [c.key for c in grid.columns] == ["MNLI-m", "QNLI", "MRPC", "SST-2", "SQuAD", "Held-out ratio"]


def test_the_teacher_run_comes_first_and_the_floor_shares_mlm_nsp(grid, tmp_path):
    runs = runner.pretraining_runs(grid)
    order = [r.variants for r in runs]
    assert order.index(("MLM",)) < order.index(("Distillation",))
    assert ("MLM+NSP", "Random init") in order and len(runs) == 9
    distill = next(r for r in runs if r.variants == ("Distillation",))
    teacher = next(r for r in runs if r.variants == ("MLM",))
    assert runner.needs(grid, distill) == ["MLM"]
    resolved = runner.resolve_run_dirs(grid, distill, str(tmp_path))
    assert resolved["objective_options.distill.teacher"] == str(tmp_path / "pretrain" / teacher.run_id)
    # the run id does not depend on the workdir
    assert distill.run_id == runner.run_id(grid.pretrain_overrides(grid.variant("Distillation")))
    floor = grid.variant("Random init")
    assert floor.random_init and floor.init_prefix == "random:" and grid.floor == "Random init"
    column = grid.columns[0]
    rid = runner.run_id(grid.pretrain_overrides(floor))
    assert runner.finetune_dir("w", floor, column, rid) != runner.finetune_dir("w", grid.variant("MLM+NSP"), column,
                                                                                rid)
    # a failed teacher fails the student without running it
    status = runner.pretrain_run(grid, distill, str(tmp_path), None, lambda m: None,
                                 {teacher.run_id: {"status": "failed"}})
    assert status["status"] == "failed" and "MLM" in status["error"]


def test_dry_run_plans_every_row(tmp_path, capsys):
    assert exp_main.main(["objectives", "--scale", "smoke", "--workdir", str(tmp_path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.count("  pretrain ") == 9 and "FLOPs" in out and "after MLM" in out
    for name in ("ELECTRA", "XLNet PLM", "T5 span corruption", "Distillation", "Random init"):
        assert f"  {name} / Held-out ratio: from the pretraining run's eval" in out


def test_paper_commands_resolve_the_teacher_and_the_random_init():
    lines, _ = exp_main.paper_commands("objectives")
    text = "\n".join(lines)
    assert "{run:" not in text and "--config.objective_options.distill.teacher=\"$OUT/pretrain/mlm_segment-pair" in text
    assert "--init \"random:$OUT/pretrain/mlm+nsp_" in text


def _results(grid):
    rows = []
    for i, v in enumerate(grid.variants):
        cells = {c.key: {"status": "ok", "median": 60.0 + i, "min": 59.0 + i, "max": 61.0 + i, "spread": 1.0,
                         "seeds": 3, "metric": "accuracy"} for c in grid.columns}
        rows.append({"variant": v.name, "model": "2/24/12", "pretrain": v.pretrain, "random_init": v.random_init,
                     "pretraining_flops": v.pretraining_flops, "shares_pretraining_with": v.shares_pretraining_with,
                     "cells": cells})
    rows[0]["cells"]["SQuAD"]["median"] = 1.0  # MLM below the floor on SQuAD
    return {"grid": "objectives", "scale": "smoke", "title": grid.title, "source": grid.source, "rows": rows,
            "columns": [{"key": c.key, "task": c.task, "metric": c.metric, "note": c.note} for c in grid.columns],
            "floor": grid.floor, "notes": list(grid.notes), "paper_claims": []}


def test_table_marks_cells_at_or_below_the_floor_and_the_plot_draws_score_against_flops(grid, tmp_path):
    results = _results(grid)
    floor_median = 60.0 + len(grid.variants) - 1
    low = tables.below_floor(results)
    assert ("MLM", "SQuAD") in low and all(v != "Random init" for v, _ in low)
    assert len(low) == sum(1 for r in results["rows"][:-1] for c in grid.columns
                           if r["cells"][c.key]["median"] <= floor_median)
    path, points = plot_objectives(results, str(tmp_path / "o.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    squad = points["SQuAD"]
    assert len(squad) == len(grid.variants) - 1  # every pretrained row; the floor is the dashed line
    assert (grid.variant("MLM").pretraining_flops, 1.0, "MLM") in squad
    assert all(f == grid.variant(name).pretraining_flops for f, _, name in squad)
