"""Asking the running build for a step, from inside an executor.

The build's step service (``kiln.engine.nested``) listens on the Unix
socket named by ``SERVICE_VARIABLE`` while it runs. ``request_step`` sends
one request (a JSON object describing the step, and the key of the step
asking, see ``kiln.engine.nested.NestedStep``) and waits for the answer: the
requested step's ``ActionResult``, its outputs in the local store. Without
a build (``kiln wasm run``, a remote worker) there is no service, and a
step cannot request steps.

Wire format: each message is a 4-byte big-endian length and UTF-8 JSON.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2

SERVICE_VARIABLE = "KILN_STEP_SERVICE"
MAX_MESSAGE = 16 << 20
LENGTH = struct.Struct(">I")


class NoService(Exception):
    """No build is running in this process to ask for steps."""


class Refused(Exception):
    """The build refused the request (``message``, ``hint``; ``final``: asking
    again would be refused again) or did not answer (not ``final``)."""

    def __init__(self, message: str, hint: str | None = None, final: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.final = final


@dataclass(frozen=True)
class Answer:
    """A requested step's key, result, and whether it was a cache hit."""

    key: Digest
    result: re_pb2.ActionResult
    cached: bool


def service_available() -> bool:
    """Whether a build in this process answers step requests."""
    return bool(os.environ.get(SERVICE_VARIABLE))


def request_step(parent: Digest, step: dict[str, Any]) -> Answer:
    """Ask the build to run ``step`` for the running step ``parent``, and
    wait for it. Raises ``NoService`` or ``Refused``."""
    path = os.environ.get(SERVICE_VARIABLE)
    if not path:
        raise NoService()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(encode_message({**step, "parent": str(parent)}))
            reply = read_message(sock)
        except (OSError, ValueError) as e:
            raise Refused(f"the build's step service did not answer: {e}", final=False) from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise Refused(str(error or "malformed answer"), reply.get("hint"))
    result = re_pb2.ActionResult.FromString(base64.b64decode(reply["result"]))
    return Answer(Digest.parse(reply["key"]), result, bool(reply.get("cached")))


def encode_message(message: Any) -> bytes:
    """One message on the wire."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return LENGTH.pack(len(data)) + data


def read_message(sock: socket.socket) -> Any:
    """One message from a blocking socket."""
    (size,) = LENGTH.unpack(_exactly(sock, LENGTH.size))
    if size > MAX_MESSAGE:
        raise ValueError("message too large")
    return json.loads(_exactly(sock, size))


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ValueError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
