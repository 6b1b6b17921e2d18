"""Memoized function calls between WebAssembly modules.

A guest asks for ``(module digest, export name, input bytes) -> output
bytes`` through the ``kiln`` import module (``kiln.exec.wasi.kiln_imports``).
The answer is a pure function of what the key names, so it is memoized in
the store's action cache like a step, under its own kind of key:

    sha256("kiln-call" ‖ contract ‖ calls version ‖ module ‖ export ‖
           input digest ‖ fuel ‖ memory ‖ disk)

A call runs in a fresh instance with its own store, an empty file system
(only ``/tmp``), no arguments but the export's name and no environment; it
gets its input and gives its output through the same import module. Its
limits are those of the step that made it (so they are in the key), and
what it consumed is recorded: a caller is charged the recorded fuel
whether the call ran or was answered from the cache, so running out of
fuel happens at the same point either way. A trap, an exit and running out
of a limit are recorded outcomes like a normal return.

Calls started together run in parallel on a process-wide pool, and a
caller that waits for one not yet started runs it itself, so nested calls
never wait for a pool thread that is itself waiting. The same call made
twice at once runs once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2

from kiln import errors
from kiln.exec.kinds import WASM_ABI
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.system.per_process import PerProcess

if TYPE_CHECKING:
    from kiln.exec.specs import WasmLimits
    from kiln.store.actioncache import ActionCache
    from kiln.store.cas import ContentStore

CALLS_VERSION = "kiln-calls-v1"  # the ``kiln`` import module's version
CALL_EXECUTOR = "wasm-call"  # what the action cache records as the producer
TRAPPED = 134  # a call's status when it trapped or ran out of a limit (as EXIT_TRAP)
OUTPUT_CAP = 64 << 20  # a call's output may not be larger (a trap otherwise)
MAX_OPEN_CALLS = 1024  # handles a guest may hold at once
MEMO_BYTES = 64 << 20  # outputs remembered in memory, per process
INLINE_OUTPUT = 64 << 10  # an output up to this size is kept in the cache entry itself
_OUTCOME_PATH = "kiln-call"  # the result's symlink entry holding status and fuel
CALLS_FIELD = "kiln_calls"  # the metadata field listing a step's calls


@dataclass(frozen=True)
class CallOutcome:
    """What a call gave: ``status`` 0 (returned), an exit code, or 134 (a
    trap, a limit); its output, stdout and stderr; the fuel it consumed."""

    status: int
    output: bytes
    fuel: int
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass
class CallRecord:
    """One call as ``kiln show`` and ``kiln trace`` list it."""

    key: Digest
    module: Digest
    export: str
    input: Digest
    depth: int
    ran: bool = False
    status: int = 0
    fuel: int = 0
    started: float = 0.0
    seconds: float = 0.0

    def as_row(self) -> list[Any]:
        """The record as the step's metadata keeps it (``LOG_FIELDS`` order)."""
        return [
            str(self.key), str(self.module), self.export, str(self.input), self.depth, self.ran,
            self.status, self.fuel, self.started, round(self.seconds, 6),
        ]  # fmt: skip


LOG_FIELDS = ("key", "module", "export", "input", "depth", "ran", "status", "fuel", "started",
              "seconds")  # fmt: skip
MAX_LOGGED = 10_000  # calls listed one by one in a step's metadata (all are counted)


def call_key(module: Digest, export: str, input_digest: Digest, limits: WasmLimits) -> Digest:
    """The action-cache key of a call."""
    text = (
        f"kiln-call\0{WASM_ABI}\0{CALLS_VERSION}\0{module.hash}/{module.size}\0{export}\0"
        f"{input_digest.hash}/{input_digest.size}\0fuel={limits.fuel}\0"
        f"memory-mib={limits.memory_mib}\0disk-mib={limits.disk_mib}"
    ).encode()
    return Digest.of_bytes(text)


