"""The ``unpack`` executor: an archive already in the store, as a tree.

A pure step (no sandbox is needed: Kiln's own code reads the archive, see
``kiln.exec.archives``), memoized like any other: command ``kiln-unpack
--strip=N -- PATH`` (``kiln.exec.specs.unpack_argv``) with the archive at
PATH in its input tree, and one output folder.
"""

from __future__ import annotations

import time

from kiln import errors
from kiln.config import load_config
from kiln.exec.archives import archive_tree
from kiln.exec.base import ExecContext, ExecHooks, record_timing
from kiln.exec.specs import UNPACK_PROGRAM
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.model.tree import Entry, lookup


class UnpackExecutor:
    """Reads archives from the store into trees."""

    name = "unpack"

    def __init__(self, ctx: ExecContext, hooks: ExecHooks | None = None) -> None:
        self._cas = ctx.cas
        self._scratch = ctx.scratch

    def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> re_pb2.ActionResult:
        argv = list(command.arguments)
        if argv[:1] != [UNPACK_PROGRAM] or len(argv) != 4 or not argv[1].startswith("--strip="):
            raise errors.KilnError(f"not an unpack command: {argv[:4]}")
        strip, path = int(argv[1].split("=", 1)[1]), argv[3]
        started = time.time_ns()
        entry = lookup(self._cas, Digest.from_proto(action.input_root_digest), path)
        if not isinstance(entry, Entry) or entry.digest is None:
            raise errors.KilnError(f"unpack: {path} is not a file of the step's inputs")
        result = re_pb2.ActionResult(exit_code=0)
        with self._cas.batch(durable=False) as batch:
            stored = archive_tree(
                batch, self._cas.blob_file(entry.digest), strip, where=path,
                limits=load_config().archives, scratch=self._scratch(),
            )  # fmt: skip
            [output] = command.output_paths
            result.output_directories.add(path=output, tree_digest=stored.tree.to_proto())
            result.stdout_digest.CopyFrom(batch.add_bytes(b"").to_proto())
            result.stderr_digest.CopyFrom(batch.add_bytes(b"").to_proto())
        record_timing(result, "kiln-unpack", started)
        return result
