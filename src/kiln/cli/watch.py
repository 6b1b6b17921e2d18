"""``kiln build --watch``: build, wait for a change in the project, build again.

The project's folders are watched through inotify (``ProjectWatch``, as the
resident server watches them). Where inotify cannot be trusted (a network
file system, the inotify limits reached) the project's files are compared
with a ``stat`` scan every ``POLL_S`` seconds instead. Either way, what a
build writes itself starts no build: ``kiln-out`` and version-control
folders are not looked at, nor the store when it lies inside the project,
and a folder whose listing changed counts only through the entry that
changed in it (``kiln-out`` made at the root is no change). The project's
Python modules are not compiled to ``__pycache__`` meanwhile.

A change starts a build once the project is quiet: ``QUIET_S`` without a
new event, at most ``SETTLE_S`` after the first, so that an editor's
write-then-rename or a ``git checkout`` of many files is one build. A change
made while a build runs starts the next one as soon as it ends.

Each build is the one ``kiln build`` runs, shown as it shows it (a failed
build and a bad build file are reported, then the watch goes on). SIGINT
(Ctrl-C) and SIGTERM end the watch: a build running then is stopped as
Ctrl-C stops any build, and the command exits 130, or 143 for SIGTERM.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

import kiln
from kiln.api import BuildRequest
from kiln.cli.report import write_json
from kiln.engine.progress import printable
from kiln.engine.root import find_root
from kiln.errors import KilnError
from kiln.exec import interrupt
from kiln.server.watch import IGNORED_NAMES, ProjectWatch

QUIET_S = 0.075  # after a change, build once this long passes without another
SETTLE_S = 1.0  # ... or once this long has passed since the first one
POLL_S = 1.0  # without inotify: how often the project's files are compared
SHOWN_PATHS = 3  # changed paths named before "and N more"


def watch_builds(
    request: BuildRequest, build_once: Callable[[BuildRequest], object], as_json: bool
) -> int:
    """Build with ``build_once`` (which shows the build and its report;
    raises ``KilnError`` when there is nothing to build), then again after
    each change in the project, until SIGINT or SIGTERM: their exit code
    (130, 143). Raises ``KilnError`` if there is no project to watch."""
    root = os.path.realpath(find_root(request.folder))
    skipped = _inside(os.path.realpath(request.home), root)  # the store, if in the project
    signals = _Signals()
    modules_before = set(sys.modules)
    bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # (no __pycache__ in the project from its build file)
    builds = 0
    building = False
    changes: _Events | _Scans | None = None
    try:
        with signals:
            changes = _watch(root, skipped)
            while True:
                building = True
                builds += 1
                _build_once(build_once, request, as_json)
                building = False
                if builds == 1:
                    _say(f"kiln: watching {printable(root)} for changes (Ctrl-C to stop)")
                changed = changes.wait()
                if isinstance(changes, _Events) and not changes.usable:
                    _say(_polling(changes.reason))
                    changes.close()
                    changes = _Scans(root, skipped)
                    changed = None  # (what changed meanwhile is not known)
                _say(_describe(changed, root))
                _forget_project_modules(root, modules_before)
                request = request.replace(stamp_checked=False)
    except KeyboardInterrupt:
        # A build was interrupted if its steps were being stopped (not if
        # the signal came before it ran them, or while it printed its report).
        interrupted = building and interrupt.stopped()
        if interrupted and as_json:
            write_json({"ok": False, "error": "interrupted", "hint": None}, one_line=True)
        name = signal.Signals(signals.received).name
        stopped = "the build was interrupted; " if interrupted else ""
        _say(f"kiln: {name}: {stopped}stopped watching after {builds} build{'s' * (builds != 1)}")
        return 128 + signals.received
    finally:
        sys.dont_write_bytecode = bytecode
        if changes is not None:
            changes.close()


def _build_once(
    build_once: Callable[[BuildRequest], object], request: BuildRequest, as_json: bool
) -> None:
    """One build; what stops it (a bad build file, a store that cannot be
    used) is said as `kiln build` says it, and the watch goes on."""
    try:
        build_once(request)
    except BrokenPipeError:
        raise  # (nobody reads the reports any more: the watch ends)
    except KilnError as e:
        _fail(e, as_json)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _fail(KilnError(f"{where}{e.strerror or e}"), as_json)


def _fail(error: KilnError, as_json: bool) -> None:
    _say(f"kiln: error: {error.render()}")
    if as_json:
        write_json({"ok": False, "error": error.message, "hint": error.hint}, one_line=True)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _polling(reason: str | None) -> str:
    return (
        f"kiln: warning: not watching through inotify: {reason}; "
        f"comparing the project's files every {POLL_S:g} s instead"
    )


def _describe(changed: list[str] | None, root: str) -> str:
    """The line saying what starts the next build."""
    if changed is None:  # (events were lost, or the watch stopped)
        return "kiln: the watch could not tell what changed: building again"
    first = sorted(changed, key=lambda p: (not os.path.lexists(p), p))  # (removed ones last)
    names = [printable(os.path.relpath(p, root)) for p in first[:SHOWN_PATHS]]
    more = f" and {len(changed) - SHOWN_PATHS} more" if len(changed) > SHOWN_PATHS else ""
    return f"kiln: changed: {', '.join(names)}{more}"


def _inside(path: str, root: str) -> str | None:
    """``path`` if it lies inside ``root`` (both real paths), else None."""
    return path if path.startswith(root + os.sep) else None


def _watch(root: str, skipped: str | None) -> _Events | _Scans:
    """What tells the changes of the project from now on: its inotify
    watch, or where that cannot be trusted (said once), scans."""
    watch = ProjectWatch(root)
    if watch.usable:
        return _Events(watch, root, skipped)
    _say(_polling(watch.reason))
    return _Scans(root, skipped)


def _counts(path: str, root: str, skipped: str | None) -> bool:
    """Whether a change of ``path`` (absolute) may start a build: not in an
    ignored folder (``kiln-out``, ``.git``...) nor the store, and not a
    folder (its listing changed: the entry that changed in it is named too,
    unless it is one of those)."""
    parts = os.path.relpath(path, root).split(os.sep)
    if parts == ["."] or parts[0] == ".." or not IGNORED_NAMES.isdisjoint(parts):
        return False
    if skipped is not None and (path == skipped or path.startswith(skipped + os.sep)):
        return False
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return True  # gone: a file (or folder) removed


class _Events:
    """The changes an inotify watch of the project's folders reports."""

    def __init__(self, watch: ProjectWatch, root: str, skipped: str | None) -> None:
        self._watch = watch
        self._root = root
        self._skipped = skipped
        self._drain()
        self._seq = watch.seq  # the moment the next changes are counted from

    @property
    def usable(self) -> bool:
        return self._watch.usable

    @property
    def reason(self) -> str | None:
        return self._watch.reason

    def wait(self) -> list[str] | None:
        """Block until the project changed since the last call (or since
        this was made) and has been quiet since: the paths that changed,
        sorted; None when the watch cannot name them (events were lost, or
        it stopped being usable: then at once)."""
        watch = self._watch
        while watch.usable:
            changed = self._changed()
            if changed is None or changed:
                self._settle()
                changed = self._changed()
                self._seq = watch.seq
                if changed is None or changed:
                    return changed
                continue
            self._seq = watch.seq  # (events that start no build: forgotten)
            select.select([watch.fileno()], [], [])
            self._drain()
        return None

    def _drain(self) -> None:
        try:
            self._watch.drain()
        except AttributeError:
            # ProjectWatch.drain reads on after an event made it give up
            # (a new folder over its limit, or the inotify watch limit
            # reached) and closed its descriptor; it is then not usable.
            if self._watch.usable:
                raise

    def _changed(self) -> list[str] | None:
        paths = self._watch.changes_after(self._seq)
        if paths is None:
            return None
        return sorted(p for p in paths if _counts(p, self._root, self._skipped))

    def _settle(self) -> None:
        """Read events until none came for ``QUIET_S`` (or ``SETTLE_S`` passed)."""
        watch = self._watch
        deadline = time.monotonic() + SETTLE_S
        while watch.usable:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([watch.fileno()], [], [], min(QUIET_S, left))
            if not ready:
                return
            self._drain()

    def close(self) -> None:
        self._watch.close()


