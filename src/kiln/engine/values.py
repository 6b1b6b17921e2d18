"""What build rules hold: ``File`` and ``Tree`` handles to stored content,
and the ``StepResult`` of a finished step. All are immutable and carry
digests, never host paths: two equal handles name the same bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.store.cas import read_blob

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiln.store.cas import ContentStore
    from kiln.store.local import Store


@dataclass(frozen=True)
class File:
    """A stored file and the path it takes in a step's input tree (and in
    the output folder): a source's project-relative path, or an output's
    declared path."""

    path: str
    digest: Digest
    executable: bool = False

    def at(self, path: str) -> File:
        """The same file, placed at another path."""
        return File(path, self.digest, self.executable)


@dataclass(frozen=True)
class Tree:
    """A stored directory (the digest of its root ``Directory``) and the path
    it takes in a step's input tree; ``""`` means the root itself."""

    path: str
    digest: Digest

    def at(self, path: str) -> Tree:
        """The same tree, placed at another path."""
        return Tree(path, self.digest)


Value = File | Tree


@dataclass(frozen=True)
class StepResult:
    """A step that finished with exit code 0. ``cached``: nothing ran, the
    action cache had it. Outputs are looked up by their declared path."""

    key: Digest
    description: str
    outputs: dict[str, Value]
    stdout_digest: Digest
    stderr_digest: Digest
    cached: bool
    _store: Store = field(repr=False, compare=False)
    # Where an output not in the local store comes from (a build with a remote).
    _fetch: Callable[[Digest], bytes | None] | None = field(default=None, repr=False, compare=False)

    def file(self, path: str) -> File:
        value = self._output(path)
        if not isinstance(value, File):
            raise TypeError(f"output {path!r} of {self.description} is a directory, not a file")
        return value

    def tree(self, path: str) -> Tree:
        value = self._output(path)
        if not isinstance(value, Tree):
            raise TypeError(f"output {path!r} of {self.description} is a file, not a directory")
        return value

    def read_bytes(self, path: str) -> bytes:
        what = f"output {path!r} of {self.description}"
        digest = self.file(path).digest
        if self._fetch is not None and not self._store.cas.has(digest):
            data = self._fetch(digest)
            if data is not None:
                return data
        return read_blob(self._store.cas, digest, what)

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    @property
    def stdout(self) -> bytes:
        return read_blob(self._store.cas, self.stdout_digest, f"stdout of {self.description}")

    @property
    def stderr(self) -> bytes:
        return read_blob(self._store.cas, self.stderr_digest, f"stderr of {self.description}")

    def _output(self, path: str) -> Value:
        try:
            return self.outputs[path]
        except KeyError:
            declared = ", ".join(sorted(self.outputs)) or "none"
            raise KeyError(
                f"{self.description} has no output {path!r} (it produced: {declared})"
            ) from None


def outputs_of(store: Store, result: re_pb2.ActionResult) -> dict[str, Value]:
    """The outputs of an ``ActionResult`` as handles at their declared paths."""
    return result_outputs(store.cas, result)


def result_outputs(cas: ContentStore, result: re_pb2.ActionResult) -> dict[str, Value]:
    """``outputs_of``, given the content store that holds the output trees."""
    out: dict[str, Value] = {}
    for f in result.output_files:
        out[f.path] = File(f.path, Digest.from_proto(f.digest), f.is_executable)
    for d in result.output_directories:
        data = read_blob(cas, Digest.from_proto(d.tree_digest), f"output tree {d.path!r}")
        root = Digest.of_message(re_pb2.Tree.FromString(data).root)
        out[d.path] = Tree(d.path, root)
    return out
