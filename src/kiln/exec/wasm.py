"""The ``wasm`` executor: WASI preview 1 command modules on Wasmtime.

An action's command is ``[module path, args...]``; the module is a file in
the action's input root. Its platform properties carry the determinism
contract's version and the resource limits, so all of them are in the key
and nothing about the host is:

    kiln-abi     kiln-wasi-p1-v2 (see ``kiln.exec.wasi.host``)
    isa          wasm32
    disk-mib     what the guest's files (outputs and /tmp) may hold at once,
                 in MiB (default 16384; see ``kiln.exec.wasi.disk``)
    fuel         instructions the guest may execute (default 10**10)
    memory-mib   linear memory limit in MiB (default 1024)

Running out of fuel, memory or disk is a deterministic failed result with a
clear message in stderr. A wall-clock timeout (the step's ``timeout=``,
carried outside its key in ``Action.timeout``, else the config's
``step-timeout``) exists for safety only: Wasmtime's epoch interruption
stops the guest, which costs no fuel and changes nothing in a run that
finishes; it is a ``StepTimeout``, never cached nor retried. Large files a guest writes are kept in
scratch files under the store's staging folder, not in Kiln's memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import math
import os
import platform
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import wasmtime

from kiln.config import load_config
from kiln.exec import interrupt
from kiln.exec.base import (
    ExecContext,
    ExecHooks,
    StepTimeout,
    TransientError,
    record_timing,
    step_timeout,
)
from kiln.exec.kinds import WASM_ABI
from kiln.exec.output_trees import missing_outputs
from kiln.exec.specs import WasmLimits
from kiln.exec.wasi.disk import Disk, DiskLimit
from kiln.exec.wasi.host import IMPORT_MODULES, ProcExit, WasiHost, make_linker
from kiln.exec.wasi.kiln_imports import KilnImports, OutOfFuel, OutputTooLarge
from kiln.exec.wasi.step_requests import StepRequests
from kiln.exec.wasi.vfs import File, FileSystem, WasiError
from kiln.exec.wasm_calls import (
    OUTPUT_CAP,
    TRAPPED,
    CallExecutor,
    CallOutcome,
    StepCalls,
    attach_calls,
)
from kiln.exec.wasm_files import collect_outputs, directory_entries
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2

EXIT_TRAP = TRAPPED  # the exit code recorded for a guest that trapped (or a call)
WASM_PAGE = 65536
LARGE_MODULE = 1 << 20  # compiling one this big shows progress (it can take seconds)


# The WebAssembly proposals guests may use, beyond WebAssembly 2.0 (which
# includes sign extension, non-trapping float-to-int, multi-value, bulk
# memory, reference types and SIMD), each set explicitly rather than left to
# the Wasmtime version's defaults. They are part of the contract (WASM_ABI):
# a module using one that is off does not compile, the same failed result on
# every machine, so changing this table changes the contract's version.
# Extended constant expressions are always on (Wasmtime has no setting).
PROPOSALS: dict[str, bool] = {
    "bulk-memory": True,
    "multi-value": True,
    "reference-types": True,
    "simd": True,
    "relaxed-simd": True,  # in its deterministic flavour (engine_config)
    "tail-call": True,
    "exceptions": True,  # exnref (try_table): setjmp/longjmp and C++ exceptions
    "function-references": True,
    "gc": True,
    "memory64": True,
    "multi-memory": True,
    "wide-arithmetic": True,
    "threads": False,  # shared memory and atomics wait: not deterministic
    "custom-page-sizes": False,
    "stack-switching": False,
    "component-model": False,  # only core modules (WASI preview 1 commands) run
}


def engine_config() -> Any:
    """The one Wasmtime configuration Kiln runs guests with."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True  # wall-clock timeout, safety only
    config.cranelift_nan_canonicalization = True
    config.gc_support = PROPOSALS["gc"]
    for name, enabled in PROPOSALS.items():
        setattr(config, "wasm_" + name.replace("-", "_"), enabled)
    config.wasm_relaxed_simd_deterministic = True
    return config


