"""Checking results: that a wasm action's result does not depend on the
engine (``kiln check --engine node KEY``), and that a target's steps give
the same results when run again ignoring the cache (``kiln check TARGET``).

The action runs under Wasmtime (or its cached Wasmtime result is used) and
again under the second engine, Node.js; exit code, stdout, stderr and every
output are compared by digest. A trap's one-line explanation is the engine's
own wording, so when both runs trapped that line is left out of stderr.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from kiln import errors
from kiln.exec import kinds
from kiln.exec.base import close_executor
from kiln.exec.node import NodeWasmExecutor
from kiln.exec.specs import RECURSIVE_PROPERTY
from kiln.exec.wasm import EXIT_TRAP, WasmExecutor
from kiln.exec.wasm_calls import call_counts, calls_of, decode_outcome
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.model.tree import Entry, walk
from kiln.store.cas import read_blob

if TYPE_CHECKING:
    from kiln.store.local import Store

ENGINES = ("node",)
_TRAP_NOTE = b"kiln: trap: "
# The notes of wasmtime runs stopped by a limit the second engine does not enforce.
LIMITS_NOT_COMPARED = ("out of fuel", "memory limit", "disk limit")


@dataclass(frozen=True)
class Difference:
    """One thing the engines disagree on: what, and each engine's value."""

    what: str
    reference: str
    other: str


@dataclass
class EngineCheck:
    """The outcome of running one action under two engines."""

    key: str
    reference_engine: str
    other_engine: str
    reference_cached: bool
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def action_abi(action: re_pb2.Action) -> str:
    """The contract an action runs under: its ``kiln-abi`` property."""
    return next((p.value for p in action.platform.properties if p.name == "kiln-abi"), "")


def is_wasm_action(store: Store, key: Digest) -> bool:
    return action_abi(load_action(store, key)[0]) == kinds.WASM_ABI


def load_action(store: Store, key: Digest) -> tuple[re_pb2.Action, re_pb2.Command]:
    """The stored ``Action`` and ``Command`` of an action key."""
    data = store.cas.get_bytes(key)
    if data is None:
        raise errors.KilnError(
            f"no action {key} in the store",
            hint="pass a key that `kiln wasm run --json` printed",
            exit_code=errors.ExitCode.NOT_FOUND,
        )
    try:
        action = re_pb2.Action.FromString(data)
        command_data = store.cas.get_bytes(Digest.from_proto(action.command_digest))
        if command_data is None or not action.HasField("command_digest"):
            raise DecodeError("no command")
        return action, re_pb2.Command.FromString(command_data)
    except (DecodeError, ValueError):
        raise errors.KilnError(
            f"{key} is not an action (no Action and Command stored under it)",
            hint="pass an action key, e.g. the `key` of `kiln wasm run --json`",
            exit_code=errors.ExitCode.BAD_INPUT,
        ) from None


