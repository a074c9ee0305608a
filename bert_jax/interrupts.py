"""Stop requests by signal, for `bert-jax pretrain`: SIGTERM (preemption) and the first Ctrl-C (SIGINT) only set a
flag; the run checks it, saves the current step and exits 0. A second Ctrl-C aborts at once.

Imports no jax: `bert-jax pretrain` installs the handlers before it imports jax, so a signal during start-up
(imports, data, compiling) is a stop request too, never a death by signal. The second Ctrl-C is the kernel's
default action (SIG_DFL, installed by the first), so it kills the process even while it is inside a long C call
(an XLA compile), where a Python handler would not run; that is as safe as SIGKILL (a half-written checkpoint
is never read) and loses the steps since the last complete checkpoint.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Sequence

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stop = threading.Event()
_sigint_seen = threading.Event()
# Where the handler's message goes while file descriptor 2 is sent to a log (bert_jax.outputs.library_output_to).
_terminal_fd: int | None = None


def set_terminal_fd(fd: int | None) -> int | None:
    """Send stop messages to `fd` (None: descriptor 2); returns the previous setting, to put back."""
    global _terminal_fd
    previous, _terminal_fd = _terminal_fd, fd
    return previous


def _on_signal(signum, frame) -> None:
    del frame
    if signum == signal.SIGINT:
        _sigint_seen.set()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        message = "interrupted (Ctrl-C): the run saves its current step and stops; Ctrl-C again aborts at once\n"
    else:
        message = f"received {signal.Signals(signum).name}: the run saves its current step and stops\n"
    _stop.set()
    os.write(2 if _terminal_fd is None else _terminal_fd, message.encode())  # not print: a handler may run while the main thread is inside a print


def install(signals: Sequence[int] = STOP_SIGNALS) -> Callable[[], None]:
    """Make `signals` stop requests; returns a function that puts the previous handlers back. Installing again
    (the CLI early, the run later) keeps a Ctrl-C already received: the next one still aborts."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = []
    for signum in signals:
        handler = signal.SIG_DFL if signum == signal.SIGINT and _sigint_seen.is_set() else _on_signal
        previous.append((signum, signal.signal(signum, handler)))

    def restore() -> None:
        for signum, handler in reversed(previous):
            signal.signal(signum, handler)

    return restore


def requested() -> bool:
    """True once a stop signal arrived."""
    return _stop.is_set()


def clear() -> None:
    """Forget received signals (a caller that handled the stop and goes on, e.g. a test or a runner)."""
    _stop.clear()
    _sigint_seen.clear()


def reset() -> None:
    """Python's own handling again (multi-host runs, before jax.distributed starts: JAX's preemption service owns
    SIGTERM there, and a local stop flag would stop one host while the others wait in a collective)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
