"""One writer per directory, relocatable workdirs and datasets, interrupts, metrics after a resume (issue 18, part A).

Every fault is real: a second writer is a second process (the first frozen with SIGSTOP so its directory holds
still while the second is refused), a moved workdir is `cp -a` and the original renamed away, Ctrl-C is SIGINT to
the run's process group, SIGTERM during start-up is sent once the process catches it (read from /proc).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import _pretrain_helpers as h
from bert_jax import dirlock
from bert_jax.data import make_data, shards
from bert_jax.data.tokenizer import SPECIAL_TOKENS, save_vocab
from bert_jax.train import checkpoint as ckpt
from bert_jax.train import pretrain
from bert_jax.weights import load_weights

# The built-in corpus inside the workdir (what `cp -a` must carry), as small as the other tests' data.
BUILTIN = {"data.path": "builtin", "data.eval_path": "", "data.builtin_docs": h.DATA["num_docs"],
           "data.builtin_vocab_size": h.DATA["vocab_size"]}
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return h.build_small_data(str(tmp_path_factory.mktemp("workdir-data")))[:2]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla-cache"))


def builtin_args(**extra):
    values = {**h.TINY, **BUILTIN, "train.steps": STEPS, "train.checkpoint_every": 2, "train.keep_checkpoints": 5,
              "train.eval_every": 3, "train.eval_batches": 1}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"--config.{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run on the built-in data cached in its workdir: (workdir, metrics lines, final state)."""
    workdir = str(tmp_path_factory.mktemp("straight") / "run")
    pretrain.run(h.load_config(builtin_args()), workdir)
    return workdir, metric_lines(workdir), h.restore(workdir)


def metric_lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def by_step(lines, split):
    return {r["step"]: r for r in lines if r["split"] == split}


def snapshot(directory, lock=True):
    """Every file and folder under `directory`: size, mtime and, for files, the bytes (`lock=False`: not the
    lock file, which a writer that ran writes and empties)."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            if name == dirlock.LOCK_FILE and not lock:
                continue
            path = os.path.join(root, name)
            st = os.lstat(path)
            content = open(path, "rb").read() if os.path.isfile(path) else None
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns, content)
    return out


def wait_until(condition, proc, what, timeout=h.SUBPROCESS_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.02)


def stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def catches(pid, signum):
    """Whether process `pid` has a handler installed for `signum` (the SigCgt mask of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask >> (signum - 1) & 1)


def start_cli(workdir, args, *, throttle=0.0, compile_cache=None, log_name="log.txt", argv=None):
    """`bert-jax pretrain` in its own session (so a test can Ctrl-C its process group as a terminal would)."""
    log_path = f"{workdir}-{log_name}"
    command = argv or h.cli_command(["--config", h.CONFIG, "--workdir", workdir, *args], throttle)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=h.cli_env(8, compile_cache),
                                cwd=h.REPO, start_new_session=True)
    return proc, log_path


def assert_no_traceback(output):
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


# ------------------------------------------------------------------------------------------ one writer


