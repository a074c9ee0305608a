"""Fault injection on real pretraining runs (issue 9): kills at several steps, corrupt checkpoints, a full disk,
device-count and mesh changes, two processes with unequal data, and bad inputs through `bert-jax pretrain`.

Faults are real: SIGKILL is sent by the process to itself at a chosen step (no timing races), files of a
written checkpoint are truncated or deleted, ENOSPC is raised from the checkpoint write path. Complements
tests/test_pretrain.py (one kill, SIGTERM, NaN stop/skip) and tests/test_checkpoint.py (checkpoint unit tests).
"""
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import _pretrain_helpers as h
from bert_jax.train import checkpoint as ckpt
from bert_jax.train import pretrain

# Runs `bert-jax pretrain` after patching in one fault, chosen by the JSON in argv[1]:
#   {"kill_at": k}  SIGKILL this process when the training iterator is asked for batch k+1 (k steps dispatched,
#                   the save of step k possibly still in flight)
#   {"stop_at": s}  behave as if preempted at step s (save, exit 0): a deterministic stopping point
FAULTY_CLI = """
import json, os, signal, sys
fault = json.loads(sys.argv[1])
from bert_jax.data import pipeline
from bert_jax.train import checkpoint as ckpt
if "kill_at" in fault:
    original = pipeline.BatchIterator.__next__
    def next_or_die(self):
        if self.spec.shuffle and self.get_state()["batch"] == fault["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self)
    pipeline.BatchIterator.__next__ = next_or_die
if "stop_at" in fault:
    class StopAt:
        def __call__(self, step=None):
            return step is not None and step >= fault["stop_at"]
        def uninstall(self):
            pass
    ckpt.install_preemption_handler = lambda *a, **k: StopAt()
from bert_jax.cli import main
sys.exit(main(["pretrain", *sys.argv[2:]]))
"""


def run_faulty(workdir, args, fault, *, devices=8, compile_cache=None, log_name="log.txt"):
    log_path = f"{workdir}-{log_name}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", FAULTY_CLI, json.dumps(fault), "--config", h.CONFIG,
                                 "--workdir", workdir, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=h.cli_env(devices, compile_cache), cwd=h.REPO)
    return h.wait(proc, log_path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train dir, eval dir) of the small built-in corpus, plus the vocab dir it was tokenised with."""
    return h.build_small_data(str(tmp_path_factory.mktemp("reliability-data")))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla-cache"))


def dirs(data):
    return data[0], data[1]


def copy_dataset(source, target, **manifest_changes):
    """A copy of a dataset whose manifest says something else (another vocab, bigger token ids, ...)."""
    shutil.copytree(source, target)
    path = os.path.join(target, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest.update(manifest_changes)
    with open(path, "w") as f:
        json.dump(manifest, f)
    return target


def assert_one_line_error(err, *needles):
    """A user-facing error: exactly one line, naming the input and the fix (each needle a regex)."""
    err = err.strip()
    assert err.startswith("bert-jax pretrain: ") or err.startswith("make-data: "), err
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert re.search(needle, err), (needle, err)


def largest_file(directory):
    files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


# ------------------------------------------------------------------------------------------ kills


KILL_STEPS = 16


@pytest.mark.slow
def test_killed_at_several_random_steps_resumes_bit_identically(data, compile_cache, tmp_path):
    """Three SIGKILLs at seeded-random steps, each followed by a resume: params, opt_state, step, rng, the data
    iterator's position and every logged loss equal those of an uninterrupted run, bit for bit."""
    args = h.overrides(dirs(data), train__steps=KILL_STEPS, train__checkpoint_every=2)
    straight = str(tmp_path / "straight")
    pretrain.run(h.load_config(args), straight)

    kills = sorted(np.random.default_rng(9).choice(np.arange(3, KILL_STEPS), size=3, replace=False).tolist())
    workdir = str(tmp_path / "killed")
    resumed = []
    for i, kill_at in enumerate(kills):
        rc, output = run_faulty(workdir, args, {"kill_at": kill_at}, compile_cache=compile_cache, log_name=f"{i}.txt")
        assert rc == -signal.SIGKILL, output
        if i:
            resumed.append(h.resumed_step(output))
        assert KILL_STEPS not in ckpt.complete_steps(os.path.join(workdir, "checkpoints"))
    rc, output = h.run_pretrain(workdir, args, log_name="last.txt", compile_cache=compile_cache)
    assert rc == 0, output
    resumed.append(h.resumed_step(output))
    # Each resume starts from a checkpoint the killed run had committed, at most 2 steps (the interval) and
    # one in-flight save behind the kill.
    assert all(kill - 4 <= step <= kill for kill, step in zip(kills, resumed)), (kills, resumed)

    step_a, state_a, iter_a = h.restore(straight)
    step_b, state_b, iter_b = h.restore(workdir)
    assert step_a == step_b == KILL_STEPS
    assert iter_a == iter_b and iter_a["batch"] == KILL_STEPS
    h.assert_states_identical(state_a, state_b)
    losses_a, losses_b = h.read_metrics(straight), h.read_metrics(workdir)
    assert sorted(losses_b) == list(range(1, KILL_STEPS + 1))
    for step in range(1, KILL_STEPS + 1):
        assert losses_a[step]["loss"] == losses_b[step]["loss"], step