def check_engines(
    store: Store, key: Digest, engine: str = "node", timeout: float | None = 600.0
) -> EngineCheck:
    """Run the wasm action ``key`` under Wasmtime and ``engine``; compare."""
    if engine not in ENGINES:
        raise errors.KilnError(
            f"unknown engine {engine!r}",
            hint=f"choose one of: {', '.join(ENGINES)}",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    action, command = load_action(store, key)
    if action_abi(action) != kinds.WASM_ABI:
        raise errors.KilnError(
            f"action {key} is not a wasm action",
            hint="only wasm actions can run under a second engine",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    ctx = kinds.local_context(store)
    cached = store.lookup(key)
    if cached is not None and cached.executor == WasmExecutor.name:
        reference, was_cached = cached.result, True
    else:
        wasmtime = WasmExecutor(ctx, timeout=timeout)
        run = store.execute_once(
            key, lambda: (wasmtime.execute(key, action, command), wasmtime.name)
        )
        reference, was_cached = run.result, run.cached
    stderr = read_blob(store.cas, Digest.from_proto(reference.stderr_digest), "stderr")
    if _reached_a_limit(stderr) or _a_call_reached_a_limit(store, reference):
        raise errors.KilnError(
            f"action {key} ran out of fuel, memory or disk under wasmtime (or a call it "
            "made did); the second engine enforces none of these limits, so there is "
            "nothing to compare",
            hint="check an action that finishes within its limits",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    other = NodeWasmExecutor(ctx, timeout=timeout).execute(key, action, command)
    return EngineCheck(
        key=str(key),
        reference_engine="wasmtime",
        other_engine=engine,
        reference_cached=was_cached,
        differences=compare_results(store, reference, other),
    )


def _reached_a_limit(stderr: bytes) -> bool:
    return any(f"kiln: {limit}".encode() in stderr for limit in LIMITS_NOT_COMPARED)


def _a_call_reached_a_limit(store: Store, reference: re_pb2.ActionResult) -> bool:
    """Whether a memoized call the action made stopped at a limit: a call
    that trapped says why in its own stderr, and its caller may have gone
    on. (One whose cache entry is gone cannot tell: taken as stopped.)"""
    trapped = [call for call in calls_of(reference) if call["status"] == EXIT_TRAP]
    if len(trapped) < call_counts(reference)["trapped"]:
        return True  # (some were not listed: taken as stopped)
    for call in trapped:
        hit = store.lookup(Digest.parse(call["key"]))
        outcome = decode_outcome(hit.result, store.cas) if hit is not None else None
        if outcome is None or _reached_a_limit(outcome.stderr):
            return True
    return False


def compare_results(
    store: Store, reference: re_pb2.ActionResult, other: re_pb2.ActionResult
) -> list[Difference]:
    """Where two results of the same action differ (empty: identical)."""
    out: list[Difference] = []
    if reference.exit_code != other.exit_code:
        out.append(Difference("exit code", str(reference.exit_code), str(other.exit_code)))
    if reference.stdout_digest != other.stdout_digest:
        out.append(
            Difference(
                "stdout",
                str(Digest.from_proto(reference.stdout_digest)),
                str(Digest.from_proto(other.stdout_digest)),
            )
        )
    both_trapped = reference.exit_code == other.exit_code == EXIT_TRAP
    stderr_a, stderr_b = (
        _stderr(store, r, drop_trap_note=both_trapped) for r in (reference, other)
    )
    if stderr_a != stderr_b:
        out.append(
            Difference("stderr", str(Digest.of_bytes(stderr_a)), str(Digest.of_bytes(stderr_b)))
        )
    a, b = _outputs(store, reference), _outputs(store, other)
    for path in sorted(a.keys() | b.keys()):
        first, second = a.get(path, "missing"), b.get(path, "missing")
        if first != second:
            out.append(Difference(f"output {path}", first, second))
    return out


def _stderr(store: Store, result: re_pb2.ActionResult, drop_trap_note: bool) -> bytes:
    data = read_blob(store.cas, Digest.from_proto(result.stderr_digest), "stderr")
    if drop_trap_note:
        head, sep, last = data.rstrip(b"\n").rpartition(b"\n")
        if last.startswith(_TRAP_NOTE):
            data = head + sep
    return data


def _outputs(store: Store, result: re_pb2.ActionResult) -> dict[str, str]:
    """Every output path, inside output directories too, described by kind
    and digest (or symlink target)."""

    def describe(entry: Entry) -> str:
        if entry.kind == "symlink":
            return f"symlink -> {entry.target}"
        return f"{'executable' if entry.executable else 'file'} {entry.digest}"

    out: dict[str, str] = {}
    for f in result.output_files:
        out[f.path] = describe(Entry(f.path, "file", Digest.from_proto(f.digest), f.is_executable))
    for s in result.output_symlinks:
        out[s.path] = describe(Entry(s.path, "symlink", target=s.target))
    for d in result.output_directories:
        data = read_blob(store.cas, Digest.from_proto(d.tree_digest), f"output tree {d.path!r}")
        root = Digest.of_message(re_pb2.Tree.FromString(data).root)
        out[d.path] = "directory"
        for path, entry in walk(store.cas, root, d.path + "/"):
            out[path] = "directory" if entry is None else describe(entry)
    return out


@dataclass
class StepCheck:
    """A step of a target run again, ignoring the cache, and compared with
    its recorded result."""

    target: str
    step: str
    key: str
    skipped: str = ""  # why it was not run again (e.g. a pinned fetch)
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def rebuild_steps(
    store: Store, steps: list[Any], on_step: Any = None, jobs: int = 1
) -> list[StepCheck]:
    """Run each of ``steps`` (records of a build) again with fresh executors,
    ``jobs`` at a time, without reading or writing the action cache, and
    compare its result with the recorded one. Steps of kinds that say so
    are not run again (a pinned fetch: its pin already checks it)."""
    factories = kinds.factories(kinds.local_context(store))
    made: list[dict[str, Any]] = []  # each thread's executors, by kind
    mine = threading.local()
    lock = threading.Lock()

    def executor(kind: str) -> Any:
        executors = getattr(mine, "executors", None)
        if executors is None:
            executors = mine.executors = {}
            with lock:
                made.append(executors)
        if kind not in executors:
            executors[kind] = factories[kind]()
        return executors[kind]

    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="kiln-check") as pool:
            checks = pool.map(lambda r: _rebuild_one(store, r, executor, on_step), steps)
            return [c for c in checks if c is not None]
    finally:
        for executors in made:
            for each in executors.values():
                close_executor(each)


def _rebuild_one(
    store: Store, record: Any, executor: Callable[[str], Any], on_step: Any
) -> StepCheck | None:
    """One step run again and compared (None: it has no result to compare)."""
    if record.result is None:
        return None
    action, command = load_action(store, record.key)
    abi = action_abi(action)
    check = StepCheck(record.target, record.description, str(record.key))
    kind = kinds.by_abi(abi)
    if kind is None:
        check.skipped = f"no executor here for {abi!r}"
    elif kind.not_rechecked:
        check.skipped = f"a {kind.name}: {kind.not_rechecked}"
    elif any(p.name == RECURSIVE_PROPERTY for p in action.platform.properties):
        check.skipped = (
            "a recursive step: the steps it requests need the build that runs it "
            "(they are checked as steps of their own)"
        )
    else:
        if on_step is not None:
            on_step(record.description)
        again = executor(kind.name).execute(record.key, action, command)
        check.differences = compare_results(store, record.result, again)
    return check
