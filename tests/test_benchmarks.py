"""Smoke test of benchmarks/train_step.py: the --quick run (tiny shape, torch peer) and the shared inputs."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_step.py")


def _load_harness():
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_inputs_follow_the_spec():
    bench = _load_harness()
    shape = bench.SHAPES["mini"]
    a, b = bench.make_inputs(shape, 0), bench.make_inputs(shape, 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # seeded: every framework sees the same batch
    real = shape.seq - shape.pad
    assert shape.pad == 13 and shape.max_predictions == 19 and shape.masked_per_row == 17
    assert (a["input_mask"].sum(1) == real).all() and (a["input_ids"][:, real:] == bench.PAD).all()
    assert a["masked_positions"].shape == (shape.batch, 19) and (a["masked_weights"].sum(1) == 17).all()
    used = a["masked_positions"][:, :17]
    assert (used >= 1).all() and (used < real).all()
    assert all(len(set(row)) == 17 for row in used)  # distinct positions per row
    rows = np.arange(shape.batch)[:, None]
    assert (a["input_ids"][rows, used] == bench.MASK).all()
    # The peers' per-position labels carry exactly the masked ids, -100 elsewhere.
    assert ((a["mlm_labels"] != -100).sum(1) == 17).all()
    assert np.array_equal(a["mlm_labels"][rows, used], a["masked_ids"][:, :17])
    assert set(np.unique(a["sentence_label"])) <= {0, 1}


def test_quick_run_writes_the_schema_and_sane_losses(tmp_path):
    out = tmp_path / "quick.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one plain CPU device, as a user runs it
    traces = tmp_path / "traces"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out), "--profile", str(traces),
                           "--profile-steps", "1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("date", "device", "cpu_count", "versions", "loadavg_start", "loadavg_end", "matmul_peak_gflops",
                "matmul_peak_gflops_after", "peak_gflops_used", "settings", "rows"):
        assert key in result, key
    assert result["versions"]["jax"] and result["peak_gflops_used"] > 0
    measured = list(result["matmul_peak_gflops"].values()) + list(result["matmul_peak_gflops_after"].values())
    assert result["peak_gflops_used"] == max(measured)
    rows = {r["framework"]: r for r in result["rows"]}
    assert set(rows) == {"bert_jax", "torch"}
    vocab = result["settings"]["shapes"]["tiny"]["vocab"]
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert len(row["step_times_s"]) == 3 and row["step_time_s_median"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["tokens_per_step"] / row["step_time_s_median"])
        assert 0 < row["mfu"] < 1
        assert row["mfu"] == pytest.approx(row["model_flops_per_step"] / row["step_time_s_median"]
                                           / (result["peak_gflops_used"] * 1e9))
        # Random init: MLM loss at step 0 is about ln(vocab); NSP adds about ln(2).
        assert math.isfinite(row["loss0"]) and math.isfinite(row["loss_last"])
        assert row["mlm_loss0"] == pytest.approx(math.log(vocab), abs=0.25), name
        assert row["loss0"] == pytest.approx(math.log(vocab) + math.log(2), abs=0.35), name
    ours = rows["bert_jax"]
    assert ours["compile_s"] > 0 and ours["memory"]["temp_size_in_bytes"] > 0
    assert ours["memory"]["argument_size_in_bytes"] > 0
    assert rows["torch"]["bert_jax_speedup"] == pytest.approx(
        ours["tokens_per_s"] / rows["torch"]["tokens_per_s"])
    # One model-FLOPs count for both; the peer's executed count has the vocab projection at every position.
    assert rows["torch"]["model_flops_per_step"] == ours["model_flops_per_step"]
    assert rows["torch"]["executed_flops_per_step"] > ours["model_flops_per_step"]
    # --profile: a jax.profiler trace of the bert_jax row (TensorBoard's profile plugin / Perfetto read it).
    written = [os.path.join(d, f) for d, _, files in os.walk(traces / "tiny-bert_jax") for f in files]
    assert any(f.endswith(".xplane.pb") and os.path.getsize(f) > 0 for f in written), written


def test_bad_arguments_are_one_line_errors():
    bench = _load_harness()
    assert bench.main(["--shapes", "huge"]) == 2
    assert bench.main(["--peers", "tensorflow"]) == 2
    assert bench.main(["--variant", "scan_layers"]) == 2


def test_the_experiment_shapes_are_the_models_the_mini_grids_train():
    """`--shapes experiments --variant recipe` times what `bert-jax experiment --scale mini` pretrains: each table6
    variant's config, as the runner builds it, gives the harness row's ModelConfig (bar the position table's length,
    which rotary positions never read), batch, sequence length and masking rate."""
    import dataclasses

    from bert_jax.configlib import load_config
    from bert_jax.experiments.grids import get_grid
    from bert_jax.model.config import ModelConfig

    bench = _load_harness()
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from _bench_ours import model_config

    args = bench.parse_args(["--shapes", "experiments", "--variant", "recipe"])
    recipe = args.variants[0]
    assert recipe == {"norm": "pre", "dropout_rate": 0.0, "attention_dropout_rate": 0.0, "position_embedding": "rotary"}
    grid = get_grid("table6", "mini")
    assert len(args.shapes) == len(grid.variants) == 6
    for name, variant in zip(args.shapes, grid.variants):
        shape = bench.SHAPES[name]
        overrides = grid.pretrain_overrides(variant)
        config = load_config(os.path.join(ROOT, grid.scale.config), [f"{k}={v}" for k, v in overrides.items()])
        trained = ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": grid.scale.data.vocab_size})
        timed = model_config(shape, recipe)
        assert dataclasses.replace(timed, max_position_embeddings=trained.max_position_embeddings) == trained, name
        assert (shape.batch, shape.seq, shape.mask_rate) == (
            config.train.global_batch_size, config.data.seq_len, config.data.mask_rate), name
        assert shape.max_predictions == round(config.data.mask_rate * config.data.seq_len)


def test_a_sequence_sweep_keeps_the_tokens_per_step_and_refuses_bad_lengths():
    bench = _load_harness()
    args = bench.parse_args(["--shapes", "mini,base", "--seqs", "128,512"])
    assert args.shapes == ["mini@128", "mini@512", "base@128", "base@512"]
    for name in args.shapes:
        shape, plain = bench.SHAPES[name], bench.SHAPES[name.split("@")[0]]
        assert shape.seq == int(name.split("@")[1]) and shape.tokens == plain.tokens
        assert (shape.layers, shape.hidden, shape.vocab) == (plain.layers, plain.hidden, plain.vocab)
    assert bench.main(["--shapes", "mini", "--seqs", "128,1024"]) == 2
    assert bench.main(["--shapes", "mini", "--seqs", "long"]) == 2


def test_the_cost_plot_has_a_row_and_a_line_per_model_and_framework(tmp_path):
    import matplotlib.image

    spec = importlib.util.spec_from_file_location("plot_cost", os.path.join(ROOT, "benchmarks", "plot_cost.py"))
    plot_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_cost)
    shapes, rows = {}, []
    for seq, batch in ((128, 32), (256, 16)):
        shapes[f"mini@{seq}"] = {"seq": seq, "batch": batch}
        rows.append({"shape": f"mini@{seq}", "framework": "bert_jax", "status": "ok", "tokens_per_s": 9000.0 / seq,
                     "mfu": 0.4, "memory": {"temp_size_in_bytes": seq * 2**20}})
        rows.append({"shape": f"mini@{seq}", "framework": "torch", "status": "ok", "tokens_per_s": 3000.0 / seq,
                     "max_rss_mib": 900.0 + seq, "bert_jax_speedup": 3.0})
    rows.append({"shape": "mini@128", "framework": "flax", "status": "unavailable"})
    shapes["small@128"] = {"seq": 128, "batch": 16}  # a second model: a second colour
    rows.append({"shape": "small@128", "framework": "bert_jax", "status": "ok", "tokens_per_s": 50.0, "mfu": 0.5,
                 "memory": {"temp_size_in_bytes": 2**20}})
    path = tmp_path / "cost.json"
    path.write_text(json.dumps({"settings": {"shapes": shapes}, "rows": rows}))
    assert plot_cost.main([str(path)]) == 0
    table = (tmp_path / "cost.md").read_text().splitlines()
    assert table[2:] == ["| mini | 128 | 32 | bert_jax | 70 | 40% |  | 128 (XLA temp) |",
                         "| mini | 128 | 32 | torch | 23 |  | 3.00x | 1,028 (peak RSS) |",
                         "| mini | 256 | 16 | bert_jax | 35 | 40% |  | 256 (XLA temp) |",
                         "| mini | 256 | 16 | torch | 12 |  | 3.00x | 1,156 (peak RSS) |",
                         "| small | 128 | 16 | bert_jax | 50 | 50% |  | 1 (XLA temp) |"]
    image = matplotlib.image.imread(str(tmp_path / "cost.png"))
    pixels = image.reshape(-1, image.shape[-1])[:, :3]
    for colour in ("#1f77b4", "#ff7f0e"):  # matplotlib's first two colours: one per model, both drawn
        rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(axis=1) < 0.05).sum() > 100, colour


def test_the_readme_ratio_table_has_one_line_per_shape_with_each_peers_ratio(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ratio_table", os.path.join(ROOT, "benchmarks", "ratio_table.py"))
    ratio_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ratio_table)
    shape = {"layers": 4, "hidden": 192, "heads": 3, "vocab": 8192, "seq": 128, "batch": 32}
    recipe = "bert_jax[attention_dropout_rate=0.0,dropout_rate=0.0,norm=pre,position_embedding=rotary]"
    rows = [{"shape": "x-L4H192A3", "framework": "bert_jax", "status": "ok", "tokens_per_s": 6000.0, "mfu": 0.3,
             "memory": {"temp_size_in_bytes": 480 * 2**20}},
            {"shape": "x-L4H192A3", "framework": recipe, "status": "ok", "tokens_per_s": 5500.0, "mfu": 0.275},
            {"shape": "x-L4H192A3", "framework": "torch", "status": "ok", "tokens_per_s": 4000.0,
             "bert_jax_speedup": 1.5},
            {"shape": "x-L4H192A3", "framework": "flax", "status": "ok", "tokens_per_s": 3000.0,
             "bert_jax_speedup": 2.0, "memory": {"temp_size_in_bytes": 800 * 2**20}},
            {"shape": "base", "framework": "bert_jax", "status": "ok", "tokens_per_s": 250.0, "mfu": 0.5},
            {"shape": "base", "framework": "flax", "status": "unavailable", "reason": "no venv"}]
    payload = {"date": "2026-12-03T07:00", "processor": "cpu", "cpu_count": 2, "peak_gflops_used": 200.0,
               "loadavg_start": [1.0], "loadavg_end": [1.5], "rows": rows,
               "settings": {"steps": 8, "blocks": 2, "shapes": {"x-L4H192A3": shape,
                                                                "base": {**shape, "layers": 12, "hidden": 768}}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(payload))
    assert ratio_table.main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2026-12-03T07:00, cpu, 2 cores, matmul peak 200 GFLOP/s") and "load 1.0 -> 1.5" in out[0]
    assert out[2] == ("| shape | bert_jax tok/s | MFU | bert_jax pre-LN, rotary, no dropout tok/s (MFU) | "
                      "PyTorch tok/s (ours x) | Flax tok/s (ours x) | XLA temp MiB (ours / Flax) |")
    assert out[4] == ("| x-L4H192A3 (4/192/3, vocab 8192, seq 128, b32) | 6,000 | 30% | 5,500 (28%) | "
                      "4,000 (**1.50x**) | 3,000 (**2.00x**) | 480 / 800 |")
    assert out[5] == "| base (12/768/3, vocab 8192, seq 128, b32) | 250 | 50% |  |  |  | - / - |"  # no peer row
    path.write_text("{}")
    assert ratio_table.main([str(path)]) == 2
    assert "ratio_table.py: cannot read" in capsys.readouterr().err


def test_device_scaling_gives_the_same_losses_on_two_devices_and_over_rounds(tmp_path):
    out = tmp_path / "scaling.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "device_scaling.py"), "--devices", "1,2", "--steps", "6",
           "--batch", "8", "--rounds", "2", "--set", "model.num_layers=1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    runs = {r["devices"]: r for r in payload["runs"]}
    assert sorted(runs) == [1, 2] and payload["rounds"] == 2 and "'model.num_layers': '1'" in payload["config"]
    assert all(len(r["losses"]) == 6 and len(r["steady_tokens_per_s_rounds"]) == 2 for r in runs.values())
    assert runs[2]["max_rel_loss_diff"] < 1e-5 and runs[1]["max_rel_loss_diff"] == 0.0
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "device_scaling.py"), "--set", "nokey"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--set 'nokey' must be comma-separated key=value pairs" in bad.stderr
