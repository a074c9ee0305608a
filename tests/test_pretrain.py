"""The pretraining script end to end (bert_jax.train.pretrain): the loss falls, a killed run resumes bit for
bit, SIGTERM saves and exits 0, mesh and pmap agree, checkpoints move between device and process counts,
and bad settings are one-line errors. Runs are tiny (1 layer of width 64, batch 16, seq 64)."""
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest

import _pretrain_helpers as h
from bert_jax.train import checkpoint as ckpt
from bert_jax.train import pretrain

# The straight run; the killed-and-resumed run must reproduce it exactly.
STEPS = 20
# A short reference on 8 devices without dropout (pmap draws per-device dropout masks by design), on a
# (data=4, fsdp=2) mesh so params are sharded; the pmap, two-process and other-device-count runs compare to it.
REFERENCE = dict(train__steps=6, model__dropout_rate=0.0, model__attention_dropout_rate=0.0, mesh__fsdp=2)
LOSS_RTOL = 1e-5


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """(train dir, eval dir) of the small built-in corpus, built once per session."""
    return h.build_small_data(str(tmp_path_factory.mktemp("pretrain-data")))[:2]


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla-cache"))


def straight_args(data):
    return h.overrides(data, train__steps=STEPS, train__eval_every=10, train__eval_batches=2)


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    final = pretrain.run(h.load_config(straight_args(data)), workdir)
    return workdir, final


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    pretrain.run(h.load_config(h.overrides(data, **REFERENCE)), workdir)
    return workdir


def assert_params_close(a, b, atol=1e-5):
    for (path, x), (_, y) in zip(h.host_leaves(a["params"]), h.host_leaves(b["params"]), strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5, err_msg=jax.tree_util.keystr(path))


def assert_same_losses(workdir_a, workdir_b, steps):
    a, b = h.read_metrics(workdir_a), h.read_metrics(workdir_b)
    for step in range(1, steps + 1):
        for key in ("loss", "mlm_loss", "nsp_loss"):
            np.testing.assert_allclose(a[step][key], b[step][key], rtol=LOSS_RTOL, err_msg=f"{key} at step {step}")



def test_mlm_loss_falls(straight_run):
    workdir, final = straight_run
    metrics = h.read_metrics(workdir)
    assert sorted(metrics) == list(range(1, STEPS + 1))
    first = np.mean([metrics[s]["mlm_loss"] for s in range(1, 4)])
    last = np.mean([metrics[s]["mlm_loss"] for s in range(STEPS - 2, STEPS + 1)])
    assert first > np.log(h.DATA["vocab_size"]) - 0.5  # starts near uniform over the vocab
    assert last < first - 0.5, (first, last)
    assert final["step"] == STEPS and all(m["nonfinite"] == 0 for m in metrics.values())
    evals = h.read_metrics(workdir, split="eval")
    assert sorted(evals) == [10, 20]
    assert evals[20]["mlm_loss"] < evals[10]["mlm_loss"]
    assert np.isclose(evals[20]["mlm_perplexity"], np.exp(evals[20]["mlm_loss"]))


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(data, straight_run, compile_cache, tmp_path):
    workdir = str(tmp_path / "killed")
    args = straight_args(data) + ["--config.train.checkpoint_every=4"]
    proc, log_path = h.start_pretrain(workdir, args, throttle=0.2, compile_cache=compile_cache)
    h.wait_for_checkpoint(proc, workdir, 8, log_path)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert STEPS not in ckpt.complete_steps(os.path.join(workdir, "checkpoints")), "the kill came too late"

    rc, output = h.run_pretrain(workdir, args, log_name="resume.txt", compile_cache=compile_cache)
    assert rc == 0, output
    assert 8 <= h.resumed_step(output) < STEPS
    step_a, state_a, iter_a = h.restore(straight_run[0])
    step_b, state_b, iter_b = h.restore(workdir)
    assert step_a == step_b == STEPS
    assert iter_a == iter_b and iter_a["batch"] == STEPS
    h.assert_states_identical(state_a, state_b)


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resumes(data, compile_cache, tmp_path):
    workdir = str(tmp_path / "preempted")
    args = straight_args(data) + ["--config.train.checkpoint_every=4"]  # the killed run's program: cached
    proc, log_path = h.start_pretrain(workdir, args, throttle=0.2, compile_cache=compile_cache)
    h.wait_for_checkpoint(proc, workdir, 4, log_path)
    proc.send_signal(signal.SIGTERM)
    rc, output = h.wait(proc, log_path)
    assert rc == 0, output
    match = re.search(r"preempted: saved step (\d+)", output)
    assert match, output
    saved = int(match.group(1))
    assert 4 <= saved < STEPS
    assert ckpt.complete_steps(os.path.join(workdir, "checkpoints"))[-1] == saved
    assert h.restore(workdir)[2]["batch"] == saved

    rc, output = h.run_pretrain(workdir, args, log_name="resume.txt", compile_cache=compile_cache)
    assert rc == 0, output
    assert h.resumed_step(output) == saved
    assert re.search(rf"^final: .*step={STEPS}\b", output, re.M), output
    assert h.restore(workdir)[0] == STEPS


