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


def snapshot(directory):
    """Every file and folder under `directory`: size, mtime and, for files, the bytes."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
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