def config_fingerprint() -> str:
    """What of ``engine_config()`` a compiled module depends on: cached
    compiled modules made under another configuration are not reused."""
    proposals = ",".join(f"{n}={'on' if on else 'off'}" for n, on in sorted(PROPOSALS.items()))
    return f"fuel,epoch,nan-canon,relaxed-simd-deterministic;{proposals}"


def contract_summary() -> str:
    """The wasm contract in words: what every host runs guests under."""
    on = ", ".join(n for n, enabled in PROPOSALS.items() if enabled)
    off = ", ".join(n for n, enabled in PROPOSALS.items() if not enabled)
    return (
        f"{WASM_ABI}: WASI preview 1 commands; WebAssembly 2.0 with {on}; never {off}; "
        "NaN results canonical; relaxed SIMD deterministic; fuel, memory and disk "
        "limits in every key"
    )


EPOCH_TICK_S = 0.05  # the shared engine's clock for wall-clock timeouts
NO_DEADLINE = 1 << 62


@functools.cache
def _wasmtime_version() -> str:
    return version("wasmtime")


@functools.cache
def host_cpu() -> str:
    """This CPU as compiled machine code depends on it: the architecture and
    a digest of the feature flags the kernel reports (Cranelift uses the
    host's features, e.g. AVX2 or LSE atomics). A store shared by machines
    of different CPUs keeps one compiled module per CPU."""
    features = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):  # x86 and ARM spellings
                features = " ".join(sorted(set(value.split())))
                break
    return f"{platform.machine()}/{hashlib.sha256(features.encode()).hexdigest()[:16]}"


class SharedEngine:
    """The process's one Wasmtime engine, the modules loaded for it and the
    linker with Kiln's WASI imports. Every executor (one per thread) shares
    them, so a module is loaded once per process; a process forked after
    loading one inherits it. An import forwards to the host of the guest
    running on the calling thread (``running``)."""

    def __init__(self) -> None:
        self.engine = wasmtime.Engine(engine_config())
        self.modules: dict[Digest, Any] = {}
        self.preloaded: dict[str, Any] = {}  # compiled-module file -> module (the server)
        self.running = threading.local()  # .host: the WasiHost of this thread's guest
        self._linker = make_linker(self.engine, self._current_host)
        self._trap_linkers: dict[Digest, Any] = {}
        self.loading = threading.Lock()  # one load (or compile) at a time
        self._ticker_lock = threading.Lock()
        self._ticking = False
        self.stores: set[Any] = set()  # the guests running now, for ``interrupt``
        interrupt.on_stop(self.interrupt)

    def interrupt(self) -> None:
        """End every running guest at its next function call (Ctrl-C)."""
        # From another thread (a signal handler): a deadline of "now" is a
        # plain write Wasmtime reads at each function entry; a loop that calls
        # no function runs on until its own deadline.
        for store in list(self.stores):
            store.set_epoch_deadline(0)
        self.engine.increment_epoch()

    def _current_host(self) -> WasiHost:
        return self.running.host

    def linker_for(self, digest: Digest, module: Any) -> Any:
        """The WASI linker, or for a module importing something besides
        WASI preview 1, one where those imports trap when called (made once
        per module: its host functions live as long as the process)."""
        if all(i.module in IMPORT_MODULES for i in module.imports):
            return self._linker
        linker = self._trap_linkers.get(digest)
        if linker is None:
            linker = make_linker(self.engine, self._current_host)
            linker.define_unknown_imports_as_traps(module)
            self._trap_linkers[digest] = linker
        return linker

    def deadline_ticks(self, timeout: float | None) -> int:
        """The epoch deadline for a run with ``timeout`` seconds (None: none).
        The epoch advances every ``EPOCH_TICK_S`` once a run has a timeout."""
        if timeout is None:
            return NO_DEADLINE
        with self._ticker_lock:
            if not self._ticking:
                threading.Thread(target=self._tick, name="kiln-wasm-epoch", daemon=True).start()
                self._ticking = True
        return max(1, math.ceil(timeout / EPOCH_TICK_S))

    def _tick(self) -> None:
        while True:
            time.sleep(EPOCH_TICK_S)
            self.engine.increment_epoch()

    def preload(self, cache_dir: Path, limit: int = 16) -> list[str]:
        """Load the ``limit`` newest compiled modules of a store's cache, so
        processes forked from this one start with them loaded (what the
        resident server does). Returns the files loaded now."""
        _wasmtime_version()  # (cached: children ask both to find a module's file)
        host_cpu()
        try:
            files = sorted(cache_dir.glob("*.cwasm"), key=lambda p: -p.stat().st_mtime)
        except OSError:
            return []
        loaded = []
        for path in files[:limit]:
            if path.name not in self.preloaded:
                try:
                    self.preloaded[path.name] = wasmtime.Module.deserialize_file(
                        self.engine, str(path)
                    )
                except (OSError, wasmtime.WasmtimeError):
                    continue  # being replaced, or made by another engine: load it later
                loaded.append(path.name)
        return loaded

    def _after_fork(self) -> None:
        self._ticking = False  # threads do not survive fork
        self.stores = set()
        self._ticker_lock = threading.Lock()
        self.loading = threading.Lock()


