"""One build: evaluate the requested targets, run their steps, put each
target's value into the project's output folder and keep it from GC.

Output folder: ``<project>/kiln-out/<target>/``, read-only (hard links to
the store's read-only blobs, folders without write permission), named by
the GC root ``build:<project>:<target>``. A target's value may be a
``File`` or ``Tree`` (placed at its path), a ``StepResult`` (all its
outputs), ``None`` (nothing), or a list or dict of those (a dict places
each value at its key).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.config import Config, check_secret, load_config
from kiln.engine import kiln_out, rules
from kiln.engine.inputs import input_root, input_tree
from kiln.engine.loader import Project, user_code_error
from kiln.engine.scheduler import BuildStopped, Scheduler, StepRecord, StepRequest, StepStatus
from kiln.engine.sources import Sources
from kiln.engine.values import File, StepResult, Tree, Value
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

if TYPE_CHECKING:
    from kiln.exec.base import Executor
    from kiln.store.local import Store


@dataclass
class TargetOutcome:
    name: str
    output: str | None = None  # folder holding its value
    digest: str | None = None  # the value as a tree
    error: errors.KilnError | None = None


@dataclass
class BuildReport:
    targets: list[TargetOutcome]
    steps: list[StepRecord]
    seconds: float
    build_id: int | None = None
    files_hashed: int = 0
    errors: list[errors.KilnError] = field(default_factory=list)
    stamped: bool = False  # a later no-op build can be answered from its stamp

    def count(self, status: StepStatus) -> int:
        return sum(1 for s in self.steps if s.status is status)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> dict[str, Any]:
        """The machine-readable report of ``kiln build --json``."""
        return {
            "ok": self.ok,
            "executed": self.count(StepStatus.EXECUTED),
            "cached": self.count(StepStatus.CACHED),
            "failed": self.count(StepStatus.FAILED),
            "skipped": self.count(StepStatus.SKIPPED),
            "executed_keys": [str(s.key) for s in self.steps if s.status is StepStatus.EXECUTED],
            "targets": {
                t.name: {
                    "output": t.output,
                    "digest": t.digest,
                    "error": t.error and t.error.render(),
                }
                for t in self.targets
            },
            "files_hashed": self.files_hashed,
            "seconds": round(self.seconds, 3),
            "build_id": self.build_id,
            "unchanged": False,  # True: answered from the build stamp, nothing evaluated
        }


class BuildContext:
    """What rules reach through ``kiln.build``: sources, the scheduler, and
    the targets evaluated so far (each once per build)."""

    def __init__(
        self, store: Store, project: Project, scheduler: Scheduler, allow_unpinned: bool = False
    ) -> None:
        self.store = store
        self.project = project
        self.scheduler = scheduler
        self.allow_unpinned = allow_unpinned  # fetches without a digest may run (and fail)
        self.sources = Sources(store, project.root)
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._waits: dict[str, set[str]] = {}  # target -> targets it awaited
        self._tools: dict[tuple[str, ...], str] = {}
        self._dpkg: Any = None
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        """This machine's executor settings, read once per build."""
        if self._config is None:
            self._config = load_config()
        return self._config

    def features(
        self, requires: Iterable[str], secrets: Iterable[str], where: str
    ) -> tuple[tuple[str, str], ...]:
        """Platform properties naming the features and secrets a step needs,
        after checking that this machine offers them."""
        wanted, named = sorted(set(requires)), sorted(set(secrets))
        config = self.config
        for feature in wanted:
            if feature not in config.features:
                offered = ", ".join(sorted(config.features)) or "none"
                raise errors.KilnError(
                    f"{where}: the step requires feature {feature!r}, which no executor "
                    f"here offers (offered: {offered})",
                    hint=f"add {feature!r} to `features` in {config.where()} on a machine "
                    "that has it",
                    exit_code=errors.ExitCode.BAD_INPUT,
                )
        for name in named:
            check_secret(config, name, wanted, where)
        extra = [("requires", ",".join(wanted))] if wanted else []
        return tuple(extra + ([("secrets", ",".join(named))] if named else []))

    def tools_identity(self, names: list[str], where: str) -> str:
        """The identity of host tools (resolved once per build)."""
        key = tuple(names)
        if key not in self._tools:
            from kiln.exec.tools import Dpkg, identity, resolve

            if self._dpkg is None:
                cache = self.store.home / "tool-roots"
                cache.mkdir(exist_ok=True)
                self._dpkg = Dpkg(cache=cache)
            try:
                self._tools[key] = identity([resolve(n, self._dpkg) for n in names])
            except errors.KilnError as e:
                raise errors.KilnError(
                    f"{where}: {e.message}", hint=e.hint, exit_code=e.exit_code
                ) from None
        return self._tools[key]

    def evaluate(self, t: rules.Target, waiter: rules.Target | None) -> asyncio.Task[Any]:
        if waiter is not None:
            self._waits.setdefault(waiter.name, set()).add(t.name)
            cycle = self._cycle(t.name, waiter.name)
            if cycle is not None:
                chain = " -> ".join(
                    f"{n} ({self.project.targets[n].where})" for n in [waiter.name, *cycle]
                )
                raise errors.KilnError(
                    f"dependency cycle between targets: {chain}",
                    hint="a target cannot (indirectly) await itself",
                    exit_code=errors.ExitCode.BAD_INPUT,
                )
        task = self._tasks.get(t.name)
        if task is None:
            task = asyncio.ensure_future(self._run_target(t))
            self._tasks[t.name] = task
        return task

    def _cycle(self, start: str, goal: str) -> list[str] | None:
        """A path of unfinished awaits from ``start`` to ``goal``, if any."""
        stack, seen = [(start, [start])], set()
        while stack:
            name, path = stack.pop()
            if name == goal:
                return path
            task = self._tasks.get(name)
            if name in seen or (task is not None and task.done()):
                continue
            seen.add(name)
            stack.extend((n, [*path, n]) for n in self._waits.get(name, ()))
        return None

    async def _run_target(self, t: rules.Target) -> Any:
        rules._target.set(t)
        try:
            return await t.fn()
        except (errors.KilnError, BuildStopped):
            raise
        except (Exception, SystemExit) as e:  # sys.exit() is no way to succeed
            raise user_code_error(e, t.file, f"target {t.name!r}") from None

    async def run_step(
        self,
        owner: rules.Target | None,
        where: str,
        *,
        kind: str,
        argv: list[str],
        inputs: list[Value],
        outputs: list[str],
        env: dict[str, str],
        platform: tuple[tuple[str, str], ...],
        description: str,
    ) -> StepResult:
        root, blobs = input_tree(inputs, where)
        try:
            spec = ActionSpec(
                argv=tuple(argv),
                input_root=root,
                env=env,
                outputs=tuple(outputs),
                platform=platform,
                description=description,
            )
        except ValueError as e:
            raise errors.KilnError(f"{where}: {e}", exit_code=errors.ExitCode.BAD_INPUT) from None
        identity = {
            "argv": argv,
            "env": env,
            "inputs": {v.path: str(v.digest) for v in inputs},
            "outputs": outputs,
            "platform": dict(platform),
        }
        request = StepRequest(owner.name if owner else "", description, spec, identity, kind, blobs)
        return await self.scheduler.run(request)


