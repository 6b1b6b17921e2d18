"""A real 75 MB module (clang/LLVM compiled to WASI, the pinned npm package
@yowasp/clang): compiled for this CPU once, with progress shown, and then
loaded from the compiled-module cache by every later executor.

The package is fetched from the npm registry by exact version and sha512,
and cached across test runs in ``$KILN_CACHE`` (which conftest.py points at
pytest's cache folder).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from kiln.exec.base import ExecHooks
from kiln.exec.kinds import local_context
from kiln.exec.wasm import WasmExecutor, WasmLimits, shared_engine
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from kiln.rules.host_toolchains import yowasp_clang


@pytest.fixture(scope="session")
def clang_module() -> Path:
    return yowasp_clang()


@pytest.mark.slow
@pytest.mark.network
def test_large_module_compiles_once_then_comes_from_the_cache(
    store, tmp_path: Path, clang_module: Path
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(clang_module, root / "llvm.wasm")
    spec = ActionSpec(
        argv=("llvm.wasm", "clang", "--version"),
        input_root=store.put(root).digest,
        platform=WasmLimits().platform(),
    )
    key = store.put_action(spec)
    action, command = spec.action()
    shown: list[str] = []

    def progress(message: str) -> contextlib.AbstractContextManager[object]:
        shown.append(message)
        return contextlib.nullcontext()

    shared_engine().modules.clear()  # as in a new process
    first = WasmExecutor(local_context(store), ExecHooks(on_slow=progress))
    result = first.execute(key, action, command)
    assert first.compiled == 1
    assert len(shown) == 1 and "compiling a 72.0 MiB WebAssembly module" in shown[0]
    stdout = store.cas.get_bytes(Digest.from_proto(result.stdout_digest)).decode()
    assert result.exit_code == 0 and stdout.startswith("clang version 22.")
    assert "Target: wasm32-unknown-wasip1" in stdout

    shared_engine().modules.clear()
    # as a new process would:
    again = WasmExecutor(local_context(store), ExecHooks(on_slow=progress))
    second = again.execute(key, action, command)
    assert again.compiled == 0 and len(shown) == 1  # loaded, not compiled: no progress
    assert second.stdout_digest == result.stdout_digest
