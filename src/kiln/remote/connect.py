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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln import errors
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.model.tree import reachable
from kiln.remote.cache import RemoteCache, RemoteStats
from kiln.remote.client import BlobMismatch, RemoteClient
from kiln.remote.execution import RemoteExecution, RemoteRun, runs_remotely
from kiln.remote.settings import Endpoint, RemoteSettings

if TYPE_CHECKING:
    from kiln.store.local import Store


@dataclass
class Remote:
    """A build's remote: its cache (if usable), its execution (if asked)."""

    store: Store
    settings: RemoteSettings
    stats: RemoteStats
    cache: RemoteCache | None = None
    execution: RemoteExecution | None = None
    _clients: tuple[RemoteClient, ...] = ()
    # Lookups at once: enough to hide round trips, few enough for the server.
    _lookups: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    _reader: SyncReader | None = None

    @property
    def movers(self) -> list[RemoteCache]:
        """Where blobs of this build's remote results may be: each server once."""
        found = [m for m in (self.cache, self.execution and self.execution.cas) if m]
        return list({id(m): m for m in found}.values())

    async def fetch(self, trees: list[Digest], files: list[Digest]) -> list[Digest]:
        """Bring these trees and files into the local store from the remote;
        the blobs neither here nor on any server (lost there)."""
        cas = self.store.cas
        lost: list[Digest] = []
        for root in trees:
            missing = cas.find_missing(reachable(cas, root, skip_missing=True))
            if missing and not await self._fetch_tree(root):
                lost += cas.find_missing(reachable(cas, root, skip_missing=True))
        wanted = cas.find_missing(set(files))
        for mover in self.movers:
            if not wanted:
                break
            try:
                wanted = await mover.fetch_files(wanted)
            except errors.KilnError as e:
                self.stats.warn(f"{e.message}: blobs not downloaded")
        return lost + wanted

    async def _fetch_tree(self, root: Digest) -> bool:
        for mover in self.movers:
            try:
                if await mover.fetch_tree(root):
                    return True
            except errors.KilnError as e:
                self.stats.warn(f"{e.message}: blobs not downloaded")
        return False

    def read_now(self, digest: Digest) -> bytes | None:
        """One blob, for code that cannot wait (a rule reading an output):
        fetched on a thread of its own, then kept in the local store."""
        if self._reader is None:
            self._reader = SyncReader(self.settings, [m.client.endpoint for m in self.movers])
        try:
            data = self._reader.read(digest, self.store)
        except errors.KilnError as e:
            self.stats.warn(f"{e.message}: blob not downloaded")
            return None
        if data is not None:
            self.stats.downloaded_blobs += 1
            self.stats.downloaded_bytes += len(data)
        return data

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

    def looks_up(self, kind: str, action: re_pb2.Action, command: re_pb2.Command) -> bool:
        """Whether to ask the cache before running the step: not when the
        step goes to an engine that is also the cache (``Execute`` looks its
        cache up anyway: one round trip fewer)."""
        if self.cache is None:
            return False
        same = self.execution is not None and self.execution.cas is self.cache
        return not (same and self.runs(kind, action, command))

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
        for mover in self.movers:
            mover.record_complete()
        if self._reader is not None:
            self._reader.close()
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
    remote = Remote(store, settings, stats)
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


class SyncReader:
    """Downloads for synchronous callers: clients on an event loop of their
    own, in a thread (the build's loop is the caller's, busy waiting)."""

    def __init__(self, settings: RemoteSettings, endpoints: list[Endpoint]) -> None:
        self._settings = settings
        self._endpoints = endpoints
        self._clients: list[RemoteClient] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def read(self, digest: Digest, store: Store) -> bytes | None:
        """The blob from the first server that has it (stored locally too)."""
        found = asyncio.run_coroutine_threadsafe(self._read(digest), self._loop).result()
        if found is not None:
            with store.writing(), store.cas.batch() as batch:
                batch.add_bytes(found, digest)
        return found

    async def _read(self, digest: Digest) -> bytes | None:
        if not self._clients:
            self._clients = [RemoteClient(e, self._settings) for e in self._endpoints]
            for client in self._clients:
                await client.check()
        for client in self._clients:
            got = await client.download([digest])
            if digest in got:
                return got[digest]
        return None

    def close(self) -> None:
        async def closing() -> None:
            for client in self._clients:
                await client.close()

        asyncio.run_coroutine_threadsafe(closing(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
