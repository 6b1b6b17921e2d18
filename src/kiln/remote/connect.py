"""Opening a build's remote: which servers, checked how, and what happens
when they cannot be reached.

- The cache (``cache`` or, when only ``exec`` is given, the execution
  server) unreachable or unusable at the start: one warning, the build goes
  on locally. It failing later: one warning, the rest of the build stops
  asking it.
- The execution server unreachable at the start: an error, unless
  ``fallback`` (``--remote-fallback``) lets the build run locally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln import errors
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.remote.cache import RemoteCache, RemoteStats
from kiln.remote.client import BlobMismatch, RemoteClient
from kiln.remote.execution import RemoteExecution, RemoteRun, runs_remotely
from kiln.remote.settings import Endpoint, RemoteSettings

if TYPE_CHECKING:
    from kiln.store.local import Store


@dataclass
class Remote:
    """A build's remote: its cache (if usable), its execution (if asked)."""

    settings: RemoteSettings
    stats: RemoteStats
    cache: RemoteCache | None = None
    execution: RemoteExecution | None = None
    _clients: tuple[RemoteClient, ...] = ()
    # Lookups at once: enough to hide round trips, few enough for the server.
    _lookups: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))

    async def lookup(self, key: Digest) -> re_pb2.ActionResult | None:
        """The remote cache's result for ``key`` (now in the local store), or
        None. Never raises: a cache that fails is warned about once and
        not asked again during this build."""
        cache = self.cache
        if cache is None:
            return None
        async with self._lookups:
            try:
                return await cache.lookup(key)
            except BlobMismatch as e:
                self.stats.warn(e.message)  # that result is refused; the cache stays
            except errors.KilnError as e:
                self.stats.warn(f"{e.message}: the rest of the build does not use the cache")
                self.cache = None
        return None

    def runs(self, kind: str, action: re_pb2.Action, command: re_pb2.Command) -> bool:
        """Whether this step goes to the execution server."""
        return self.execution is not None and runs_remotely(kind, action, command)

    async def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> RemoteRun:
        """Run the step on the execution server (``runs`` said it goes there)."""
        assert self.execution is not None
        run = await self.execution.run(key, action, command)
        if run.cached:
            self.stats.hits += 1
        else:
            self.stats.executed += 1
        return run

    def ran(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command,
        result: re_pb2.ActionResult,
    ) -> None:  # fmt: skip
        """A step ran here: push its result if this machine may."""
        if self.cache is not None:
            self.cache.push(key, action, command, result)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.drain()
        for client in self._clients:
            await client.close()


async def connect(
    store: Store,
    settings: RemoteSettings,
    *,
    on_change: Callable[[], None] | None = None,
    read_only: bool = False,
) -> Remote:
    """Open and check the servers ``settings`` name (see the module's rules).
    ``read_only``: look nothing up, push nothing, and have the engine run
    steps again rather than answer from its cache (``kiln check``)."""
    stats = RemoteStats()
    remote = Remote(settings, stats)
    clients: dict[Endpoint, RemoteClient] = {}
    exec_client = None
    if settings.exec is not None:
        client = clients[settings.exec] = RemoteClient(settings.exec, settings)
        try:
            await client.check(execution=True)
            exec_client = client
        except errors.KilnError as e:
            if not settings.fallback:
                await client.close()
                raise errors.KilnError(
                    e.message,
                    hint=(e.hint + "; or " if e.hint else "")
                    + "pass --remote-fallback to build locally when it cannot be used",
                    exit_code=errors.ExitCode.FAILED,
                ) from None
            stats.warn(f"{e.message}: building locally (--remote-fallback)")
    endpoint = settings.cache_endpoint
    if endpoint is not None and not read_only:
        client = clients.get(endpoint) or RemoteClient(endpoint, settings)
        clients[endpoint] = client
        try:
            caps = client.capabilities or await client.check()
            push = settings.push and caps.action_cache_update
            remote.cache = RemoteCache(store, client, push=push, stats=stats, on_change=on_change)
        except errors.KilnError as e:
            stats.warn(f"{e.message}: building without the remote cache")
    if exec_client is not None:
        if remote.cache is not None and remote.cache.client is exec_client:
            moves = remote.cache  # one server: one record of what it has
        else:
            moves = RemoteCache(store, exec_client, push=False, stats=stats, on_change=on_change)
        remote.execution = RemoteExecution(moves, skip_cache_lookup=read_only)
    remote._clients = tuple(clients.values())
    return remote
