"""The local store and a remote one, side by side for one build.

- ``lookup``: a local miss asks the remote action cache. A hit brings down
  only what the build needs to go on: its output trees' folders and its
  logs; output files stay on the server until something here reads them
  (``fetch_files``, ``fetch_tree``: a step that runs here, a target's
  value, a rule reading an output). Every blob that comes down is checked
  against its digest. A result whose blobs are all here is recorded in the
  local action cache, so the next build of this machine needs no network.
- ``push``: after a step ran here, its Action, Command and output blobs
  (with the folders of its output trees) go up (only those the server
  lacks; a blob shared by concurrent steps goes once), then the result.
  Results of steps that used secrets never leave.
- Uploading an Action, its Command and its input tree at once
  (``upload_with_tree``), for remote execution.

Traffic is counted (``RemoteStats``) for the progress line and ``--json``.
A failed push is a warning, never a failed build.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln.model.action import shareable
from kiln.model.digest import EMPTY, Digest, canonical_bytes
from kiln.model.reapi import re_pb2
from kiln.model.tree import reachable
from kiln.remote.client import BlobSource, RemoteClient
from kiln.remote.retry import RemoteUnavailable
from kiln.store.actioncache import result_blobs

if TYPE_CHECKING:
    from kiln.store.cas import ContentStore
    from kiln.store.local import Store

# Blobs this small in all are sent without asking the server which it lacks.
SEND_WITHOUT_ASKING = 64 << 10


@dataclass
class RemoteStats:
    """What one build did with the remote."""

    hits: int = 0
    executed: int = 0
    uploaded_blobs: int = 0
    uploaded_bytes: int = 0
    downloaded_blobs: int = 0
    downloaded_bytes: int = 0
    pushed: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Note a problem once (shown after the build, listed in ``--json``)."""
        if message not in self.warnings:
            self.warnings.append(message)

    def as_dict(self) -> dict[str, int]:
        return {
            "remote_cached": self.hits,
            "remote_executed": self.executed,
            "uploaded_blobs": self.uploaded_blobs,
            "uploaded_bytes": self.uploaded_bytes,
            "downloaded_blobs": self.downloaded_blobs,
            "downloaded_bytes": self.downloaded_bytes,
            "pushed": self.pushed,
        }


def platform_of(action: re_pb2.Action, command: re_pb2.Command) -> dict[str, str]:
    """A step's platform properties: the Action's (where Kiln puts them),
    else the Command's (where older REAPI clients do)."""
    platform = action.platform if action.platform.properties else command.platform
    return {p.name: p.value for p in platform.properties}


