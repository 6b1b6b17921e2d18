"""Go's build-cache entries, kept in Kiln's store.

The ``go`` command keys each entry by an *action ID* and stores an *output
ID* with a body. Here an entry is an action-cache result like any step's:

- its key is the digest of an ``Action`` under the contract
  ``GO_CACHE_ABI`` whose platform names the *namespace* and whose command
  names the action ID, so an entry put in one namespace is never found
  from another, and a remote cache shares entries like step results;
- its result has one output file, named ``output/<output ID in hex>``,
  whose blob is the body.

So ``kiln gc`` ages entries out with the other results, ``kiln store
verify`` checks their bodies, and a namespace is cleared by deleting the
rows recorded for it (``executor`` = ``gocache/<namespace>``).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import errors
from kiln.model.digest import EMPTY, Digest
from kiln.model.reapi import re_pb2
from kiln.store.local import Store

if TYPE_CHECKING:
    from kiln.remote.blocking import BlockingRemoteCache

GO_CACHE_ABI = "kiln-gocache-v1"
EXECUTOR_PREFIX = "gocache/"
OUTPUT_PREFIX = "output/"
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_ID_BYTES = 64  # Go's IDs are SHA-256 sums (32 bytes)
EMPTY_FOLDER = Digest.of_message(re_pb2.Directory())


def check_namespace(name: str) -> str:
    """``name`` if it can name a namespace, else a clear error."""
    if not NAMESPACE.fullmatch(name):
        raise errors.KilnError(
            f"invalid Go cache namespace {name!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 128), starting with a "
            "letter or digit, e.g. the project's name",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return name


@dataclass(frozen=True)
class Entry:
    """What a "get" answers: the output ID and the body's blob."""

    output_id: bytes
    body: Digest
    created: float


def entry_messages(namespace: str, action_id: bytes) -> tuple[re_pb2.Action, re_pb2.Command]:
    """The Action (and its Command) whose digest keys this entry."""
    command = re_pb2.Command(arguments=["go-cache-entry", action_id.hex()])
    platform = re_pb2.Platform(
        properties=[
            re_pb2.Platform.Property(name="kiln-abi", value=GO_CACHE_ABI),
            re_pb2.Platform.Property(name="namespace", value=namespace),
        ]
    )
    action = re_pb2.Action(
        command_digest=Digest.of_message(command).to_proto(),
        input_root_digest=EMPTY_FOLDER.to_proto(),
        do_not_cache=False,
        platform=platform,
    )
    return action, command


def entry_key(namespace: str, action_id: bytes) -> Digest:
    return Digest.of_message(entry_messages(namespace, action_id)[0])


def entry_result(output_id: bytes, body: Digest) -> re_pb2.ActionResult:
    output = re_pb2.OutputFile(path=OUTPUT_PREFIX + output_id.hex(), digest=body.to_proto())
    empty = EMPTY.to_proto()  # (no logs; REAPI clients expect their digests)
    return re_pb2.ActionResult(
        exit_code=0, output_files=[output], stdout_digest=empty, stderr_digest=empty
    )


def entry_of(result: re_pb2.ActionResult, created: float) -> Entry | None:
    """The entry a result holds, or None if it is not one of ours."""
    if len(result.output_files) != 1 or result.output_directories or result.exit_code:
        return None
    output = result.output_files[0]
    if not output.path.startswith(OUTPUT_PREFIX):
        return None
    try:
        output_id = bytes.fromhex(output.path[len(OUTPUT_PREFIX) :])
    except ValueError:
        return None
    if not 0 < len(output_id) <= MAX_ID_BYTES:
        return None
    return Entry(output_id, Digest.from_proto(output.digest), created)


class GoCache:
    """One namespace of Go cache entries in a store, and in a remote cache
    when one is given (``kiln.remote.blocking.BlockingRemoteCache``)."""

    def __init__(
        self, store: Store, namespace: str, remote: BlockingRemoteCache | None = None
    ) -> None:
        self.store = store
        self.namespace = check_namespace(namespace)
        self.executor = EXECUTOR_PREFIX + namespace
        self.remote = remote

    def key(self, action_id: bytes) -> Digest:
        return entry_key(self.namespace, action_id)

    def lookup(self, action_id: bytes) -> Entry | None:
        """The entry recorded for ``action_id`` here, else brought from the
        remote cache; its body not yet checked."""
        key = self.key(action_id)
        hit = self.store.action_cache.lookup(key)
        if hit is None and self.remote is not None and self.remote.fetch(key):
            hit = self.store.action_cache.lookup(key)
        return None if hit is None else entry_of(hit.result, hit.created)

    def verified(self, action_id: bytes, entry: Entry) -> Entry | None:
        """``entry`` if its body is intact; a corrupt body is moved aside and
        the entry dropped (then Go builds the output again and puts it)."""
        if self.intact(entry.body):
            return entry
        self.store.action_cache.remove(self.key(action_id))
        return None

    def get(self, action_id: bytes) -> Entry | None:
        """The entry of ``action_id`` with an intact body, else None."""
        entry = self.lookup(action_id)
        return None if entry is None else self.verified(action_id, entry)

    def intact(self, body: Digest) -> bool:
        """Whether the body's file hashes to its digest; if not, it is moved
        to the store's quarantine/ so that the next put writes it afresh."""
        path = self.body_path(body)
        try:
            if Digest.of_file(path) == body:
                return True
        except OSError:
            return False
        quarantine = self.store.home / "quarantine"
        quarantine.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # (another process moved it first)
            os.replace(path, quarantine / f"{body.hash}.{int(time.time())}")
        return False

    def body_path(self, body: Digest) -> Path:
        """The body's read-only file in the store (what Go reads)."""
        return self.store.cas.path(body)

    def put(self, action_id: bytes, output_id: bytes, body: bytes) -> Digest:
        """Store a body and record the entry; returns the body's digest."""
        action, command = entry_messages(self.namespace, action_id)
        with self.store.writing():
            digest = self.store.cas.put_bytes(body)
            key = self.store.put_messages(action, command)
            result = entry_result(output_id, digest)
            self.store.action_cache.record(key, result, executor=self.executor, duration=0.0)
        if self.remote is not None:
            self.remote.push(key, action, command, result)
        return digest

    def clear(self) -> int:
        """Drop every entry of this namespace; the count dropped. (The
        bodies go at the next ``kiln gc`` unless something else uses them.)"""
        cursor = self.store.conn.execute(
            "DELETE FROM action_cache WHERE executor = ?", (self.executor,)
        )
        return cursor.rowcount

    def count(self) -> int:
        return self.store.conn.execute(
            "SELECT COUNT(*) FROM action_cache WHERE executor = ?", (self.executor,)
        ).fetchone()[0]
