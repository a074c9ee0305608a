"""Every filesystem fault under a command's output is one line with the documented exit code (issue 18): 2 for an
output that cannot be used, found before any work; 4 for a write that failed once the work had started.

The faults are real, never mocked: a read-only bind mount (as root, where chmod stops nothing; chmod 555 as another
user), root without CAP_DAC_OVERRIDE (setpriv) on a chmod 555 directory for "permission denied", regular files where
a directory is wanted and directories where a file is, and tmpfs file systems of a few KiB for a full disk. Tests
that need a mount skip when it cannot be made (not root, or no mount permission).
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import _pretrain_helpers as h
from bert_jax import cli, outputs
from bert_jax.data import shards
from bert_jax.data.tokenizer import SPECIAL_TOKENS, save_vocab

ROOT = os.geteuid() == 0

# command: (the flag naming its output, "dir" or "file", argv writing that output to PATH, its error prefix).
# Every other argument is left unusable: the output is checked first, so its error is the one reported.
COMMANDS = {
    "pretrain": ("--workdir", "dir", lambda p: ["pretrain", "--config", h.CONFIG, "--workdir", p], "bert-jax pretrain: "),
    "make-data": ("--output", "dir", lambda p: ["make-data", "--input", "none.txt", "--vocab", "none", "--output", p],
                  "make-data: "),
    "finetune": ("--workdir", "dir", lambda p: ["finetune", "--task", "glue/sst2", "--data_dir", "none", "--init",
                                                "none", "--workdir", p], "bert-jax finetune: "),
    "export": ("--out", "file", lambda p: ["export", "--workdir", "none", "--out", p], "bert-jax export: "),
    "convert": ("--to", "file", lambda p: ["convert", "--from-hf", "none", "--to", p], "bert-jax convert: error: "),
    "convert-to-hf": ("--to-hf", "dir", lambda p: ["convert", "--from", "none", "--to-hf", p],
                      "bert-jax convert: error: "),
    "evaluate": ("--out", "file", lambda p: ["evaluate", "--checkpoint", "none", "--data", "none", "--out", p],
                 "bert-jax evaluate: "),
}


def target(command, parent):
    flag, kind, _, _ = COMMANDS[command]
    return os.path.join(parent, "out" if kind == "dir" else "out.json")


def assert_one_line(err, prefix, *needles):
    err = err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith(prefix), err
    for needle in needles:
        assert re.search(needle, err), (needle, err)


def run_cli(argv, capsys):
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


def mount(*args):
    return ROOT and subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """A directory that refuses writes: a read-only bind mount as root, chmod 555 for another user."""
    source, view = tmp_path / "source", tmp_path / "read-only"
    source.mkdir()
    view.mkdir()
    if ROOT:
        if not (mount("--bind", str(source), str(view)) and mount("-o", "remount,bind,ro", str(view))):
            subprocess.run(["umount", str(view)], capture_output=True)
            pytest.skip("cannot make a read-only bind mount here")
    else:
        view.chmod(0o555)
    try:
        with pytest.raises(OSError):  # the fault is real
            open(view / "probe", "w")
        yield str(view)
    finally:
        if ROOT:
            subprocess.run(["umount", str(view)], capture_output=True)
        else:
            view.chmod(0o755)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """Mounts a tmpfs of the size asked for (e.g. '48k') and returns its path; unmounted after the test."""
    mounted = []

    def make(size):
        path = tmp_path / f"tmpfs-{len(mounted)}"
        path.mkdir()
        if not mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(path)
        return str(path)

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


# ------------------------------------------------------------------------------------------ outputs that cannot be used


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_read_only_output_is_one_line_exit_2(command, read_only, capsys):
    flag, _, argv, prefix = COMMANDS[command]
    path = target(command, read_only)
    code, err = run_cli(argv(path), capsys)
    assert code == outputs.EXIT_BAD_INPUT, err
    reason = "read-only file system" if ROOT else "permission denied"
    assert_one_line(err, prefix, re.escape(f"{flag} {path}"), f"cannot be written: {reason}")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_that_is_a_file_or_a_directory_is_one_line_exit_2(command, tmp_path, capsys):
    """A regular file where the output directory should be, a directory where the output file should be, and a
    file standing where a parent directory must be created."""
    flag, kind, argv, prefix = COMMANDS[command]
    in_the_way = tmp_path / "in-the-way"
    if kind == "dir":
        in_the_way.write_text("mine")
        needle = "is a file, not a directory"
    else:
        in_the_way.mkdir()
        needle = "is a directory; pass a file path"
    code, err = run_cli(argv(str(in_the_way)), capsys)
    assert code == outputs.EXIT_BAD_INPUT, err
    assert_one_line(err, prefix, re.escape(f"{flag} {in_the_way} {needle}"))

    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    below = target(command, str(blocker / "sub"))  # its parent cannot be created
    code, err = run_cli(argv(below), capsys)
    assert code == outputs.EXIT_BAD_INPUT, err
    assert_one_line(err, prefix, re.escape(f"{flag} {below} cannot be written: "))
    assert blocker.read_text() == "mine" and (kind == "file" or in_the_way.read_text() == "mine")


PERMISSION_SCRIPT = """
import contextlib, io, json, sys
from bert_jax import cli
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_permission_denied_is_one_line_exit_2_for_every_command(tmp_path):
    """A directory of mode 555: root is run without CAP_DAC_OVERRIDE (setpriv), so the mode binds it as any user."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    command = [sys.executable, "-c", PERMISSION_SCRIPT]
    if ROOT:
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv cannot be denied a permission")
        command = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                   "--bounding-set=-dac_override,-dac_read_search", *command]
    names = sorted(COMMANDS)
    argvs = [COMMANDS[name][2](target(name, str(locked))) for name in names]
    try:
        done = subprocess.run([*command, json.dumps(argvs)], capture_output=True, text=True, cwd=h.REPO,
                              env=h.cli_env(1), timeout=h.SUBPROCESS_TIMEOUT)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, (code, err) in zip(names, json.loads(done.stdout.splitlines()[-1])):
        flag, _, _, prefix = COMMANDS[name]
        assert code == outputs.EXIT_BAD_INPUT, (name, err)
        assert_one_line(err, prefix, re.escape(f"{flag} {target(name, str(locked))}"),
                        "cannot be written: permission denied", "fix its permissions")
    assert os.listdir(locked) == []


def test_missing_parents_are_created_and_no_probe_is_left(tmp_path):
    deep = tmp_path / "a" / "b" / "run"
    assert outputs.writable_directory(str(deep), "--workdir") == str(deep)
    assert deep.is_dir() and os.listdir(deep) == []
    file = tmp_path / "c" / "d" / "params.msgpack"
    assert outputs.writable_file(str(file), "--out") == str(file)
    assert file.parent.is_dir() and os.listdir(file.parent) == []


# ------------------------------------------------------------------------------------------ a full disk


def write_corpus(directory, docs=400):
    """Plain-text documents over a 60-word vocabulary, and that vocab."""
    words = [f"w{i}" for i in range(60)]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "corpus.txt"), "w") as f:
        for d in range(docs):
            for s in range(6):
                f.write(" ".join(words[(d * 7 + s * 3 + k) % 60] for k in range(12)) + " .\n")
            f.write("\n")
    save_vocab(os.path.join(directory, "vocab"), list(SPECIAL_TOKENS) + words + ["."], lowercase=True)
    return os.path.join(directory, "corpus.txt"), os.path.join(directory, "vocab")


def test_a_full_disk_in_a_make_data_shard_is_one_line_exit_4_and_a_rerun_finishes(tmp_path, tiny_filesystem, capsys):
    corpus, vocab = write_corpus(str(tmp_path / "corpus"))
    args = ["make-data", "--input", corpus, "--vocab", vocab, "--seq_len", "64", "--unit_chars", "4000"]
    reference = str(tmp_path / "reference")
    assert cli.main([*args, "--output", reference]) == 0
    mount_point = tiny_filesystem("48k")
    out = os.path.join(mount_point, "data")
    code, err = run_cli([*args, "--output", out], capsys)
    assert code == outputs.EXIT_WRITE_FAILED, err
    assert_one_line(err, "make-data: ", rf"writing shard-\d+ of {re.escape(out)} failed: no space left on device",
                    "the shards finished before it are kept", "free space, then run the same command again")
    failed = int(re.search(r"shard-(\d+)", err).group(1))
    assert failed > 0 and all(shards.shard_is_complete(out, i) for i in range(failed))
    assert not os.path.exists(os.path.join(out, shards.MANIFEST))

    assert mount("-o", "remount,size=4m", mount_point)  # space freed: the same command finishes the dataset
    assert cli.main([*args, "--output", out]) == 0
    assert shards.read_manifest(out) == shards.read_manifest(reference)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return h.build_small_data(str(tmp_path_factory.mktemp("faults-data")))


def test_a_full_disk_under_the_metrics_writer_is_one_line(tiny_filesystem):
    from bert_jax.train.metrics_writer import MetricsWriter

    workdir = os.path.join(tiny_filesystem("16k"), "run")
    writer = MetricsWriter(workdir)
    with pytest.raises(outputs.WriteError) as error:
        for step in range(1, 10_000):
            writer.write(step, {"loss": 1.0 / step, "learning_rate": 1e-4})
    writer.close()  # after a failed write: quiet, the first error is the one reported
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        f"writing the metrics to {os.path.join(workdir, 'metrics.jsonl')} failed: no space left on device; ")
    assert 10 < step < 10_000


@pytest.mark.slow
def test_a_full_disk_while_writing_metrics_is_one_line_exit_4(data, tiny_filesystem, capsys):
    """The workdir on a 40 KiB tmpfs, no checkpoint before step 400: the metrics fill it up."""
    workdir = os.path.join(tiny_filesystem("40k"), "run")
    code, err = run_cli(["pretrain", "--config", h.CONFIG, "--workdir", workdir,
                         *h.overrides(data[:2], train__steps=400, train__checkpoint_every=0)], capsys)
    assert code == outputs.EXIT_WRITE_FAILED, err
    assert_one_line(err, "bert-jax pretrain: ",
                    re.escape(f"writing the metrics to {os.path.join(workdir, 'metrics.jsonl')} failed: ")
                    + "no space left on device", "checkpoints already written are unaffected", "free space")


@pytest.mark.slow
def test_a_full_disk_while_saving_prints_one_line_and_keeps_the_tracebacks_in_the_log(data, tiny_filesystem):
    """The real CLI on a tmpfs with room for one checkpoint: step 2 is saved, step 4 fills the disk. The terminal
    gets one line (before: 414 lines of orbax tracebacks); the libraries' output is in <workdir>/logs."""
    workdir = os.path.join(tiny_filesystem("2600k"), "run")
    proc = subprocess.run(h.cli_command(["--config", h.CONFIG, "--workdir", workdir,
                                         *h.overrides(data[:2], train__steps=4, train__checkpoint_every=2)]),
                          capture_output=True, text=True, env=h.cli_env(8), cwd=h.REPO, timeout=h.SUBPROCESS_TIMEOUT)
    assert proc.returncode == outputs.EXIT_WRITE_FAILED, proc.stderr[-3000:]
    assert_one_line(proc.stderr, "bert-jax pretrain: ", "saving checkpoint step 4 in", "no space left on device",
                    "the last complete checkpoint, step 2, is intact",
                    re.escape(f"details in {os.path.join(workdir, 'logs', 'pretrain.log')}"))
    assert os.path.isfile(os.path.join(workdir, "logs", "pretrain.log"))


def test_a_library_thread_that_logs_after_the_run_writes_into_the_log_not_the_terminal(tmp_path):
    """The CI failure: orbax's signalling thread logged a failed save's traceback after the run's one line, once the
    terminal was restored. library_output_to waits for such threads inside the redirection."""
    import logging
    import threading
    import time

    class LateThread(threading.Thread):  # stands in for orbax.checkpoint._src.futures.future._SignalingThread
        def run(self):
            time.sleep(0.5)
            logging.getLogger("absl").error("late traceback from a library thread")

    LateThread.__module__ = "orbax.checkpoint.fake"
    log_path = str(tmp_path / "logs" / "run.log")
    terminal = io.StringIO()
    root = logging.getLogger()
    on_terminal = logging.StreamHandler(terminal)
    root.addHandler(on_terminal)
    real_stderr, sys.stderr = sys.stderr, terminal
    try:
        with outputs.library_output_to(log_path):
            LateThread().start()
    finally:
        sys.stderr = real_stderr
        root.removeHandler(on_terminal)
    assert "late traceback" not in terminal.getvalue()
    with open(log_path) as f:
        assert "late traceback from a library thread" in f.read()
