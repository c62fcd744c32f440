"""Ctrl-C and SIGTERM during `sweep run`, `resume` and `score`.

The first signal asks the command to stop soon: Ray Tune ends its loop (through its own stop
signal, SIGUSR1, so it snapshots the experiment with every unfinished trial still resumable;
a Tune stopper would mark them finished instead), the scoring pool hands out no more
checkpoints, and the command reports what finished and how to continue (exit 128 + the
signal: 130 for SIGINT, 143 for SIGTERM). A second signal stops at once; one that comes after
the command has stopped, while it reports and shuts down the Ray it started, ends the process
there and then, with the same status and no traceback from inside Ray's shutdown. Either way
nothing is lost: checkpoints and table files are written whole or not at all, so `sweep resume` picks up
from the last checkpoint of each bundle and scores what was not scored.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_catching: list[bool] = []  # non-empty while a command's handlers are installed
_ended: list[int] = []  # the console command's exit status, once it has ended (`leaving`)


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _received[0] if _received else None


def exit_code() -> int:
    return 128 + (requested() or signal.SIGINT)


def signal_name() -> str:
    return signal.Signals(requested() or signal.SIGINT).name


def handlers() -> dict:
    return {s: signal.getsignal(s) for s in SIGNALS}


def _record_and_raise(signum, frame) -> None:
    stopped_by(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def loading():
    """Ctrl-C while the command's modules load (a second or more on a busy machine) raises
    KeyboardInterrupt as Python's own handler does, and is recorded too: CPython's import
    machinery can clear the exception inside an import (seen here: `sweep run` then ran its whole
    sweep and exited 0), so the command also looks at the record once it has loaded, and before
    it starts anything (`catching` keeps a stop recorded before it). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, _record_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
        _received.clear()


def _handle(signum, frame) -> None:
    if _received:
        raise KeyboardInterrupt  # the second: stop at once
    _received.append(signum)
    tell_tune()


def tell_tune() -> None:
    """Pass a stop asked for on to Ray Tune's loop, once its handler is installed; a callback's
    `setup` calls this too, for a signal that came while torch was imported or the Tuner built."""
    if _catching and requested() and callable(signal.getsignal(signal.SIGUSR1)):
        os.kill(os.getpid(), signal.SIGUSR1)


def settle() -> None:
    """The command has stopped for a signal and this process is leaving (it says so and lets the
    Ray it started go): a further signal ends it at once, quietly (raised inside Ray's shutdown,
    it would end it with a traceback; ignored, a hung shutdown would hold the user)."""
    if _catching:
        for s in SIGNALS:
            signal.signal(s, _exit_now)


def _exit_now(signum, frame) -> None:
    _leave((_ended[-1] if _ended else 0) or 128 + (requested() or signum))


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):  # os._exit skips the flush at exit: a pipe would lose the last lines
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def leaving(code: int) -> None:
    """The command has ended with `code` and the process exits (the Ray it started shuts down at
    exit): a signal now ends it at once with that status (128 + the signal after a success),
    never by the signal's default action or a traceback from inside the shutdown. Main thread only."""
    _ended.append(code)  # for _exit_now, should an atexit hook put it back in place
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _exit_now)


def stopped_by(signum: int) -> None:
    """Record a signal that stopped the command without reaching its handler."""
    if not _received:
        _received.append(signum)


def install() -> None:
    """Put the handlers back over one installed meanwhile (ray.init installs a SIGTERM handler)."""
    if _catching:
        for s in SIGNALS:
            signal.signal(s, _handle)


def when_done(message: str) -> dict:
    """Handlers for after the command's work, while it says how it ended and reports: a signal
    then ends it with `message` and 128 + the signal, Ray shutting down at exit; one that comes
    while the process exits ends it there, quietly (raised inside Ray's shutdown, it would print
    a traceback and leave with status 0)."""
    def stop(signum, frame) -> None:
        print(f"sweep: interrupted ({signal.Signals(signum).name}) {message}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)

    if not _quiet_at_exit:  # atexit runs the last registered first: before Ray's shutdown
        atexit.register(_exit_quietly)
        _quiet_at_exit.append(True)
    return {s: stop for s in SIGNALS}


_quiet_at_exit: list[bool] = []


def _exit_quietly() -> None:
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _exit_now)


@contextlib.contextmanager
def restored():
    """The handlers of before, put back afterwards (main thread only, where they can be set), and
    no stop asked any more: a program that runs a command again (or a scoring pool) after one
    that was interrupted must not find it stopped before it starts."""
    before = handlers()
    try:
        yield
    finally:
        _received.clear()
        if threading.current_thread() is threading.main_thread():
            for s, handler in before.items():
                signal.signal(s, handler)


@contextlib.contextmanager
def catching():
    """Install the handlers for the command's duration (main thread only; elsewhere signals
    keep their default behaviour); a stop recorded before (`loading`) stands. Yields the
    handlers it puts back afterwards, which the command may change (Ray's own go with a Ray it
    shut down)."""
    before = handlers()
    if threading.current_thread() is not threading.main_thread():
        yield before
        return
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours asks Tune to stop instead
    for s in SIGNALS:
        signal.signal(s, _handle)
    _catching.append(True)
    try:
        yield before
    finally:
        _catching.clear()
        _received.clear()
        for s, handler in before.items():
            signal.signal(s, handler)
