"""A gRPC proxy in front of a real REAPI server, for the faults a real
server cannot be made to show on demand: content that does not match its
digest, a blob lost between two calls, a capability it lacks, a token it
requires.

Every call is forwarded as raw bytes; ``rewrite[method]`` may change a
unary answer (``fn(request, answer) -> answer``), ``refuse[method]`` may
fail a call with a status code (``fn(request) -> code | None``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent import futures

import grpc

STREAMING_OUT = {
    "/google.bytestream.ByteStream/Read",
    "/build.bazel.remote.execution.v2.Execution/Execute",
    "/build.bazel.remote.execution.v2.Execution/WaitExecution",
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/GetTree",
}
STREAMING_IN = {"/google.bytestream.ByteStream/Write"}

Rewrite = Callable[[bytes, bytes], bytes]
Refuse = Callable[[bytes], "grpc.StatusCode | None"]


class Proxy:
    """Listens on 127.0.0.1 (a port the kernel picks), forwards to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.rewrite: dict[str, Rewrite] = {}
        self.refuse: dict[str, Refuse] = {}
        self.token: str | None = None  # if set, calls without "Bearer <token>" are refused
        self.calls: list[str] = []
        # Uploads (ByteStream.Write) cut after this many messages, ``cuts_left`` times.
        self.cut_writes_after: int | None = None
        self.cuts_left = 0
        # Streamed answers (e.g. Execute) cut once after this many messages.
        self.cut_streams: dict[str, int] = {}
        self.metadata_seen: list[tuple[tuple[str, str], ...]] = []
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._server.add_generic_rpc_handlers([_Handler(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.url = f"grpc://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._channel.close()

    def _check(self, method: str, request: bytes, context: grpc.ServicerContext) -> None:
        self.calls.append(method.rsplit("/", 1)[-1])
        metadata = tuple((k, v) for k, v in context.invocation_metadata())
        self.metadata_seen.append(metadata)
        if self.token is not None and ("authorization", f"Bearer {self.token}") not in metadata:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        refuse = self.refuse.get(method)
        code = refuse(request) if refuse else None
        if code is not None:
            context.abort(code, "refused by the test proxy")

    def unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._check(method, request, context)
        try:
            answer = self._channel.unary_unary(method)(request, timeout=30)
        except grpc.RpcError as e:
            context.abort(e.code(), e.details() or "")
        rewrite = self.rewrite.get(method)
        return rewrite(request, answer) if rewrite else answer

    def stream_out(self, method: str, request: bytes, context: grpc.ServicerContext):
        self._check(method, request, context)
        cut = self.cut_streams.get(method, 0)
        if cut:
            self.cut_streams[method] = 0  # once
        answers = self._channel.unary_stream(method)(request)
        try:
            for sent, answer in enumerate(answers, start=1):
                yield answer
                if sent == cut:
                    answers.cancel()
                    context.abort(grpc.StatusCode.UNAVAILABLE, "stream cut by the test proxy")
        except grpc.RpcError as e:
            context.abort(e.code(), e.details() or "")

    def stream_in(self, method: str, requests, context: grpc.ServicerContext) -> bytes:
        self._check(method, b"", context)
        if self.cut_writes_after is not None and self.cuts_left > 0:
            self.cuts_left -= 1
            return self._cut(method, requests, context, self.cut_writes_after)
        try:
            return self._channel.stream_unary(method)(requests, timeout=60)
        except grpc.RpcError as e:
            context.abort(e.code(), e.details() or "")

    def _cut(self, method: str, requests, context: grpc.ServicerContext, keep: int) -> bytes:
        """Forward the first ``keep`` messages of an upload, then drop the call
        as a broken connection would."""
        first = [message for _, message in zip(range(keep), requests, strict=False)]
        with contextlib.suppress(grpc.RpcError):  # the server saw the upload end early
            self._channel.stream_unary(method)(iter(first), timeout=10)
        context.abort(grpc.StatusCode.UNAVAILABLE, "connection cut by the test proxy")


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        proxy = self.proxy
        if method in STREAMING_OUT:
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: proxy.stream_out(method, request, context)
            )
        if method in STREAMING_IN:
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: proxy.stream_in(method, requests, context)
            )
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: proxy.unary(method, request, context)
        )
