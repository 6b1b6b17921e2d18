"""The engine's one entry: ``build(BuildRequest) -> BuildReport``.

Every way of building goes through here: the ``kiln`` command's fast path
(``kiln.cli.entry``, which asks only ``answer_from_stamp``), the click
command, a command run by the resident server, ``kiln check`` and scripts::

    from kiln.api import BuildRequest, build

    report = build(BuildRequest(("report",), cwd="examples/wordcount"))
    assert report.ok, report.errors

``build`` answers from the build stamp when no file the last identical
build read has changed (``kiln.engine.stamp``); otherwise it opens the
store, loads the build file, chooses executors from the table of kinds
(``kiln.exec.kinds``), evaluates the targets, places their values in
``kiln-out/``, records the history and the new stamp, and reports.

This module is imported by the fast path, so it imports only what answering
from a stamp needs; the engine proper is imported in ``_evaluate``, the one
place that needs it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import namedtuple
from pathlib import Path

from kiln.engine import stamp
from kiln.engine.report import BuildReport, StepStatus, TargetOutcome
from kiln.engine.root import find_root
from kiln.errors import KilnError
from kiln.store import db

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kiln.engine.observe import Observation
    from kiln.engine.progress import BuildObserver
    from kiln.exec.base import Executor
    from kiln.remote.settings import RemoteSettings
    from kiln.store.local import Store

__all__ = [
    "BuildReport",
    "BuildRequest",
    "StepStatus",
    "TargetOutcome",
    "answer_from_stamp",
    "build",
]

_Fields = namedtuple(
    "_Fields",
    ("targets", "cwd", "store", "jobs", "keep_going", "allow_unpinned", "from_stamp",
     "stamp_checked", "remote_cache", "remote_exec", "remote_fallback", "settings"),
    defaults=((), None, None, None, False, False, True, False, None, None, False, ()),
)  # fmt: skip


class BuildRequest(_Fields):
    """What to build and how; immutable (``replace`` makes a changed copy).

    - ``targets``: names of targets (empty: every target of the project);
    - ``cwd``: a folder inside the project (default: the current folder);
    - ``store``: the store's folder (default: ``$KILN_HOME``, else
      ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``);
    - ``jobs``, ``keep_going``, ``allow_unpinned``: as ``kiln build``'s
      ``--jobs``, ``--keep-going`` and ``--allow-unpinned``;
    - ``from_stamp``: may be answered from the build stamp (``kiln check``
      says no: it needs the steps);
    - ``stamp_checked``: the caller has just found that the stamp cannot
      answer (the fast path, before handing the command on), so it is not
      checked twice;
    - ``remote_cache``, ``remote_exec``, ``remote_fallback``: as ``kiln
      build``'s ``--remote-cache URL``, ``--remote-exec URL`` and
      ``--remote-fallback``, over the config's ``[remote]`` table and the
      environment (``kiln.remote.settings``);
    - ``settings``: ``kiln build -D name=value`` settings the build file
      reads with ``setting(name)``, as a mapping or (name, value) pairs;
      part of the stamp.
    """

    __slots__ = ()

    def __new__(cls, targets: tuple[str, ...] | list[str] = (), **fields: object) -> BuildRequest:
        settings = fields.get("settings")
        if settings:  # one form, sorted: equal settings file the same stamp
            fields["settings"] = tuple(sorted(dict(settings).items()))  # type: ignore[call-overload]
        return super().__new__(cls, tuple(targets), **fields)

    def replace(self, **changes: object) -> BuildRequest:
        return BuildRequest(**{**self._asdict(), **changes})  # (normalized as new)

    @property
    def home(self) -> Path:
        """The store's folder."""
        return Path(self.store) if self.store is not None else db.default_home()

    @property
    def folder(self) -> Path:
        """Where the project is looked for."""
        return Path(self.cwd) if self.cwd is not None else Path.cwd()

    @property
    def stamp_key(self) -> str:
        """How this request's stamp is filed (see ``kiln.engine.stamp``)."""
        return stamp.stamp_key(list(self.targets) or None, self.settings)


def answer_from_stamp(request: BuildRequest) -> BuildReport | None:
    """The report of ``request`` answered from its build stamp (outputs
    removed since are linked back from the store), or None when the build
    must run. Never raises for a missing store, project or stamp: the build
    that follows reports those properly."""
    started = time.perf_counter()
    home = request.home
    if not request.from_stamp or not (home / "kiln.db").is_file():
        return None
    try:
        root = find_root(request.folder)
        conn = db.connect(home / "kiln.db")
    except (KilnError, OSError, sqlite3.Error):
        return None
    try:
        answer = stamp.answer(conn, home / "cas", root, request.stamp_key)
    except (OSError, sqlite3.Error):
        return None
    finally:
        conn.close()
    if answer is None:
        return None
    return BuildReport.from_stamp(*answer, time.perf_counter() - started)


