"""One writer per directory: `bert-jax pretrain`, `make-data`, `finetune` and `experiment` lock the directory they
write before they touch it.

    with dirlock.hold(workdir, "--workdir", "bert-jax pretrain"):
        ...   # a second writer of `workdir` fails at once with DirectoryInUse (one line: the holder and the fix)

The lock is `fcntl.flock` on `<directory>/.bert-jax.lock`. The kernel drops it when its holder dies, however it
dies (SIGKILL, OOM, power loss of a local disk), so a stale lock never blocks a restart; the file only says who
holds it (JSON: host, pid, start time, command) for the message a refused writer prints. A writer that finds a
previous holder's record (it died without releasing) takes over with a one-line note. On release the record is
emptied; the file stays, so the lock is never deleted while another process is opening it.

A refused writer changes nothing: it opens the existing lock file read-write without truncating, fails to lock,
reads the record and closes it. Object storage (gs://...) has no locks; such directories are not locked.
Locks are per open file, so two `hold`s of one directory in one process also exclude each other: callers lock
only the directory they write themselves (a runner's workdir, a run's own subdirectory), never a parent twice.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Iterator

LOCK_FILE = ".bert-jax.lock"


class DirectoryInUse(ValueError):
    """Another live process holds the directory's lock; the message names it and the fix."""


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _read_record(fd: int) -> dict:
    try:
        data = os.pread(fd, 65536, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(record: dict) -> str:
    if not record:
        return "another process (it has not recorded itself yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("start_time", 0)))
    return (f"{record.get('command', 'another bert-jax command')} (pid {record.get('pid')} on host "
            f"{record.get('host')}, started {started})")


def _alive(record: dict) -> bool:
    """Whether the recorded holder still runs, as far as this host can tell (another host's: assume so)."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except (OSError, ValueError, TypeError) as e:
        return getattr(e, "errno", None) == errno.EPERM
    return True


def acquire(directory: str, flag: str, command: str, note: Callable[[str], None] = _note) -> int | None:
    """Lock `directory` (created if missing) for this process; returns the lock's fd (None: not lockable).

    `flag` is how the user named the directory (e.g. "--workdir"), used in the messages."""
    if "://" in directory:
        return None
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record = _read_record(fd)
        for _ in range(20):  # the holder writes its record just after locking; give it a moment
            if record:
                break
            time.sleep(0.05)
            record = _read_record(fd)
        os.close(fd)
        pid = record.get("pid")
        stop = f"stop it (kill {pid}) " if pid and record.get("host") == socket.gethostname() else "stop it "
        raise DirectoryInUse(f"{flag} {directory} is in use by {_describe(record)}; wait for it to finish or {stop}"
                             f"and run again, or pass another {flag}") from None
    except OSError as e:  # a filesystem without locks (some FUSE mounts): run, but say it is unguarded
        os.close(fd)
        note(f"note: cannot lock {flag} {directory} ({e.strerror}); make sure no other bert-jax command writes it")
        return None
    previous = _read_record(fd)
    if previous:
        why = "is no longer running" if not _alive(previous) else "no longer holds it (a copied directory?)"
        note(f"note: {flag} {directory} was locked by {_describe(previous)}, which {why}; taking it over")
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": time.time(), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


def release(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)  # a clean exit leaves no holder behind; the kernel lock goes with the close
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(directory: str, flag: str, command: str, note: Callable[[str], None] = _note) -> Iterator[None]:
    fd = acquire(directory, flag, command, note)
    try:
        yield
    finally:
        release(fd)


def remove_if_unused(directory: str) -> None:
    """Remove a directory this run created that holds nothing but the lock file (a run refused for bad input
    leaves no trace); anything else in it stays."""
    try:
        if set(os.listdir(directory)) <= {LOCK_FILE}:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, LOCK_FILE))
            os.rmdir(directory)
    except OSError:
        pass
