"""Running one WebAssembly module as a memoized action (``kiln wasm run``).

Host paths become the action's input tree: the module and each input
folder or file appear in the guest at their path relative to the current
folder (or under their own name if they lie outside it). Outputs are copied
back to the current folder at their declared paths, replacing what is there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import errors
from kiln.action import ActionSpec
from kiln.digest import Digest

if TYPE_CHECKING:
    from kiln.exec.wasm import WasmLimits
    from kiln.reapi import re_pb2
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
    from kiln.exec.wasm import WasmExecutor, WasmLimits
    from kiln.tree import graft, lookup

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
    executor = WasmExecutor(store, timeout=timeout, progress=progress)
    execution = store.execute_once(key, lambda: (executor.execute(key, action, command), "wasm"))
    run = WasmRun(key, execution.cached, execution.result)
    _copy_out(store, execution.result, cwd, run)
    return run


def _copy_out(store: Store, result: re_pb2.ActionResult, cwd: Path, run: WasmRun) -> None:
    from kiln.reapi import re_pb2
    from kiln.store.materialize import Materializer

    m = Materializer(store.cas, copy=True)
    for f in result.output_files:
        dest = cwd / f.path
        _clear(dest)
        d = Digest.from_proto(f.digest)
        m.blob(d, dest, executable=f.is_executable)
        run.outputs[f.path] = str(d)
    for s in result.output_symlinks:
        dest = cwd / s.path
        _clear(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(s.target, dest)
        run.outputs[s.path] = s.target
    for d in result.output_directories:
        tree = re_pb2.Tree.FromString(store.cas.get_bytes(Digest.from_proto(d.tree_digest)) or b"")
        root = Digest.of_message(tree.root)
        dest = cwd / d.path
        _clear(dest)
        m.tree(root, dest)
        run.outputs[d.path] = str(root)


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