def test_pmap_strategy_matches_mesh(data, reference_run, tmp_path):
    workdir = str(tmp_path / "pmap")
    pretrain.run(h.load_config(h.overrides(data, **REFERENCE, train__strategy="pmap")), workdir)
    assert_same_losses(reference_run, workdir, REFERENCE["train__steps"])
    mesh_state, pmap_state = h.restore(reference_run)[1], h.restore(workdir)[1]
    assert_params_close(mesh_state, pmap_state)


@pytest.mark.slow
def test_resume_on_fewer_devices(data, reference_run, compile_cache, tmp_path):
    """8 devices (data=4, fsdp=2) -> 4 devices (data=2, fsdp=2) -> 1 device: each resumes and trains on."""
    workdir = str(tmp_path / "moved")
    shutil.copytree(reference_run, workdir)
    start = REFERENCE["train__steps"]
    for devices, steps, fsdp in ((4, start + 3, 2), (1, start + 6, 1)):
        args = h.overrides(data, **{**REFERENCE, "train__steps": steps, "mesh__fsdp": fsdp})
        rc, output = h.run_pretrain(workdir, args, devices=devices, log_name=f"log-{devices}.txt",
                                    compile_cache=compile_cache)
        assert rc == 0, output
        assert h.resumed_step(output) == steps - 3
        assert re.search(rf"^final: .*step={steps}\b", output, re.M), output
    metrics = h.read_metrics(workdir)
    assert all(np.isfinite(metrics[s]["loss"]) and metrics[s]["nonfinite"] == 0 for s in range(start + 1, start + 7))
    assert h.restore(workdir)[0] == start + 6


