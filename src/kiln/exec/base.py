"""The executor interface and the two kinds of failure.

An executor turns one action into an ``ActionResult``. A step's own failure
(non-zero exit, a trap, exhausted fuel) is a *result*: deterministic, a
value the caller may show or, later, cache. Everything else, the executor
not managing to run the step as described (sandbox set-up, a wall-clock
timeout, a lost worker), is a ``TransientError``: never cached, maybe retried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from kiln.errors import ExitCode, KilnError

if TYPE_CHECKING:
    from kiln.model.digest import Digest
    from kiln.model.reapi import re_pb2


class TransientError(KilnError):
    """The execution could not be carried out; its outcome says nothing
    about the action and must never be cached."""

    def __init__(self, message: str, *, hint: str | None = None, **fields: object) -> None:
        super().__init__(message, hint=hint, exit_code=ExitCode.FAILED, **fields)


class Executor(Protocol):
    """Runs actions. ``name`` is recorded with every result it produces."""

    name: str

    def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> re_pb2.ActionResult:
        """Run the action whose digest is ``key``; output blobs go to the store."""
        ...


def close_executor(executor: Executor) -> None:
    """Release what an executor holds beyond a step (resident sandboxes,
    their folders and cgroups), if it holds anything: callers do this
    explicitly, since a command ends with ``os._exit`` (no finalizers)."""
    close = getattr(executor, "close", None)
    if close is not None:
        close()


def record_timing(result: re_pb2.ActionResult, worker: str, started_ns: int) -> None:
    """Fill the result's execution metadata: who ran it, from when to now."""
    import time

    meta = result.execution_metadata
    meta.worker = worker
    meta.execution_start_timestamp.FromNanoseconds(started_ns)
    meta.execution_completed_timestamp.FromNanoseconds(time.time_ns())