class Build:
    """Builds targets of one project into its output folder."""

    def __init__(
        self,
        store: Store,
        project: Project,
        *,
        jobs: int | None = None,
        keep_going: bool = False,
        on_change: Callable[[StepRecord], None] | None = None,
        executors: dict[str, Callable[[], Executor]] | None = None,
        allow_unpinned: bool = False,
        on_download: Callable[[str, int, int | None], None] | None = None,
    ) -> None:
        self.store = store
        self.project = project
        self.allow_unpinned = allow_unpinned
        self.jobs = jobs or os.cpu_count() or 1
        self.keep_going = keep_going
        self._on_change = on_change
        self._synced = False
        # Worker processes can only use the default executors.
        self._processes = executors is None
        self._executors = executors or default_executors(store, on_download)

    def run(self, names: list[str], stamp_as: str | None = None) -> BuildReport:
        """Build ``names``; the stamp of a successful build is filed under
        ``stamp_as`` (default: these names; see ``engine/stamp.py``)."""
        from kiln.engine import stamp

        targets = [self.project.target(n) for n in names]
        self._synced = False
        scheduler = Scheduler(
            self.store,
            self._executors,
            self.jobs,
            self.keep_going,
            self._on_change,
            processes=self._processes and os.environ.get("KILN_WORKER_PROCESSES") == "1",
        )
        started = time.time()
        try:
            ctx = BuildContext(self.store, self.project, scheduler, self.allow_unpinned)
            values = asyncio.run(self._evaluate(ctx, targets))
        finally:
            scheduler.close()
        report = BuildReport([], scheduler.records, 0.0, files_hashed=ctx.sources.files_hashed)
        for t, value in zip(targets, values, strict=True):
            outcome = TargetOutcome(t.name)
            report.targets.append(outcome)
            if isinstance(value, BuildStopped):
                continue  # stopped because of another failure, reported there
            if not isinstance(value, errors.KilnError):
                try:
                    digest = self._materialize(t, value)
                    outcome.digest, outcome.output = str(digest), str(self.output_dir(t.name))
                    continue
                except errors.KilnError as e:
                    value = e
            outcome.error = value
            if value not in report.errors:  # one failed step can fail several targets
                report.errors.append(value)
        ctx.sources.save()
        report.seconds = time.time() - started
        from kiln.engine.history import record_build

        report.build_id = record_build(self.store, self.project.root, names, report, started)
        key = stamp_as or stamp.stamp_key(names)
        report.stamped = stamp.record(self.store, self.project, key, ctx.sources, report)
        return report

    async def _evaluate(self, ctx: BuildContext, targets: list[rules.Target]) -> list[Any]:
        rules._build.set(ctx)
        tasks = [ctx.evaluate(t, None) for t in targets]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        unexpected = next(
            (r for r in results if isinstance(r, BaseException)
             and not isinstance(r, errors.KilnError | BuildStopped)),
            None,
        )  # fmt: skip
        if unexpected is not None:
            raise unexpected
        return results

    # ---------------------------------------------------------- outputs

    def output_dir(self, name: str) -> Path:
        return kiln_out.output_dir(self.project.root, name)

    def _materialize(self, t: rules.Target, value: Any) -> Digest:
        values = _flatten(value, t)
        where = f"{t.where} (value of target {t.name!r})"
        # One hold of the write lock from writing the value's directories to
        # naming them: no GC in between. Kept by this build too, in case
        # another build names a different value under the same root meanwhile.
        with self.store.writing():
            digest = input_root(self.store.cas, values, where)
            if not self._synced:
                self.store.cas.sync()  # what the build wrote becomes durable before its roots
                self._synced = True
            self.store.add_root(f"build:{self.project.root}:{t.name}", digest, "tree")
            self.store.session.protect(digest, "tree")
        kiln_out.place(self.store.cas, self.project.root, t.name, digest)
        return digest


