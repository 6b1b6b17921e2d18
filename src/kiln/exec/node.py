"""A second, independent engine for wasm actions: Node.js (V8).

``node_host.mjs`` is a port of Kiln's virtual WASI (``kiln.exec.wasi``) to
JavaScript; this executor hands it the action (argv, environment, seed,
limits, the input tree's listings and the paths of its blobs in the CAS),
runs it under ``node``, and turns what it reports into an ``ActionResult``
exactly as the Wasmtime executor would. Equal results from the two are the
evidence that an action's outputs depend on the action and not on the engine
or host.

The ``kiln`` import module (memoized calls, ``kiln.exec.wasi.kiln_imports``)
is there too, without memoization: a call runs when it is first waited for.
A module a guest calls by digest need not be in the input tree, so while
node runs, this executor answers its requests for blobs over a pair of pipes
(``_BlobServer``): the path of the blob's file in the CAS, or that it is
absent, which fails the run as it does under Wasmtime.

What this engine does not do: fuel, memory and disk limits (V8 has no fuel
metering; its guest files are held in memory), NaN canonicalization. It is
for checking, not for building: compare only runs that finished within
their limits under Wasmtime. Nor does it run every proposal the Wasmtime
contract enables (``kiln.exec.wasm.PROPOSALS``): which ones depends on the
Node.js version (exception handling with ``try_table``, for one, needs a
recent V8). A module it cannot compile is refused, naming the proposals the
module uses, never compared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.errors import ExitCode, KilnError
from kiln.exec.base import ExecContext, TransientError, record_timing, step_timeout
from kiln.exec.output_trees import missing_outputs
from kiln.exec.specs import WasmLimits
from kiln.exec.wasi.vfs import Dir, File, FileSystem, Node, Symlink, WasiError
from kiln.exec.wasm_calls import CALLS_VERSION
from kiln.exec.wasm_files import collect_outputs, directory_entries
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2

HOST_SCRIPT = Path(__file__).with_name("wasi") / "node_host.mjs"
EXIT_UNRUNNABLE = 3  # node_host.mjs: the request itself cannot be run
EXIT_UNSUPPORTED = 4  # node_host.mjs: this Node.js does not compile the module
EXIT_NEEDS_BUILD = 5  # node_host.mjs: the step requests steps, which only its build answers
# Sections and memory flags that show a module uses a proposal (a cheap
# look at its structure, for the refusal's message; not a validation).
TAG_SECTION, IMPORT_SECTION, MEMORY_SECTION = 13, 2, 5
MEMORY_SHARED, MEMORY_64 = 0x02, 0x04


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
        limits = WasmLimits.from_platform(props)  # refuses another contract version
        input_root = Digest.from_proto(action.input_root_digest)
        request = {
            "abi": props["kiln-abi"],
            "calls": CALLS_VERSION,
            "argv": list(command.arguments),
            "env": [[v.name, v.value] for v in command.environment_variables],
            "seed": key.hash,
            "limits": {  # in every call's key (kiln.exec.wasm_calls.call_key)
                "fuel": str(limits.fuel),
                "memory-mib": str(limits.memory_mib),
                "disk-mib": str(limits.disk_mib),
            },
            "outputs": list(command.output_paths),
            "root": str(input_root),
            **self._listings(input_root),
        }
        started = time.time_ns()
        with tempfile.TemporaryDirectory(prefix="kiln-node-") as tmp:
            request_path = Path(tmp) / "request.json"
            request_path.write_text(json.dumps(request))
            try:
                self._run_node(request_path, Path(tmp), step_timeout(action, self._timeout))
            except _Unsupported as e:
                called = Path(tmp) / "unsupported.json"  # a called module, not the action's
                module = json.loads(called.read_text())["module"] if called.exists() else None
                raise self._unsupported(input_root, request["argv"], str(e), module) from None
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
            stderr = chunk(report["stderr"])
            if missing := missing_outputs(result, list(command.output_paths)):
                stderr += f"kiln: {missing}\n".encode()  # as the Wasmtime executor says it
            result.stdout_digest.CopyFrom(batch.add_bytes(chunk(report["stdout"])).to_proto())
            result.stderr_digest.CopyFrom(batch.add_bytes(stderr).to_proto())
        record_timing(result, "kiln-wasm-node", started)
        return result

    def _unsupported(
        self, root: Digest, argv: list[str], message: str, called: str | None = None
    ) -> KilnError:
        """The refusal of a module this Node.js does not compile (the
        action's, or the ``called`` one), naming the proposals it visibly uses."""
        if called is not None:  # (a module the guest wrote is not in the store: None)
            data = self._cas.get_bytes(Digest.parse(called))
        else:
            fs = FileSystem(root, lambda d: directory_entries(self._cas, d), self._cas.get_bytes)
            try:
                _, _, node = fs.resolve(fs.root, argv[0] if argv else "", follow=True)
                blob = node.blob if isinstance(node, File) else None
                data = self._cas.get_bytes(blob) if blob else None
            except WasiError:
                data = None
        used = used_proposals(data or b"")
        return KilnError(
            f"the node engine cannot run this action: {message or 'node cannot compile it'}"
            + (f" (the module uses {', '.join(used)})" if used else ""),
            hint="Node.js does not support every proposal Kiln's Wasmtime contract enables "
            "(docs/wasm.md); check with a newer Node.js, or check other steps",
            exit_code=ExitCode.BAD_INPUT,
        )

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

    def _run_node(self, request: Path, result_dir: Path, timeout: float | None) -> None:
        blobs = _BlobServer(self._cas)
        try:
            proc = subprocess.Popen(
                [self._node, str(HOST_SCRIPT), str(request), str(result_dir), *blobs.child_fds()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                pass_fds=blobs.pass_fds,
            )
        except BaseException:
            blobs.close()
            raise
        blobs.start()  # (the child holds its ends now: the server sees EOF when it exits)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except BaseException as e:
            proc.kill()
            proc.communicate()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            raise TransientError(
                f"wall-clock timeout after {timeout} s under node (not cached)",
                hint="node does not meter fuel: a guest that ran out of fuel under "
                "wasmtime runs until this timeout",
            ) from None
        finally:
            blobs.join()
        lines = stderr.strip().splitlines()
        said = lines[-1].removeprefix("kiln node engine: ") if lines else ""
        if proc.returncode == EXIT_UNSUPPORTED:
            raise _Unsupported(said)
        if proc.returncode == EXIT_NEEDS_BUILD:
            raise KilnError(
                f"the node engine cannot run this action: {said}",
                hint="its steps are requested from the build that runs it; compare "
                "the steps it requested instead (`kiln show` lists them)",
                exit_code=ExitCode.BAD_INPUT,
            )
        if proc.returncode != 0:
            raise TransientError(
                f"node engine failed (exit {proc.returncode}): "
                + (lines[-1] if lines else "no message"),
                hint=None
                if proc.returncode == EXIT_UNRUNNABLE
                else f"check that {self._node} is Node.js 18 or later",
            )


class _BlobServer:
    """Answers node_host.mjs's requests for blobs by digest (a module a
    guest calls as ``digest:HASH/SIZE``): it writes ``DIGEST\n`` to one
    pipe and reads ``file PATH`` (the blob's file in the CAS) or ``absent``
    from the other, one line each, while this thread serves them."""

    def __init__(self, cas: Any) -> None:
        self._cas = cas
        self._asks_r, self._asks_w = os.pipe()  # node -> kiln
        self._answers_r, self._answers_w = os.pipe()  # kiln -> node
        self.pass_fds = (self._asks_w, self._answers_r)
        self._thread: threading.Thread | None = None

    def child_fds(self) -> list[str]:
        """node_host.mjs's ASK_FD and ANSWER_FD arguments (``pass_fds``
        keeps the numbers)."""
        return [str(self._asks_w), str(self._answers_r)]

    def start(self) -> None:
        for fd in self.pass_fds:
            os.close(fd)
        self._thread = threading.Thread(target=self._serve, name="kiln-node-blobs", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        """Before ``start`` (node never ran): close every end."""
        for fd in (self._asks_r, self._asks_w, self._answers_r, self._answers_w):
            os.close(fd)

    def _serve(self) -> None:
        with open(self._asks_r, "rb") as asks, open(self._answers_w, "wb", buffering=0) as out:
            for line in asks:  # until node exits (EOF)
                try:
                    out.write(self.answer(line.decode(errors="replace").strip()).encode())
                except OSError:  # node is gone
                    return

    def answer(self, text: str) -> str:
        try:
            digest = Digest.parse(text)
        except KilnError:
            return f"error: not a digest: {text!r}\n"
        try:
            return f"file {self._cas.blob_file(digest)}\n"
        except KilnError:
            return "absent\n"
        except Exception as e:  # (node fails the run with it)
            return f"error: {type(e).__name__}: {e}\n"


class _Unsupported(Exception):
    """node_host.mjs could not compile the module (its message)."""


def used_proposals(module: bytes) -> list[str]:
    """The proposals beyond WebAssembly 2.0 a module visibly uses (by its
    sections: a tag section, its memories' flags and number)."""
    used: set[str] = set()
    memories = 0
    offset = 8  # magic and version
    try:
        while offset < len(module):
            section = module[offset]
            size, offset = _leb(module, offset + 1)
            body = module[offset : offset + size]
            offset += size
            if section == TAG_SECTION:
                used.add("exceptions")
            elif section == MEMORY_SECTION:
                count, at = _leb(body, 0)
                memories += count
                for _ in range(count):
                    flags = body[at]
                    used.update(_memory_flags(flags))
                    _, at = _leb(body, at + 1)
                    if flags & 0x01:
                        _, at = _leb(body, at)
            elif section == IMPORT_SECTION:
                memories += _imported_memories(body, used)
    except (IndexError, ValueError):
        pass  # a module V8 could not read anyway: say what was seen
    if memories > 1:
        used.add("multi-memory")
    return sorted(used)


def _memory_flags(flags: int) -> list[str]:
    return [name for bit, name in ((MEMORY_SHARED, "threads"), (MEMORY_64, "memory64"))
            if flags & bit]  # fmt: skip


def _imported_memories(body: bytes, used: set[str]) -> int:
    """How many memories an import section imports (their flags into ``used``)."""
    count, at = _leb(body, 0)
    memories = 0
    for _ in range(count):
        for _name in range(2):  # module and field names
            length, at = _leb(body, at)
            at += length
        kind = body[at]
        at += 1
        if kind == 0x00:  # function: a type index
            _, at = _leb(body, at)
        elif kind == 0x01:  # table: element type, limits
            at += 1
            flags = body[at]
            _, at = _leb(body, at + 1)
            if flags & 0x01:
                _, at = _leb(body, at)
        elif kind == 0x02:  # memory: limits
            memories += 1
            flags = body[at]
            used.update(_memory_flags(flags))
            _, at = _leb(body, at + 1)
            if flags & 0x01:
                _, at = _leb(body, at)
        elif kind == 0x03:  # global: value type, mutability
            at += 2
        elif kind == 0x04:  # tag: attribute, type index
            used.add("exceptions")
            _, at = _leb(body, at + 1)
        else:
            raise ValueError(f"unknown import kind {kind}")
    return memories


def _leb(data: bytes, at: int) -> tuple[int, int]:
    """An unsigned LEB128 number at ``at``: (value, the offset after it)."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


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
