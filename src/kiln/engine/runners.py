"""Where steps execute: threads of this process, or worker processes.

Both runners take an action and give back an ``Outcome`` through a
``concurrent.futures.Future``; both go through the store's ``execute_once``
(the cross-process lock, the action cache) and retry transient errors the
same way (``execute_with_retries``), except a timeout: a step that ran past
its wall-clock limit would most likely do so again.

- ``ThreadRunner``: one executor per thread. Cheap to start; but the
  WASI host is Python code, so threads mostly take turns holding the GIL.
- ``ProcessRunner``: ``jobs`` worker processes forked from a fork server
  that has Kiln and Wasmtime already imported; each opens the store itself
  and keeps its executors (and compiled modules) for the whole build. Steps
  really run in parallel; starting costs a fraction of a second, so builds
  use it only when there are many steps to run. A worker's session keeps
  the results it returns from GC; the build's own session takes over as
  each result arrives, while the worker (which lives as long as the pool)
  still keeps it.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util
import queue
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.errors import KilnError
from kiln.exec import interrupt, kinds
from kiln.exec.base import StepTimeout, TransientError, close_executor
from kiln.model.digest import Digest, canonical_bytes
from kiln.model.reapi import re_pb2
from kiln.store.local import Store

if TYPE_CHECKING:
    from kiln.exec.base import Executor

RETRIES = 2  # extra attempts after a transient (infrastructure) error
NESTED_THREADS = 512  # threads for steps waiting on the steps they requested


@dataclass
class Outcome:
    """How one execution went: a result (``cached``: another process had
    recorded it meanwhile, or the remote engine had it) or, after the
    retries, a transient error. ``remote``: the remote engine ran it."""

    result: re_pb2.ActionResult | None
    cached: bool
    attempts: int
    error: KilnError | None = None
    remote: bool = False


def execute_with_retries(
    store: Store,
    executor: Executor,
    key: Digest,
    action: re_pb2.Action,
    command: re_pb2.Command,
    where: str,
) -> Outcome:
    """Run the action once (``execute_once``), retrying transient errors
    other than a timeout."""
    for attempt in range(1, RETRIES + 2):
        try:
            execution = store.execute_once(
                key, lambda: (executor.execute(key, action, command), executor.name)
            )
            return Outcome(execution.result, execution.cached, attempt)
        except StepTimeout as e:
            return Outcome(None, False, attempt, e.naming(where))
        except (TransientError, OSError) as e:
            if attempt <= RETRIES:
                continue
            if isinstance(e, TransientError):
                return Outcome(None, False, attempt, e)
            error = TransientError(
                f"{where} could not be run: {e}",
                hint="check the store's disk (space, permissions)",
            )
            return Outcome(None, False, attempt, error)
        except KilnError as e:  # the executor's own verdict (e.g. a fetch mismatch): final
            return Outcome(None, False, attempt, e)
    raise AssertionError("unreachable")


class ThreadRunner:
    """Executes on ``jobs`` threads, one executor per thread."""

    def __init__(
        self, store: Store, factories: Mapping[str, Callable[[], Executor]], jobs: int
    ) -> None:
        self._store = store
        self._factories = factories
        self._idle: dict[str, queue.SimpleQueue[Executor]] = {
            kind: queue.SimpleQueue() for kind in factories
        }
        # Slots bound how many steps run; threads beyond them are for steps
        # that wait for steps they requested (``Scheduler.run_nested``).
        self._pool = ThreadPoolExecutor(
            max_workers=jobs + NESTED_THREADS, thread_name_prefix="kiln-step"
        )

    def submit(
        self, kind: str, key: Digest, action: re_pb2.Action, command: re_pb2.Command, where: str
    ) -> Future[Outcome]:
        return self._pool.submit(self._run, kind, key, action, command, where)

    def _run(
        self, kind: str, key: Digest, action: re_pb2.Action, command: re_pb2.Command, where: str
    ) -> Outcome:
        idle = self._idle[kind]
        try:
            executor = idle.get_nowait()
        except queue.Empty:
            try:
                executor = self._factories[kind]()
            except KilnError as e:  # e.g. the sandbox tool is not installed
                return Outcome(None, False, 0, e)
        try:
            return execute_with_retries(self._store, executor, key, action, command, where)
        finally:
            idle.put(executor)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for idle in self._idle.values():
            while not idle.empty():
                close_executor(idle.get_nowait())


class ProcessRunner:
    """Executes in ``jobs`` worker processes with the default executors."""

    def __init__(self, store: Store, jobs: int) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["wasmtime", "kiln.exec.wasm", "kiln.engine.runners"])
        self._store = store
        self._pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=_worker_start,
            initargs=(str(store.home),),
        )

    def submit(
        self, kind: str, key: Digest, action: re_pb2.Action, command: re_pb2.Command, where: str
    ) -> Future[Outcome]:
        sent = self._pool.submit(
            _worker_run, kind, str(key), canonical_bytes(action), canonical_bytes(command), where
        )
        outcome: Future[Outcome] = Future()
        # Running from now on: a build that stops waiting (Ctrl-C) cannot
        # cancel it, and the worker's reply still has a future to land in.
        outcome.set_running_or_notify_cancel()

        def unpack(done: Future[Any]) -> None:
            try:
                outcome.set_result(self._kept(key, _unpack(done.result()), where))
            except BaseException as e:  # a worker died: the pool is broken
                outcome.set_result(
                    Outcome(None, False, 1, TransientError(f"{where}: worker process lost: {e}"))
                )

        sent.add_done_callback(unpack)
        return outcome

    def _kept(self, key: Digest, outcome: Outcome, where: str) -> Outcome:
        """The outcome, its result now kept by the build's own session."""
        if outcome.result is None or self._store.keep_result(key, outcome.result):
            return outcome
        lost = TransientError(f"{where}: its outputs were collected before the build kept them")
        return Outcome(None, False, outcome.attempts, lost)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# What a worker sends back: (result, cached, attempts, error message, hint,