def encode_outcome(outcome: CallOutcome, cas: ContentStore) -> re_pb2.ActionResult:
    """The call's outcome as an action-cache entry (large parts put in
    ``cas``). The entry itself always has exit code 0: a trapped call is a
    result. A small output is held in the entry itself (``stdout_raw``), so
    that a hit reads no blob; the call's own stdout and stderr, usually
    empty, are blobs named ``stdout`` and ``stderr`` when not."""
    result = re_pb2.ActionResult(exit_code=0)
    result.output_symlinks.add(
        path=_OUTCOME_PATH, target=f"status={outcome.status} fuel={outcome.fuel}"
    )
    with cas.batch(durable=False) as batch:
        if len(outcome.output) <= INLINE_OUTPUT:
            result.stdout_raw = outcome.output
        else:
            result.stdout_digest.CopyFrom(batch.add_bytes(outcome.output).to_proto())
        for name, data in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            if data:
                result.output_files.add(path=name, digest=batch.add_bytes(data).to_proto())
    return result


def decode_outcome(result: re_pb2.ActionResult, cas: ContentStore) -> CallOutcome | None:
    """The outcome an action-cache entry holds, or None if it is not a
    call's (or a blob went missing: a miss)."""
    links = result.output_symlinks
    outcome = next((link.target for link in links if link.path == _OUTCOME_PATH), "")
    status, _, fuel = outcome.removeprefix("status=").partition(" fuel=")
    if not status.isdigit() or not fuel.isdigit():
        return None
    output: bytes | None = result.stdout_raw
    if result.stdout_digest.size_bytes:
        output = cas.get_bytes(Digest.from_proto(result.stdout_digest))
    streams = {}
    if result.output_files:  # the call wrote to stdout or stderr
        streams = {f.path: cas.get_bytes(Digest.from_proto(f.digest)) for f in result.output_files}
    if output is None or None in streams.values():
        return None
    return CallOutcome(
        int(status), output, int(fuel), streams.get("stdout") or b"",
        streams.get("stderr") or b"",
    )  # fmt: skip