@pytest.mark.parametrize("key, named", [("train.stepz", "'train.stepz'"), ("trian.steps", "'trian'")])
def test_unknown_config_key_is_a_one_line_error(key, named, tmp_path, capsys):
    rc = pretrain.main(["--config", h.CONFIG, "--workdir", str(tmp_path), f"--config.{key}=3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and named in err, err
    assert not os.listdir(tmp_path)  # nothing was started


@pytest.mark.parametrize("extra, message", [
    (dict(train__global_batch_size=12), r"global_batch_size=12 .*use a multiple of 8"),
    (dict(optimizer__grad_accum_steps=4), r"grad_accum_steps=4 .*multiple of 8"),
])
def test_batch_not_divisible_by_devices_names_the_fix(data, extra, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        pretrain.run(h.load_config(h.overrides(data, **extra)), str(tmp_path))


@pytest.mark.slow
def test_two_processes_match_one(data, reference_run, tmp_path):
    """Two JAX processes with 4 CPU devices each (gloo collectives) train like one process with 8."""
    workdir = str(tmp_path / "two-process")
    port = h.free_port()
    args = h.overrides(data, **REFERENCE, distributed__enabled=True,
                       distributed__coordinator_address=f"127.0.0.1:{port}", distributed__num_processes=2)
    procs = [h.start_pretrain(workdir, args + [f"--config.distributed.process_id={i}"], devices=4,
                              log_name=f"log-{i}.txt") for i in range(2)]
    (rc0, out0), (rc1, out1) = h.wait_all(procs)
    assert rc0 == 0 and rc1 == 0, out0 + out1
    # Really one job of two processes (not two independent 4-device runs): only process 0 reports, and
    # the checkpoint holds the array data each process wrote.
    assert "final:" in out0 and "final:" not in out1
    state_dir = os.path.join(workdir, "checkpoints", str(REFERENCE["train__steps"]), "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir))
    assert_same_losses(reference_run, workdir, REFERENCE["train__steps"])

    # The checkpoint the two processes wrote together restores in this single process.
    step, state, data_iter = h.restore(workdir)
    ref_step, ref_state, ref_iter = h.restore(reference_run)
    assert step == ref_step == REFERENCE["train__steps"]
    assert data_iter == ref_iter
    assert_params_close(ref_state, state)


def _restored_params(workdir, step):
    from bert_jax.weights import load_weights

    weights = load_weights(workdir, step=step, pretraining_networks=True)
    assert weights.step == step
    return weights.params


def test_nonfinite_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    """An absurd learning rate overflows within a few steps: 'stop' (the default, unguarded updates) raises
    naming the step before that step's state can be saved; every checkpoint left holds finite params."""
    workdir = str(tmp_path / "stop")
    config = h.load_config(h.overrides(data, train__steps=8, train__checkpoint_every=1, train__async_checkpoints=False,
                                       optimizer__learning_rate=1e30, optimizer__warmup_steps=1))
    with pytest.raises(pretrain.NonFiniteLossError, match=r"not finite at step (\d+).*last good checkpoint is step") as e:
        pretrain.run(config, workdir)
    bad_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    steps = ckpt.complete_steps(os.path.join(workdir, "checkpoints"))
    assert steps and max(steps) < bad_step, (steps, bad_step)
    assert f"step {max(steps)}" in str(e.value)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_restored_params(workdir, max(steps))))


def test_nonfinite_stop_never_names_a_damaged_step_as_last_good(data, tmp_path, monkeypatch):
    """Each checkpoint after step 1 gets 64 bytes flipped in its array file as soon as it is committed (readable,
    wrong): the stop names step 1, the newest step whose files match their checksums, not the newest committed."""
    original = ckpt.save_checkpoint

    def save_then_damage(manager, step, **kwargs):
        original(manager, step, **kwargs)
        if step > 1:  # synchronous saves: the step is committed here
            state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
            victim = max((os.path.join(root, n) for root, _, names in os.walk(state_dir) for n in names),
                         key=os.path.getsize)
            h.flip_middle_bytes(victim)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_damage)
    workdir = str(tmp_path / "stop")
    config = h.load_config(h.overrides(data, train__steps=8, train__checkpoint_every=1, train__async_checkpoints=False,
                                       optimizer__learning_rate=1e30, optimizer__warmup_steps=1))
    with pytest.raises(pretrain.NonFiniteLossError, match=r"not finite at step \d+") as e:
        pretrain.run(config, workdir)
    committed = ckpt.complete_steps(os.path.join(workdir, "checkpoints"))
    assert len(committed) >= 2, committed  # a damaged step was there to be (wrongly) named
    assert "The last good checkpoint is step 1 in" in str(e.value), str(e.value)


def test_nonfinite_skip_mode_skips_and_counts(data, tmp_path):
    workdir = str(tmp_path / "skip")
    config = h.load_config(h.overrides(data, train__steps=6, train__on_nonfinite="skip", optimizer__learning_rate=1e30,
                                       optimizer__warmup_steps=1, train__checkpoint_every=6,
                                       train__async_checkpoints=False))
    final = pretrain.run(config, workdir)
    assert final["step"] == 6
    metrics = h.read_metrics(workdir)
    skipped = [s for s, m in metrics.items() if m.get("nonfinite")]
    assert skipped and metrics[max(metrics)]["skipped_steps"] == len(skipped)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_restored_params(workdir, 6)))


def test_speed_settings_stay_out_of_the_saved_model(data, tmp_path):
    """A run with every speed setting changed saves the same model section as a run without (its config.json and
    an export of it), records the speed section beside it, and its checkpoint reads back as the per-layer model."""
    import json

    from bert_jax.finetune.init import load_init
    from bert_jax.interop import load_params
    from bert_jax.model.config import ModelConfig
    from bert_jax.train import export

    workdir = str(tmp_path / "fast")
    speed = dict(speed__scan_layers=True, speed__remat_policy="full", speed__dropout_rng="jax",
                 speed__sparse_final_layer=False)
    pretrain.run(h.load_config(h.overrides(data, train__steps=2, train__async_checkpoints=False, **speed)), workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    plain = h.load_config(h.overrides(data)).model.to_dict()
    assert saved["model"] == {**plain, "vocab_size": saved["model"]["vocab_size"]}
    assert saved["speed"] == {"scan_layers": True, "remat_policy": "full", "dropout_rng": "jax",
                              "sparse_final_layer": False, "attention_impl": "xla"}
    model = ModelConfig.from_dict(saved["model"])
    assert export.main(["--workdir", workdir, "--out", str(tmp_path / "params.msgpack")]) == 0
    assert load_params(str(tmp_path / "params.msgpack"))[0] == model
    init = load_init(workdir)
    assert init.config == model and "layer_0" in init.params["encoder"]
