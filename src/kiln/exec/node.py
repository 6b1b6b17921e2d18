"""A second, independent engine for wasm actions: Node.js (V8).

``node_host.mjs`` is a port of Kiln's virtual WASI (``kiln.exec.wasi``) to
JavaScript; this executor hands it the action (argv, environment, seed, the
input tree's listings and the paths of its blobs in the CAS), runs it under
``node``, and turns what it reports into an ``ActionResult`` exactly as the
Wasmtime executor would. Equal results from the two are the evidence that an
action's outputs depend on the action and not on the engine or host.

What this engine does not do: fuel, memory and disk limits (V8 has no fuel
metering; its guest files are held in memory), NaN canonicalization. It is
for checking, not for building: compare only runs that finished within
their limits under Wasmtime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.exec.base import ExecContext, TransientError, record_timing
from kiln.exec.specs import WasmLimits
from kiln.exec.wasi.vfs import Dir, FileSystem, Node, Symlink
from kiln.exec.wasm_files import collect_outputs, directory_entries
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2

HOST_SCRIPT = Path(__file__).with_name("wasi") / "node_host.mjs"
EXIT_UNRUNNABLE = 3  # node_host.mjs: the request itself cannot be run


def find_node() -> str | None:
    """The ``node`` binary on PATH, if there is one."""
    return shutil.which("node") or shutil.which("nodejs")


class NodeWasmExecutor:
    """Runs wasm actions under Node.js with Kiln's virtual WASI."""

    name = "wasm-node"

    def __init__(
        self, ctx: ExecContext, timeout: float | None = 600.0, node: str | None = None
    ) -> None:
        found = node or find_node()
        if found is None:
            raise TransientError(
                "Node.js is not installed: the second wasm engine needs `node`",
                hint="install Node.js 18 or later (Debian: apt install nodejs)",
            )
        self._node = found
        self._cas = ctx.cas
        self._timeout = timeout

    def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> re_pb2.ActionResult:
        props = {p.name: p.value for p in action.platform.properties}
        WasmLimits.from_platform(props)  # refuses another contract version
        input_root = Digest.from_proto(action.input_root_digest)
        request = {
            "abi": props["kiln-abi"],
            "argv": list(command.arguments),
            "env": [[v.name, v.value] for v in command.environment_variables],
            "seed": key.hash,
            "outputs": list(command.output_paths),
            "root": str(input_root),
            **self._listings(input_root),
        }
        started = time.time_ns()
        with tempfile.TemporaryDirectory(prefix="kiln-node-") as tmp:
            request_path = Path(tmp) / "request.json"
            request_path.write_text(json.dumps(request))
            self._run_node(request_path, Path(tmp))
            report = json.loads((Path(tmp) / "result.json").read_text())
            data = (Path(tmp) / "data.bin").read_bytes()

        def chunk(span: list[int]) -> bytes:
            return data[span[0] : span[0] + span[1]]

        fs = FileSystem(None, _no_inputs, _no_inputs)  # only outputs: nothing to load
        for path, description in report["outputs"].items():
            fs.allow_file(path)
            parent, name, _ = fs.resolve(fs.root, path, follow=False)
            fs.entries(parent)[name] = _rebuild(fs, description, parent, chunk)
        result = re_pb2.ActionResult(exit_code=report["exit_code"])
        with self._cas.batch() as batch:
            collect_outputs(fs, batch, list(command.output_paths), result)
            result.stdout_digest.CopyFrom(batch.add_bytes(chunk(report["stdout"])).to_proto())
            result.stderr_digest.CopyFrom(batch.add_bytes(chunk(report["stderr"])).to_proto())
        record_timing(result, "kiln-wasm-node", started)
        return result

    def _listings(self, root: Digest) -> dict[str, dict[str, object]]:
        """Every directory of the input tree, listed as ``directory_entries``
        does, and the CAS path of every file blob."""
        dirs: dict[str, object] = {}
        blobs: dict[str, str] = {}
        pending = [root]
        while pending:
            digest = pending.pop()
            if str(digest) in dirs:
                continue
            entries = directory_entries(self._cas, digest)
            dirs[str(digest)] = [[n, kind, str(p)] for n, kind, p in entries]
            for _, kind, payload in entries:
                if kind == "dir":
                    pending.append(payload)  # type: ignore[arg-type]
                elif kind == "file":
                    blobs[str(payload)] = str(self._cas.blob_file(payload))  # type: ignore[arg-type]
        return {"dirs": dirs, "blobs": blobs}

    def _run_node(self, request: Path, result_dir: Path) -> None:
        try:
            proc = subprocess.run(
                [self._node, str(HOST_SCRIPT), str(request), str(result_dir)],
                capture_output=True,
                text=True,
                timeout=self._timeout,
            )
        except subprocess.TimeoutExpired:
            raise TransientError(
                f"wall-clock timeout after {self._timeout} s under node (not cached)",
                hint="node does not meter fuel: a guest that ran out of fuel under "
                "wasmtime runs until this timeout",
            ) from None
        if proc.returncode != 0:
            message = proc.stderr.strip().splitlines()
            raise TransientError(
                f"node engine failed (exit {proc.returncode}): "
                + (message[-1] if message else "no message"),
                hint=None
                if proc.returncode == EXIT_UNRUNNABLE
                else f"check that {self._node} is Node.js 18 or later",
            )


def _no_inputs(_digest: Digest) -> Any:
    raise AssertionError("the rebuilt output tree refers to no stored inputs")


def _rebuild(
    fs: FileSystem, description: dict[str, Any], parent: Dir, chunk: Callable[[list[int]], bytes]
) -> Node:
    """A vfs node from node_host.mjs's description of an output."""
    kind = description["kind"]
    if kind == "file":
        return fs.new_file(chunk(description["data"]))
    if kind == "symlink":
        return Symlink(fs.new_ino(), writable=True, target=description["target"])
    d = Dir(fs.new_ino(), writable=True, parent=parent, entries={})
    for name, child in description["entries"].items():
        d.entries[name] = _rebuild(fs, child, d, chunk)  # type: ignore[index]
    return d