class _Scans:
    """The changes found by comparing ``stat`` scans of the project's files."""

    def __init__(self, root: str, skipped: str | None) -> None:
        self._root = root
        self._skipped = skipped
        self._last = self._scan()

    def wait(self) -> list[str]:
        """Block until a scan differs from the last one, then until two
        scans ``QUIET_S`` apart agree (or ``SETTLE_S`` passed): the paths
        that differ, sorted."""
        while True:
            time.sleep(POLL_S)
            now = self._scan()
            if now == self._last:
                continue
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline:
                time.sleep(QUIET_S)
                again = self._scan()
                if again == now:
                    break
                now = again
            before, self._last = self._last, now
            return sorted(p for p in before.keys() | now.keys() if before.get(p) != now.get(p))

    def _scan(self) -> dict[str, tuple[int, ...]]:
        """Every entry of the project but its folders, outside the ignored
        folders and the store: path -> what ``lstat`` says of it."""
        found: dict[str, tuple[int, ...]] = {}
        stack = [self._root]
        while stack:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in IGNORED_NAMES and entry.path != self._skipped:
                                stack.append(entry.path)
                            continue
                        st = entry.stat(follow_symlinks=False)
                        found[entry.path] = (
                            st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode
                        )  # fmt: skip
            except OSError:
                continue  # (gone meanwhile, or unreadable: as a build would find it)
        return found

    def close(self) -> None:
        pass


class _Signals:
    """While entered, SIGTERM ends the watch as SIGINT does: through the
    SIGINT handler in force (during a build, the one that stops its steps
    and says so), then ``KeyboardInterrupt``. ``received``: the signal that
    ended it."""

    def __init__(self) -> None:
        self.received = signal.SIGINT
        self._previous: Any = None

    def __enter__(self) -> _Signals:
        self._previous = signal.signal(signal.SIGTERM, self._terminate)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _terminate(self, signum: int, frame: Any) -> None:
        self.received = signal.SIGTERM
        if interrupt.stopped():  # a build's steps are being stopped already
            os.write(2, b"\nkiln: stopped without waiting for the running steps\n")
            os._exit(128 + signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        raise KeyboardInterrupt


def _forget_project_modules(root: str, before: set[str]) -> None:
    """Forget the project's own modules its build file imported, so that
    the next build imports them again as they are now and counts them among
    the build file's code (for its stamp), as a new process would. Those
    are the modules imported since ``before`` from a file in the project
    that is outside Kiln, the Python installation and the folders of the
    import path inside the project (a virtual environment there)."""
    kept = [
        real + os.sep
        for p in (*sys.path, sys.prefix, sys.exec_prefix, os.path.dirname(kiln.__file__))
        if p and _inside(real := os.path.realpath(p), root)
    ]
    for name in [n for n in sys.modules if n not in before]:
        file = getattr(sys.modules[name], "__file__", None)
        if not isinstance(file, str):
            continue
        real = os.path.realpath(file)
        if _inside(real, root) and not any(real.startswith(p) for p in kept):
            del sys.modules[name]
    importlib.invalidate_caches()  # (a module added since is found)