# ------------------------------------------------------------------------------------------ damaged checkpoints


def test_corrupt_newest_checkpoints_in_a_workdir_are_skipped_and_kept(data, tmp_path, capsys, caplog):
    """Step 8 has a truncated array file, step 6 lost its commit marker, step 4 has 64 bytes flipped inside its
    array file (still readable: orbax alone would restore it). `export` refuses the flipped step in one line; the
    next run says it skips all three, resumes from step 2, retrains steps 3-8 to the same losses, every damaged file
    is still on disk, and `export` then writes finite params."""
    from bert_jax.train import export

    workdir = str(tmp_path / "run")
    argv = ["--config", h.CONFIG, "--workdir", workdir,
            *h.overrides(dirs(data), train__steps=8, train__checkpoint_every=2, train__keep_checkpoints=5)]
    assert pretrain.main(argv) == 0
    first = h.read_metrics(workdir)
    directory = os.path.join(workdir, "checkpoints")
    victim = largest_file(os.path.join(directory, "8", "state"))
    truncated_size = os.path.getsize(victim) // 2
    with open(victim, "r+b") as f:
        f.truncate(truncated_size)
    os.remove(os.path.join(directory, "6", ckpt.COMMIT_MARKER))
    flipped = largest_file(os.path.join(directory, "4", "state"))
    h.flip_middle_bytes(flipped)
    mine = os.path.join(directory, "notes.txt")
    with open(mine, "w") as f:
        f.write("not the run's")
    out = str(tmp_path / "params.msgpack")
    capsys.readouterr()
    assert export.main(["--workdir", workdir, "--step", "4", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"bert-jax export: --workdir {workdir}: checkpoint step 4 in"), err
    assert re.search(r"is damaged: state/\S+ does not match its checksum", err) and not os.path.exists(out), err

    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        assert pretrain.main(argv) == 0
    assert h.resumed_step(capsys.readouterr().out) == 2
    rel = os.path.relpath(victim, os.path.join(directory, "8"))
    assert f"skipping checkpoint {os.path.join(directory, '8')} (damaged: {rel} does not match" in caplog.text
    assert f"skipping checkpoint {os.path.join(directory, '6')} (missing commit marker" in caplog.text
    assert f"skipping checkpoint {os.path.join(directory, '4')} (damaged: " in caplog.text
    # Nothing deleted: the damaged steps are in quarantine/ with their files, the truncated one included.
    quarantine = os.path.join(directory, ckpt.QUARANTINE_DIR)
    by_step = {name.split(".")[0]: os.path.join(quarantine, name) for name in os.listdir(quarantine)}
    assert sorted(by_step) == ["4", "6", "8"]
    moved = os.path.join(by_step["8"], os.path.relpath(victim, os.path.join(directory, "8")))
    assert os.path.getsize(moved) == truncated_size
    assert open(mine).read() == "not the run's"
    assert ckpt.complete_steps(directory) == [2, 4, 6, 8]
    again = h.read_metrics(workdir)
    for step in range(3, 9):
        assert again[step]["loss"] == first[step]["loss"], step
    assert export.main(["--workdir", workdir, "--out", out]) == 0
    from bert_jax.interop import load_params
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(load_params(out)[1]))


