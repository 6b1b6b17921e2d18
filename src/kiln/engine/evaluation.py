"""One build: evaluate the requested targets, run their steps, put each
target's value into the project's output folder and keep it from GC.

Output folder: ``<project>/kiln-out/<target>/`` (read-only copies of the
store's blobs in writable folders: engine/kiln_out.py), named by
the GC root ``build:<project>:<target>``. A target's value may be a
``File`` or ``Tree`` (placed at its path), a ``StepResult`` (all its
outputs), ``None`` (nothing), or a list or dict of those (a dict places
each value at its key).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.config import Config, check_secret, load_config
from kiln.engine import kiln_out, retention, rules
from kiln.engine.inputs import input_root, input_tree
from kiln.engine.loader import Project, user_code_error
from kiln.engine.nested import StepService
from kiln.engine.report import BuildReport, TargetOutcome
from kiln.engine.scheduler import BuildStopped, Scheduler, StepRecord, StepRequest
from kiln.engine.sources import Sources
from kiln.engine.values import File, StepResult, Tree, Value
from kiln.exec.tools import Dpkg, identity, resolve, tool_roots_folder
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

if TYPE_CHECKING:
    from kiln.exec.base import Executor
    from kiln.remote.settings import RemoteSettings
    from kiln.store.local import Store


class BuildContext:
    """What rules reach through ``kiln.build``: sources, the scheduler, and
    the targets evaluated so far (each once per build)."""

    def __init__(
        self,
        store: Store,
        project: Project,
        scheduler: Scheduler,
        allow_unpinned: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.project = project
        self.scheduler = scheduler
        self.allow_unpinned = allow_unpinned  # fetches without a digest may run (and fail)
        self.settings = dict(settings or {})  # `kiln build -D name=value`
        self.settings_read: set[str] = set()  # names the build file asked for
        self.sources = Sources(store, project.root)
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._rules: dict[tuple[rules.Rule, rules.RuleKey], asyncio.Task[Any]] = {}
        self._waits: dict[str, set[str]] = {}  # target -> targets it awaited
        self._tools: dict[tuple[str, ...], str] = {}
        self._dpkg: Any = None
        self._config: Config | None = None
        self._project_settings: dict[str, str] | None = None

    def setting(self, name: str, default: str | None) -> str | None:
        """``kiln build -D NAME=VALUE``, else the project's ``kiln.toml``
        ``[settings]`` table, else ``default``."""
        self.settings_read.add(name)
        if name in self.settings:
            return self.settings[name]
        if self._project_settings is None:
            self._project_settings = project_settings(self.project.root, self.sources)
        return self._project_settings.get(name, default)

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
            if self._dpkg is None:
                self._dpkg = Dpkg(cache=tool_roots_folder(self.store.home))
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

    def call_rule(self, rule: rules.Rule, key: rules.RuleKey, where: str) -> asyncio.Task[Any]:
        """The one evaluation of ``rule`` with these arguments in this build."""
        chain = rules._rule_chain.get()
        if (rule, key) in chain:
            calls = [*chain[chain.index((rule, key)) :], (rule, key)]
            raise errors.KilnError(
                f"{where}: rule call cycle: " + " -> ".join(rules.describe_call(*c) for c in calls),
                hint="a rule cannot (indirectly) await itself with the same arguments",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        task = self._rules.get((rule, key))
        if task is None:
            task = asyncio.ensure_future(self._run_rule(rule, key, chain))
            self._rules[(rule, key)] = task
        return task

    async def _run_rule(self, rule: rules.Rule, key: rules.RuleKey, chain: tuple[Any, ...]) -> Any:
        rules._rule_chain.set((*chain, (rule, key)))
        args, kwargs = key
        what = f"rule {rules.describe_call(rule, key)}"
        return await _user_code(rule.fn(*args, **dict(kwargs)), rule.file, what)

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
        return await _user_code(t.fn(), t.file, f"target {t.name!r}")

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
        timeout: float | None = None,
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
                timeout=timeout,
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
        executors: Mapping[str, Callable[[], Executor]],
        *,
        jobs: int = 1,
        keep_going: bool = False,
        allow_unpinned: bool = False,
        on_change: Callable[[StepRecord], None] | None = None,
        worker_processes: bool = False,
        remote: RemoteSettings | None = None,
        on_remote: Callable[[dict[str, int]], None] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """``executors``: a maker per step kind. ``worker_processes``: the
        makers are the table's (``kiln.exec.kinds``), so steps may also run
        in worker processes, which make their own (see ``runners.py``).
        ``remote``: a REAPI remote to use (``kiln.remote``); ``on_remote``
        hears its traffic counts change. ``settings``: what the build file's
        ``setting(name)`` reads (``kiln build -D``)."""
        self.store = store
        self.project = project
        self.allow_unpinned = allow_unpinned
        self.jobs = jobs
        self.keep_going = keep_going
        self._on_change = on_change
        self._synced = False
        self._processes = worker_processes
        self._executors = dict(executors)
        self.sources: Sources | None = None  # what the last run read (for its stamp)
        self._remote = remote if remote is not None and remote.enabled else None
        self._on_remote = on_remote
        self.settings = dict(settings or {})

    def run(self, names: list[str]) -> BuildReport:
        """Build ``names``: evaluate them, run their steps, place their values."""
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
            ctx = BuildContext(
                self.store, self.project, scheduler, self.allow_unpinned, self.settings
            )
            values = asyncio.run(self._evaluate(ctx, targets))
        finally:
            scheduler.close()
        report = BuildReport([], scheduler.records)
        report.awaits = {name: sorted(awaited) for name, awaited in ctx._waits.items()}
        if scheduler.remote is not None:
            report.remote = scheduler.remote.stats.as_dict()
            report.warnings.extend(scheduler.remote.stats.warnings)
        report.files_hashed = ctx.sources.files_hashed
        report.folders_listed = ctx.sources.folders_listed
        report.warnings += [
            f"-D {name}: the build file did not read this setting (a misspelt name?)"
            for name in sorted(set(self.settings) - ctx.settings_read)
        ]
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
        # Steps that failed without failing a target by themselves (with
        # keep-going, siblings of the failure that stopped their target).
        report.errors += [e for e in scheduler.failures if e not in report.errors]
        report.forgotten = retention.forget_removed_targets(
            self.store.conn, self.project.root, self.project.targets
        )
        ctx.sources.save()
        self.sources = ctx.sources
        report.seconds = time.time() - started
        return report

    async def _evaluate(self, ctx: BuildContext, targets: list[rules.Target]) -> list[Any]:
        rules._build.set(ctx)
        if self._remote is not None:
            ctx.scheduler.remote = await self._connect(self._remote)
        try:
            async with StepService(ctx.scheduler, ctx.tools_identity):
                tasks = [ctx.evaluate(t, None) for t in targets]
                results = await asyncio.gather(*tasks, return_exceptions=True)
                await _finish_started()
            if ctx.scheduler.remote is not None:
                for i, t in enumerate(targets):
                    results[i] = await self._bring(ctx.scheduler, t, results[i])
        finally:
            if ctx.scheduler.remote is not None:
                await ctx.scheduler.remote.close()
        unexpected = next(
            (r for r in results if isinstance(r, BaseException)
             and not isinstance(r, errors.KilnError | BuildStopped)),
            None,
        )  # fmt: skip
        if unexpected is not None:
            raise unexpected
        return results

    async def _bring(self, scheduler: Scheduler, t: rules.Target, value: Any) -> Any:
        """A target's value with its content in the local store (results
        from a remote come without their files), or the error saying why not."""
        if isinstance(value, BaseException):
            return value
        try:
            values = _flatten(value, t)
            trees = [v.digest for v in values if isinstance(v, Tree)]
            files = [v.digest for v in values if isinstance(v, File)]
            await scheduler.ensure_local(trees, files)
        except errors.KilnError as e:
            return e
        return value

    async def _connect(self, settings: RemoteSettings) -> Any:
        from kiln.remote.connect import connect  # (only builds that use a remote)

        on_remote = self._on_remote
        remote: Any = None

        def changed() -> None:
            if on_remote is not None and remote is not None:
                on_remote(remote.stats.as_dict())

        remote = await connect(self.store, settings, on_change=changed)
        return remote

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


SETTINGS_FILE = "kiln.toml"  # a project's settings: its [settings] table


def project_settings(root: Path, sources: Sources) -> dict[str, str]:
    """The ``[settings]`` table of ``root``'s ``kiln.toml`` (none if there is
    no such file), noted among the files the build read so that its stamp
    follows the file (and its creation)."""
    import tomllib

    path = root / SETTINGS_FILE
    sources.note(str(path))
    try:
        table = tomllib.loads(path.read_text()).get("settings", {})
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise errors.KilnError(
            f"{path}: cannot read the project's settings: {e}",
            hint="fix the TOML syntax; settings go in a [settings] table of strings",
            exit_code=errors.ExitCode.BAD_INPUT,
        ) from None
    bad = (
        ["settings"] if not isinstance(table, dict)
        else [k for k, v in table.items() if not isinstance(v, str | int | float | bool)]
    )  # fmt: skip
    if bad:
        raise errors.KilnError(
            f"{path}: [settings] {bad[0]!r} is not a string or number",
            hint='write NAME = "value"',
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in table.items()}


async def _user_code(code: Coroutine[Any, Any, Any], file: str, what: str) -> Any:
    """Await build-file code; what it raises becomes an error at its line."""
    try:
        return await code
    except (errors.KilnError, BuildStopped):
        raise
    except (Exception, SystemExit) as e:  # sys.exit() is no way to succeed
        raise user_code_error(e, file, what) from None


async def _finish_started() -> None:
    """Let the work started beside a failure come to its end. A failed step
    ends its target's code at the first ``await`` that sees it, not the
    steps started beside it (``gather`` does not cancel the others); they
    would otherwise be cancelled when the build's event loop closes and
    stay "pending". With keep-going they run (and are cached); without, the
    running ones finish (the build waits for their threads anyway) and the
    others end as skipped."""
    me = asyncio.current_task()
    while others := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
        await asyncio.wait(others)


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