# the error's exit code). The error keeps its exit code, not just its text.
Reply = tuple[bytes | None, bool, int, str | None, str | None, int]


def _unpack(reply: Reply) -> Outcome:
    data, cached, attempts, message, hint, exit_code = reply
    if data is None:
        error = KilnError(message or "", hint=hint, exit_code=exit_code)
        return Outcome(None, False, attempts, error)
    return Outcome(re_pb2.ActionResult.FromString(data), cached, attempts)


# ------------------------------------------------------------ in a worker

_worker: dict[str, Any] = {}


def _worker_start(home: str) -> None:
    # Ctrl-C reaches the workers too (one process group): stop their steps,
    # which then fail as interrupted; the build decides what to do next.
    signal.signal(signal.SIGINT, lambda *_: interrupt.stop())
    store = Store(home)
    atexit.register(store.close)
    _worker["store"] = store
    _worker["factories"] = kinds.factories(kinds.local_context(store))
    _worker["executors"] = {}
    # A worker ends with os._exit: only multiprocessing's finalizers run.
    multiprocessing.util.Finalize(None, _close_worker_executors, exitpriority=10)


def _close_worker_executors() -> None:
    for executor in _worker.pop("executors", {}).values():
        close_executor(executor)


def _worker_run(kind: str, key: str, action: bytes, command: bytes, where: str) -> Reply:
    executors = _worker["executors"]
    if kind not in executors:
        executors[kind] = _worker["factories"][kind]()
    outcome = execute_with_retries(
        _worker["store"],
        executors[kind],
        Digest.parse(key),
        re_pb2.Action.FromString(action),
        re_pb2.Command.FromString(command),
        where,
    )
    if outcome.error is not None:
        e = outcome.error
        return None, False, outcome.attempts, e.message, e.hint, e.exit_code
    assert outcome.result is not None
    return canonical_bytes(outcome.result), outcome.cached, outcome.attempts, None, None, 0
