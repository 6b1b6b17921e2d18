"""A REAPI v2 client on grpc's asyncio API.

One ``RemoteClient`` per endpoint and event loop. It checks the server's
capabilities before anything else (SHA-256 or nothing), sizes its batches
by the server's limit, and never hands out a downloaded blob whose content
does not hash to its digest (``BlobMismatch``: the blob is dropped).

Small blobs travel in ``BatchUpdateBlobs``/``BatchReadBlobs``; larger ones
through ByteStream, written in chunks and resumed from the server's
``QueryWriteStatus`` after a cut, read with a moving offset.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc
from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)
from buildgrid.common.protos.google.bytestream import bytestream_pb2 as bs_pb2
from buildgrid.common.protos.google.bytestream import bytestream_pb2_grpc as bs_grpc
from buildgrid.common.protos.google.longrunning import operations_pb2
from buildgrid.common.protos.google.rpc import code_pb2, status_pb2

from kiln import errors
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.remote.retry import RemoteError, RemoteUnavailable, explain, retrying
from kiln.remote.settings import Endpoint, RemoteSettings

GRPC_MESSAGE_LIMIT = 4 << 20  # gRPC's default largest message
BATCH_OVERHEAD = 128  # bytes a blob adds to a batch beyond its content
BATCH_MARGIN = 64 << 10  # room left for the request's own fields
CHUNK = 1 << 20  # ByteStream chunk
FIND_BATCH = 10_000  # digests per FindMissingBlobs
SHA256 = re_pb2.DigestFunction.SHA256

BlobSource = bytes | Path  # a blob's content, or the file that holds it


class BlobMismatch(RemoteUnavailable):
    """The server sent content that does not hash to the digest asked for."""


@dataclass(frozen=True)
class Capabilities:
    """What the server said it offers, reduced to what Kiln uses."""

    batch_limit: int  # the largest batch request, in bytes
    action_cache_update: bool
    execution: bool
    raw: re_pb2.ServerCapabilities


class RemoteClient:
    """The REAPI services of one server, for one event loop."""

    def __init__(self, endpoint: Endpoint, settings: RemoteSettings) -> None:
        self.endpoint = endpoint
        self.instance = settings.instance
        self.deadline = settings.deadline
        token = settings.token()
        # Sent with every call (the token, if any).
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.enable_retries", 0),  # ours (retry.py) are the only ones
        ]
        if endpoint.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.ca_cert),
                private_key=_read(settings.client_key),
                certificate_chain=_read(settings.client_cert),
            )
            self.channel = grpc.aio.secure_channel(endpoint.target, credentials, options)
        else:
            self.channel = grpc.aio.insecure_channel(endpoint.target, options)
        self._cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self._ac = re_grpc.ActionCacheStub(self.channel)
        self._exec = re_grpc.ExecutionStub(self.channel)
        self._caps = re_grpc.CapabilitiesStub(self.channel)
        self._bytestream = bs_grpc.ByteStreamStub(self.channel)
        self.capabilities: Capabilities | None = None

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, what: str, method, request):  # type: ignore[no-untyped-def]
        """One unary call with the deadline, the token, and retries."""
        return await retrying(
            lambda: method(request, timeout=self.deadline, metadata=self.metadata),
            what,
            str(self.endpoint),
        )

    # ------------------------------------------------------- capabilities

    async def check(self, *, execution: bool = False) -> Capabilities:
        """Ask the server what it offers; refuse one Kiln cannot use."""
        caps = await self._call(
            "GetCapabilities",
            self._caps.GetCapabilities,
            re_pb2.GetCapabilitiesRequest(instance_name=self.instance),
        )
        cache = caps.cache_capabilities
        # (These stubs predate the field's plural name, ``digest_functions``.)
        if SHA256 not in cache.digest_function:
            offered = [re_pb2.DigestFunction.Value.Name(f) for f in cache.digest_function]
            raise RemoteError(
                f"remote {self.endpoint} does not offer SHA-256 digests "
                f"(it offers {', '.join(offered) or 'none'})",
                code=None,
                hint="Kiln's keys are SHA-256: configure the server for SHA256",
            )
        limit = cache.max_batch_total_size_bytes or GRPC_MESSAGE_LIMIT
        limit = min(limit, GRPC_MESSAGE_LIMIT) - BATCH_MARGIN
        exec_caps = caps.execution_capabilities
        executes = exec_caps.exec_enabled and exec_caps.digest_function == SHA256
        if execution and not executes:
            raise RemoteError(
                f"remote {self.endpoint} does not execute actions (with SHA-256)",
                code=None,
                hint="point --remote-exec at an execution service (e.g. BuildGrid with "
                "a scheduler), or use it as --remote-cache",
            )
        update = (
            not cache.HasField("action_cache_update_capabilities")
            or cache.action_cache_update_capabilities.update_enabled
        )
        self.capabilities = Capabilities(limit, update, executes, caps)
        return self.capabilities

    @property
    def batch_limit(self) -> int:
        return self.capabilities.batch_limit if self.capabilities else GRPC_MESSAGE_LIMIT // 2

    # ---------------------------------------------------------------- CAS

    async def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Which of ``digests`` the server does not have."""
        wanted = sorted(set(digests))
        missing: list[Digest] = []
        for start in range(0, len(wanted), FIND_BATCH):
            request = re_pb2.FindMissingBlobsRequest(
                instance_name=self.instance,
                blob_digests=[d.to_proto() for d in wanted[start : start + FIND_BATCH]],
            )
            reply = await self._call("FindMissingBlobs", self._cas.FindMissingBlobs, request)
            missing.extend(Digest.from_proto(d) for d in reply.missing_blob_digests)
        return missing

    async def upload(self, blobs: dict[Digest, BlobSource]) -> None:
        """Send every blob (the caller found them missing): small ones in
        batches, large ones through ByteStream, concurrently."""
        small = [(d, s) for d, s in blobs.items() if d.size + BATCH_OVERHEAD <= self.batch_limit]
        large = [(d, s) for d, s in blobs.items() if d.size + BATCH_OVERHEAD > self.batch_limit]
        jobs = [self._update_batch(batch) for batch in self._batches(small)]
        jobs += [self.write_stream(d, s) for d, s in large]
        await _gather(jobs)

    def _batches(self, blobs: list[tuple[Digest, BlobSource]]):  # type: ignore[no-untyped-def]
        batch: list[tuple[Digest, BlobSource]] = []
        size = 0
        for digest, source in sorted(blobs, key=lambda b: b[0].size):
            if batch and size + digest.size + BATCH_OVERHEAD > self.batch_limit:
                yield batch
                batch, size = [], 0
            batch.append((digest, source))
            size += digest.size + BATCH_OVERHEAD
        if batch:
            yield batch

    async def _update_batch(self, batch: list[tuple[Digest, BlobSource]]) -> None:
        request = re_pb2.BatchUpdateBlobsRequest(
            instance_name=self.instance,
            requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=d.to_proto(), data=_content(s))
                for d, s in batch
            ],
        )
        reply = await self._call("BatchUpdateBlobs", self._cas.BatchUpdateBlobs, request)
        for response in reply.responses:
            if response.status.code != code_pb2.OK:
                raise _blob_status("upload", response.digest, response.status, self.endpoint)

    async def write_stream(self, digest: Digest, source: BlobSource) -> None:
        """Upload one blob through ByteStream; after a cut, resume from
        what the server says it committed."""
        name = f"{self._prefix()}uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size}"
        offset = 0
        for attempt in range(5):
            try:
                reply = await self._bytestream.Write(
                    self._write_requests(name, source, offset, digest.size),
                    timeout=self.deadline + digest.size / (1 << 20),
                    metadata=self.metadata,
                )
                if reply.committed_size not in (digest.size, -1):
                    raise RemoteUnavailable(
                        f"remote {self.endpoint}: upload of {digest} stopped at "
                        f"{reply.committed_size} bytes"
                    )
                return
            except grpc.aio.AioRpcError as e:
                if attempt == 4 or e.code() not in _RESUMABLE:
                    raise _stream_error(e, "ByteStream.Write", self.endpoint) from None
                offset = await self._committed(name, digest)
                if offset is None:
                    return  # the server has the whole blob
                await asyncio.sleep(0.1 * 2**attempt)

    async def _committed(self, name: str, digest: Digest) -> int | None:
        """How much of an interrupted upload the server kept; None if complete."""
        try:
            status = await self._bytestream.QueryWriteStatus(
                bs_pb2.QueryWriteStatusRequest(resource_name=name),
                timeout=self.deadline,
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError:
            return 0  # a server that cannot say: start again
        if status.complete or status.committed_size >= digest.size:
            return None
        return max(0, status.committed_size)

    async def _write_requests(
        self, name: str, source: BlobSource, offset: int, size: int
    ) -> AsyncIterator[bs_pb2.WriteRequest]:
        first = True
        with _opened(source) as f:
            f.seek(offset)
            while True:
                chunk = f.read(CHUNK)
                last = offset + len(chunk) >= size
                yield bs_pb2.WriteRequest(
                    resource_name=name if first else "",
                    write_offset=offset,
                    finish_write=last,
                    data=chunk,
                )
                first = False
                offset += len(chunk)
                if last:
                    return

    async def download(self, digests: Iterable[Digest]) -> dict[Digest, bytes]:
        """The content of each blob, checked against its digest; a blob the
        server does not have is absent from the answer."""
        wanted = sorted(set(digests))
        small = [d for d in wanted if d.size + BATCH_OVERHEAD <= self.batch_limit]
        large = [d for d in wanted if d.size + BATCH_OVERHEAD > self.batch_limit]
        found: dict[Digest, bytes] = {}
        batches = self._batches([(d, b"") for d in small])
        jobs = [self._read_batch(batch, found) for batch in batches]
        jobs += [self._read_large(d, found) for d in large]
        await _gather(jobs)
        return found

    async def _read_large(self, digest: Digest, found: dict[Digest, bytes]) -> None:
        data = await self.read_stream(digest)
        if data is not None:
            found[digest] = data

    async def _read_batch(
        self, batch: list[tuple[Digest, BlobSource]], found: dict[Digest, bytes]
    ) -> None:
        request = re_pb2.BatchReadBlobsRequest(
            instance_name=self.instance,
            digests=[d.to_proto() for d, _ in batch],
        )
        reply = await self._call("BatchReadBlobs", self._cas.BatchReadBlobs, request)
        for response in reply.responses:
            digest = Digest.from_proto(response.digest)
            if response.status.code == code_pb2.NOT_FOUND:
                continue
            if response.status.code != code_pb2.OK:
                raise _blob_status("download", response.digest, response.status, self.endpoint)
            found[digest] = self._checked(digest, response.data)

    async def read_stream(self, digest: Digest) -> bytes | None:
        """One blob through ByteStream (resuming after a cut); None if absent."""
        name = f"{self._prefix()}blobs/{digest.hash}/{digest.size}"
        parts: list[bytes] = []
        got = 0
        for attempt in range(5):
            try:
                stream = self._bytestream.Read(
                    bs_pb2.ReadRequest(resource_name=name, read_offset=got),
                    timeout=self.deadline + digest.size / (1 << 20),
                    metadata=self.metadata,
                )
                async for reply in stream:
                    parts.append(reply.data)
                    got += len(reply.data)
                    if got > digest.size:
                        break
                break
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                if attempt == 4 or e.code() not in _RESUMABLE:
                    raise _stream_error(e, "ByteStream.Read", self.endpoint) from None
                await asyncio.sleep(0.1 * 2**attempt)
        return self._checked(digest, b"".join(parts))

    def _checked(self, digest: Digest, data: bytes) -> bytes:
        if len(data) != digest.size or hashlib.sha256(data).hexdigest() != digest.hash:
            raise BlobMismatch(
                f"remote {self.endpoint} sent content for blob {digest} that does not "
                "match its digest; it was not stored",
                hint="the server's storage may be corrupt: report it to its operator",
            )
        return data

    def _prefix(self) -> str:
        return f"{self.instance}/" if self.instance else ""

    # ------------------------------------------------------- action cache

    async def get_action_result(
        self, key: Digest, *, inline_output_files: Iterable[str] = ()
    ) -> re_pb2.ActionResult | None:
        """The cached result of action ``key``; None on a miss."""
        request = re_pb2.GetActionResultRequest(
            instance_name=self.instance,
            action_digest=key.to_proto(),
            inline_stdout=True,
            inline_stderr=True,
            inline_output_files=list(inline_output_files),
        )
        try:
            return await self._call("GetActionResult", self._ac.GetActionResult, request)
        except RemoteError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def update_action_result(self, key: Digest, result: re_pb2.ActionResult) -> None:
        """Record ``result`` as action ``key``'s (its blobs already uploaded)."""
        request = re_pb2.UpdateActionResultRequest(
            instance_name=self.instance,
            action_digest=key.to_proto(),
            action_result=result,
        )
        await self._call("UpdateActionResult", self._ac.UpdateActionResult, request)

    # ---------------------------------------------------------- execution

    async def execute(
        self, key: Digest, *, skip_cache_lookup: bool = False, priority: int = 0
    ) -> re_pb2.ExecuteResponse:
        """Run action ``key`` (its Action, Command and inputs uploaded) and
        wait for it: the operation stream, then ``WaitExecution`` whenever
        the stream drops before the operation is done."""
        request = re_pb2.ExecuteRequest(
            instance_name=self.instance,
            action_digest=key.to_proto(),
            skip_cache_lookup=skip_cache_lookup,
            execution_policy=re_pb2.ExecutionPolicy(priority=priority),
        )
        name = ""
        failures = 0
        while True:
            if name:
                stream = self._exec.WaitExecution(
                    re_pb2.WaitExecutionRequest(name=name), metadata=self.metadata
                )
            else:
                stream = self._exec.Execute(request, metadata=self.metadata)
            try:
                async for operation in stream:
                    name = operation.name or name
                    if operation.done:
                        return _execute_response(operation, self.endpoint)
                failures += 1  # the stream ended without the operation done
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND and name:
                    name = ""  # the server lost the operation (e.g. a restart): again
                elif e.code() not in _RESUMABLE:
                    raise _stream_error(e, "Execute", self.endpoint) from None
                failures += 1
            if failures > 8:
                raise RemoteUnavailable(
                    f"remote {self.endpoint}: lost the execution of {key} {failures} times"
                )
            await asyncio.sleep(min(3.0, 0.1 * 2**failures))


_RESUMABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,  # a stream cut mid-message
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
})  # fmt: skip