def build(
    request: BuildRequest,
    observer: BuildObserver | None = None,
    *,
    store: Store | None = None,
    executors: Mapping[str, Callable[[], Executor]] | None = None,
) -> BuildReport:
    """Build what ``request`` asks for.

    ``observer`` hears each step's changes and each download's progress
    (``kiln.engine.progress.BuildProgress`` draws them). ``store``: an
    open store to use (default: open ``request.home`` for this build).
    ``executors``: a maker per step kind to use instead of the table's
    (tests and embedders; worker processes are then not used).

    Raises ``KilnError`` when there is nothing to build (no project, an
    unknown target, a bad build file, an unusable store); a step or
    target that fails is in the report's ``errors``.
    """
    if not request.stamp_checked:
        report = answer_from_stamp(request)
        if report is not None:
            return report
    return _evaluate(request, observer, store, executors)


def _host_reads(observed: Observation) -> list[str]:
    """The warnings of a build whose evaluation read the host directly: one
    line for what the stamp tracks, one per thing that prevents a stamp."""
    warning = observed.warning()
    return ([warning] if warning else []) + [
        f"{what}: no build stamp (a no-op build evaluates again)" for what in observed.impure
    ]


def _why_evaluated(store: Store, root: Path, request: BuildRequest) -> str:
    """Why this build evaluates its build file instead of answering from
    its stamp (for `kiln why` and the JSON report)."""
    if not request.from_stamp:
        return "asked to evaluate without the stamp"
    try:
        _, differs = stamp.compare(store.conn, root, request.stamp_key)
    except (OSError, sqlite3.Error) as e:
        return f"the stamp could not be checked ({e})"
    return differs or "outputs could not be put back from the store"


def _remote_settings(request: BuildRequest) -> tuple[RemoteSettings, str]:
    """The remote a build uses: the config's ``[remote]``, under the
    environment and the request. A config file that cannot be read is said
    by the rules that need it, at their line; here it only costs its remote
    (and a warning saying so)."""
    from kiln.config import load_config
    from kiln.remote.settings import RemoteSettings

    unread = ""
    try:
        base = load_config().remote_settings()
    except KilnError as e:
        base, unread = RemoteSettings(), f"{e.message}: its [remote] settings are not used"
    settings = base.overridden(
        cache=request.remote_cache, exec=request.remote_exec,
        fallback=request.remote_fallback or None,
    )  # fmt: skip
    return settings, unread


def _evaluate(
    request: BuildRequest,
    observer: BuildObserver | None,
    store: Store | None,
    executors: Mapping[str, Callable[[], Executor]] | None,
) -> BuildReport:
    """Load the build file, run what it asks, record history and stamp."""
    # The engine proper, imported only when something is evaluated
    # (start-up: this module is on the no-op path).
    from kiln.engine import history
    from kiln.engine.evaluation import Build
    from kiln.engine.loader import load
    from kiln.engine.observe import Observation, observing
    from kiln.exec import kinds
    from kiln.exec.base import ExecHooks
    from kiln.store.local import Store

    root = find_root(request.folder)
    loaded = stamp.clock(root)  # before the build file is read: edits after it are racy
    observed = Observation()  # what the build file reads from the host, for the stamp
    with observing(observed):
        project = load(root)
    names = list(request.targets) or sorted(project.targets)
    for name in names:
        project.target(name)  # unknown names fail before anything runs
    owned = store is None
    store = store or Store(request.home)
    try:
        hooks = ExecHooks(
            on_download=observer.on_download if observer else None,
            on_slow=getattr(observer, "on_slow", None),
        )
        if hasattr(observer, "on_store"):  # (to read what steps wrote to stderr)
            observer.on_store(store)
        chosen = executors or kinds.factories(kinds.local_context(store), hooks)
        remote, unread = _remote_settings(request)
        build = Build(
            store, project, chosen, jobs=request.jobs or os.cpu_count() or 1,
            keep_going=request.keep_going, allow_unpinned=request.allow_unpinned,
            on_change=observer.on_change if observer else None,
            worker_processes=executors is None,
            remote=remote, on_remote=getattr(observer, "on_remote", None),
            settings=dict(request.settings),
        )  # fmt: skip
        because = _why_evaluated(store, root, request)
        started = time.time()
        with observing(observed):
            report = build.run(names)
        report.evaluated_because = because
        if unread:
            report.warnings.insert(0, unread)
        report.warnings += _host_reads(observed)
        report.stamped = stamp.record(
            store, project, request.stamp_key, build.sources, report, loaded, observed
        )
        report.build_id = history.record_build(store, project.root, names, report, started)
        return report
    finally:
        if owned:
            store.close()
