"""Steps requested by a running wasm guest (the ``kiln`` imports ``step_*``).

A guest describes a step in JSON:

    {"executor": "wasm" | "native",
     "argv": [...], "env": {...}, "outputs": [...],
     "inputs": {"PATH IN THE STEP": "PATH IN THE GUEST" | "digest:HASH/SIZE"},
     "limits": {...}, "tools": [...],          (native: tools the step uses)
     "working_directory": "...", "description": "...",
     "mount": "/tmp/..."}                      (where its outputs appear)

Its inputs are files and folders the guest sees (inputs of its own step,
or files and folders it wrote) or blobs by digest. The build runs the step
(``kiln.exec.substeps``); when the guest waits for it, it gets the exit
code, and the step's outputs appear read-only under ``mount`` (default
``/tmp/kiln-steps/HANDLE``), which must be under ``/tmp`` and not exist.

What a requested step gives is a pure function of the request, so the
requesting step stays one of its own inputs. Anything that is not the
step's result (no build to ask, a refusal, an error running it) fails
the requesting step as an error (retried only when the build did not
answer), never as a result that could be cached.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.engine.inputs import stored_tree
from kiln.engine.values import File, Tree, Value, result_outputs
from kiln.exec.base import TransientError
from kiln.exec.substeps import Answer, NoService, Refused, request_step
from kiln.exec.wasi import abi
from kiln.exec.wasi.vfs import Dir, FileSystem, Node, Symlink, WasiError
from kiln.exec.wasi.vfs import File as VfsFile
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.system.per_process import PerProcess

if TYPE_CHECKING:
    from kiln.store.cas import ContentStore

DIGEST_PREFIX = "digest:"
MAX_REQUEST = 1 << 20
DEFAULT_MOUNT = "/tmp/kiln-steps"
REFUSED = "a step it requested could not be run: "
# Threads that wait for the build's answers (they only wait).
_requests_pool = PerProcess(
    lambda: ThreadPoolExecutor(max_workers=64, thread_name_prefix="kiln-substep")
)


@dataclass
class _Requested:
    future: Future[Answer]
    mount: str
    answer: Answer | None = None


class StepRequests:
    """The steps one guest run requested, by handle."""

    def __init__(self, fs: FileSystem, cas: ContentStore, parent: Digest) -> None:
        self._fs = fs
        self._cas = cas
        self._parent = parent
        self._open: dict[int, _Requested] = {}
        self._next = 1
        self._mounts: set[str] = set()

    def start(self, text: bytes) -> int:
        """Send the request ``text`` describes; its handle. EINVAL: malformed."""
        if len(text) > MAX_REQUEST:
            raise WasiError(abi.E2BIG)
        try:
            request = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise WasiError(abi.EINVAL) from None
        if not isinstance(request, dict) or not isinstance(request.get("inputs", {}), dict):
            raise WasiError(abi.EINVAL)
        handle = self._next
        mount = request.pop("mount", f"{DEFAULT_MOUNT}/{handle}")
        if not isinstance(mount, str) or mount in self._mounts or not _under_tmp(mount):
            raise WasiError(abi.EINVAL)
        values = [self._value(dest, source) for dest, source in request.pop("inputs", {}).items()]
        try:
            root = stored_tree(self._cas, values, "a step requested by a wasm guest")
        except errors.KilnError:
            raise WasiError(abi.EINVAL) from None  # overlapping or malformed paths
        step = {**request, "input_root": str(root)}
        self._next += 1
        self._mounts.add(mount)
        future = _requests_pool.get().submit(request_step, self._parent, step)
        self._open[handle] = _Requested(future, mount)
        return handle

    def wait(self, handle: int) -> int:
        """The requested step's exit code, its outputs mounted."""
        entry = self._entry(handle)
        if entry.answer is None:
            try:
                answer = entry.future.result()
            except NoService:
                raise errors.KilnError(
                    "a wasm step requested a step, which only a running build can run "
                    "(not `kiln wasm run`, `kiln check` nor a remote worker)",
                    hint="build it with `kiln build`", exit_code=errors.ExitCode.FAILED,
                ) from None
            except Refused as e:
                prefix = "" if e.message.startswith(REFUSED) else REFUSED
                if not e.final:
                    raise TransientError(prefix + e.message, hint=e.hint) from None
                raise errors.KilnError(  # (asking again would be refused again: not retried)
                    prefix + e.message, hint=e.hint, exit_code=errors.ExitCode.FAILED
                ) from None
            self._mount(entry.mount, answer.result)  # (EEXIST: again at the next wait)
            entry.answer = answer
        return entry.answer.result.exit_code

    def read(self, handle: int, which: int) -> bytes:
        """The requested step's stdout (1) or stderr (2), once waited for."""
        entry = self._entry(handle)
        if entry.answer is None or which not in (1, 2):
            raise WasiError(abi.EINVAL)
        result = entry.answer.result
        digest = result.stdout_digest if which == 1 else result.stderr_digest
        data = self._cas.get_bytes(Digest.from_proto(digest)) if digest.size_bytes else b""
        if data is None:
            raise TransientError(f"the output blob {Digest.from_proto(digest)} is missing")
        return data

    def release(self, handle: int) -> None:
        self._entry(handle)
        del self._open[handle]

    def finish(self) -> None:
        """The guest ended: wait for requests still out (their answers are
        the build's to count; nobody reads them here)."""
        for entry in self._open.values():
            if entry.answer is None:
                entry.future.exception()
        self._open.clear()

    def _entry(self, handle: int) -> _Requested:
        entry = self._open.get(handle)
        if entry is None:
            raise WasiError(abi.EBADF)
        return entry

    # -------------------------------------------------------------- inputs

    def _value(self, dest: Any, source: Any) -> Value:
        """The input at ``dest`` of the requested step: a file or folder the
        guest sees, or a blob by digest."""
        if not isinstance(dest, str) or not isinstance(source, str) or not dest:
            raise WasiError(abi.EINVAL)
        if source.startswith(DIGEST_PREFIX):
            try:
                digest = Digest.parse(source[len(DIGEST_PREFIX) :])
            except errors.KilnError:
                raise WasiError(abi.EINVAL) from None
            if not self._cas.has(digest):
                raise WasiError(abi.ENOENT)
            return File(dest, digest)
        _, _, node = self._fs.resolve(self._fs.root, source, follow=True)
        if node is None:
            raise WasiError(abi.ENOENT)
        return self._node_value(dest, node)

    def _node_value(self, dest: str, node: Node) -> Value:
        if isinstance(node, VfsFile):
            if node.blob is not None and not node.writable:
                return File(dest, node.blob)
            return File(dest, self._cas.put_bytes(self._fs.read(node, 0, node.size())))
        if isinstance(node, Dir):
            return Tree(dest, self._tree_of(node))
        raise WasiError(abi.EINVAL)  # a symlink's target is the input to name

    def _tree_of(self, d: Dir) -> Digest:
        """The digest of a folder the guest sees (stored if it wrote it)."""
        if not d.writable and d.source is not None and not d.output_names:
            return d.source  # an input folder, as the store has it
        values: list[Value] = []
        for name, node in sorted(self._fs.entries(d).items()):
            if isinstance(node, Symlink):
                raise WasiError(abi.EINVAL)  # (a tree of links is not an input yet)
            values.append(self._node_value(name, node))
        if not values:
            raise WasiError(abi.EINVAL)  # an empty folder is no input
        return stored_tree(self._cas, values, "a folder written by a wasm guest")

    # -------------------------------------------------------------- outputs

    def _mount(self, mount: str, result: re_pb2.ActionResult) -> None:
        """Show the requested step's outputs read-only at ``mount``."""
        try:
            values = list(result_outputs(self._cas, result).values())
        except errors.KilnError as e:
            raise TransientError(f"an output of a requested step: {e.message}") from None
        *folders, name = [p for p in mount.split("/") if p]
        parent = self._fs.root
        for part in folders:  # (made as the guest would: writable, under /tmp)
            node = self._fs.entries(parent).get(part)
            if node is None:
                node = Dir(self._fs.new_ino(), writable=True, parent=parent, entries={})
                self._fs.entries(parent)[part] = node
            if not isinstance(node, Dir) or not node.writable:
                raise WasiError(abi.ENOTDIR)
            parent = node
        if name in self._fs.entries(parent):
            raise WasiError(abi.EEXIST)
        root = stored_tree(self._cas, values, "a requested step's outputs") if values else None
        mounted = Dir(self._fs.new_ino(), writable=False, source=root, parent=parent)
        if root is None:
            mounted.entries = {}
        self._fs.entries(parent)[name] = mounted


def _under_tmp(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return len(parts) >= 2 and parts[0] == "tmp" and ".." not in parts and "." not in parts
