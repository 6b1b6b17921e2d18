"""The step service: running steps ask the build for more steps.

While a build runs, it listens on a Unix socket in a private folder (its
path in ``SERVICE_VARIABLE``, for the executors of this process and of the
worker processes it starts). An executor running a step that requests a
step (a wasm guest through the ``kiln`` imports, a native step through
``kiln-sub``) sends the request here, naming the requesting step by its
key; the service builds the action the way a build file's rule would, runs
it through the build's scheduler (``Scheduler.run_nested``: deduplicated
with the rest of the build, under its ``-j`` slots, counted in its
summary) and answers with the result, its outputs in the local store.

Only pure steps can be asked for: wasm steps, and native steps using tools
the requesting step declared itself, with no secrets, no system features
and inputs already in the store; never fetches. The socket answers its own
user only (``SO_PEERCRED``); a native step's sandbox never sees it (its
executor relays for it, naming the step itself).

Wire format: each message is a 4-byte big-endian length and UTF-8 JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.exec.specs import (
    DEFAULT_DISK_MIB,
    DEFAULT_FUEL,
    DEFAULT_MEMORY_MIB,
    NATIVE_DISK_MIB,
    NATIVE_MEMORY_MIB,
    NATIVE_PIDS,
    RECURSIVE_PROPERTY,
    NativeLimits,
    WasmLimits,
)
from kiln.exec.substeps import LENGTH, MAX_MESSAGE, SERVICE_VARIABLE, encode_message
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest, canonical_bytes
from kiln.server.client import peer_credentials

if TYPE_CHECKING:
    from kiln.engine.scheduler import Scheduler

ToolsIdentity = Callable[[list[str], str], str]


class StepService:
    """Listens for step requests while a build runs (``async with``)."""

    def __init__(self, scheduler: Scheduler, tools_identity: ToolsIdentity) -> None:
        self._scheduler = scheduler
        self._tools_identity = tools_identity
        self._folder = Path(tempfile.mkdtemp(prefix="kiln-steps-"))  # mode 0700
        self.path = self._folder / "socket"
        self._server: asyncio.AbstractServer | None = None
        self._saved: str | None = None

    async def __aenter__(self) -> StepService:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self._saved = os.environ.get(SERVICE_VARIABLE)
        os.environ[SERVICE_VARIABLE] = str(self.path)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._saved is None:
            os.environ.pop(SERVICE_VARIABLE, None)
        else:
            os.environ[SERVICE_VARIABLE] = self._saved
        if self._server is not None:
            self._server.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if peer_credentials(sock)[1] != os.getuid():
                return  # not this user: not a word
            while True:
                try:
                    request = await read_message(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                reply = await self._answer(request)
                writer.write(encode_message(reply))
                await writer.drain()
        except (ConnectionError, OSError, ValueError):
            return
        finally:
            writer.close()

    async def _answer(self, request: Any) -> dict[str, Any]:
        try:
            parent, step = self._step_of(request)
            record = self._scheduler.record_of(parent)
            target = record.target if record is not None else ""
            result = await self._scheduler.run_nested(step.requested_by(parent, target))
            await self._scheduler.ensure_outputs_local(result)
        except errors.KilnError as e:
            return {"ok": False, "error": e.message, "hint": e.hint}
        except Exception as e:  # e.g. the build stopping after a failure elsewhere
            return {"ok": False, "error": f"the build could not run it: {type(e).__name__} {e}"}
        record = self._scheduler.record_of(result.key)
        assert record is not None and record.result is not None
        return {
            "ok": True,
            "key": str(result.key),
            "cached": result.cached,
            "result": base64.b64encode(canonical_bytes(record.result)).decode(),
        }

    def _step_of(self, request: Any) -> tuple[Digest, NestedStep]:
        if not isinstance(request, dict):
            raise _bad("a request must be a JSON object")
        parent = _digest(request.get("parent"), "parent")
        step = NestedStep.parse(request, self._parent_tools(parent), self._tools_identity)
        if not self._scheduler.has_blob(step.spec.input_root):
            raise _bad(f"input root {step.spec.input_root} is not in the store")
        return parent, step

    def _parent_tools(self, parent: Digest) -> list[str]:
        record = self._scheduler.record_of(parent)
        if record is None:
            return []
        names = record.identity.get("platform", {}).get("tool-names", "")
        return [n for n in names.split(",") if n]


class NestedStep:
    """A requested step, checked, as the action a rule would make of it."""

    def __init__(self, executor: str, spec: ActionSpec, description: str) -> None:
        self.executor = executor
        self.spec = spec
        self.description = description

    @classmethod
    def parse(cls, request: dict[str, Any], parent_tools: list[str],
              tools_identity: ToolsIdentity) -> NestedStep:  # fmt: skip
        """The step a request describes (``BAD_INPUT`` errors say what is wrong)."""
        executor = request.get("executor")
        argv = _strings(request.get("argv"), "argv")
        if not argv:
            raise _bad("argv must name a program")
        env = request.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise _bad("env must map names to strings")
        outputs = _strings(request.get("outputs", []), "outputs")
        limits = request.get("limits", {})
        if not isinstance(limits, dict):
            raise _bad("limits must be an object")
        recursive = request.get("recursive", False) is True
        if executor == "wasm":
            platform = WasmLimits(
                _number(limits, "fuel", DEFAULT_FUEL, 1 << 60),
                _number(limits, "memory_mib", DEFAULT_MEMORY_MIB, 1 << 16),
                _number(limits, "disk_mib", DEFAULT_DISK_MIB, 1 << 24),
            ).platform()
        elif executor == "native":
            tools = sorted(set(_strings(request.get("tools", []), "tools")))
            foreign = sorted(set(tools) - set(parent_tools))
            if foreign:
                raise _bad(
                    f"tools {', '.join(foreign)} are not among the requesting step's own "
                    f"({', '.join(parent_tools) or 'none'}): a step may only ask for steps "
                    "using tools it declared"
                )
            native_limits = NativeLimits(
                _number(limits, "memory_mib", NATIVE_MEMORY_MIB, 1 << 20),
                _number(limits, "pids", NATIVE_PIDS, 1 << 16),
                _number(limits, "disk_mib", NATIVE_DISK_MIB, 1 << 24),
            )
            where = "a step requested by a running step"
            platform = native_limits.platform(tools, tools_identity(tools, where))
            if recursive:
                platform += ((RECURSIVE_PROPERTY, "1"),)
        else:
            raise _bad("executor must be 'wasm' or 'native' (only pure steps can be requested)")
        description = request.get("description")
        if not isinstance(description, str) or not description:
            description = " ".join(os.path.basename(a) for a in argv[:3])
        try:
            spec = ActionSpec(
                argv=tuple(argv),
                input_root=_digest(request.get("input_root"), "input_root"),
                env=dict(env),
                outputs=tuple(outputs),
                platform=tuple(sorted(platform)),
                working_directory=_working_directory(request.get("working_directory", "")),
                description=description[:200],
            )
        except ValueError as e:
            raise _bad(str(e)) from None
        return cls(executor, spec, description[:200])

    def requested_by(self, parent: Digest, target: str) -> Any:
        """The scheduler's request for this step, asked for by ``parent``."""
        from kiln.engine.scheduler import StepRequest  # (cycle: the scheduler names this module)

        spec = self.spec
        identity = {
            "argv": list(spec.argv),
            "env": dict(spec.env),
            "inputs": {"(its input tree)": str(spec.input_root)},
            "outputs": list(spec.outputs),
            "platform": dict(spec.platform),
            "requested_by": str(parent),
        }
        return StepRequest(target, self.description, spec, identity, self.executor, [], parent)


def _bad(message: str) -> errors.KilnError:
    return errors.KilnError(f"refused step request: {message}", exit_code=errors.ExitCode.BAD_INPUT)


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"{name} must be a list of strings")
    return value


def _number(limits: dict[str, Any], name: str, default: int, most: int) -> int:
    value = limits.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
        raise _bad(f"limit {name} must be a positive integer up to {most}")
    return value


def _digest(value: Any, name: str) -> Digest:
    try:
        return Digest.parse(value) if isinstance(value, str) else Digest.parse("")
    except errors.KilnError:
        raise _bad(f"{name} must be a digest HASH/SIZE") from None


def _working_directory(value: Any) -> str:
    if not isinstance(value, str) or value.startswith("/") or ".." in value.split("/"):
        raise _bad("working_directory must be a relative path inside the step's tree")
    return value.strip("/")


async def read_message(reader: asyncio.StreamReader) -> Any:
    (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if size > MAX_MESSAGE:
        raise ValueError("message too large")
    return json.loads(await reader.readexactly(size))


