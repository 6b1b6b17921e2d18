"""One ``go`` command's session with ``kiln gocacheprog``: requests in,
responses out, entries in the store (``kiln.gocache.entries``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import IO, Any

from kiln.errors import KilnError
from kiln.gocache import protocol
from kiln.gocache.entries import MAX_ID_BYTES, GoCache
from kiln.store.counters import add_counts, load_counts, zero_counts

STATS_KEY = "gocache-stats/"  # + namespace: in the store's meta table


@dataclass
class SessionStats:
    """What sessions of one namespace did (summed in the store)."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    corrupt: int = 0  # bodies found corrupt on a get (moved aside, answered as a miss)
    errors: int = 0


def serve(cache: GoCache, requests: IO[bytes], responses: IO[bytes]) -> SessionStats:
    """Answer requests until ``close`` or the end of the stream."""
    stats = SessionStats()
    protocol.write_response(responses, protocol.hello())
    try:
        while True:
            request = protocol.read_request(requests)
            if request is None:
                break
            if request.command == "close":
                protocol.write_response(responses, protocol.closed(request.id))
                break
            protocol.write_response(responses, answer(cache, request, stats))
    finally:
        save_stats(cache, stats)
    return stats


def _check_id(name: str, value: bytes) -> str | None:
    if not 0 < len(value) <= MAX_ID_BYTES:
        return f"{name} must have 1 to {MAX_ID_BYTES} bytes, not {len(value)}"
    return None


def answer(cache: GoCache, request: protocol.Request, stats: SessionStats) -> dict[str, Any]:
    """The response to one get or put (or an error response)."""
    if request.command.startswith("invalid: "):
        stats.errors += 1
        return protocol.error(request.id, request.command.removeprefix("invalid: "))
    if request.command not in ("get", "put"):
        stats.errors += 1
        return protocol.error(request.id, f"unknown command {request.command!r}")
    problem = _check_id("ActionID", request.action_id)
    if request.command == "put":
        problem = problem or _check_id("OutputID", request.output_id)
    if problem:
        stats.errors += 1
        return protocol.error(request.id, problem)
    try:
        if request.command == "get":
            return _get(cache, request, stats)
        digest = cache.put(request.action_id, request.output_id, request.body)
        stats.puts += 1
        return protocol.stored(request.id, str(cache.body_path(digest)))
    except (KilnError, OSError) as e:
        stats.errors += 1
        return protocol.error(request.id, f"kiln: {getattr(e, 'message', None) or e}")


def _get(cache: GoCache, request: protocol.Request, stats: SessionStats) -> dict[str, Any]:
    found = cache.lookup(request.action_id)
    if found is None:
        stats.misses += 1
        return protocol.miss(request.id)
    entry = cache.verified(request.action_id, found)
    if entry is None:
        stats.corrupt += 1
        stats.misses += 1
        return protocol.miss(request.id)
    stats.hits += 1
    created = datetime.fromtimestamp(entry.created, tz=UTC).isoformat()
    path = str(cache.body_path(entry.body))
    return protocol.hit(request.id, entry.output_id, entry.body.size, created, path)


def save_stats(cache: GoCache, stats: SessionStats) -> None:
    """Add a session's counts to its namespace's totals in the store."""
    add_counts(cache.store, STATS_KEY + cache.namespace, asdict(stats))


def load_stats(cache: GoCache) -> SessionStats:
    counts = load_counts(cache.store, STATS_KEY + cache.namespace)
    return SessionStats(**{f.name: counts.get(f.name, 0) for f in fields(SessionStats)})


def zero_stats(cache: GoCache) -> None:
    zero_counts(cache.store, STATS_KEY + cache.namespace)