def modules_folder(state: Path) -> Path:
    """Where compiled modules are cached, in an executor state folder."""
    return state / "wasm-modules"


def preload_modules(state: Path) -> list[str]:
    """Load the newest compiled modules of a state folder into this
    process's engine (what the resident server does before it forks)."""
    return shared_engine().preload(modules_folder(state))


_shared: SharedEngine | None = None
_shared_lock = threading.Lock()


def shared_engine() -> SharedEngine:
    """This process's ``SharedEngine`` (made on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SharedEngine()
        return _shared


def _reset_after_fork() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()
    if _shared is not None:
        _shared._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


class WasmExecutor:
    """Runs wasm actions in-process. Compiled modules are cached on disk
    under ``$KILN_HOME/wasm-modules`` by module digest, engine configuration,
    Wasmtime version and host CPU (``host_cpu``), and in memory by the
    process's ``SharedEngine``."""

    name = "wasm"

    def __init__(
        self, ctx: ExecContext, hooks: ExecHooks | None = None, timeout: float | None = None
    ) -> None:
        """``hooks.on_slow(message)`` is entered while a large module compiles.
        ``timeout``: the wall-clock limit of steps that carry none of their
        own (default: the config's ``step-timeout``)."""
        self._cas = ctx.cas
        self._actions = ctx.actions
        self._scratch = ctx.scratch
        self._timeout = timeout if timeout is not None else load_config().step_timeout
        self._progress = hooks.on_slow if hooks is not None else None
        self._shared = shared_engine()
        self._engine = self._shared.engine
        self._cache_dir = modules_folder(ctx.state)
        self._cache_dir.mkdir(exist_ok=True)
        self.compiled = 0  # modules compiled (not loaded from the cache) by this executor

    # ---------------------------------------------------------- modules

    def _cache_path(self, module: Digest) -> Path:
        engine = f"wasmtime {_wasmtime_version()}"
        parts = (str(module), config_fingerprint(), engine, host_cpu())
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        return self._cache_dir / f"{key}.cwasm"

    def module(self, digest: Digest) -> Any:
        """The compiled module for a blob: from memory, the disk cache, or compiled now."""

        modules = self._shared.modules
        cached = modules.get(digest)
        if cached is not None:
            return cached
        path = self._cache_path(digest)
        # One compile per module however many executors (threads, processes)
        # want it at once: the others wait for it and load the result.
        with self._shared.loading, open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            module = modules.get(digest) or self._load_or_compile(digest, path)
        modules[digest] = module
        return module

    def _load_or_compile(self, digest: Digest, path: Path) -> Any:
        preloaded = self._shared.preloaded.get(path.name)  # the name is a hash of the key
        if preloaded is not None:
            return preloaded
        module = None
        if path.exists():
            try:
                module = wasmtime.Module.deserialize_file(self._engine, str(path))
            except wasmtime.WasmtimeError:
                module = None  # made for another CPU or engine build: compile it again
        if module is None:
            data = self._cas.get_bytes(digest)
            if data is None:
                raise TransientError(f"module blob {digest} is not in the store")
            message = (
                f"compiling a {digest.size / (1 << 20):.1f} MiB WebAssembly module for this CPU"
            )
            show = self._progress is not None and digest.size >= LARGE_MODULE
            with self._progress(message) if show else contextlib.nullcontext():  # type: ignore[misc]
                try:
                    module = wasmtime.Module(self._engine, data)
                except wasmtime.WasmtimeError as e:
                    raise InvalidModule(f"module {digest} is not valid WebAssembly: {e}") from None
            staged = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            staged.write_bytes(module.serialize())
            os.replace(staged, path)
            self.compiled += 1
        return module

    # ---------------------------------------------------------- execution

    def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> re_pb2.ActionResult:
        props = {p.name: p.value for p in action.platform.properties}
        limits = WasmLimits.from_platform(props)
        disk = Disk(limits.disk_mib << 20, self._scratch())
        try:
            return self._execute(key, action, command, limits, disk)
        finally:
            disk.close()

    def _execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command, limits: WasmLimits,
        disk: Disk,
    ) -> re_pb2.ActionResult:  # fmt: skip
        input_root = Digest.from_proto(action.input_root_digest)
        fs = FileSystem(input_root, self._load_dir, self._load_blob, disk)
        argv = list(command.arguments)
        module_digest = self._find_module(fs, argv[0] if argv else "")
        for path in command.output_paths:
            fs.allow_file(path)
        fs.allow_dir("tmp")
        env = [(v.name, v.value) for v in command.environment_variables]
        host = WasiHost(fs, argv, env, seed=bytes.fromhex(key.hash))
        timeout = step_timeout(action, self._timeout)
        calls = StepCalls(self._call_executor(timeout), self._cas, self._actions, limits)
        host.kiln = KilnImports(host, calls, steps=StepRequests(fs, self._cas, key))

        started = time.time_ns()
        try:
            module = self.module(module_digest)
            exit_code, note, _ = self._run(module_digest, module, host, limits, timeout)
        except InvalidModule as e:  # as deterministic as a trap: the same every run
            exit_code, note = EXIT_TRAP, " ".join(str(e).split())
        finally:
            host.kiln.cancel_open()
            calls.touch_hits()
        if note:
            host.stderr.write(f"kiln: {note}\n".encode())
        result = re_pb2.ActionResult(exit_code=exit_code)
        # Not synced: a result whose blobs a power loss cut short is a cache
        # miss (lookups check sizes); a build syncs once before its GC roots.
        with self._cas.batch(durable=False) as batch:
            collect_outputs(fs, batch, list(command.output_paths), result)
            if missing := missing_outputs(result, list(command.output_paths)):
                host.stderr.write(f"kiln: {missing}\n".encode())
            result.stdout_digest.CopyFrom(batch.add_bytes(bytes(host.stdout.data)).to_proto())
            result.stderr_digest.CopyFrom(batch.add_bytes(bytes(host.stderr.data)).to_proto())
        record_timing(result, "kiln-wasm", started)
        if calls.log:
            attach_calls(result, calls.summary())
        return result

    def _call_executor(self, timeout: float | None) -> CallExecutor:
        def execute(
            module: Digest, export: str, data: bytes, key: Digest, calls: StepCalls
        ) -> CallOutcome:
            return self._execute_call(module, export, data, key, calls, timeout)

        return execute

    def _execute_call(
        self, module_digest: Digest, export: str, data: bytes, key: Digest, calls: StepCalls,
        timeout: float | None,
    ) -> CallOutcome:  # fmt: skip
        """Run one memoized call: ``export`` of the module on ``data``, in a
        fresh instance with an empty file system (``/tmp`` only)."""
        limits = calls.limits
        disk = Disk(limits.disk_mib << 20, self._scratch())
        try:
            fs = FileSystem(None, self._load_dir, self._load_blob, disk)
            fs.allow_dir("tmp")
            host = WasiHost(fs, [export], [], seed=bytes.fromhex(key.hash))
            host.kiln = KilnImports(host, calls.nested(), call_input=data)
            try:
                module = self.module(module_digest)
                status, note, fuel = self._run(
                    module_digest, module, host, limits, timeout, entry=export
                )
            except InvalidModule as e:
                status, note, fuel = EXIT_TRAP, " ".join(str(e).split()), 0
            finally:
                host.kiln.cancel_open()
            if note:
                host.stderr.write(f"kiln: {note}\n".encode())
            output = bytes(host.kiln.output) if status == 0 else b""
            return CallOutcome(
                status, output, fuel, bytes(host.stdout.data), bytes(host.stderr.data)
            )
        finally:
            disk.close()

    def _run(
        self, digest: Digest, module: Any, host: WasiHost, limits: WasmLimits,
        timeout: float | None, entry: str | None = None,
    ) -> tuple[int, str, int]:  # fmt: skip
        """Instantiate and run ``_start`` (a command) or ``entry`` (an export
        called on its own, after ``_initialize`` if the module has one):
        (exit code, note for stderr, fuel consumed)."""
        store = wasmtime.Store(self._engine)
        store.set_fuel(limits.fuel)
        store.set_limits(memory_size=limits.memory_mib << 20)
        store.set_epoch_deadline(self._shared.deadline_ticks(timeout))
        running = self._shared.running
        outer = getattr(running, "host", None)  # a call run on its caller's thread
        running.host = host
        host.store = store
        if interrupt.stopped():
            raise interrupt.Interrupted()
        self._shared.stores.add(store)
        try:
            exit_code, note = self._instantiate_and_run(store, module, digest, host, limits,
                                                        timeout, entry)  # fmt: skip
            return exit_code, note, limits.fuel - store.get_fuel()
        finally:
            self._shared.stores.discard(store)
            running.host = outer

    def _instantiate_and_run(
        self, store: Any, module: Any, digest: Digest, host: WasiHost, limits: WasmLimits,
        timeout: float | None, entry: str | None,
    ) -> tuple[int, str]:  # fmt: skip
        instance = None
        try:
            try:
                instance = self._shared.linker_for(digest, module).instantiate(store, module)
            except wasmtime.Trap:
                raise
            except wasmtime.WasmtimeError as e:
                if "exceeds memory limits" in str(e):
                    return EXIT_TRAP, f"memory limit of {limits.memory_mib} MiB reached at start"
                return EXIT_TRAP, f"cannot instantiate the module: {str(e).strip()}"
            exports = instance.exports(store)
            memory = exports.get("memory")
            if isinstance(memory, wasmtime.Memory):
                host.bind(store, memory)
            functions, problem = _entry_functions(exports, store, entry)
            if problem:
                return EXIT_TRAP, problem
            for function in functions:
                function(store)
            return 0, ""
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            if host.failure is not None:  # a host function raised (proc_exit does)
                return self._host_failure(host.failure, limits)
            if isinstance(e, wasmtime.Trap):
                memory = instance.exports(store).get("memory") if instance is not None else None
                return EXIT_TRAP, self._explain(e, store, memory, limits, timeout)
            return EXIT_TRAP, f"trap: {_cause(str(e))}"  # e.g. an import kiln does not offer
        except WasiError as e:  # raised outside a host call's wrapper
            return EXIT_TRAP, f"WASI error {e.errno}"

    @staticmethod
    def _host_failure(error: BaseException, limits: WasmLimits) -> tuple[int, str]:
        if isinstance(error, ProcExit):
            return error.code, ""
        if isinstance(error, DiskLimit):
            return EXIT_TRAP, disk_limit_note(error)
        if isinstance(error, OutOfFuel):  # a call consumed more than was left
            return EXIT_TRAP, out_of_fuel_note(limits)
        if isinstance(error, OutputTooLarge):
            return EXIT_TRAP, f"a call's output exceeds {OUTPUT_CAP >> 20} MiB"
        raise error  # a bug in the host, not the guest's doing

    def _explain(
        self, trap: Any, store: Any, memory: Any, limits: WasmLimits, timeout: float | None
    ) -> str:
        code = trap.trap_code
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return out_of_fuel_note(limits)
        if code == wasmtime.TrapCode.INTERRUPT and interrupt.stopped():
            raise interrupt.Interrupted()
        if code == wasmtime.TrapCode.INTERRUPT:
            raise StepTimeout(timeout or 0, "wasm")
        cause = _cause(str(trap))
        # Wasmtime does not report a refused memory.grow, and the guest sees
        # only a failed allocation; a trap with memory this close to the
        # limit is reported as the limit (the same verdict on every run).
        limit = limits.memory_mib << 20
        used = memory.size(store) * WASM_PAGE if memory is not None else 0
        if used > limit - max(limit // 8, 2 << 20):
            return f"memory limit of {limits.memory_mib} MiB reached ({cause})"
        return f"trap: {cause}"

    # ---------------------------------------------------------- files

    def _load_dir(self, digest: Digest) -> list[tuple[str, str, object]]:
        return directory_entries(self._cas, digest)

    def _load_blob(self, digest: Digest) -> bytes:
        data = self._cas.get_bytes(digest)
        if data is None:
            raise TransientError(f"input blob {digest} is missing from the store")
        return data

    def _find_module(self, fs: FileSystem, path: str) -> Digest:
        try:
            _, _, node = fs.resolve(fs.root, path, follow=True)
        except WasiError:
            node = None
        if not isinstance(node, File) or node.blob is None:
            raise module_not_found(path)
        return node.blob


def _cause(message: str) -> str:
    """The line of a Wasmtime error that says what happened (not the backtrace)."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return next((ln for ln in lines if "wasm trap:" in ln), lines[-1] if lines else "")


def out_of_fuel_note(limits: WasmLimits) -> str:
    """What stderr says when a guest ran out of fuel (by itself or in a call)."""
    return f"out of fuel after {limits.fuel} units"


def _entry_functions(exports: Any, store: Any, entry: str | None) -> tuple[list[Any], str]:
    """The functions to run, in order, or a note why the module cannot run."""
    if entry is None:
        start = exports.get("_start")
        if start is None:
            return [], "module has no _start function (not a WASI command)"
        return [start], ""
    function = exports.get(entry)
    if not isinstance(function, wasmtime.Func):
        return [], f"module exports no function {entry!r} to call"
    if function.type(store).params or function.type(store).results:
        return [], f"the called function {entry!r} must take no parameters and return nothing"
    initialize = exports.get("_initialize")  # a reactor's constructors
    return ([initialize] if isinstance(initialize, wasmtime.Func) else []) + [function], ""


def disk_limit_note(error: DiskLimit) -> str:
    """What stderr says when a guest's files outgrew its disk limit."""
    return (
        f"disk limit of {error.limit >> 20} MiB reached: the guest's files (outputs and /tmp) "
        f"would hold {error.wanted} bytes; raise it with disk_mib= (wasm(...)) or --disk "
        "(kiln wasm run)"
    )


class InvalidModule(Exception):
    """The module does not compile under Kiln's engine configuration."""


def module_not_found(path: str) -> TransientError:
    return TransientError(
        f"the action's module {path!r} is not a file in its input root",
        hint="put the .wasm file into the input tree and name it as argv[0]",
    )