class RemoteCache:
    """One build's traffic between the local store and a remote server."""

    def __init__(
        self,
        store: Store,
        client: RemoteClient,
        *,
        push: bool,
        stats: RemoteStats | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.push_allowed = push
        self.stats = stats or RemoteStats()
        self._on_change = on_change or (lambda: None)
        self._present: set[Digest] = set()  # blobs the server is known to have
        self._uploading: dict[Digest, asyncio.Future[None]] = {}
        self._pushes: set[asyncio.Task[None]] = set()
        self._trees: set[Digest] = set()  # input trees sent whole during this build
        self._unrecorded: dict[Digest, tuple[re_pb2.ActionResult, str]] = {}
        self.origin = f"remote cache {client.endpoint}"

    # ------------------------------------------------------------ lookups

    async def lookup(self, key: Digest) -> re_pb2.ActionResult | None:
        """The remote result of ``key`` (its trees and logs now local, see
        the module's docstring); None on a miss (or a lost blob)."""
        result = await self.client.get_action_result(key)
        if result is None or result.exit_code != 0:
            return None
        if not await self.fetch_result(result, files=False):
            return None
        self.record(key, result, self.origin, complete=False)
        self.stats.hits += 1
        self._on_change()
        return result

    async def fetch_result(self, result: re_pb2.ActionResult, *, files: bool = True) -> bool:
        """Download what the local store lacks of ``result``: all of it, or
        without ``files`` its trees and logs only; False when the server lost
        some of it (the caller treats the result as absent)."""
        inline = {}
        for raw, digest in ((result.stdout_raw, result.stdout_digest),
                            (result.stderr_raw, result.stderr_digest)):  # fmt: skip
            if raw and Digest.of_bytes(raw) == Digest.from_proto(digest):
                inline[Digest.from_proto(digest)] = raw
        trees = {Digest.from_proto(d.tree_digest) for d in result.output_directories}
        logs = [  # (a result from another client may name no logs)
            Digest.from_proto(d) for d in (result.stdout_digest, result.stderr_digest) if d.hash
        ]
        first = [*trees, *(d for d in logs if d.size and d not in inline)]
        if not files:
            return not await self._fetch(first, trees, inline)
        first += [Digest.from_proto(f.digest) for f in result.output_files]
        if await self._fetch(first, trees, inline):
            return False
        # Now the trees are local: the files inside them.
        return not await self.fetch_files(result_blobs(self.store.cas, result))

    async def fetch_files(self, digests: Iterable[Digest]) -> list[Digest]:
        """Download those of these file blobs the local store lacks; the
        ones the server does not have either."""
        return await self._fetch(digests, set(), {})

    async def _fetch(
        self, digests: Iterable[Digest], metadata: set[Digest], known: dict[Digest, bytes]
    ) -> list[Digest]:
        """Store those of ``digests`` the local store lacks, from ``known``
        or the server (``metadata``: REAPI Trees, stored with their folders);
        the ones neither has (evicted on the server: not a hit)."""
        missing = self.store.cas.find_missing(d for d in set(digests) if d != EMPTY)
        if not missing:
            return []
        wanted = [d for d in missing if d not in known]
        got = await self.client.download(wanted) if wanted else {}
        got.update((d, known[d]) for d in missing if d in known)
        if got:
            self.stats.downloaded_blobs += len(got)
            self.stats.downloaded_bytes += sum(d.size for d in got)
            await asyncio.to_thread(self._store_blobs, got, metadata)
            self._on_change()
        return [d for d in missing if d not in got]

    def _store_blobs(self, blobs: dict[Digest, bytes], metadata: set[Digest]) -> None:
        with self.store.writing(), self.store.cas.batch() as batch:
            for digest, data in blobs.items():
                if digest in metadata:
                    batch.add_metadata(data)
                    tree = re_pb2.Tree.FromString(data)  # its folders, as the store keeps them
                    for directory in [tree.root, *tree.children]:
                        batch.add_metadata(canonical_bytes(directory))
                else:
                    batch.add_bytes(data, digest)

    def record(
        self, key: Digest, result: re_pb2.ActionResult, origin: str, *, complete: bool = True
    ) -> None:
        """Record a remote result in the local action cache, as produced by
        ``origin``; one not ``complete`` (its files left on the server) is
        recorded by ``record_complete`` at the end of the build if they have
        come down by then. Kept from GC until the build ends."""
        if not complete:
            self._unrecorded[key] = (result, origin)
            return
        meta = result.execution_metadata
        took = (
            meta.execution_completed_timestamp.ToNanoseconds()
            - meta.execution_start_timestamp.ToNanoseconds()
        ) / 1e9
        with self.store.writing():
            self.store.action_cache.record(
                key, result, executor=origin, duration=max(0.0, took), producer=origin
            )
        self.store.lookup(key, keep=True)  # kept from GC until the build ends

    # -------------------------------------------------------------- pushes

    def may_push(self, action: re_pb2.Action, command: re_pb2.Command) -> bool:
        """Whether this machine may push the step's result (never one that read secrets)."""
        return self.push_allowed and shareable(platform_of(action, command))

    def push(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command,
        result: re_pb2.ActionResult,
    ) -> None:  # fmt: skip
        """Start pushing a result that ran here (if it may leave); ``drain``
        waits for every push."""
        if result.exit_code != 0 or not self.may_push(action, command):
            return
        task = asyncio.ensure_future(self._push(key, action, command, result))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _push(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command,
        result: re_pb2.ActionResult,
    ) -> None:  # fmt: skip
        try:
            blobs = {Digest.of_message(action): canonical_bytes(action),
                     Digest.of_message(command): canonical_bytes(command),
                     **_output_folders(self.store.cas, result)}  # fmt: skip
            await self.upload(blobs, result_blobs(self.store.cas, result))
            await self.client.update_action_result(key, result)
            self.stats.pushed += 1
            self._on_change()
        except Exception as e:  # a push is a bonus: warn, never fail the build
            self.warn(f"could not push a result to {self.client.endpoint}: {_said(e)}")

    def record_complete(self) -> None:
        """Record the remote results whose blobs have all come down since."""
        waiting, self._unrecorded = self._unrecorded, {}
        for key, (result, origin) in waiting.items():
            if self.store.action_cache.complete(result):
                self.record(key, result, origin)

    async def drain(self) -> None:
        """Wait for every push started so far."""
        while self._pushes:
            await asyncio.gather(*list(self._pushes), return_exceptions=True)

    def warn(self, message: str) -> None:
        self.stats.warn(message)

    # ------------------------------------------------------------- uploads

    async def upload(self, known: dict[Digest, bytes], stored: Iterable[Digest] = ()) -> None:
        """Make sure the server has these blobs: ``known`` with their bytes,
        ``stored`` read from the local store. Each blob is asked about and
        sent at most once per build, whoever needs it."""
        wanted = {d for d in [*known, *stored] if d != EMPTY} - self._present
        waits = [self._uploading[d] for d in wanted if d in self._uploading]
        mine = [d for d in wanted if d not in self._uploading]
        if mine:
            loop = asyncio.get_running_loop()
            futures = {d: loop.create_future() for d in mine}
            self._uploading.update(futures)
            try:
                await self._send(mine, known)
                self._present.update(mine)
                for f in futures.values():
                    f.set_result(None)
            except BaseException as e:
                for f in futures.values():
                    f.set_exception(e)
                    f.exception()  # retrieved: the waiters see it
                raise
            finally:
                for d in mine:
                    del self._uploading[d]
        if waits:
            await asyncio.gather(*waits)

    async def _send(self, digests: list[Digest], known: dict[Digest, bytes]) -> None:
        small = sum(d.size for d in digests) <= SEND_WITHOUT_ASKING
        if small and all(d in known or self.store.cas.has(d) for d in digests):
            missing = digests  # sending them costs less than a round trip to ask
        else:
            missing = await self.client.find_missing(digests)
        if not missing:
            return
        sources: dict[Digest, BlobSource] = {}
        for digest in missing:
            sources[digest] = known[digest] if digest in known else self._source(digest)
        await self.client.upload(sources)
        self.stats.uploaded_blobs += len(missing)
        self.stats.uploaded_bytes += sum(d.size for d in missing)
        self._on_change()

    def _source(self, digest: Digest) -> BlobSource:
        if digest.size > self.client.batch_limit:
            return self.store.cas.blob_file(digest)
        data = self.store.cas.get_bytes(digest)
        if data is None:
            raise RemoteUnavailable(f"blob {digest} to upload is not in the local store")
        return data

    async def fetch_tree(self, root: Digest) -> bool:
        """Download what the local store lacks of the tree ``root`` (folder
        by folder, then the files); False if the server lacks some of it.
        (A tree made of output trees is already here folder by folder: then
        this costs one local walk and one download of the missing files.)"""
        level = [root]
        files: set[Digest] = set()
        while level:
            missing = self.store.cas.find_missing(level)
            got = await self.client.download(missing) if missing else {}
            if len(got) < len(missing):
                return False
            if got:
                await asyncio.to_thread(self.store_folders, got)
            below: list[Digest] = []
            for digest in level:
                directory = re_pb2.Directory.FromString(self.store.cas.get_bytes(digest) or b"")
                files.update(Digest.from_proto(f.digest) for f in directory.files)
                below.extend(Digest.from_proto(d.digest) for d in directory.directories)
            level = sorted(set(below))
        return not await self.fetch_files(files)

    def store_folders(self, blobs: dict[Digest, bytes]) -> None:
        """Store downloaded Directory messages (checked by the client)."""
        with self.store.writing(), self.store.cas.batch() as batch:
            for data in blobs.values():
                batch.add_metadata(data)

    def forget(self, digests: list[Digest]) -> None:
        """The server lost these blobs (all it was known to have, if the
        list is empty): the next upload asks about them again."""
        self._trees.clear()
        if digests:
            self._present.difference_update(digests)
        else:
            self._present.clear()

    async def upload_with_tree(self, known: dict[Digest, bytes], root: Digest) -> None:
        """Make sure the server has these blobs and the whole tree ``root``,
        asking about all of them at once."""
        tree = [] if root in self._trees else reachable(self.store.cas, root)
        await self.upload(known, tree)
        self._trees.add(root)


def _output_folders(cas: ContentStore, result: re_pb2.ActionResult) -> dict[Digest, bytes]:
    """Every folder (``Directory`` message) of a result's output trees.
    REAPI names them only inside the ``Tree`` blobs, but some servers
    (buildbox-casd) will not serve a result unless each is in their CAS."""
    folders = {}
    for output in result.output_directories:
        data = cas.get_bytes(Digest.from_proto(output.tree_digest))
        if data is None:
            continue  # (then the upload fails on the missing Tree itself)
        tree = re_pb2.Tree.FromString(data)
        for directory in [tree.root, *tree.children]:
            raw = canonical_bytes(directory)
            folders[Digest.of_bytes(raw)] = raw
    return folders


def _said(e: BaseException) -> str:
    message: str = getattr(e, "message", "") or str(e) or type(e).__name__
    return message.splitlines()[0]
