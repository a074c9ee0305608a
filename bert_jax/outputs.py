"""Where commands write: checked before any work starts, and every filesystem fault as one line with its exit code.

Exit codes shared by every `bert-jax` command (docs/reliability.md has the table):
  2  bad input, found before any work: an unusable output path among them (read-only file system, permission
     denied, a file where a directory is wanted or the reverse, a parent that cannot be created); the line names
     the flag and the path as typed and the fix.
  4  an output could not be written once the work had started (disk full, a file system that turned read-only or
     went away): the line names what was being written, where, why and what was kept.
A full disk or a dead bucket makes orbax, tensorstore and absl print pages of tracebacks from their own threads
(414 lines for one failed save); `library_output_to` sends those to a log file in the workdir instead of the
terminal, which then shows only the one line.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Iterator, TextIO

from bert_jax import interrupts

EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 4

_REASONS = {
    errno.EROFS: ("read-only file system", "pass a path on a writable file system"),
    errno.EACCES: ("permission denied", "pass a path you may write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "pass a path you may write to, or fix its permissions"),
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "fix the path"),
    errno.EISDIR: ("it is a directory", "pass a file path"),
    errno.EEXIST: ("a file is in the way", "fix the path"),
    errno.ENOENT: ("no such file or directory", "fix the path"),
    errno.EIO: ("input/output error", "check the storage device"),
}


class OutputError(ValueError):
    """An output path that cannot be used, found before any work (exit 2); one line naming it and the fix."""


class WriteError(RuntimeError):
    """An output write that failed once the work had started (exit 4); one line naming it and what was kept."""


def reason(error: BaseException) -> str:
    """What went wrong, in words: 'no space left on device', 'read-only file system', ..."""
    if is_disk_full(error):
        return _REASONS[errno.ENOSPC][0]
    if isinstance(error, OSError) and error.errno in _REASONS:
        return _REASONS[error.errno][0]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def fix(error: BaseException) -> str:
    if is_disk_full(error):
        return _REASONS[errno.ENOSPC][1]
    code = getattr(error, "errno", None)
    return _REASONS[code][1] if code in _REASONS else "fix the cause"


def is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain (orbax and tensorstore re-raise it as ValueError/RuntimeError text)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "ENOSPC" in str(error):
            return True
        # A short write with no errno (io's "2048 requested and 2016 written"): the disk filled mid-write.
        if isinstance(error, OSError) and error.errno is None and " requested and " in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _is_remote(path: str) -> bool:
    return "://" in path  # a bucket (gs://...): written through orbax/epath, nothing to check on this disk


def _probe(directory: str) -> OSError | None:
    """Create `directory` (and its parents) if needed and write and remove a file in it; the error, if any."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        return e
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        e.filename = directory  # the directory refused, not the probe's random name
        return e
    return None


def _where(error: OSError, path: str) -> str:
    """The file the error names, when it is not `path` itself (e.g. a parent that is read-only)."""
    named = error.filename and os.path.abspath(str(error.filename)) != os.path.abspath(path)
    return f" ({error.filename})" if named else ""


def writable_directory(path: str, label: str) -> str:
    """Create directory `path` with its parents if needed and check a file can be written in it; OutputError (one
    line naming `label`, e.g. '--workdir', and the path as typed, and the fix) when not. Returns `path`."""
    if _is_remote(path):
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{label} {path} is a file, not a directory; pass a directory (or move the file away)")
    error = _probe(path)
    if error is not None:
        raise OutputError(f"{label} {path} cannot be written: {reason(error)}{_where(error, path)}; {fix(error)}")
    return path


def writable_file(path: str, label: str) -> str:
    """Check that file `path` can be written (its directory is created if needed); OutputError when not."""
    if _is_remote(path):
        return path
    if os.path.isdir(path):
        raise OutputError(f"{label} {path} is a directory; pass a file path")
    parent = os.path.dirname(os.path.abspath(path))
    error = _probe(parent)
    if error is not None:
        raise OutputError(f"{label} {path} cannot be written: {reason(error)}{_where(error, path)}; {fix(error)}")
    return path


def write_failed(what: str, error: BaseException, kept: str) -> WriteError:
    """The one-line WriteError for `what` (e.g. 'writing shard-00003 of data/') failing with `error`."""
    return WriteError(f"{what} failed: {reason(error)}; {kept}; {fix(error)}, then run the same command again")


@contextlib.contextmanager
def write_errors_as_one_line(what: str, kept: str) -> Iterator[None]:
    """An OSError inside becomes the one-line WriteError naming `what` and `kept`."""
    try:
        yield
    except OSError as e:
        raise write_failed(what, e, kept) from e


# ------------------------------------------------------------------------------------------ the terminal


class _OneLine(logging.Formatter):
    """A warning on the terminal is one line; its traceback, if any, is in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname} {record.name}: {(record.getMessage().splitlines() or [''])[0]}"


@contextlib.contextmanager
def library_output_to(log_path: str, own_loggers: str = "bert_jax") -> Iterator[TextIO]:
    """Within: whatever libraries write to stderr (C++ through file descriptor 2, Python through sys.stderr,
    logging) goes to `log_path`; yields the stream that still reaches the terminal, for the command's own one-line
    messages. Warnings of `own_loggers` reach both, one line each on the terminal. Restored on exit."""
    terminal = sys.stderr  # the real stderr, or a caller's capture of it
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log = open(log_path, "a", buffering=1)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    # A fresh stream on the terminal's descriptor: sys.stderr itself is about to write into the log.
    to_terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1) if terminal is sys.__stderr__ else terminal
    root = logging.getLogger()
    to_file = logging.StreamHandler(log)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # A handler that printed records on the terminal (logging.basicConfig's) now prints ours only, one line each.
    replaced = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) in (sys.__stderr__, terminal)]
    added = [to_file]
    if replaced:
        on_terminal = logging.StreamHandler(to_terminal)
        on_terminal.setFormatter(_OneLine())
        on_terminal.addFilter(lambda record: record.name.startswith(own_loggers))
        added.append(on_terminal)
    for handler in replaced:
        root.removeHandler(handler)
    for handler in added:
        root.addHandler(handler)
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    previous_fd = interrupts.set_terminal_fd(saved_fd)  # a Ctrl-C's message is the user's, not the libraries'
    try:
        yield to_terminal
    finally:
        # A failed async save leaves orbax's own threads finishing (and logging their tracebacks) after the run's
        # last line: let them end inside the redirection, or their pages reach the terminal (seen in CI).
        _join_library_threads(LIBRARY_THREAD_GRACE_S)
        # Objects dropped by the run (a file that cannot flush on a full disk) are finalised now, their complaints
        # into the log, not onto the terminal after the run's last line.
        gc.collect()
        interrupts.set_terminal_fd(previous_fd)
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr = terminal
        for handler in added:
            root.removeHandler(handler)
        for handler in replaced:
            root.addHandler(handler)
        for stream in (to_terminal, log):
            if stream is not terminal:
                _close_quietly(stream)


LIBRARY_THREAD_GRACE_S = 30.0  # a successful run has no orbax thread left, so this only ever delays a failure


def _join_library_threads(timeout: float, modules: tuple[str, ...] = ("orbax",)) -> None:
    """Wait (at most `timeout` s in all) for the live threads whose class comes from `modules`."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith(modules):
            thread.join(max(0.0, deadline - time.monotonic()))


def _close_quietly(stream: TextIO) -> None:
    # The log may sit on the disk that just filled up: what it could not take is lost, the command's exit stands.
    try:
        stream.close()
    except (OSError, ValueError):
        pass
