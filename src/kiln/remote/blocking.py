"""The remote cache for callers that are not asynchronous: Go's cache
program (``kiln.gocache``) and the compiler cache (``kiln.cc``) look results
up in, and push them to, the configured REAPI cache (the ``[remote]``
cache, or ``KILN_REMOTE_CACHE``) from plain threads; the remote client runs
on an event loop in a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.remote.connect import Remote, connect
from kiln.remote.settings import RemoteSettings
from kiln.store.local import Store

T = TypeVar("T")


def open_remote_cache(store: Store) -> BlockingRemoteCache | None:
    """The configured remote cache, or None when there is none."""
    from kiln.config import load_config

    settings = load_config().remote_settings().overridden()
    if settings.cache_endpoint is None:
        return None
    return BlockingRemoteCache(store, settings)


class BlockingRemoteCache:
    """Look results up in, and push them to, the remote cache; each call
    returns when done (pushes: at ``close``)."""

    def __init__(self, store: Store, settings: RemoteSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kiln-remote-cache", daemon=True
        )
        self._thread.start()
        self.remote: Remote = self._run(connect(store, settings))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def warnings(self) -> list[str]:
        return self.remote.stats.warnings

    def fetch(self, key: Digest) -> bool:
        """Bring the result of ``key`` and its output files into the local
        store, if the remote cache has them (each checked against its digest
        on the way)."""
        cache = self.remote.cache
        if cache is None:
            return False

        async def fetch() -> bool:
            result = await cache.lookup(key)
            if result is None:
                return False
            bodies = [Digest.from_proto(f.digest) for f in result.output_files]
            if await cache.fetch_files(bodies):
                return False  # the server lost the body: a miss
            cache.record_complete()
            return True

        try:
            return self._run(fetch())
        except Exception as e:  # the remote is a bonus: a miss, and say why once
            self.remote.stats.warn(f"remote cache lookup failed: {e}")
            return False

    def push(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command,
        result: re_pb2.ActionResult,
    ) -> None:  # fmt: skip
        """Start pushing a result made here (``close`` waits for it)."""
        cache = self.remote.cache
        if cache is not None:
            self._loop.call_soon_threadsafe(cache.push, key, action, command, result)

    def close(self) -> None:
        """Wait for the pushes, then close the connections."""

        async def finish() -> None:
            if self.remote.cache is not None:
                await self.remote.cache.drain()
            await self.remote.close()

        try:
            self._run(finish())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
