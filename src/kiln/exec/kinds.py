"""The executor kinds: one table of what can run a step.

Each kind names the contract its actions carry (the ``kiln-abi`` platform
property, part of every key), the class that runs them (imported when a
step of that kind first runs: a build of wasm steps never loads the native
sandbox), whether ``kiln check`` runs its steps again, and what the
resident server loads ahead of time. Rules ask for a kind by name;
``kiln check`` finds it from a stored action's contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from kiln.exec.base import ExecContext, ExecHooks

if TYPE_CHECKING:
    from kiln.exec.base import Executor
    from kiln.store.local import Store

WASM_ABI = "kiln-wasi-p1-v2"
NATIVE_ABI = "kiln-native-bwrap-v3"
FETCH_ABI = "kiln-fetch-v1"
UNPACK_ABI = "kiln-unpack-v1"


@dataclass(frozen=True)
class ExecutorKind:
    """One kind of step and the executor that runs it."""

    name: str  # what rules ask for, and what the action cache records
    abi: str  # the contract of its actions
    module: str  # where its executor lives
    executor: str  # the executor's class there: ``cls(ctx, hooks)``
    # Why `kiln check` does not run its steps again ("": it does).
    not_rechecked: str = ""
    warm: tuple[str, ...] = ()  # modules the resident server imports ahead
    preload: str | None = None  # a function of the module, ``fn(state) -> [loaded]``

    def create(self, ctx: ExecContext, hooks: ExecHooks) -> Executor:
        """A new executor of this kind."""
        return getattr(import_module(self.module), self.executor)(ctx, hooks)


KINDS: dict[str, ExecutorKind] = {
    kind.name: kind
    for kind in (
        ExecutorKind(
            "wasm", WASM_ABI, "kiln.exec.wasm", "WasmExecutor",
            warm=("kiln.exec.wasm", "kiln.exec.wasi.capi"), preload="preload_modules",
        ),
        ExecutorKind(
            "native", NATIVE_ABI, "kiln.exec.native", "NativeExecutor",
            warm=("kiln.exec.native",),
        ),
        ExecutorKind(
            "fetch", FETCH_ABI, "kiln.exec.fetch", "FetchExecutor",
            warm=("kiln.exec.fetch",), not_rechecked="checked against its pin when it ran",
        ),
        ExecutorKind(
            "unpack", UNPACK_ABI, "kiln.exec.unpack", "UnpackExecutor",
            warm=("kiln.exec.unpack",),
        ),
    )
}  # fmt: skip


def by_abi(abi: str) -> ExecutorKind | None:
    """The kind whose actions carry contract ``abi``, if any runs here."""
    return next((k for k in KINDS.values() if k.abi == abi), None)


def factories(
    ctx: ExecContext, hooks: ExecHooks | None = None
) -> dict[str, Callable[[], Executor]]:
    """A maker of executors for every kind, all working in ``ctx``."""
    hooks = hooks or ExecHooks()
    return {name: _maker(kind, ctx, hooks) for name, kind in KINDS.items()}


def _maker(kind: ExecutorKind, ctx: ExecContext, hooks: ExecHooks) -> Callable[[], Executor]:
    return lambda: kind.create(ctx, hooks)


def local_context(store: Store) -> ExecContext:
    """The context of executors working with the local store: its CAS and
    action cache, its session's staging folder, its home for their state."""
    return ExecContext(
        cas=store.cas,
        actions=store.action_cache,
        scratch=lambda: store.session.staging,
        state=store.home,
    )