# After a failed save orbax's other writers of that step may finish after its event loop closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_while_saving_keeps_the_previous_checkpoint(data, tmp_path, capsys, monkeypatch):
    """ENOSPC from the checkpoint write path at step 4: one line saying the disk is full, which directory and
    which step is intact; step 2 restores, and the next run resumes from it and finishes."""
    import orbax.checkpoint._src.handlers.json_checkpoint_handler as json_handler

    workdir = str(tmp_path / "run")
    directory = os.path.join(workdir, "checkpoints")
    argv = ["--config", h.CONFIG, "--workdir", workdir, *h.overrides(dirs(data), train__steps=4,
                                                                     train__checkpoint_every=2)]
    original = json_handler.JsonCheckpointHandler._save_fn

    async def full_disk_at_step_4(self, x, target):
        if f"{os.sep}4{ckpt.TMP_SUFFIX}" in str(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return await original(self, x, target)

    monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", full_disk_at_step_4)
    assert pretrain.main(argv) == 4
    assert_one_line_error(capsys.readouterr().err, "no space left on device", re.escape(directory),
                          r"step 4", r"step 2, is intact", "free space")
    assert ckpt.complete_steps(directory) == [2]
    step, state, data_iter = h.restore(workdir)
    assert step == 2 and int(state["step"]) == 2 and data_iter["batch"] == 2

    monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", original)
    assert pretrain.main(argv) == 0
    assert h.resumed_step(capsys.readouterr().out) == 2
    assert ckpt.complete_steps(directory)[-1] == 4


# ------------------------------------------------------------------------------------------ devices and meshes


MOVE_STEPS = 12
NO_DROPOUT = dict(model__dropout_rate=0.0, model__attention_dropout_rate=0.0)


@pytest.mark.slow
def test_resume_on_other_device_counts_and_meshes_continues_the_losses(data, compile_cache, tmp_path, monkeypatch):
    """8 devices (data=4, fsdp=2) -> 4 devices (data=2, fsdp=2) -> 1 device, each stage stopping at a
    checkpoint: every step's losses and the final params match an uninterrupted 8-device run."""
    common = dict(train__steps=MOVE_STEPS, **NO_DROPOUT)
    reference = str(tmp_path / "reference")
    pretrain.run(h.load_config(h.overrides(dirs(data), mesh__fsdp=2, **common)), reference)

    workdir = str(tmp_path / "moved")

    class StopAt4:
        def __call__(self, step=None):
            return step is not None and step >= 4

        def uninstall(self):
            pass

    monkeypatch.setattr(ckpt, "install_preemption_handler", lambda *a, **k: StopAt4())
    assert pretrain.run(h.load_config(h.overrides(dirs(data), mesh__fsdp=2, **common)), workdir)["step"] == 4
    for devices, fsdp, fault in ((4, 2, {"stop_at": 8}), (1, 1, {})):
        args = h.overrides(dirs(data), mesh__fsdp=fsdp, **common)
        rc, output = run_faulty(workdir, args, fault, devices=devices, compile_cache=compile_cache,
                                log_name=f"{devices}.txt")
        assert rc == 0, output
        assert h.resumed_step(output) == (4 if devices == 4 else 8)
    a, b = h.read_metrics(reference), h.read_metrics(workdir)
    assert sorted(b) == list(range(1, MOVE_STEPS + 1))
    for step in range(1, MOVE_STEPS + 1):
        for key in ("loss", "mlm_loss", "nsp_loss"):
            np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-4, err_msg=f"{key} at step {step}")
    (step_a, state_a, _), (step_b, state_b, _) = h.restore(reference), h.restore(workdir)
    assert step_a == step_b == MOVE_STEPS
    for (path, x), (_, y) in zip(h.host_leaves(state_a["params"]), h.host_leaves(state_b["params"]), strict=True):
        np.testing.assert_allclose(y, x, atol=1e-4, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A 2-step run to resume with incompatible settings."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    argv = ["--config", h.CONFIG, "--workdir", workdir, *h.overrides(dirs(data), train__steps=2)]
    assert pretrain.main(argv) == 0
    return workdir


def run_main(data, workdir, **extra):
    return pretrain.main(["--config", h.CONFIG, "--workdir", workdir, *h.overrides(dirs(data), **extra)])


def damaged_copy(source, target):
    """A copy of a dataset with 64 bytes flipped inside shard-00000's token ids (a valid .npy still)."""
    shutil.copytree(source, target)
    path = os.path.join(target, "shard-00000", "input_ids.npy")
    h.flip_middle_bytes(path)
    return target


@pytest.mark.parametrize("case", ["max_positions", "model_vocab", "token_id", "eval_fingerprint", "empty_dir",
                                  "missing_data", "missing_init", "damaged_shard"])
def test_bad_input_is_a_one_line_error_before_any_step(case, data, tmp_path, capsys):
    train_dir, eval_dir, _ = data
    other = str(tmp_path / "other-data")
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    cases = {  # name: (lambda: overrides, after preparing any input they need; what the error must say)
        "max_positions": (lambda: dict(model__max_position_embeddings=32),
                          [re.escape(train_dir), "seq_len 64 > the model's max_position_embeddings 32",
                           "make-data --seq_len 32", "raise model.max_position_embeddings"]),
        "model_vocab": (lambda: dict(model__vocab_size=500),
                        ["data vocab size 1000 != model.vocab_size 500", "rebuild the data", "vocab_size=0"]),
        "token_id": (lambda: dict(data__path=copy_dataset(train_dir, other, max_token_id=1000)),
                     [re.escape(other), "token id 1000 but the model's vocab_size is 1000", "rebuild the data"]),
        "eval_fingerprint": (lambda: dict(data__eval_path=copy_dataset(eval_dir, other,
                                                                        vocab_fingerprint="0123456789abcdef")),
                             [re.escape(other), "0123456789abcdef", "rebuild the data with the model's vocab"]),
        "empty_dir": (lambda: dict(data__path=empty), [re.escape(empty), "no manifest.json", "make-data"]),
        "missing_data": (lambda: dict(data__path=empty + "-typo"), [re.escape(empty + "-typo"), "make-data"]),
        "missing_init": (lambda: dict(train__init_from=str(tmp_path / "no" / "such")),
                         [r"train.init_from=.*no/such.* does not exist", "point it at a pretraining workdir"]),
        "damaged_shard": (lambda: dict(data__path=damaged_copy(train_dir, other)),
                          [re.escape(os.path.join(other, "shard-00000", "input_ids.npy")) + " does not match its "
                           "checksum", "the shard is damaged", "`bert-jax make-data` command that built"]),
    }
    make_overrides, needles = cases[case]
    workdir = str(tmp_path / "run")
    assert run_main(data, workdir, **make_overrides()) == 2
    assert_one_line_error(capsys.readouterr().err, *needles)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # failed before the first step
    assert not os.path.exists(tmp_path / "no")  # a mistyped init_from is reported, not created


def test_empty_corpus_is_a_one_line_make_data_error(data, tmp_path, capsys):
    from bert_jax.data import make_data

    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n", encoding="utf-8")
    assert make_data.main(["--input", str(blank), "--vocab", data[2], "--output", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys.readouterr().err, re.escape(str(blank)), "no text")


@pytest.mark.parametrize("case", ["num_layers", "hidden_size", "data_fingerprint"])
def test_incompatible_resume_is_a_one_line_error_and_keeps_the_run(case, data, finished_run, tmp_path, capsys):
    """Resuming with another model tree lists the differing paths; with data of another vocab, names both
    fingerprints. The checkpoint and the run's config.json are left as they were."""
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        config_before = f.read()
    other = str(tmp_path / "other-data")
    cases = {
        "num_layers": (lambda: dict(model__num_layers=2), [r"checkpoints/2 does not match the restore target",
                                                    r"params/\S*1\S*: in restore target .*not in checkpoint",
                                                    "config it was saved with"]),
        "hidden_size": (lambda: dict(model__hidden_size=32, model__num_heads=2),
                        [r"does not match the restore target", r"checkpoint \(1000, 64\) vs restore target \(1000, 32\)",
                         "config it was saved with"]),
        "data_fingerprint": (lambda: dict(data__path=copy_dataset(data[0], other, vocab_fingerprint="f" * 16)), [r"checkpoints/2 was trained on data with vocab fingerprint [0-9a-f]{16}",
                                       re.escape(other) + " has f{16}", "use the same vocab or a new workdir"]),
    }
    make_overrides, needles = cases[case]
    assert run_main(data, workdir, **{"train__steps": 3, **make_overrides()}) == 2
    assert_one_line_error(capsys.readouterr().err, *needles)
    assert ckpt.complete_steps(os.path.join(workdir, "checkpoints")) == [2]
    assert not os.path.exists(os.path.join(workdir, "checkpoints", ckpt.QUARANTINE_DIR))
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == config_before


# ------------------------------------------------------------------------------------------ two processes


@pytest.mark.parametrize("case", ["shorter", "missing"])
def test_processes_with_unequal_data_fail_fast(case, data, tmp_path):
    """Two real processes (gloo), process 1 reading a shorter dataset (fewer batches) or none at all: both
    exit with a one-line error on their own, quickly; none is killed by the test or left waiting."""
    from bert_jax.data.make_data import prepare_builtin_dataset

    train_dir, eval_dir, vocab = data
    if case == "shorter":
        d = h.DATA
        second = prepare_builtin_dataset(str(tmp_path / "short"), seed=0, num_docs=150, vocab=vocab, mode=d["mode"],
                                         seq_len=d["seq_len"], vocab_size=d["vocab_size"], log=lambda m: None)
    else:
        second = str(tmp_path / "not-here")
    workdir = str(tmp_path / "run")
    port = h.free_port()
    common = dict(train__steps=2, distributed__enabled=True, distributed__coordinator_address=f"127.0.0.1:{port}",
                  distributed__num_processes=2)
    procs = [h.start_pretrain(workdir, h.overrides((path, eval_dir), **common)
                              + [f"--config.distributed.process_id={i}"], devices=4, log_name=f"log-{i}.txt")
             for i, path in enumerate((train_dir, second))]
    # Each waits on its own with a timeout: a hang fails the test (jax's own timeouts are minutes).
    (rc0, out0), (rc1, out1) = [h.wait(proc, log, timeout=90) for proc, log in procs]
    assert rc0 == rc1 == 2, out0 + out1
    # Gloo's C++ logging shares stderr and can land mid-line around ours, so find our line anywhere in a line.
    errors = [re.findall(r"bert-jax pretrain: [^\n]*", out) for out in (out0, out1)]
    assert [len(e) for e in errors] == [1, 1], out0 + out1
    err0, err1 = errors[0][0], errors[1][0]
    assert "Traceback" not in out0 + out1
    if case == "shorter":
        for err in (err0, err1):
            assert_one_line_error(err, "processes read different data", r"process 0: \d+ train",
                                  r"process 1: \d+ train", "every process must read the same dataset")
        assert second in err1 and train_dir in err0
    else:
        assert_one_line_error(err1, re.escape(second), "no manifest.json", "make-data")
        assert_one_line_error(err0, r"process\(es\) \[1\] could not read their data", "every process must be able")
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