def default_executors(
    store: Store, on_download: Callable[[str, int, int | None], None] | None = None
) -> dict[str, Callable[[], Executor]]:
    """A factory per step kind; each imports its executor when first used
    (a build that runs only wasm steps never loads the others)."""

    def wasm() -> Executor:
        from kiln.exec.wasm import WasmExecutor

        return WasmExecutor(store)

    def native() -> Executor:
        from kiln.exec.native import NativeExecutor

        return NativeExecutor(store)

    def fetch() -> Executor:
        from kiln.exec.fetch import FetchExecutor

        return FetchExecutor(store, progress=on_download)

    def unpack() -> Executor:
        from kiln.exec.unpack import UnpackExecutor

        return UnpackExecutor(store)

    return {"wasm": wasm, "native": native, "fetch": fetch, "unpack": unpack}


def _flatten(value: Any, t: rules.Target, at: str = "") -> list[Value]:
    if value is None:
        return []
    if isinstance(value, File | Tree):
        return [value.at(at)] if at else [value]
    if isinstance(value, StepResult):
        return [v.at(f"{at}/{v.path}") if at else v for v in value.outputs.values()]
    if isinstance(value, list | tuple):
        return [v for item in value for v in _flatten(item, t, at)]
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            path = os.path.normpath(f"{at}/{key}" if at else str(key))
            if path.startswith(("..", "/")):
                raise errors.KilnError(
                    f"{t.where}: target {t.name!r} places output {key!r} outside its folder",
                    hint="use relative paths without '..' as keys",
                    exit_code=errors.ExitCode.BAD_INPUT,
                )
            out += _flatten(item, t, path)
        return out
    raise errors.KilnError(
        f"{t.where}: target {t.name!r} returned a {type(value).__name__}",
        hint="return a File, a Tree, a step's result, None, or a list or dict of these",
        exit_code=errors.ExitCode.BAD_INPUT,
    )