HOLDER = """
import sys, time
from bert_jax import dirlock
dirlock.acquire(sys.argv[1], "--workdir", "holder")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_held_directory_refuses_finetune_and_experiment_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    from bert_jax.experiments import main as exp_main
    from bert_jax.finetune import main as finetune_main

    held = str(tmp_path / "held")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, held], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(held)
        with pytest.raises(dirlock.DirectoryInUse, match=rf"--workdir {re.escape(held)} is in use by holder "
                                                         rf"\(pid {holder.pid} on host .*, started .*\); .*kill "
                                                         rf"{holder.pid}.*pass another --workdir"):
            dirlock.acquire(held, "--workdir", "test")
        assert finetune_main.main(["--task", "glue/sst2", "--data_dir", str(tmp_path), "--init", str(tmp_path),
                                   "--workdir", held]) == 2
        assert exp_main.main(["table5", "--scale", "smoke", "--workdir", held]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 2, errors
        assert errors[0].startswith(f"bert-jax finetune: --workdir {held} is in use by holder (pid {holder.pid}")
        assert errors[1].startswith(f"bert-jax experiment: --workdir {held} is in use by holder (pid {holder.pid}")
        assert snapshot(held) == before
    finally:
        holder.kill()
        holder.wait()
    notes = []
    fd = dirlock.acquire(held, "--workdir", "test", note=notes.append)
    assert len(notes) == 1 and f"locked by holder (pid {holder.pid}" in notes[0] and "no longer running" in notes[0]
    dirlock.release(fd)
    assert open(os.path.join(held, dirlock.LOCK_FILE)).read() == ""  # a clean exit leaves no holder behind
    dirlock.release(dirlock.acquire(held, "--workdir", "test", note=notes.append))
    assert len(notes) == 1


def write_corpus(root, files=3, docs=400):
    root.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(50)]
    for f in range(files):
        with open(root / f"part-{f}.txt", "w") as out:
            for d in range(docs):
                for s in range(4):
                    out.write(" ".join(words[(d * 7 + s * 3 + k + f) % 50] for k in range(12)) + " .\n")
                out.write("\n")
    save_vocab(str(root / "vocab"), list(SPECIAL_TOKENS) + words + ["."], lowercase=True)
    return str(root / "part-*.txt"), str(root / "vocab")


def test_second_make_data_on_one_output_is_refused_and_changes_nothing(tmp_path, capsys):
    corpus, vocab = write_corpus(tmp_path / "corpus")
    out = str(tmp_path / "out")
    args = ["--input", corpus, "--vocab", vocab, "--output", out, "--seq_len", "32", "--unit_chars", "2000"]
    first = subprocess.Popen([sys.executable, "-m", "bert_jax.data.make_data", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lock_file = os.path.join(out, dirlock.LOCK_FILE)
    try:
        wait_until(lambda: os.path.isfile(lock_file) and str(first.pid) in open(lock_file).read(), first, "the lock")
        first.send_signal(signal.SIGSTOP)  # frozen while holding the lock: its directory holds still
        wait_until(lambda: stopped(first.pid), first, "SIGSTOP")
        before = snapshot(out)
        assert make_data.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"make-data: --output {out} is in use by bert-jax make-data (pid {first.pid} on host ")
        assert "\n" not in err and "pass another --output" in err, err
        assert snapshot(out) == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert shards.read_manifest(out)["examples"] > 0


@pytest.mark.slow
def test_second_pretrain_on_a_workdir_is_refused_and_changes_nothing(data, compile_cache, tmp_path):
    workdir = str(tmp_path / "run")
    args = h.overrides(data, train__steps=12, train__checkpoint_every=2)
    first, first_log = start_cli(workdir, args, throttle=0.3, compile_cache=compile_cache)
    try:
        h.wait_for_checkpoint(first, workdir, 2, first_log)
        first.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped(first.pid), first, "SIGSTOP")
        before = snapshot(workdir)
        rc, output = h.run_pretrain(workdir, args, log_name="second.txt", compile_cache=compile_cache)
        assert rc == 2, output
        assert output.strip().startswith(f"bert-jax pretrain: --workdir {workdir} is in use by bert-jax pretrain "
                                         f"(pid {first.pid} on host "), output
        assert output.strip().count("\n") == 0 and "pass another --workdir" in output, output
        assert snapshot(workdir) == before
    finally:
        first.send_signal(signal.SIGCONT)
    rc, output = h.wait(first, first_log)
    assert rc == 0, output
    assert ckpt.complete_steps(os.path.join(workdir, "checkpoints"))[-1] == 12
    assert sorted(h.read_metrics(workdir)) == list(range(1, 13))


# ------------------------------------------------------------------------------------------ relocation


class StopAt:
    """Stands in for the preemption flag: stop (save, exit 0) at `step`, a deterministic stopping point."""

    def __init__(self, step):
        self.step = step

    def __call__(self, step=None):
        return step is not None and step >= self.step

    def uninstall(self):
        pass


@pytest.mark.slow
def test_a_workdir_copied_with_cp_a_resumes_bit_identically(straight, compile_cache, tmp_path, monkeypatch):
    """A run stopped at step 4 is copied with `cp -a`, the original renamed away; `bert-jax pretrain` on the copy
    resumes from step 4 with the built-in data cached in it (nothing rebuilt) and ends bit-identical to a run
    never interrupted; `finetune --init` finds the copy's own vocab."""
    original, moved = str(tmp_path / "original"), str(tmp_path / "elsewhere" / "moved")
    with monkeypatch.context() as m:
        m.setattr(ckpt, "install_preemption_handler", lambda *a, **k: StopAt(4))
        assert pretrain.run(h.load_config(builtin_args()), original)["step"] == 4
    assert ckpt.complete_steps(os.path.join(original, "checkpoints"))[-1] == 4
    os.makedirs(os.path.dirname(moved))
    subprocess.run(["cp", "-a", original, moved], check=True)
    os.rename(original, original + ".gone")  # any absolute path to the original now leads nowhere
    data_before = snapshot(os.path.join(moved, "data"), lock=False)

    rc, output = h.run_pretrain(moved, builtin_args(), compile_cache=compile_cache)
    assert rc == 0, output
    assert h.resumed_step(output) == 4
    assert snapshot(os.path.join(moved, "data"), lock=False) == data_before  # the cached data was used as it is
    workdir, lines, (step, state, data_iter) = straight
    step_b, state_b, iter_b = h.restore(moved)
    assert step_b == step == STEPS and iter_b == data_iter
    h.assert_states_identical(state, state_b)
    for split in ("train", "eval"):
        a, b = by_step(lines, split), by_step(metric_lines(moved), split)
        assert sorted(a) == sorted(b) and all(a[s]["loss" if split == "train" else "mlm_loss"] ==
                                              b[s]["loss" if split == "train" else "mlm_loss"] for s in a)
    vocab = load_weights(moved, "--init", params=False).vocab_path
    assert vocab.startswith(moved + os.sep) and os.path.isfile(vocab)


