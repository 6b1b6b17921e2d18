"""Which gRPC failures are worth another try, and the tries themselves.

A server that is restarting, overloaded or slow (``UNAVAILABLE``,
``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED``, ``ABORTED``) is retried with
exponential backoff and jitter; if it stays so, the failure is a
``RemoteUnavailable``: transient, so never cached. Anything else is the
server's answer and is returned to the caller as ``RemoteError`` with a
hint (a wrong token, an unknown instance, a refused request).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from kiln import errors
from kiln.exec.base import TransientError

T = TypeVar("T")

TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
})  # fmt: skip
ATTEMPTS = 5
FIRST_DELAY = 0.1  # seconds; doubles each time, with jitter
MAX_DELAY = 3.0


class RemoteUnavailable(TransientError):
    """The remote could not be reached or kept failing transiently."""


class RemoteError(errors.KilnError):
    """The remote answered with a refusal (not worth retrying)."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None, hint: str | None = None):
        super().__init__(message, hint=hint, exit_code=errors.ExitCode.FAILED)
        self.code = code


def delays(attempts: int = ATTEMPTS) -> list[float]:
    """The waits between ``attempts`` tries: exponential, jittered, capped."""
    return [
        min(MAX_DELAY, FIRST_DELAY * 2**n) * random.uniform(0.5, 1.0) for n in range(attempts - 1)
    ]


async def retrying(call: Callable[[], Awaitable[T]], what: str, server: str) -> T:
    """``await call()``, retried on transient failures; errors explained."""
    waits = delays()
    for attempt in range(len(waits) + 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as e:
            if e.code() in TRANSIENT and attempt < len(waits):
                await asyncio.sleep(waits[attempt])
                continue
            raise explain(e, what, server) from None
    raise AssertionError("unreachable")


def explain(e: grpc.aio.AioRpcError, what: str, server: str) -> errors.KilnError:
    """A gRPC failure as a Kiln error saying what was asked of whom."""
    code = e.code()
    detail = (e.details() or "").strip().splitlines()[0:1]
    said = f": {detail[0]}" if detail else ""
    message = f"remote {server}: {what} failed ({code.name}){said}"
    if code in TRANSIENT:
        return RemoteUnavailable(
            message, hint="check that the server is running and reachable, then build again"
        )
    hints = {
        grpc.StatusCode.UNAUTHENTICATED: "check the remote token (token-env / token-file)",
        grpc.StatusCode.PERMISSION_DENIED: "this token may not do that; set push = false "
        "to only read from the cache",
        grpc.StatusCode.INVALID_ARGUMENT: "check the instance name and the server's version",
        grpc.StatusCode.UNIMPLEMENTED: "the server does not offer this service "
        "(is it a cache-only server used for --remote-exec?)",
    }
    return RemoteError(message, code=code, hint=hints.get(code))
