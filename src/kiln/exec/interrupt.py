"""Stopping the steps that run in this process at once (Ctrl-C).

Executors say how to stop what they run (``on_stop``: native steps kill
their sandboxes, wasm steps end their guests at the next function call);
``stop`` runs those from a signal handler, so each must be quick and take no
lock a running step may hold. A step stopped this way fails with
``Interrupted``, which is never cached and never retried: the next build
runs it again. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from kiln.errors import ExitCode, KilnError

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_stoppers: list[Callable[[], None]] = []
_stopped = threading.Event()


class Interrupted(KilnError):
    """A step stopped by an interruption (Ctrl-C): not a result, not cached."""

    def __init__(self, what: str = "the step") -> None:
        super().__init__(
            f"{what} was interrupted (not cached)",
            hint="build again to run it",
            exit_code=ExitCode.INTERRUPTED,
        )


def on_stop(stopper: Callable[[], None]) -> None:
    """Call ``stopper`` when this process's running steps are to stop."""
    _stoppers.append(stopper)


def stop() -> None:
    """Stop every step running in this process; no step starts after this."""
    _stopped.set()
    for stopper in list(_stoppers):
        with contextlib.suppress(Exception):  # (one failing must not spare the others)
            stopper()


def stopped() -> bool:
    """Whether ``stop`` was called (steps must not start, nor be retried)."""
    return _stopped.is_set()


@contextlib.contextmanager
def first_ctrl_c_stops(announce: Callable[[], None]) -> Iterator[None]:
    """While entered (on the main thread; elsewhere nothing changes): the
    first Ctrl-C (SIGINT) calls ``announce``, stops the running steps and
    raises ``KeyboardInterrupt``, so the build unwinds once they have ended;
    a second one ends the process at once, with exit code 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: object) -> None:
        if _stopped.is_set():  # the second Ctrl-C: do not wait any longer
            os.write(2, b"\nkiln: stopped without waiting for the running steps\n")
            os._exit(ExitCode.INTERRUPTED)
        announce()
        stop()
        raise KeyboardInterrupt

    _stopped.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
