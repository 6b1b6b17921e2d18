"""Running the steps a build asks for: memoized, deduplicated, bounded.

A step's lifecycle (``StepStatus``):

    requested --(action cache hit)---------------------------> CACHED
              --(remote action cache hit, with a remote)-----> REMOTE_CACHED
              --(build stopping)-----------------------------> SKIPPED
              --(slot free)--> running --(exit 0)------------> EXECUTED
                                       --(exit 0 on the remote engine)--> REMOTE_EXECUTED
                                       --(non-zero exit)-----> FAILED
                                       --(transient error, after runners.RETRIES retries)--> FAILED

A step is one action key: asking again for a key already asked for in
this build (by another target, or by a helper called once per unit) waits
for the first request's outcome and makes no record, cache lookup or
execution of its own, so the report counts steps, not requests. Cache hits
return without taking a slot or a thread. At most ``jobs``
executions run at once, on threads (or, when the build asks
for it, in worker processes after the first ``PROCESSES_AFTER``; see
``runners.py``), always under the store's cross-process "execute once"
lock, so other kiln processes sharing the store never run the same key at
the same time.

Everything a step uses or yields is kept from GC until the build ends (the
store's session): a hit as it is looked up (a result a GC has taken apart
meanwhile is a miss, and runs again), a step's input tree, Action and
Command as they are written, and its result as it is recorded.

With a remote, results from it arrive without their output files
("without the bytes"): ``ensure_local`` brings what a step running here or
a target's value needs, and when the remote has lost some of it, runs the
steps that produced it here instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.engine.inputs import write_blobs
from kiln.engine.report import StepStatus
from kiln.engine.runners import RETRIES, Outcome, ProcessRunner, ThreadRunner
from kiln.engine.values import File, StepResult, Tree, outputs_of
from kiln.exec.base import TransientError
from kiln.model.digest import Digest
from kiln.model.tree import reachable
from kiln.store.actioncache import result_blobs
from kiln.store.cas import read_blob

if TYPE_CHECKING:
    from kiln.exec.base import Executor
    from kiln.model.action import ActionSpec
    from kiln.model.reapi import re_pb2
    from kiln.remote.connect import Remote
    from kiln.store.local import Store

PROCESSES_AFTER = 8  # executions run on threads before worker processes start
MAX_NESTING = 16  # steps requested by steps requested by ... this deep at most
STDERR_TAIL = 10  # lines of a failed step's stderr shown in its error


@dataclass
class StepRecord:
    """One step request of a build, as history and progress see it."""

    seq: int
    target: str
    description: str
    key: Digest
    identity: dict[str, Any]  # what the key was computed from, for `kiln why`
    status: StepStatus = StepStatus.PENDING
    slot: int | None = None
    started: float | None = None
    finished: float | None = None
    result: re_pb2.ActionResult | None = field(default=None, repr=False)
    attempts: int = 0
    also: list[str] = field(default_factory=list)  # other targets that asked for this step
    parent: Digest | None = None  # the running step that requested this one, if one did
    lent: int = 0  # requests of its own it waits for (its slot is lent meanwhile)
    slot_lent: bool = False


@dataclass(frozen=True)
class StepRequest:
    """What a rule asks to run: an action, where it comes from, on which executor."""

    target: str
    description: str
    spec: ActionSpec
    identity: dict[str, Any]
    executor: str = "wasm"
    input_blobs: list[tuple[Digest, bytes]] = field(default_factory=list, repr=False)
    parent: Digest | None = None  # requested by this running step (``run_nested``)


async def _run_remotely(
    remote: Remote, key: Digest, action: re_pb2.Action, command: re_pb2.Command
) -> Outcome:
    """A step on the remote engine, transient failures retried as here."""
    for attempt in range(1, RETRIES + 2):
        try:
            run = await remote.execute(key, action, command)
            return Outcome(run.result, run.cached, attempt, remote=True)
        except TransientError as e:
            if attempt > RETRIES:
                return Outcome(None, False, attempt, e, remote=True)
        except errors.KilnError as e:  # the server refused the step: final
            return Outcome(None, False, attempt, e, remote=True)
    raise AssertionError("unreachable")


class BuildStopped(Exception):
    """A step was not started because the build is stopping after a failure."""


def step_failed(record: StepRecord, argv: list[str], stderr: bytes) -> errors.KilnError:
    assert record.result is not None
    code = record.result.exit_code
    tail = stderr.decode(errors="replace").rstrip().splitlines()[-STDERR_TAIL:]
    detail = "".join(f"\n    {line}" for line in tail)
    return errors.KilnError(
        f"target {record.target!r}: step {record.description!r} failed with exit code {code}"
        f"\n  command: {' '.join(argv)}" + (f"\n  stderr (last lines):{detail}" if tail else ""),
        hint=f"`kiln log {record.target}` shows its full output",
        exit_code=errors.ExitCode.FAILED,
        target=record.target,
        step=record.description,
    )


class Scheduler:
    """Runs steps for one build. ``on_change(record)`` hears every status change."""

    def __init__(
        self,
        store: Store,
        executors: Mapping[str, Callable[[], Executor]],
        jobs: int,
        keep_going: bool = False,
        on_change: Callable[[StepRecord], None] | None = None,
        processes: bool = False,
    ) -> None:
        """``processes``: after ``PROCESSES_AFTER`` executions, run the rest
        in worker processes (with the default executors; see runners.py)."""
        self._store = store
        self.jobs = jobs
        self.keep_going = keep_going
        self._on_change = on_change or (lambda _: None)
        self._slots: asyncio.Queue[int] | None = None
        self._threads = ThreadRunner(store, executors, jobs)
        self._processes: ProcessRunner | None = None
        self._use_processes = processes and jobs > 1
        self._executions = 0
        # Every key asked for in this build, and its outcome once known.
        self._requested: dict[Digest, asyncio.Future[StepResult]] = {}
        self._record_of: dict[Digest, StepRecord] = {}  # the record of each requested key
        self._with_calls: set[tuple[str, str]] | None = None  # (call_warmup, on first use)
        # Running steps -> the steps they requested and wait for (how many times).
        self._waits_for: dict[Digest, dict[Digest, int]] = {}
        self.records: list[StepRecord] = []  # one per key
        self.failures: list[errors.KilnError] = []  # every failed step's error, in order
        self.stopping = False
        self.remote: Remote | None = None  # set from inside the build's event loop
        # Results from the remote, by key, and which of them produced each blob.
        self._from_remote: dict[Digest, tuple[StepRecord, StepRequest, re_pb2.Action,
                                              re_pb2.Command]] = {}  # fmt: skip
        self._producer: dict[Digest, Digest] = {}

    def close(self) -> None:
        self._threads.close()
        if self._processes is not None:
            self._processes.close()

    def _runner(self) -> ThreadRunner | ProcessRunner:
        self._executions += 1
        if self._use_processes and self._executions > PROCESSES_AFTER:
            if self._processes is None:
                self._processes = ProcessRunner(self._store, self.jobs)
            return self._processes
        return self._threads

    def _change(self, record: StepRecord, status: StepStatus) -> None:
        record.status = status
        self._on_change(record)

    async def run(self, request: StepRequest) -> StepResult:
        """Run one step (or find its result); raises a ``KilnError`` if it
        fails. A key asked for before in this build gets that request's outcome."""
        action, command = request.spec.action()
        key = Digest.of_message(action)  # nothing is written unless the step has to run
        first = self._requested.get(key)
        if first is not None:
            self._also_for(key, request.target)
            if first.done():  # (no task switch for a result already known)
                shared = first.result()
            else:
                shared = await asyncio.shield(first)
            return self._shared_result(key, shared, request)
        future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        self._requested[key] = future
        try:
            result = await self._first_request(request, key, action, command)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: later requests get it from their await
            raise
        future.set_result(result)
        return result

    def _shared_result(self, key: Digest, result: StepResult, request: StepRequest) -> StepResult:
        """The outcome of a step asked for again: a step that failed when a
        running step requested it (its outcome then was the requester's to
        handle) fails for a rule asking for it now."""
        record = self._record_of[key]
        if request.parent is None and record.status is StepStatus.FAILED:
            assert record.result is not None
            stderr = read_blob(self._store.cas, Digest.from_proto(record.result.stderr_digest))
            raise self._fail(record, step_failed(record, list(request.spec.argv), stderr))
        return result

    async def run_nested(self, request: StepRequest) -> StepResult:
        """Run a step that a running step (``request.parent``) asked for and
        waits for. While any of its requests is outstanding, the parent's
        slot is lent to the others (a parent waiting for children never
        holds a slot they need), and taken back before it resumes. A request
        of the parent itself or of a step it was requested by is a loop,
        refused; a failed child is the parent's to handle, not the build's."""
        assert request.parent is not None
        parent = self._record_of.get(request.parent)
        if parent is None or parent.started is None or parent.finished is not None:
            raise errors.KilnError(
                f"step {request.parent} is not running in this build: only a running step "
                "may request steps", exit_code=errors.ExitCode.BAD_INPUT,
            )  # fmt: skip
        action, _ = request.spec.action()
        key = Digest.of_message(action)
        chain = self._ancestry(parent)
        cycle = self._wait_path(key, parent.key)
        if cycle is not None:
            names = [self._name_of(k) for k in [parent.key, *cycle]]
            raise errors.KilnError(
                f"request loop: step {parent.description!r} of target {parent.target!r} "
                f"requested a step that is waiting for it ({' -> '.join(names)})",
                hint="a step cannot (indirectly) request itself",
                exit_code=errors.ExitCode.BAD_INPUT, target=parent.target,
            )  # fmt: skip
        if len(chain) >= MAX_NESTING:
            raise errors.KilnError(
                f"step {parent.description!r} of target {parent.target!r} requested a step "
                f"{len(chain)} levels down: at most {MAX_NESTING - 1} are allowed",
                exit_code=errors.ExitCode.BAD_INPUT, target=parent.target,
            )  # fmt: skip
        waits = self._waits_for.setdefault(parent.key, {})
        waits[key] = waits.get(key, 0) + 1
        self._lend(parent)
        try:
            return await self.run(request)
        except errors.KilnError:
            record = self._record_of.get(key)
            if record is None or record.result is None or record.result.exit_code == 0:
                raise
            return self._step_result(record, cached=False)  # it failed: its requester decides
        finally:
            waits[key] -= 1
            if not waits[key]:
                del waits[key]
            await self._take_back(parent)

    def _wait_path(self, start: Digest, goal: Digest) -> list[Digest] | None:
        """Keys from ``start`` to ``goal`` along "is running and waits for a
        step it requested" (``start`` itself when it is ``goal``), if any."""
        seen: set[Digest] = set()
        path = [start]

        def walk(key: Digest) -> bool:
            if key == goal:
                return True
            if key in seen:
                return False
            seen.add(key)
            for requested in self._waits_for.get(key, ()):
                path.append(requested)
                if walk(requested):
                    return True
                path.pop()
            return False

        return path if walk(start) else None

    def _name_of(self, key: Digest) -> str:
        record = self._record_of.get(key)
        return repr(record.description) if record is not None else str(key)

    def record_of(self, key: Digest) -> StepRecord | None:
        """The record of a step requested in this build, by key."""
        return self._record_of.get(key)

    def has_blob(self, digest: Digest) -> bool:
        """Whether the local store holds ``digest`` (a requested step's inputs)."""
        return self._store.cas.has(digest)

    async def ensure_outputs_local(self, result: StepResult) -> None:
        """Bring a step's outputs into the local store (a remote's results
        come without them), for the step that requested it to read."""
        trees = [v.digest for v in result.outputs.values() if isinstance(v, Tree)]
        files = [v.digest for v in result.outputs.values() if isinstance(v, File)]
        await self.ensure_local(trees, files)

    def _ancestry(self, record: StepRecord) -> list[StepRecord]:
        """``record`` and the running steps that requested it, innermost first."""
        chain = [record]
        while chain[-1].parent is not None and chain[-1].parent in self._record_of:
            chain.append(self._record_of[chain[-1].parent])
        return chain

    def _lend(self, parent: StepRecord) -> None:
        parent.lent += 1
        if parent.lent == 1 and parent.slot is not None and parent.finished is None:
            assert self._slots is not None
            self._slots.put_nowait(parent.slot)
            parent.slot, parent.slot_lent = None, True

    async def _take_back(self, parent: StepRecord) -> None:
        parent.lent -= 1
        if parent.lent == 0 and parent.slot_lent and parent.finished is None:
            assert self._slots is not None
            parent.slot = await self._slots.get()
            parent.slot_lent = False

    def _also_for(self, key: Digest, target: str) -> None:
        """Note that ``target`` asked for the step with ``key`` too, so its
        history (`kiln show`, `log`) lists the step, counted once."""
        record = self._record_of.get(key)
        if record is not None and target != record.target and target not in record.also:
            record.also.append(target)

    async def _first_request(
        self, request: StepRequest, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> StepResult:
        record = StepRecord(
            len(self.records), request.target, request.description, key, request.identity,
            parent=request.parent,
        )
        self.records.append(record)
        self._record_of[key] = record
        self._on_change(record)
        hit = self._store.lookup(key, keep=True)
        if hit is not None:
            record.result = hit.result
            record.started = record.finished = time.time()
            self._change(record, StepStatus.CACHED)
            return self._step_result(record, cached=True)
        return await self._execute(record, request, action, command)

    async def _execute(
        self, record: StepRecord, request: StepRequest, action: re_pb2.Action,
        command: re_pb2.Command,
    ) -> StepResult:  # fmt: skip
        if self._slots is None:
            self._slots = asyncio.Queue()
            for slot in range(self.jobs):
                self._slots.put_nowait(slot)
        remote = self.remote
        if remote is not None and remote.looks_up(request.executor, action, command):
            hit = await remote.lookup(record.key)
            if hit is not None:
                record.result = hit
                record.started = record.finished = time.time()
                self._remember_remote(record, request, action, command)
                self._change(record, StepStatus.REMOTE_CACHED)
                return self._step_result(record, cached=True)
        if self.stopping:
            self._change(record, StepStatus.SKIPPED)
            raise BuildStopped()
        slot = await self._slots.get()
        try:
            if self.stopping:
                self._change(record, StepStatus.SKIPPED)
                raise BuildStopped()
            record.slot = slot
            record.started = time.time()
            self._on_change(record)
            with self._store.writing():
                write_blobs(self._store.cas, request.input_blobs)
                self._store.put_messages(action, command)
                self._store.session.protect(request.spec.input_root, "tree")
                self._store.session.protect(record.key, "action")
            where = f"step {record.description!r} of target {record.target!r}"
            remote = self.remote
            if remote is not None and remote.runs(request.executor, action, command):
                outcome = await _run_remotely(remote, record.key, action, command)
            else:
                if remote is not None:
                    await self.ensure_local([request.spec.input_root], [])
                runner = self._threads if request.parent is not None else self._runner()
                if request.executor == "wasm" and runner is self._threads:
                    await self._warm_calls(record)
                submitted = runner.submit(
                    request.executor, record.key, request.spec.timed(action), command, where
                )
                outcome = await asyncio.wrap_future(submitted)
            record.finished = time.time()
            record.attempts = outcome.attempts
        finally:
            # A step that requested steps may hold another slot than it began
            # with, or none (lent while its requests are still outstanding).
            if record.finished is None:
                record.finished = time.time()  # (its requests take no slot back now)
            held, record.slot = record.slot, slot
            if not record.slot_lent:
                self._slots.put_nowait(held if held is not None else slot)
        if outcome.error is not None or outcome.result is None:
            raise self._fail(record, outcome.error or AssertionError("no result nor error"))
        record.result = outcome.result
        if outcome.result.exit_code != 0 and request.parent is not None:
            self._change(record, StepStatus.FAILED)  # its requester decides what that means
            return self._step_result(record, cached=False)
        if outcome.result.exit_code != 0:
            stderr = read_blob(self._store.cas, Digest.from_proto(outcome.result.stderr_digest))
            raise self._fail(record, step_failed(record, list(command.arguments), stderr))
        if outcome.remote:
            self._remember_remote(record, request, action, command)
            status = StepStatus.REMOTE_CACHED if outcome.cached else StepStatus.REMOTE_EXECUTED
            self._change(record, status)
            return self._step_result(record, cached=outcome.cached)
        self._change(record, StepStatus.CACHED if outcome.cached else StepStatus.EXECUTED)
        if self.remote is not None and not outcome.cached:
            self.remote.ran(record.key, action, command, outcome.result)
        return self._step_result(record, cached=outcome.cached)

    async def _warm_calls(self, record: StepRecord) -> None:
        """Load the calls this step's previous run made, if it made any
        (they are then answered from this process's memory)."""
        from kiln.engine import call_warmup  # (start-up: only builds running wasm steps)

        if self._with_calls is None:
            self._with_calls = await asyncio.to_thread(call_warmup.steps_with_calls, self._store)
        if (record.target, record.description) in self._with_calls:
            await asyncio.to_thread(
                call_warmup.warm, self._store, record.target, record.description
            )

    def _remember_remote(
        self, record: StepRecord, request: StepRequest, action: re_pb2.Action,
        command: re_pb2.Command,
    ) -> None:  # fmt: skip
        """A result from the remote: who to run here if its blobs are lost."""
        assert record.result is not None
        self._from_remote[record.key] = (record, request, action, command)
        for digest in result_blobs(self._store.cas, record.result):
            self._producer.setdefault(digest, record.key)
        for value in outputs_of(self._store, record.result).values():
            self._producer.setdefault(value.digest, record.key)  # an output tree's root

    async def ensure_local(self, trees: list[Digest], files: list[Digest]) -> None:
        """Bring these trees and files into the local store: from the remote,
        or, for what it has lost, by running here the steps that made it."""
        if self.remote is not None:
            lost = await self.remote.fetch(trees, files)
            if lost:
                await asyncio.to_thread(self._recover, lost)

    def read_output(self, digest: Digest) -> bytes | None:
        """An output's bytes for a rule reading it (synchronously): from the
        remote, else made again here."""
        assert self.remote is not None
        data = self.remote.read_now(digest)
        if data is None:
            self._recover([digest])
            data = self._store.cas.get_bytes(digest)
        return data

    def _recover(self, lost: list[Digest]) -> None:
        """Blobs the remote lost (or never had): run the steps that produced
        them here (in Bazel's words, building without the bytes). Blocking:
        on a thread of ``ensure_local``'s, or in a rule reading an output."""
        for digest in lost:
            if self._store.cas.has(digest):
                continue  # made by a step run for another lost blob
            key = self._producer.get(digest)
            if key is None or key not in self._from_remote:
                raise errors.blob_missing(digest, "a blob the remote no longer has")
            self._run_here(key)

    def _run_here(self, key: Digest) -> None:
        """Run here a step whose result came from the remote (see ``_recover``)."""
        record, request, action, command = self._from_remote.pop(key)
        assert self.remote is not None
        self.remote.stats.warn(
            f"the remote lost outputs of step {record.description!r} of target "
            f"{record.target!r}: it ran here again"
        )
        with self._store.writing():
            write_blobs(self._store.cas, request.input_blobs)  # (its input tree's folders)
            self._store.put_messages(action, command)
        cas = self._store.cas
        for digest in cas.find_missing(reachable(cas, request.spec.input_root, True)):
            if self.remote.read_now(digest) is None:
                self._recover([digest])
        where = f"step {record.description!r} of target {record.target!r}"
        timed = request.spec.timed(action)
        outcome = self._threads.submit(request.executor, key, timed, command, where).result()
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        record.result = outcome.result
        self._change(record, StepStatus.CACHED if outcome.cached else StepStatus.EXECUTED)
        if outcome.result.exit_code != 0:
            raise errors.KilnError(
                f"{where}: ran here after the remote lost its outputs, and failed "
                f"(exit code {outcome.result.exit_code}) where the remote's run had not",
                hint="the step is not reproducible; `kiln check` compares its runs",
                exit_code=errors.ExitCode.FAILED,
            )

    def _fail(self, record: StepRecord, error: BaseException) -> BaseException:
        """Mark ``record`` failed (and the build stopping, unless it keeps
        going); returns ``error``, to raise."""
        if not self.keep_going:
            self.stopping = True
        if isinstance(error, errors.KilnError):
            self.failures.append(error)
        self._change(record, StepStatus.FAILED)
        return error

    def _step_result(self, record: StepRecord, cached: bool) -> StepResult:
        result = record.result
        assert result is not None
        return StepResult(
            record.key,
            record.description,
            outputs_of(self._store, result),
            Digest.from_proto(result.stdout_digest),
            Digest.from_proto(result.stderr_digest),
            cached,
            self._store,
            self.read_output if self.remote is not None else None,
        )
