"""Shared by tests/test_pretrain.py: tiny-run overrides, subprocess launching, metrics and checkpoint readers.

Run as a script it is a throttled `bert-jax`: `python tests/_pretrain_helpers.py SECONDS pretrain ...` sleeps
SECONDS before handing out each training batch, then runs the real CLI. Sleeping changes no numbers; it only
widens the window in which a test can kill or signal a run that has checkpointed but not finished (a tiny
model otherwise runs its remaining steps in a fraction of a second).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "pretrain.py") + ":tiny"
SUBPROCESS_TIMEOUT = 240

TINY = {
    "model.hidden_size": 64, "model.num_heads": 2, "model.intermediate_size": 128, "model.num_layers": 1,
    "data.seq_len": 64, "train.global_batch_size": 16, "train.progress_bar": False, "train.log_every": 1,
    "train.eval_every": 0, "train.checkpoint_every": 0, "optimizer.learning_rate": 2e-3,
    "optimizer.warmup_steps": 2,
}
# The built-in corpus, small: shared by every run of a test session (see the `data` fixture).
DATA = dict(num_docs=300, vocab_size=1000, seq_len=64, mode="segment-pair")


def overrides(data_dirs: tuple[str, str], **extra) -> list[str]:
    """`--config.a.b=value` arguments for a tiny run on the prepared data; `extra` uses `a__b` for `a.b`."""
    values = {**TINY, "data.path": data_dirs[0], "data.eval_path": data_dirs[1]}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"--config.{k}={v}" for k, v in values.items()]


def load_config(args: list[str]):
    from bert_jax import configlib
    return configlib.load_config(CONFIG, args)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(devices: int, compile_cache: str | None = None) -> dict[str, str]:
    """This environment with `devices` CPU devices; `compile_cache` lets runs of one program (a killed run and
    its resumption) share XLA executables instead of compiling again (seconds each on a small CPU)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    if compile_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = compile_cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def cli_command(args: list[str], throttle: float = 0.0) -> list[str]:
    if throttle:
        return [sys.executable, os.path.abspath(__file__), str(throttle), "pretrain", *args]
    return [sys.executable, "-m", "bert_jax.cli", "pretrain", *args]


def start_pretrain(workdir: str, args: list[str], *, devices: int = 8, throttle: float = 0.0,
                   log_name: str = "log.txt", compile_cache: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start `bert-jax pretrain` in a subprocess; stdout and stderr go to a file (no pipe to fill up)."""
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(os.path.dirname(os.path.abspath(workdir)), f"{os.path.basename(workdir)}-{log_name}")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cli_command(["--config", CONFIG, "--workdir", workdir, *args], throttle),
                                stdout=log, stderr=subprocess.STDOUT, env=cli_env(devices, compile_cache), cwd=REPO)
    return proc, log_path


def wait(proc: subprocess.Popen, log_path: str, timeout: float = SUBPROCESS_TIMEOUT) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"pretrain subprocess timed out after {timeout}s; log:\n{read_text(log_path)}")
    return rc, read_text(log_path)


def wait_all(started: list[tuple[subprocess.Popen, str]], timeout: float = SUBPROCESS_TIMEOUT) -> list[tuple[int, str]]:
    """Wait for processes of one job; once one fails the others are killed (they would wait for it forever)."""
    deadline = time.monotonic() + timeout
    while any(proc.poll() is None for proc, _ in started):
        failed = any(proc.poll() not in (None, 0) for proc, _ in started)
        if failed or time.monotonic() > deadline:
            for proc, _ in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if not failed:
                logs = "\n".join(read_text(log_path) for _, log_path in started)
                raise AssertionError(f"processes timed out after {timeout}s; logs:\n{logs}")
        time.sleep(0.1)
    return [(proc.returncode, read_text(log_path)) for proc, log_path in started]


def run_pretrain(workdir: str, args: list[str], **kwargs) -> tuple[int, str]:
    proc, log_path = start_pretrain(workdir, args, **kwargs)
    return wait(proc, log_path)


def read_text(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def wait_for_checkpoint(proc: subprocess.Popen, workdir: str, step: int, log_path: str,
                        timeout: float = SUBPROCESS_TIMEOUT) -> None:
    """Poll until checkpoint `step` is committed (its directory carries the commit marker)."""
    from bert_jax.train import checkpoint as ckpt
    directory = os.path.join(workdir, "checkpoints")
    deadline = time.monotonic() + timeout
    while step not in ckpt.complete_steps(directory):
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before checkpoint {step}:\n{read_text(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no checkpoint {step} after {timeout}s:\n{read_text(log_path)}")
        time.sleep(0.02)


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
    """step -> the last record of that split in metrics.jsonl (a resumed run appends; later lines win)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record["split"] == split:
                out[record["step"]] = record
    return out


def restore(workdir: str, step: int | None = None):
    """(step, host state dict, data-iterator state) of a run's checkpoint (default: the newest), on one device."""
    import jax
    from bert_jax.train import checkpoint as ckpt

    manager = ckpt.open_manager(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        step = manager.latest_step() if step is None else step
        assert step is not None, f"{workdir} holds no checkpoint"
        meta = manager.item_metadata(step)["state"]
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), meta)
        target = ckpt.abstract_target(shapes, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        restored = ckpt.restore_checkpoint(manager, step, target)
    finally:
        manager.close()
    return step, jax.device_get(restored.state), restored.data_iter


def _throttled_cli(seconds: float, argv: list[str]) -> int:
    from bert_jax.cli import main
    from bert_jax.data import pipeline

    original = pipeline.BatchIterator.__next__

    def slow_next(self):
        time.sleep(seconds)
        return original(self)

    pipeline.BatchIterator.__next__ = slow_next
    return main(argv)



def host_leaves(state):
    import jax
    import numpy as np

    return jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, state))[0]


def assert_states_identical(a, b):
    """Same tree, dtypes, shapes and bytes, leaf by leaf (the failing path named)."""
    import jax
    import numpy as np

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), (_, y) in zip(host_leaves(a), host_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def resumed_step(output: str) -> int:
    import re

    match = re.search(r"resumed from \S+ at step (\d+)", output)
    assert match, f"no 'resumed from' in the output:\n{output}"
    return int(match.group(1))


def build_small_data(cache: str) -> tuple[str, str, str]:
    """(train dir, eval dir, vocab dir) of the small built-in corpus (`DATA`) under `cache`: eval is another
    seed's documents tokenised with the training vocab."""
    from bert_jax.data.make_data import prepare_builtin_dataset

    d = DATA
    common = dict(mode=d["mode"], seq_len=d["seq_len"], vocab_size=d["vocab_size"], log=lambda m: None)
    train_dir = prepare_builtin_dataset(cache, seed=0, num_docs=d["num_docs"], **common)
    vocab = os.path.join(cache, f"vocab-v{d['vocab_size']}-docs{d['num_docs']}-seed0")
    eval_dir = prepare_builtin_dataset(cache, seed=1, num_docs=200, vocab=vocab, **common)
    return train_dir, eval_dir, vocab

if __name__ == "__main__":
    sys.exit(_throttled_cli(float(sys.argv[1]), sys.argv[2:]))


def flip_middle_bytes(path: str, count: int = 64) -> None:
    """`count` bytes flipped in the middle of a file: same size, still parses (an array file, a shard), wrong."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(count)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