def test_a_dataset_moved_with_its_corpus_resumes_and_another_corpus_is_refused(tmp_path, capsys):
    """make-data's output and its corpus are copied with `cp -a` to another root and the original removed: the
    same command there finds the dataset complete and changes nothing; records of older versions (absolute
    paths) are read the same way; a corpus file that changed size is refused."""
    root, other = tmp_path / "a", tmp_path / "b"
    write_corpus(root / "corpus")

    def args(base):
        return ["--input", str(base / "corpus" / "part-*.txt"), "--vocab", str(base / "corpus" / "vocab"),
                "--output", str(base / "out"), "--seq_len", "32", "--unit_chars", "20000"]

    assert make_data.main(args(root)) == 0
    built = json.loads((root / "out" / shards.MANIFEST).read_text())["builder_args"]["input_files"]
    assert built == [[f"part-{i}.txt", os.path.getsize(root / "corpus" / f"part-{i}.txt")] for i in range(3)]
    subprocess.run(["cp", "-a", str(root), str(other)], check=True)
    shutil.rmtree(root)
    capsys.readouterr()
    before = snapshot(other / "out", lock=False)
    assert make_data.main(args(other)) == 0
    assert "is already complete" in capsys.readouterr().out
    assert snapshot(other / "out", lock=False) == before

    manifest_path = other / "out" / shards.MANIFEST
    manifest = json.loads(manifest_path.read_text())  # as an older version wrote it: absolute input paths
    manifest["builder_args"]["input_files"] = [[str(root / "corpus" / name), size] for name, size in built]
    manifest_path.write_text(json.dumps(manifest))
    assert make_data.main(args(other)) == 0

    with open(other / "corpus" / "part-1.txt", "a") as f:
        f.write("w1 w2 w3 .\n")
    assert make_data.main(args(other)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"make-data: {other / 'out'} holds a dataset built with input_files=") and "\n" not in err


# ------------------------------------------------------------------------------------------ metrics after a resume