class _Memo:
    """Call outcomes this process has seen, newest kept, up to ``MEMO_BYTES``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[Digest, CallOutcome] = OrderedDict()
        self._bytes = 0

    def get(self, key: Digest) -> CallOutcome | None:
        with self._lock:
            outcome = self._items.get(key)
            if outcome is not None:
                self._items.move_to_end(key)
            return outcome

    def put(self, key: Digest, outcome: CallOutcome) -> None:
        size = _size(outcome)
        if size > MEMO_BYTES // 4:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = outcome
            self._bytes += size
            while self._bytes > MEMO_BYTES:
                _, old = self._items.popitem(last=False)
                self._bytes -= _size(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _size(outcome: CallOutcome) -> int:
    return len(outcome.output) + len(outcome.stdout) + len(outcome.stderr) + 200


MEMO = _Memo()


class Pending:
    """A started call, run by a pool thread or by whoever waits first."""

    def __init__(self, job: Callable[[], CallOutcome], label: str = "a call") -> None:
        self._job = job
        self.label = label  # the call, in words (for a cycle's message)
        self._lock = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._outcome: CallOutcome | None = None
        self._error: BaseException | None = None
        self.shared = False  # another guest waits for it too

    def run(self) -> None:
        """Run the call unless someone already does (or it was cancelled)."""
        with self._lock:
            if self._claimed:
                return
            self._claimed = True
        outer = getattr(_computing, "pending", None)
        _computing.pending = self
        try:
            self._outcome = self._job()
        except BaseException as e:  # handed to the waiter
            self._error = e
        finally:
            _computing.pending = outer
            self._done.set()

    def cancel(self) -> None:
        """Never run it if it has not started (its caller is gone)."""
        with self._lock:
            if not self._claimed:
                self._claimed = True
                self._error = CallCancelled()
                self._done.set()

    def wait(self) -> CallOutcome:
        self.run()  # not started yet: run it on this thread, never wait for a pool thread
        if not self._done.is_set():
            self._wait_as(getattr(_computing, "pending", None))
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome

    def _wait_as(self, waiter: Pending | None) -> None:
        """Wait, as the computation of ``waiter`` (None: a step's guest),
        refusing to wait for a call that waits, in turn, for ``waiter``."""
        if waiter is None:
            self._done.wait()
            return
        with _waits_lock:
            cycle = _path(self, waiter)
            if cycle is not None:
                raise CallCycle([waiter, *cycle])
            _waits_on[waiter] = self
        try:
            self._done.wait()
        finally:
            with _waits_lock:
                _waits_on.pop(waiter, None)

    @property
    def finished(self) -> bool:
        return self._done.is_set()


# Which call this thread computes now, and which call each computation
# waits for: a wait that would close a cycle is a call that (indirectly)
# calls itself, which would never end.
_computing = threading.local()
_waits_on: dict[Pending, Pending] = {}
_waits_lock = threading.Lock()


def _path(start: Pending, goal: Pending) -> list[Pending] | None:
    """The calls from ``start`` to ``goal`` along "waits for", if any."""
    path, at = [start], start
    while at is not goal:
        following = _waits_on.get(at)
        if following is None or len(path) > len(_waits_on) + 1:
            return None
        path.append(following)
        at = following
    return path


class CallCycle(errors.KilnError):
    """Memoized calls that call each other in a circle: never a result."""

    def __init__(self, cycle: list[Pending]) -> None:
        super().__init__(
            "memoized calls form a cycle (a call that, through others, calls itself): "
            + " -> ".join(p.label for p in cycle),
            hint="a called function must not call, directly or not, the same function on the "
            "same input",
            exit_code=errors.ExitCode.FAILED,
        )


class CallCancelled(Exception):
    """A call started by a guest that ended without waiting for it."""


# Threads that run calls (a caller waiting for one not started runs it itself).
_call_pool = PerProcess(
    lambda: ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="kiln-call")
)


def _reset_after_fork() -> None:
    global _inflight_lock, _waits_lock
    _inflight_lock, _waits_lock = threading.Lock(), threading.Lock()
    _inflight.clear()
    _waits_on.clear()


_inflight: dict[Digest, Pending] = {}
_inflight_lock = threading.Lock()
os.register_at_fork(after_in_child=_reset_after_fork)

# Runs one call: (module, export, input, key, the calls it may make) -> outcome.
CallExecutor = Callable[[Digest, str, bytes, Digest, "StepCalls"], CallOutcome]


@dataclass
class StepCalls:
    """The memoized calls made while one step runs, by the step and by the
    calls it makes (``depth``): where they are looked up and recorded, and
    the log ``kiln show`` lists."""

    execute: CallExecutor
    cas: ContentStore
    actions: ActionCache
    limits: WasmLimits
    depth: int = 0
    log: list[CallRecord] = field(default_factory=list)
    hits: list[Digest] = field(default_factory=list)  # cache entries used
    _log_lock: threading.Lock = field(default_factory=threading.Lock)

    def nested(self) -> StepCalls:
        """Where a call's own calls go: the same cache and log, one level down."""
        return StepCalls(
            self.execute, self.cas, self.actions, self.limits, self.depth + 1, self.log,
            self.hits, self._log_lock,
        )  # fmt: skip

    def start(
        self, module: Digest, export: str, data: bytes
    ) -> tuple[CallRecord, CallOutcome | Pending]:
        """Begin a call; its outcome comes from ``Pending.wait``. A call
        answered from memory or the action cache is done at once; one that
        must run is handed to the pool (or to whoever waits for it first)."""
        input_digest = Digest.of_bytes(data)
        key = call_key(module, export, input_digest, self.limits)
        record = CallRecord(key, module, export, input_digest, self.depth, started=time.time())
        with self._log_lock:
            self.log.append(record)
        known = MEMO.get(key) or self._cached(key)
        if known is not None:
            return record, known
        with _inflight_lock:
            pending = _inflight.get(key)  # the same call, already started for another
            if pending is not None:
                pending.shared = True
                return record, pending
            label = f"{export} of {str(module)[:12]} on input {str(input_digest)[:12]}"
            pending = Pending(lambda: self._lookup_or_run(record, data), label)
            _inflight[key] = pending
        _call_pool.get().submit(pending.run)
        return record, pending

    @staticmethod
    def _forget(key: Digest) -> None:
        with _inflight_lock:
            _inflight.pop(key, None)

    def _cached(self, key: Digest) -> CallOutcome | None:
        hit = self.actions.lookup(key, touch=False)  # touched together when the step ends
        outcome = decode_outcome(hit.result, self.cas) if hit is not None else None
        if outcome is not None:
            with self._log_lock:
                self.hits.append(key)
            MEMO.put(key, outcome)
        return outcome

    def _lookup_or_run(self, record: CallRecord, data: bytes) -> CallOutcome:
        """Run the call and record its outcome, unless it was recorded since
        it was looked up (by a run that ended just before this one began)."""
        try:
            known = self._cached(record.key)
            if known is not None:
                return known
            began = time.monotonic()
            outcome = self.execute(record.module, record.export, data, record.key, self)
            self.actions.record(
                record.key, encode_outcome(outcome, self.cas),
                executor=CALL_EXECUTOR, duration=time.monotonic() - began,
            )  # fmt: skip
            record.ran = True
            record.seconds = time.monotonic() - began
            MEMO.put(record.key, outcome)
            return outcome
        finally:
            self._forget(record.key)

    def touch_hits(self) -> None:
        """Mark the cache entries this step's calls used (the GC's age)."""
        with self._log_lock:
            hits, self.hits[:] = list(self.hits), []
        self.actions.touch(hits)

    def abandon(self, key: Digest, pending: Pending) -> None:
        """A guest ended without waiting for this call: never run it, unless
        another guest waits for it too."""
        with _inflight_lock:
            if not pending.shared:
                pending.cancel()
                if _inflight.get(key) is pending:
                    del _inflight[key]

    def finished(self, record: CallRecord, outcome: CallOutcome) -> None:
        """Note what a waited-for call gave (for the log)."""
        record.status = outcome.status
        record.fuel = outcome.fuel

    def summary(self) -> dict[str, Any]:
        """The step's calls for its metadata: counts of all, rows of the
        first ``MAX_LOGGED``."""
        with self._log_lock:
            log = list(self.log)
        return {
            "total": len(log),
            "ran": sum(1 for r in log if r.ran),
            "trapped": sum(1 for r in log if r.status == TRAPPED),
            "rows": [r.as_row() for r in log[:MAX_LOGGED]],
        }


def attach_calls(result: re_pb2.ActionResult, summary: dict[str, Any]) -> None:
    """Note the memoized calls a step made in its result's metadata (what
    ``kiln show`` and ``kiln trace`` list); not part of any output. One
    JSON text: thousands of calls cost milliseconds, not a Struct each."""
    info = struct_pb2.Struct()
    info.update({CALLS_FIELD: json.dumps(summary, separators=(",", ":"))})
    result.execution_metadata.auxiliary_metadata.add().Pack(info)


def _summary_of(result: re_pb2.ActionResult) -> dict[str, Any] | None:
    for item in result.execution_metadata.auxiliary_metadata:
        info = struct_pb2.Struct()
        if item.Unpack(info) and CALLS_FIELD in info:
            summary = json.loads(info[CALLS_FIELD])
            return summary if isinstance(summary, dict) else None
    return None


def calls_of(result: re_pb2.ActionResult) -> list[dict[str, Any]]:
    """The calls ``attach_calls`` listed in a result (the first
    ``MAX_LOGGED``; none: [])."""
    summary = _summary_of(result)
    rows = summary.get("rows", []) if summary is not None else []
    return [dict(zip(LOG_FIELDS, row, strict=True)) for row in rows]


def call_counts(result: re_pb2.ActionResult) -> dict[str, int]:
    """How many calls a step made, ran and saw trap (all, listed or not)."""
    summary = _summary_of(result) or {}
    return {name: int(summary.get(name, 0)) for name in ("total", "ran", "trapped")}
