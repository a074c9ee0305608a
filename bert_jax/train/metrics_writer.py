"""Metrics to the workdir: one JSON line per record, and TensorBoard scalars (no TensorFlow needed).

metrics.jsonl holds each step once. A run resumed from step S trains the steps after S again (an earlier attempt
may have logged some of them before it died), so opening it for step S first drops every line of a step after S,
eval lines included, and a torn last line; the replayed steps then log their lines anew.

A write that fails (a full disk, a file system that turned read-only) raises `bert_jax.outputs.WriteError`: one line
naming the file; `bert-jax pretrain` then stops with exit code 4, its checkpoints as they were.
"""
from __future__ import annotations

import json
import os
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from bert_jax.outputs import write_errors_as_one_line

METRICS_FILE = "metrics.jsonl"
KEPT = "checkpoints already written are unaffected (the next run resumes from the newest)"


def drop_steps_after(path: str, step: int) -> int:
    """Rewrite `path` without the lines of steps after `step` (atomically); returns how many lines went."""
    if not os.path.isfile(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                keep = line.endswith("\n") and int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        """`resume_step`: the step a run starts from (0: from scratch); lines of later steps are dropped, as they
        will be logged again. None keeps every line."""
        self.enabled, self._failed = enabled, False
        path = os.path.join(workdir, METRICS_FILE)
        self._what = f"writing the metrics to {path}"
        if enabled:
            with write_errors_as_one_line(self._what, KEPT):
                os.makedirs(workdir, exist_ok=True)
                if resume_step is not None:
                    drop_steps_after(path, resume_step)
                self._jsonl = open(path, "a")
                self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": prefix, "time": time.time(), **metrics}
        values = [summary_pb2.Summary.Value(tag=f"{prefix}/{k}", simple_value=float(v)) for k, v in metrics.items()]
        self._failed = True  # until the write is through: close() must not hide the error with another
        with write_errors_as_one_line(self._what, KEPT):
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary_pb2.Summary(value=values)))
            self._tb.flush()
        self._failed = False

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            with write_errors_as_one_line(self._what, KEPT):
                try:
                    self._jsonl.close()
                finally:
                    self._tb.close()
        except Exception:  # noqa: BLE001
            if not self._failed:
                raise
