"""The ``unpack`` executor: an archive already in the store, as a tree.

A pure step (no sandbox is needed: Kiln's own code reads the archive, see
``kiln.exec.archives``), memoized like any other: command ``kiln-unpack
--strip=N -- PATH`` with the archive at PATH in its input tree, and one
output folder.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kiln import errors
from kiln.config import load_config
from kiln.exec.base import record_timing
from kiln.model.digest import Digest
from kiln.model.tree import Entry, lookup

if TYPE_CHECKING:
    from kiln.model.reapi import re_pb2
    from kiln.store.local import Store

UNPACK_ABI = "kiln-unpack-v1"
PROGRAM = "kiln-unpack"


def unpack_argv(path: str, strip: int) -> list[str]:
    return [PROGRAM, f"--strip={strip}", "--", path]


class UnpackExecutor:
    """Reads archives from the store into trees."""

    name = "unpack"

    def __init__(self, store: Store) -> None:
        self._store = store

    def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> re_pb2.ActionResult:
        from kiln.exec.archives import archive_tree  # (not when a build only names the step)
        from kiln.model.reapi import re_pb2

        argv = list(command.arguments)
        if argv[:1] != [PROGRAM] or len(argv) != 4 or not argv[1].startswith("--strip="):
            raise errors.KilnError(f"not an unpack command: {argv[:4]}")
        strip, path = int(argv[1].split("=", 1)[1]), argv[3]
        started = time.time_ns()
        entry = lookup(self._store.cas, Digest.from_proto(action.input_root_digest), path)
        if not isinstance(entry, Entry) or entry.digest is None:
            raise errors.KilnError(f"unpack: {path} is not a file of the step's inputs")
        result = re_pb2.ActionResult(exit_code=0)
        with self._store.writing(), self._store.cas.batch(durable=False) as batch:
            stored = archive_tree(
                batch, self._store.cas.path(entry.digest), strip, where=path,
                limits=load_config().archives, scratch=self._store.session.staging,
            )  # fmt: skip
            [output] = command.output_paths
            result.output_directories.add(path=output, tree_digest=stored.tree.to_proto())
            result.stdout_digest.CopyFrom(batch.add_bytes(b"").to_proto())
            result.stderr_digest.CopyFrom(batch.add_bytes(b"").to_proto())
        record_timing(result, "kiln-unpack", started)
        return result