def _execute_response(
    operation: operations_pb2.Operation, endpoint: Endpoint
) -> re_pb2.ExecuteResponse:
    if operation.HasField("error"):
        raise RemoteError(
            f"remote {endpoint}: execution failed: {operation.error.message}",
            code=None,
        )
    response = re_pb2.ExecuteResponse()
    if not operation.response.Unpack(response):
        raise RemoteError(f"remote {endpoint}: an execution answered without a result", code=None)
    return response


async def _gather(jobs: list) -> None:  # type: ignore[type-arg]
    """Run ``jobs`` together; on the first failure cancel the rest."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _content(source: BlobSource) -> bytes:
    return source if isinstance(source, bytes) else source.read_bytes()


def _opened(source: BlobSource) -> BinaryIO:
    """A blob source as a readable binary file (a context manager)."""
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise errors.KilnError(
            f"cannot read the TLS file {path}: {e.strerror}",
            hint="check ca-cert / client-cert / client-key in the [remote] settings",
            exit_code=errors.ExitCode.BAD_INPUT,
        ) from None


def _blob_status(
    what: str, digest: re_pb2.Digest, status: status_pb2.Status, endpoint: Endpoint
) -> errors.KilnError:
    """One blob's failure inside a batch: transient or the server's refusal."""
    code = code_pb2.Code.Name(status.code)
    text = f"remote {endpoint}: {what} of blob {digest.hash}/{digest.size_bytes} failed: {code}"
    text += f" {status.message}" if status.message else ""
    if code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED"):
        return RemoteUnavailable(text)
    return RemoteError(text, code=None)


def _stream_error(e: grpc.aio.AioRpcError, what: str, endpoint: Endpoint) -> errors.KilnError:
    return explain(e, what, str(endpoint))
