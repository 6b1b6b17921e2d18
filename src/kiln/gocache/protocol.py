"""The wire format of Go's ``GOCACHEPROG`` protocol.

The ``go`` command starts the program and talks to it over its stdin and
stdout, one JSON object per line. The program first announces the commands
it knows (``{"ID": 0, "KnownCommands": [...]}``); then each request gets a
response with the request's ``ID``, in any order. Byte fields (``ActionID``,
``OutputID``) are base64 in JSON. A ``put`` with ``BodySize`` > 0 is
followed by a line holding the body as one base64 JSON string. A request
that breaks these rules is hostile data: it gets an error response, or ends
the session if the stream cannot be followed any more.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import IO, Any

KNOWN_COMMANDS = ("get", "put", "close")
MAX_BODY = 1 << 31  # what one entry may hold (Go's largest are linked test binaries)
MAX_LINE = 64 << 10  # a request line without its body


class ProtocolError(Exception):
    """The stream from ``go`` cannot be followed: the session ends."""


@dataclass(frozen=True)
class Request:
    id: int
    command: str
    action_id: bytes = b""
    output_id: bytes = b""
    body: bytes = b""


def _bytes_field(raw: dict[str, Any], name: str) -> bytes:
    value = raw.get(name)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError(f"{name} is not valid base64") from None


def read_request(stream: IO[bytes]) -> Request | None:
    """The next request, or None at the end of the stream. A request whose
    fields are wrong is returned with ``command`` "invalid: <why>" (it still
    has its ID, to answer it)."""
    line = stream.readline(MAX_LINE + 1)
    while line in (b"\n", b"\r\n"):
        line = stream.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise ProtocolError("a request line is longer than 64 KiB")
    try:
        raw = json.loads(line)
    except ValueError:
        raise ProtocolError("a request is not JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("ID"), int):
        raise ProtocolError("a request has no numeric ID")
    request_id = raw["ID"]
    size = raw.get("BodySize", 0)
    if not isinstance(size, int) or not 0 <= size <= MAX_BODY:
        raise ProtocolError(f"request {request_id}: BodySize {size!r} is out of range")
    body = _read_body(stream, size) if size else b""
    command = raw.get("Command")
    try:
        action_id = _bytes_field(raw, "ActionID")
        output_id = _bytes_field(raw, "OutputID")
    except ValueError as e:
        return Request(request_id, f"invalid: {e}")
    if not isinstance(command, str):
        return Request(request_id, "invalid: no Command")
    return Request(request_id, command, action_id, output_id, body)


def _read_body(stream: IO[bytes], size: int) -> bytes:
    encoded_limit = 4 * ((size + 2) // 3) + 4  # quotes and line end
    line = stream.readline(encoded_limit + 1)
    while line in (b"\n", b"\r\n"):  # (go puts an empty line after each request)
        line = stream.readline(encoded_limit + 1)
    text = line.strip()
    if len(line) > encoded_limit or len(text) < 2 or text[:1] != b'"' or text[-1:] != b'"':
        raise ProtocolError("a put's body is not one base64 JSON string")
    try:
        body = base64.b64decode(text[1:-1], validate=True)
    except binascii.Error:
        raise ProtocolError("a put's body is not valid base64") from None
    if len(body) != size:
        raise ProtocolError(f"a put's body has {len(body)} bytes, not BodySize {size}")
    return body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hello() -> dict[str, Any]:
    """The first message: the commands this program answers."""
    return {"ID": 0, "KnownCommands": list(KNOWN_COMMANDS)}


def error(request_id: int, message: str) -> dict[str, Any]:
    return {"ID": request_id, "Err": message}


def miss(request_id: int) -> dict[str, Any]:
    return {"ID": request_id, "Miss": True}


def hit(request_id: int, output_id: bytes, size: int, created: str, path: str) -> dict[str, Any]:
    """A get answered: ``created`` is an RFC 3339 time."""
    return {
        "ID": request_id,
        "OutputID": _b64(output_id),
        "Size": size,
        "Time": created,
        "DiskPath": path,
    }


def stored(request_id: int, path: str) -> dict[str, Any]:
    return {"ID": request_id, "DiskPath": path}


def closed(request_id: int) -> dict[str, Any]:
    return {"ID": request_id}


def write_response(stream: IO[bytes], response: dict[str, Any]) -> None:
    stream.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
    stream.flush()
