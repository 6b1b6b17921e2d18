"""Running one WebAssembly module as a memoized action (``kiln wasm run``).

Host paths become the action's input tree: the module and each input
folder or file appear in the guest at their path relative to the current
folder (or under their own name if they lie outside it). Outputs are copied
back to the current folder at their declared paths, replacing what is there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import errors
from kiln.exec.base import ExecHooks
from kiln.exec.kinds import local_context
from kiln.exec.specs import WasmLimits
from kiln.exec.wasm import WasmExecutor
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.model.tree import graft, lookup
from kiln.store.materialize import Materializer
from kiln.system.fsutil import (
    FOLDER_FLAGS,
    NotAFolder,
    fd_path,
    open_folder_beneath,
    remove_entry_at,
)

if TYPE_CHECKING:
    from kiln.store.local import Store


@dataclass
class WasmRun:
    """What running the module gave."""

    key: Digest
    cached: bool
    result: re_pb2.ActionResult
    outputs: dict[str, str] = field(default_factory=dict)  # path -> digest (tree or blob)


def guest_path(path: Path, cwd: Path) -> str:
    """Where a host path appears in the guest."""
    absolute = path.resolve()
    try:
        rel = absolute.relative_to(cwd.resolve())
    except ValueError:
        return absolute.name
    return rel.as_posix() if str(rel) != "." else "."


def run_wasm(
    store: Store,
    module: str | os.PathLike[str],
    args: list[str],
    *,
    inputs: list[str | os.PathLike[str]] = (),  # type: ignore[assignment]
    outputs: list[str] = (),  # type: ignore[assignment]
    env: dict[str, str] | None = None,
    limits: WasmLimits | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
    progress: Callable[[str], AbstractContextManager[object]] | None = None,
) -> WasmRun:
    """Run ``module`` with ``args`` as a memoized wasm action; copy outputs out."""
    cwd = cwd or Path.cwd()
    module_path = Path(module)
    if not module_path.is_file():
        raise (
            errors.path_missing(module_path)
            if not module_path.exists()
            else errors.KilnError(f"{module_path}: not a file", exit_code=errors.ExitCode.BAD_INPUT)
        )
    with store.writing():
        root: Digest | None = None
        for item in inputs:
            put = store.put(item)
            kind = "dir" if put.kind == "tree" else "file"
            where = guest_path(Path(item), cwd)
            root = graft(store.cas, store.cas.put_bytes, root, where, (kind, put.digest, False))
        placed = guest_path(module_path, cwd)
        if root is None or lookup(store.cas, root, placed) is None:
            blob = store.put(module_path).digest
            root = graft(store.cas, store.cas.put_bytes, root, placed, ("file", blob, False))
    spec = ActionSpec(
        argv=(placed, *args),
        input_root=root,
        env=env or {},
        outputs=outputs,
        platform=(limits or WasmLimits()).platform(),
    )
    key = store.put_action(spec)
    action, command = spec.action()
    executor = WasmExecutor(local_context(store), ExecHooks(on_slow=progress), timeout=timeout)
    execution = store.execute_once(
        key, lambda: (executor.execute(key, action, command), executor.name)
    )
    run = WasmRun(key, execution.cached, execution.result)
    _copy_out(store, execution.result, cwd, run)
    return run


def _copy_out(store: Store, result: re_pb2.ActionResult, cwd: Path, run: WasmRun) -> None:
    """Write the outputs at their paths below ``cwd``, replacing what is
    there. The guest made them, so nothing of theirs is followed: each
    output's folders are opened one component at a time without following
    symlinks (an earlier output that is a link cannot redirect a later one)."""
    m = Materializer(store.cas, copy=True)
    entries = [*result.output_files, *result.output_symlinks, *result.output_directories]
    top = os.open(cwd, FOLDER_FLAGS)
    try:
        for entry in sorted(entries, key=lambda e: e.path):
            folder, name = _output_folder(top, entry.path)
            try:
                remove_entry_at(folder, name)
                dest = fd_path(folder) / name
                if isinstance(entry, re_pb2.OutputFile):
                    digest = Digest.from_proto(entry.digest)
                    m.blob(digest, dest, executable=entry.is_executable)
                    run.outputs[entry.path] = str(digest)
                elif isinstance(entry, re_pb2.OutputSymlink):
                    os.symlink(entry.target, name, dir_fd=folder)
                    run.outputs[entry.path] = entry.target
                else:
                    root = _tree_root(store, Digest.from_proto(entry.tree_digest))
                    m.tree(root, dest)
                    run.outputs[entry.path] = str(root)
            finally:
                os.close(folder)
    finally:
        os.close(top)


def _output_folder(top: int, path: str) -> tuple[int, str]:
    """The open folder an output goes into (made if missing) and its name there."""
    *parents, name = path.split("/")
    try:
        if name in ("", ".", ".."):
            raise NotAFolder(path)
        return open_folder_beneath(top, parents, create=True), name
    except NotAFolder as e:
        raise errors.KilnError(
            f"output {path!r} cannot be written: {e}",
            hint="declare outputs that do not lie inside another output that is a file or link",
            exit_code=errors.ExitCode.FAILED,
            output=path,
        ) from None


def _tree_root(store: Store, tree_digest: Digest) -> Digest:
    """The root ``Directory`` digest of a stored output ``Tree``."""
    data = store.cas.get_bytes(tree_digest)
    if data is None:
        raise errors.digest_not_found(tree_digest, "output tree")
    return Digest.of_message(re_pb2.Tree.FromString(data).root)