@pytest.mark.slow
def test_metrics_hold_each_step_once_after_a_resume(data, tmp_path, capsys):
    """The save of step 6 never committed (its directory is moved away) and the kill tore a line: the resumed
    run replays steps 5-6 from step 4, and metrics.jsonl then holds every train and eval step once, the replayed
    ones equal to the first attempt's, and no torn line."""
    workdir = str(tmp_path / "run")
    config = h.load_config(h.overrides(data, train__steps=STEPS, train__checkpoint_every=2, train__eval_every=3,
                                       train__eval_batches=1))
    pretrain.run(config, workdir)
    lines = metric_lines(workdir)
    os.rename(os.path.join(workdir, "checkpoints", "6"), str(tmp_path / "step-6-never-committed"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 7, "split": "tr')
    capsys.readouterr()
    pretrain.run(config, workdir)
    assert h.resumed_step(capsys.readouterr().out) == 4
    again = metric_lines(workdir)
    keys = [(r["split"], r["step"]) for r in again]
    assert sorted(keys) == sorted(set(keys)) == sorted((r["split"], r["step"]) for r in lines)
    assert [r["step"] for r in again if r["split"] == "train"] == list(range(1, STEPS + 1))
    first, second = by_step(lines, "train"), by_step(again, "train")
    assert all(first[s]["loss"] == second[s]["loss"] for s in first)
    assert by_step(again, "eval")[6]["mlm_loss"] == by_step(lines, "eval")[6]["mlm_loss"]
    assert by_step(again, "eval")[6]["time"] > by_step(lines, "eval")[6]["time"]  # replaced, not kept


# ------------------------------------------------------------------------------------------ interrupts


@pytest.mark.slow
def test_ctrl_c_saves_the_current_step_and_exits_zero(data, compile_cache, tmp_path):
    """SIGINT to the run's process group (what a terminal's Ctrl-C sends) after checkpoint 4: the run saves the
    step it is at, exits 0 without a traceback, and that checkpoint holds the data iterator's position."""
    workdir = str(tmp_path / "run")
    args = h.overrides(data, train__steps=40, train__checkpoint_every=4)
    proc, log_path = start_cli(workdir, args, throttle=0.2, compile_cache=compile_cache)
    h.wait_for_checkpoint(proc, workdir, 4, log_path)
    os.killpg(proc.pid, signal.SIGINT)
    rc, output = h.wait(proc, log_path)
    assert rc == 0, output
    assert_no_traceback(output)
    assert "interrupted (Ctrl-C): the run saves its current step and stops" in output
    saved = int(re.search(r"preempted: saved step (\d+)", output).group(1))
    assert 4 <= saved < 40 and ckpt.complete_steps(os.path.join(workdir, "checkpoints"))[-1] == saved
    assert h.restore(workdir)[2]["batch"] == saved
    assert sorted(h.read_metrics(workdir)) == list(range(1, saved + 1))


# Ctrl-C twice, sent by the run to itself when asked for batch argv[1] + 1 (no timing race): the first is handled
# inside os.kill (CPython runs handlers of signals sent to the own process before os.kill returns), so the second
# meets the default action the first installed.
DOUBLE_CTRL_C = """
import os, signal, sys
at = int(sys.argv[1])
from bert_jax.data import pipeline
original = pipeline.BatchIterator.__next__
def next_batch(self):
    if self.spec.shuffle and self.get_state()["batch"] == at:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        print("still running after two Ctrl-C", flush=True)
    return original(self)
pipeline.BatchIterator.__next__ = next_batch
from bert_jax.cli import main
sys.exit(main(["pretrain", *sys.argv[2:]]))
"""


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once(data, compile_cache, tmp_path):
    """The second SIGINT kills the run where it is (no save of the current step); checkpoints already complete
    stay complete and restore."""
    workdir = str(tmp_path / "run")
    args = h.overrides(data, train__steps=8, train__checkpoint_every=2, train__async_checkpoints=False)
    argv = [sys.executable, "-c", DOUBLE_CTRL_C, "5", "--config", h.CONFIG, "--workdir", workdir, *args]
    proc, log_path = start_cli(workdir, args, argv=argv, compile_cache=compile_cache)
    rc, output = h.wait(proc, log_path)
    assert rc == -signal.SIGINT, output
    assert "Ctrl-C again aborts at once" in output and "still running" not in output and "saved step" not in output
    assert ckpt.complete_steps(os.path.join(workdir, "checkpoints")) == [2, 4]
    assert h.restore(workdir, 4)[2]["batch"] == 4


@pytest.mark.parametrize("moment", ["imports", "data"])
def test_sigterm_during_start_up_exits_zero(compile_cache, tmp_path, moment):
    """SIGTERM while `bert-jax pretrain` imports jax (sent as soon as the process catches SIGTERM) or builds the
    built-in data in its workdir: exit 0 with one line saying nothing needed saving; no checkpoint is written and
    the data that was being built is complete."""
    workdir = str(tmp_path / "run")
    proc, log_path = start_cli(workdir, builtin_args(), compile_cache=compile_cache)
    if moment == "imports":
        wait_until(lambda: catches(proc.pid, signal.SIGTERM), proc, "a SIGTERM handler", timeout=60)
    else:
        wait_until(lambda: os.path.isdir(os.path.join(workdir, "data")), proc, "the data build")
    proc.send_signal(signal.SIGTERM)
    rc, output = h.wait(proc, log_path)
    assert rc == 0, output
    assert_no_traceback(output)
    assert "stopped by signal before training: nothing new to save (newest checkpoint: none)" in output, output
    assert ckpt.complete_steps(os.path.join(workdir, "checkpoints")) == []
    if moment == "data":
        assert shards.read_manifest(str(next(p for p in (tmp_path / "run" / "data").glob("builtin-*seed0"))))
