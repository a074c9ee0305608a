"""Metrics to the workdir: one JSON line per record, and TensorBoard scalars (no TensorFlow needed).

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

KEPT = "checkpoints already written are unaffected (the next run resumes from the newest)"


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled, self._failed = enabled, False
        self._what = f"writing the metrics to {os.path.join(workdir, 'metrics.jsonl')}"
        if enabled:
            with write_errors_as_one_line(self._what, KEPT):
                os.makedirs(workdir, exist_ok=True)
                self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
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
