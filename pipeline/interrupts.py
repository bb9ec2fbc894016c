"""Signals that end a run take the Ctrl-C path every phase already has.

CI cancelling a job, `timeout`, systemd and Kubernetes send SIGTERM; a dropped terminal or SSH
session sends SIGHUP. `handled()` (entered by every task, `tasks/_cli.exit_codes`) turns the
first of them into a SIGINT of this process, so the one well-tested path runs: KeyboardInterrupt
where Python raises it, asyncio's own cancellation inside an event loop. Whoever catches it asks
`cause()` which signal it was, for the error receipt and the verdict ("interrupted by SIGTERM").

A second SIGTERM or SIGHUP while the run cleans up does not interrupt the cleanup: it sets
`hurry()`, and stops skip their grace periods, so the run still ends judged and sealed. (A second
Ctrl-C keeps Python's meaning: it interrupts again.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

ENDING = (signal.SIGTERM, signal.SIGHUP)

_cause: list[str] = []  # the signal that ended the run, once known
_noted = threading.Event()  # the run has seen it (a KeyboardInterrupt was caught)
_hurry = threading.Event()


def cause() -> str:
    """What interrupted the run: "SIGTERM", "SIGHUP", or "SIGINT (Ctrl-C)"."""
    return _cause[0] if _cause else "SIGINT (Ctrl-C)"


def reason() -> str:
    """The line for receipts and verdicts: "interrupted by SIGTERM"."""
    return f"interrupted by {cause()}"


def hurry() -> bool:
    """A second signal came while the run cleaned up: skip grace periods."""
    return _hurry.is_set()


def exit_code() -> int:
    """The conventional status of a process ended by the signal: 128 + its number."""
    name = cause().split()[0]
    return 128 + int(getattr(signal, name, signal.SIGINT))


def _on_signal(signum: int, _frame: Any) -> None:
    if _cause:
        _hurry.set()
        return
    _cause.append(signal.Signals(signum).name)
    os.kill(os.getpid(), signal.SIGINT)


def noted() -> str:
    """The run saw the interrupt (KeyboardInterrupt caught): from now on SIGTERM and SIGHUP
    hurry the cleanup instead of interrupting it. Returns `reason()`."""
    if not _cause:
        _cause.append("SIGINT (Ctrl-C)")
    _noted.set()
    return reason()


def pending() -> bool:
    """A SIGTERM/SIGHUP came but its KeyboardInterrupt never reached the run: Python swallows
    one raised inside code that ignores exceptions (an at-fork hook while a child is started,
    a finalizer). Phases ask at every stage boundary and raise it again."""
    return bool(_cause) and not _noted.is_set()


def raise_pending() -> None:
    if pending():
        raise KeyboardInterrupt(reason())


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A step that must not be cut in two (a child started and not yet known to whoever stops
    it): a signal meanwhile is held, then raised as KeyboardInterrupt when the step is done."""
    with deferred() as signalled:
        yield
    if signalled() and not _noted.is_set():
        raise KeyboardInterrupt(reason())


@contextlib.contextmanager
def deferred() -> Iterator[Callable[[], bool]]:
    """While a run judges and seals itself, a signal (SIGINT included) is held, not raised: the
    block asks `signalled()` before its verdict is written, and fails it if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    got: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        if not _cause:
            _cause.append(
                "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
            )
        elif got or signum != signal.SIGINT:
            _hurry.set()
        got.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, *ENDING)}
    try:
        yield lambda: bool(got) or pending()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C, for the duration of the block (main thread
    only; elsewhere a no-op). SIGINT is Python's own handler, also where the process was
    started with SIGINT ignored (`nohup … &`): a signal sent on purpose is obeyed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in ENDING}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    _cause.clear()
    _noted.clear()
    _hurry.clear()
    unraisable = sys.unraisablehook
    sys.unraisablehook = _kept(unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _kept(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Ctrl-C's KeyboardInterrupt raised inside a finalizer is printed and dropped by Python
    ("Exception ignored in …"): note it, so the next stage boundary raises it again (a chaos
    trial saw a week 5 run pass after a SIGINT lost that way)."""

    def hook(unraisable: Any) -> None:
        kind = getattr(unraisable, "exc_type", None)
        if isinstance(kind, type) and issubclass(kind, KeyboardInterrupt) and not _cause:
            _cause.append("SIGINT (Ctrl-C)")
        previous(unraisable)

    return hook
