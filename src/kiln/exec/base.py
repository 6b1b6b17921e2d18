"""The executor interface, what an executor is given, and the two kinds
of failure.

An executor turns one action into an ``ActionResult``. It is given an
``ExecContext``: the content store and the action cache as protocols
(``kiln.store.cas.ContentStore``, ``kiln.store.actioncache.ActionCache``),
a scratch folder and a folder for its caches, never the local ``Store``
itself, so that remote services can stand in for the local ones.

A step's own failure (non-zero exit, a trap, exhausted fuel) is a *result*:
deterministic, a value the caller may show or, later, cache. Everything
else, the executor not managing to run the step as described (sandbox
set-up, a wall-clock timeout, a lost worker), is a ``TransientError``:
never cached, maybe retried (a timeout, ``StepTimeout``, is not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kiln.errors import ExitCode, KilnError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from kiln.model.digest import Digest
    from kiln.model.reapi import re_pb2
    from kiln.store.actioncache import ActionCache
    from kiln.store.cas import ContentStore


@dataclass(frozen=True)
class ExecContext:
    """Where an executor reads and writes.

    ``cas`` holds inputs and receives outputs (written in batches, which
    the local store keeps safe from a concurrent GC); ``actions`` is the
    action cache, for executors that memoize work inside a step;
    ``scratch()`` is a private folder on the store's disk for temporary
    files (made on first use, removed when the process's session ends);
    ``state`` is a folder for what an executor keeps between steps and
    runs (compiled modules, sandboxes, tool roots, partial downloads)."""

    cas: ContentStore
    actions: ActionCache
    scratch: Callable[[], Path]
    state: Path


@dataclass(frozen=True)
class ExecHooks:
    """What a caller hears from executors while they work: a download's
    progress (name, bytes so far, total if known), and a context entered
    while something slow happens (a large module compiling)."""

    on_download: Callable[[str, int, int | None], None] | None = None
    on_slow: Callable[[str], AbstractContextManager[object]] | None = None


class TransientError(KilnError):
    """The execution could not be carried out; its outcome says nothing
    about the action and must never be cached."""

    def __init__(self, message: str, *, hint: str | None = None, **fields: object) -> None:
        super().__init__(message, hint=hint, exit_code=ExitCode.FAILED, **fields)


class StepTimeout(TransientError):
    """The step ran past its wall-clock limit (``seconds``) and was stopped.
    Never cached, and not retried (``kiln.engine.runners``): it would most
    likely run as long again."""

    def __init__(self, seconds: float, kind: str, where: str = "the step") -> None:
        self.seconds = seconds
        self.kind = kind
        super().__init__(
            f"{where} ran past its wall-clock timeout of {seconds:g} s and was stopped "
            "(not cached)",
            hint=f"raise it with {kind}(..., timeout=SECONDS) in the build file, or the "
            f"default for every step with `step-timeout = SECONDS` in {_config_where()} "
            "(or KILN_STEP_TIMEOUT)",
        )

    def naming(self, where: str) -> StepTimeout:
        """The same timeout, its message naming ``where`` (the step and target)."""
        return StepTimeout(self.seconds, self.kind, where)


def _config_where() -> str:
    from kiln.config import config_path  # (start-up: only when a step timed out)

    return str(config_path())


def step_timeout(action: re_pb2.Action, default: float | None) -> float | None:
    """A step's wall-clock limit in seconds: the one its action carries
    (``Action.timeout``, outside its key), else ``default``."""
    if action.HasField("timeout"):
        seconds = action.timeout.ToNanoseconds() / 1e9
        if seconds > 0:
            return seconds
    return default


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
    meta = result.execution_metadata
    meta.worker = worker
    meta.execution_start_timestamp.FromNanoseconds(started_ns)
    meta.execution_completed_timestamp.FromNanoseconds(time.time_ns())
