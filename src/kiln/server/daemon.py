"""The resident Kiln server: commands that start warm.

Most of a small rebuild's time goes to starting Python, importing Kiln and
its dependencies, and loading (and first touching) compiled WebAssembly
modules such as clang. ``kiln server start`` keeps one process per store
that has done all of that once; a ``kiln build`` or ``kiln check`` that
finds it hands its command over (``kiln.server.client``), and the server
forks a fresh child for it. The child takes the client's descriptors,
folder, environment and umask and runs the command as the client would
have, so nothing is shared between two commands but what was loaded before
the fork: no build state, no open store, no build file.

The server listens on a socket in a folder only its user may enter
(``server_client.Place``), holding a lock there for as long as it listens,
so one server at a time owns a store's place and a dead one's socket file is
replaced safely; it records its pid next to the socket, for clients to check.

The server is one thread around a ``selectors`` loop (so forking is safe):
it accepts connections from its own user only, refuses requests for any
store but its own, forwards the client's
signals to the child's process group, stops the child when its client goes
away, and exits when asked, when its code changes under it (a stale server
refuses commands, which then run without it), or after ``idle`` seconds
with nothing to do.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import importlib
import io
import json
import marshal
import os
import selectors
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import errors
from kiln.cc import service as cc_service
from kiln.cli import app
from kiln.exec.kinds import KINDS
from kiln.server import quick
from kiln.server.client import (
    FORWARDED_SIGNALS,
    LOG_NAME,
    PACKAGE,
    REQUEST_LIMIT,
    Place,
    Untrusted,
    ask,
    check_private_folder,
    code_fingerprint,
    encode,
    import_path,
    peer_credentials,
    place,
    spawn,
)
from kiln.server.projects import Projects
from kiln.server.scanned import ScannedFolders
from kiln.server.watch import ProjectWatch
from kiln.store import db, known_complete, unchanged_folders
from kiln.system.libc import libc

DEFAULT_IDLE_S = 3 * 3600
EXIT_GRACE_S = 0.2  # after a client is gone: SIGTERM this much later,
KILL_GRACE_S = 5.0  # then SIGKILL this much later
REQUEST_TIMEOUT_S = 5.0
LESSONS_LIMIT = 64 << 20  # bytes a command may send back
START_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1  # prctl(2)
EXIT_ALREADY_SERVED = 3  # main(): another server holds the store's place

# What a build imports (with each executor kind's own, from the table of
# kinds); loaded once here instead of in every command.
WARM_IMPORTS = (
    "kiln.cli.app", "kiln.api", "kiln.engine.check", "kiln.build", "kiln.engine.evaluation",
    "kiln.rules.c", "kiln.engine.progress", "kiln.engine.history", "kiln.engine.stamp",
    "kiln.cli.entry", "kiln.store.local", "kiln.store.actioncache", "kiln.store.materialize",
    "kiln.model.reapi", "rich.console", "rich.live", "rich.text",
    "kiln.cli.gocache", "kiln.gocache.serve_fast", "kiln.gocache.session", "kiln.config",
    "kiln.cli.build", "kiln.cli.watch", "kiln.engine.call_warmup", "kiln.engine.observe",
    "kiln.remote.settings", "sysconfig",
)  # fmt: skip


class AlreadyServed(Exception):
    """Another server holds the store's place (its lock)."""


@dataclass
class Running:
    """A command running in a child of the server."""

    pid: int
    conn: socket.socket
    request: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    pending: bytes = b""  # what the client sent of a line not ended yet
    term_at: float | None = None  # its client is gone: SIGTERM then,
    kill_at: float | None = None  # and SIGKILL then

    @property
    def argv(self) -> list[str]:
        return [str(a) for a in self.request.get("argv", [])]


class Server:
    """Accepts commands for one store and runs each in a forked child."""

    def __init__(self, home: Path, idle: float = DEFAULT_IDLE_S) -> None:
        """Listen at the store's place. Raises ``AlreadyServed``, or
        ``Untrusted`` if the place is not private to this user."""
        self.home = home
        self.idle = idle
        self.place = place(home)
        self._lock: int | None = _claim(self.place)  # None once stopping
        self.listener = _listen(self.place)
        # (watched first: a change while the fingerprint is read is an event)
        self.code_watch = ProjectWatch(str(PACKAGE))
        self.code_seq = self.code_watch.seq
        self.fingerprint = code_fingerprint()
        self.started = time.time()
        self.served = 0
        self.modules: list[str] = []
        self.running: dict[int, Running] = {}
        self.stopping = False
        self.last_active = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.cc_activity = cc_service.Activity()
        self.cc_pid: int | None = None
        self.projects = Projects(home)
        self.spare: Spare | None = None  # forked ahead, waiting for a command
        self.scanned = ScannedFolders()
        self.spare_due = True
        self._watched: dict[int, ProjectWatch] = {}  # in the selector, by descriptor
        # What a client's environment must share with the server's for a
        # command to import the same modules (a native client sends no path).
        self.python_env = _python_env(os.environ)

    # ------------------------------------------------------------ set-up

    def warm(self) -> None:
        """Import what commands use and load the store's compiled modules."""
        for name in (*WARM_IMPORTS, *(m for kind in KINDS.values() for m in kind.warm)):
            importlib.import_module(name)
        libc()
        self._load_modules()

    def _load_modules(self) -> None:
        """Let each executor kind load what it keeps ready (compiled modules)."""
        for kind in KINDS.values():
            if kind.preload is not None:
                preload = getattr(importlib.import_module(kind.module), kind.preload)
                self.modules += preload(self.home)

    def serve(self) -> None:
        """Run until stopped; returns when the server has shut down."""
        known_complete.enable()  # (its commands learn for the next ones)
        self.cc_pid = self._start_cc()
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop (set_wakeup_fd)
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._reap)
        _log(f"serving {self.home} (pid {os.getpid()}, idle timeout {self.idle:g} s)")
        # Idle from now, not from before warm(): a slow warm-up (a loaded
        # machine) must not end the server before its first client is read.
        self.last_active = time.monotonic()
        while not (self.stopping and not self.running):
            events = self.selector.select(self._timeout())
            for key, _ in events:
                key.data(key.fileobj)
            self._kill_overdue()
            if not events:  # (nothing else to do: the moment to fork)
                self._refresh_spare()
            if not self.running and time.monotonic() - self._last_active() > self.idle:
                _log(f"idle for {self.idle:g} s: exiting")
                self.stop()
        self.listener.close()
        _log("stopped")

    def _timeout(self) -> float:
        if self.spare_due and not self.stopping:
            return 0.0
        deadlines = [
            t for r in self.running.values() for t in (r.term_at, r.kill_at) if t is not None
        ]
        if not self.running:
            deadlines.append(self._last_active() + self.idle)
        if not deadlines:
            return 60.0
        return max(0.0, min(deadlines) - time.monotonic())

    def _last_active(self) -> float:
        return max(self.last_active, self.cc_activity.last())

    def _start_cc(self) -> int:
        """Fork the ``kiln cc`` service (``kiln.cc.service``) while this
        process has one thread; it ends with the server."""
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                _end_with_parent(server)
                self.selector.close()
                self.listener.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._release_place()
                code = cc_service.run(self.home, str(self.home / LOG_NAME), self.cc_activity)
            finally:
                os._exit(code)
        return pid

    def stop(self) -> None:
        """Refuse new commands; exit once the running ones have finished."""
        if not self.stopping:
            self.stopping = True
            if self.spare is not None:
                self.spare.discard()
                self.spare = None
            for run in self.running.values():
                if "--watch" in run.argv:  # (it would never finish: ends cleanly on SIGTERM)
                    _signal_group(run.pid, signal.SIGTERM)
            if self.cc_pid is not None:
                _signal_process(self.cc_pid, signal.SIGTERM)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener)
            self.listener.close()  # new clients find no server and run by themselves
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.place.socket)
            self._release_place()

    def _release_place(self) -> None:
        """Let a new server take the place (while this one's commands finish)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # ------------------------------------------------------------ requests

    def _accept(self, listener: Any) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        self.last_active = time.monotonic()
        if not _same_user(conn):
            _log("refused a connection from another user")
            conn.close()
            return
        try:
            request, fds, after = _read_request(conn)
        except (OSError, ValueError) as e:
            _log(f"bad request: {e}")
            conn.close()
            return
        try:
            self._handle(conn, request, fds, after)
        except OSError as e:  # the client went away while being answered
            _log(f"lost a client: {e}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _handle(
        self, conn: socket.socket, request: dict[str, Any], fds: list[int], after: bytes = b""
    ) -> None:
        op = request.get("op")
        if request.get("home") != self.place.home:
            answer = self._other_store(request.get("home"))
        elif op == "status":
            answer = self.status()
        elif op == "stop":
            self.stop()
            answer = {"stopping": True, "pid": os.getpid()}
        elif op == "run" and (refusal := self._refusal(request, fds)) is None:
            answer = self._quick_answer(request)
            if answer is None:
                self._fork(conn, request, fds, after)
                return
        else:
            answer = {"refused": refusal if op == "run" else f"unknown request {op!r}"}
        conn.sendall(encode(answer))
        conn.close()

    def _other_store(self, home: object) -> dict[str, Any]:
        """The refusal of a request for another store than this server's."""
        warning = f"the kiln server at {self.place.socket} serves {self.place.home}, not {home}"
        _log(f"refused a request: {warning}")
        return {"refused": "store", "warning": warning}

    def _refusal(self, request: dict[str, Any], fds: list[int]) -> str | None:
        """Why a command is not run here (it then runs in its client), or None."""
        if len(fds) != 3:
            return "a command needs its stdin, stdout and stderr"
        # Kiln's files as they are now (a client may have said).
        if not self._code_unchanged(request.get("fingerprint")):
            _log("refused a command: Kiln's code changed since this server started; exiting")
            self.stop()
            return "stale"
        if self.stopping:
            return "stopping"
        path = request.get("path")
        if path != import_path() if path is not None else self._other_python(request):
            return "import path"  # another PYTHONPATH: the build could import other modules
        return None

    def _code_unchanged(self, given: object) -> bool:
        """Whether Kiln's code is the code this server runs: by the client's
        fingerprint if it sent one, else by this server's watch of the
        package (and the fingerprint again after any change it saw)."""
        if given is not None:
            return given == self.fingerprint
        self.code_watch.drain()
        changes = self.code_watch.changes_after(self.code_seq)
        if changes is not None and all("/__pycache__" in path for path in changes):
            return True  # (bytecode written by an import changes nothing)
        seq = self.code_watch.seq
        if code_fingerprint() != self.fingerprint:
            return False
        self.code_seq = seq
        return True

    def _other_python(self, request: dict[str, Any]) -> bool:
        env = request.get("env")
        return not isinstance(env, dict) or _python_env(env) != self.python_env

    def _quick_answer(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """A no-op build answered here (``kiln.server.quick``), or None."""
        try:
            return quick.answer(self.projects, request)
        except Exception as e:  # never lose the command: it then runs as usual
            _log(f"could not answer {request.get('argv')} here: {type(e).__name__}: {e}")
            return None
        finally:
            self._watch_events()

    def _watch_events(self) -> None:
        """Have the loop read each project watch's events as they come (so
        its queue never overflows while the server waits). By watch, not
        by number: a closed watch's number may be a new one's."""
        live = {w.fileno(): w for w in self.projects.watches.values() if w.fileno() >= 0}
        for fd, watch in list(self._watched.items()):
            if live.get(fd) is not watch:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fd)
                del self._watched[fd]
        for fd, watch in live.items():
            if fd not in self._watched:
                self.selector.register(fd, selectors.EVENT_READ, self._drain_watches)
                self._watched[fd] = watch

    def _drain_watches(self, _fd: Any) -> None:
        self.projects.drain()

    def status(self) -> dict[str, Any]:
        """What ``kiln server status`` shows."""
        return {
            "pid": os.getpid(),
            "store": str(self.home),
            "started": self.started,
            "uptime_s": round(time.time() - self.started, 3),
            "served": self.served,
            "commands_running": len(self.running),
            "commands": [
                {"pid": r.pid, "argv": r.argv, "seconds": round(time.monotonic() - r.started, 3)}
                for r in self.running.values()
            ],
            "idle_timeout_s": self.idle,
            "modules": sorted(self.modules),
            "stopping": self.stopping,
            "cc_pid": self.cc_pid,
            "cc_socket": cc_service.socket_path(self.home) if self.cc_pid else None,
            "answered_here": self.projects.answered,
            "projects": [
                {"root": root, "watched": w.usable, "folders": w.folders, "why_not": w.reason}
                for root, w in self.projects.watches.items()
            ],
        }

    # ------------------------------------------------------------ children

    def _fork(
        self, conn: socket.socket, request: dict[str, Any], fds: list[int], after: bytes = b""
    ) -> None:
        """Run a command in the spare process (forked beforehand, see
        ``_fork_spare``), or in a new fork if there is none."""
        spare, self.spare = self.spare, None
        self._tell_unchanged_folders(request)
        if spare is None or not spare.hand_over(conn, request, fds):
            if spare is not None:
                spare.discard()
            spare = self._fork_spare()
            if not spare.hand_over(conn, request, fds):
                spare.discard()
                conn.sendall(encode({"refused": "the command's process could not be started"}))
                conn.close()
                return
        self._note_hand_over(spare, request)
        self.served += 1
        run = self.running[spare.pid] = Running(spare.pid, conn, request)
        self.selector.register(conn, selectors.EVENT_READ, self._from_client)
        self._signals(run, after)  # (any the client sent with its request)
        try:
            conn.sendall(encode({"started": spare.pid}))
        except OSError:  # the client is already gone: so is its command
            self._abandon(run)
        self.spare_due = True  # (made once the loop has nothing else to do)

    def _tell_unchanged_folders(self, request: dict[str, Any]) -> None:
        """Tell the command which folders of its project are unchanged since
        a command before it scanned them (``kiln.server.scanned``)."""
        root = request.get("project_root")
        watch = self.projects.watches.get(root) if isinstance(root, str) else None
        if watch is not None:
            watch.drain()
            request["unchanged_folders"] = self.scanned.unchanged(root, watch)
            request["handed_at"] = watch.seq

    def _note_hand_over(self, spare: Spare, request: dict[str, Any]) -> None:
        """What the command's lessons will be about: its project and the
        moment it was handed over."""
        root = request.get("project_root")
        if "handed_at" in request and root in self.projects.watches:
            watch = self.projects.watches[root]
            spare.lessons.project = (root, int(request["handed_at"]), watch)

    def _fork_spare(self) -> Spare:
        """A process forked now that waits for a command (what the server
        knows now, e.g. results known complete, is what it starts with)."""
        server = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        lessons_r, lessons_w = os.pipe()  # what the command learned, for the next ones
        # The signals a client forwards wait until the spare has its own
        # handlers (the server's would run in it, as if the server stopped).
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        # The objects there are now are left out of the spare's garbage
        # collections, which would otherwise write to (so copy) every page
        # of the server's memory.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
            gc.unfreeze()
            for end in (ours, theirs):
                end.close()
            os.close(lessons_r)
            os.close(lessons_w)
            raise
        if pid == 0:
            code = 70
            try:
                ours.close()
                os.close(lessons_r)
                self._become_spare(server)
                handed = _take_over(theirs)
                theirs.close()
                # (None: discarded before any command)
                code = 0 if handed is None else self._become_command(*handed, lessons_w)
            except KeyboardInterrupt:  # (the client's Ctrl-C, before its command began)
                code = 128 + signal.SIGINT
            except BaseException as e:  # (a bug: said in the server's log)
                _log(f"a command's process failed: {type(e).__name__}: {e}")
                raise
            finally:
                os._exit(code)
        # Its own process group now, not only once it runs: a signal the
        # client sends at once must find the group.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        gc.unfreeze()  # (frozen for the spare only: the server collects as usual)
        theirs.close()
        os.close(lessons_w)
        lessons = _Lessons(self, lessons_r)
        self.selector.register(lessons_r, selectors.EVENT_READ, lessons)
        return Spare(pid, ours, lessons)

    def _refresh_spare(self) -> None:
        """Fork a spare when one is due (the last was used, or the server
        learned something since it was forked)."""
        if not self.spare_due or self.stopping:
            return
        self.spare_due = False
        if self.spare is not None:
            self.spare.discard()
            self.spare = None
        gc.collect()  # (idle now: what is garbage is not frozen into every spare)
        try:
            self.spare = self._fork_spare()
        except OSError as e:  # (out of processes or memory: the next command forks)
            _log(f"could not fork a spare process: {e}")

    def _become_spare(self, server: int) -> None:
        """In a spare: let go of everything that is the server's."""
        with contextlib.suppress(OSError):  # (the server may have made it already)
            os.setpgid(0, 0)  # its own group: signals and clean-up reach its subprocesses too
        _end_with_parent(server)
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        self.selector.close()
        for fileobj in (self.listener, *(r.conn for r in self.running.values())):
            fileobj.close()
        if self.spare is not None:
            self.spare.sock.close()
        self.projects.close_in_child()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._release_place()  # (the lock is the server's, not the command's)

    def _become_command(
        self, conn: socket.socket, request: dict[str, Any], fds: list[int], lessons: int
    ) -> int:
        """In a spare: take the client's place and run its command."""
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        if isinstance(request.get("unchanged_folders"), list):
            unchanged_folders.start(request["unchanged_folders"])
        tempfile.tempdir = None  # found again from the client's TMPDIR
        _reopen_stdio()
        try:
            os.chdir(request["cwd"])
        except OSError as e:
            sys.stderr.write(f"kiln: error: cannot enter {request['cwd']}: {e.strerror}\n")
            return 2
        os.umask(int(request["umask"]))
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["kiln", *argv]
        code = app.run(argv, stamp_checked=bool(request.get("stamp_checked")))
        sys.stdout.flush()
        sys.stderr.flush()
        _let_go_of_stdio()
        # The client learns the exit code now, not once this process has
        # been torn down and reaped (which takes milliseconds); what the
        # command learned goes to the server after (a client that closes
        # at once leaves this process EXIT_GRACE_S).
        with contextlib.suppress(OSError):
            conn.sendall(encode({"exit": code}))
        _teach(lessons)
        return code

    def _from_client(self, conn: socket.socket) -> None:
        run = next((r for r in self.running.values() if r.conn is conn), None)
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if run is None:
            return
        if not data:  # the client is gone (killed, or its terminal closed)
            self._abandon(run)
            return
        self._signals(run, data)

    def _signals(self, run: Running, data: bytes) -> None:
        """Forward the signals a client sent (whole lines; a line split
        between two reads waits for its end)."""
        lines = (run.pending + data).split(b"\n")
        run.pending = lines.pop()[-REQUEST_LIMIT:]
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                signum = int(json.loads(line)["signal"])
                if signum in FORWARDED_SIGNALS:
                    _signal_group(run.pid, signum)

    def _abandon(self, run: Running) -> None:
        """Stop a command whose client is gone: SIGTERM soon, SIGKILL later.
        (Not at once: a client also goes once its command has said its exit
        code, while the command is still exiting.)"""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(run.conn)
        run.term_at = time.monotonic() + EXIT_GRACE_S
        run.kill_at = run.term_at + KILL_GRACE_S

    def _reap(self, wake: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.running.pop(pid, None)
            if self.spare is not None and pid == self.spare.pid:
                self.spare.discard()  # (died waiting: another is forked)
                self.spare, self.spare_due = None, True
            if pid == self.cc_pid:
                self.cc_pid = None
                _log(f"the cc service exited ({os.waitstatus_to_exitcode(status)})")
            if run is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code  # killed by a signal
            took = time.monotonic() - run.started
            _log(f"{' '.join(run.argv)}: exit {code} ({took:.3f} s)")
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(run.conn)
            with contextlib.suppress(OSError):
                run.conn.sendall(encode({"exit": code}))
            run.conn.close()
            self.last_active = time.monotonic()
            self._load_modules()  # e.g. a module the command compiled
            self._check_stamp_of(run)

    def learn(self, lessons: bytes, project: tuple[str, int, ProjectWatch] | None) -> None:
        """Keep what a command learned (sent as it ended): results found
        complete; the folders it scanned, if it was handed over for
        ``project`` = (root, moment, watch)."""
        try:
            learned = marshal.loads(lessons)
            removals = db.removals(self.projects.conn())
        except (ValueError, EOFError, TypeError, OSError, sqlite3.Error):
            return
        if not isinstance(learned, dict):
            return
        if known_complete.merge(learned.get("complete"), removals):
            self.spare_due = True  # (a spare forked before knows less)
        scanned = learned.get("scanned")
        if project is not None and isinstance(scanned, list):
            self.scanned.learned(project[0], scanned, project[1], project[2])

    def _check_stamp_of(self, run: Running) -> None:
        """After a build: check the stamp it filed now, while no client
        waits, so that the next no-op build is answered at once."""
        if run.request.get("argv", [None])[0] == "build":
            self._quick_answer({**run.request, "stamp_checked": False, "check_only": True})

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for run in self.running.values():
            if run.term_at is not None and now >= run.term_at:
                _signal_group(run.pid, signal.SIGTERM)
                run.term_at = None
            if run.kill_at is not None and now >= run.kill_at:
                _signal_group(run.pid, signal.SIGKILL)
                run.kill_at = None


class Spare:
    """A process forked ahead of time, waiting for a command (``_take_over``)."""

    def __init__(self, pid: int, sock: socket.socket, lessons: _Lessons) -> None:
        self.pid = pid
        self.sock = sock  # the server's end of its socket pair
        self.lessons = lessons  # what it learns comes back there

    def hand_over(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> bool:
        """Give it a command: the client's connection and descriptors, then
        the request; False if it is gone."""
        payload = json.dumps(request, separators=(",", ":")).encode()
        try:
            socket.send_fds(self.sock, [b"%d\n" % len(payload)], [conn.fileno(), *fds])
            self.sock.sendall(payload)
        except OSError:
            return False
        self.sock.close()
        return True

    def discard(self) -> None:
        """End it unused (it exits when its socket closes)."""
        with contextlib.suppress(OSError):
            self.sock.close()


def _take_over(sock: socket.socket) -> tuple[socket.socket, dict[str, Any], list[int]] | None:
    """In a spare: wait for a command; (the client's connection, the
    request, its stdio descriptors), or None when discarded."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, 64, 4)
    except OSError:
        return None
    if len(fds) != 4 or not data.endswith(b"\n"):
        return None
    size = int(data)
    payload = bytearray()
    while len(payload) < size:
        chunk = sock.recv(min(size - len(payload), 1 << 20))
        if not chunk:
            return None
        payload += chunk
    conn = socket.socket(fileno=fds[0])
    return conn, json.loads(payload), fds[1:]


class _Lessons:
    """Reads what a command learned from its pipe, then hands it to the server."""

    def __init__(self, server: Server, fd: int) -> None:
        self.server = server
        self.fd = fd
        self.data = bytearray()
        # (root, moment handed over, of that watch)
        self.project: tuple[str, int, ProjectWatch] | None = None

    def __call__(self, _fileobj: Any) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except OSError:
            chunk = b""
        if chunk:
            self.data += chunk
            if len(self.data) <= LESSONS_LIMIT:
                return
            self.data.clear()  # (more than any command learns: not trusted)
        with contextlib.suppress(KeyError, ValueError):
            self.server.selector.unregister(self.fd)
        os.close(self.fd)
        if self.data:
            self.server.learn(bytes(self.data), self.project)


def _teach(fd: int) -> None:
    """In a command: send the server what it learned (store/known_complete.py)."""
    lessons = {"complete": known_complete.learned(), "scanned": unchanged_folders.scanned()}
    with contextlib.suppress(OSError), os.fdopen(fd, "wb") as out:
        out.write(marshal.dumps(lessons))


def _claim(where: Place) -> int:
    """Make the store's place (a folder only this user may enter) and lock
    it; the lock's descriptor, held for as long as this server listens."""
    os.makedirs(os.path.dirname(where.folder), exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(where.folder, 0o700)
    check_private_folder(where.folder)
    lock = os.open(where.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise AlreadyServed(where.socket) from None
    return lock


def _listen(where: Place) -> socket.socket:
    """Record this process's pid, then listen on the place's socket (its
    lock held: a socket file found there is a dead server's)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(where.socket)
    staged = f"{where.pid_file}.{os.getpid()}"
    with open(staged, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(staged, where.pid_file)  # the pid a client sees is whole
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(where.socket)
    listener.listen(64)
    return listener


def _python_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str | None]:
    """The variables that choose what Python imports."""
    names = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONNOUSERSITE", "PYTHONSAFEPATH")
    return {name: env.get(name) for name in names}


def _same_user(conn: socket.socket) -> bool:
    _pid, uid = peer_credentials(conn)
    return uid == os.getuid()


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int], bytes]:
    """One request line, the descriptors passed with it, and what came
    after it (a signal the client sent at once: its command's)."""
    conn.settimeout(REQUEST_TIMEOUT_S)
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    try:
        while b"\n" not in data:
            more = conn.recv(65536)
            if not more or len(data) > REQUEST_LIMIT:
                raise ValueError("incomplete request")
            data += more
        line, _, after = data.partition(b"\n")
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds, after


def _let_go_of_stdio() -> None:
    """In a command that is done: put /dev/null on descriptors 0-2, so
    that whoever reads the client's output (a pipe) sees its end now, not
    once this process has been torn down."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _reopen_stdio() -> None:
    """Python's standard streams on the descriptors just put at 0-2."""
    encoding = os.environ.get("PYTHONIOENCODING", "").split(":")[0] or "utf-8"
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=encoding)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding=encoding, line_buffering=os.isatty(1)
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding=encoding, errors="backslashreplace",
        line_buffering=True,
    )  # fmt: skip


def _end_with_parent(parent: int) -> None:
    """SIGTERM this process when the server dies (Linux's parent-death signal)."""
    libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the server died before the call
        os._exit(128 + signal.SIGTERM)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- control


def start(home: Path, idle: float = DEFAULT_IDLE_S) -> dict[str, Any]:
    """Start the store's server (if none runs) and wait until it answers;
    its status. Raises ``KilnError`` if it does not come up."""
    running = ask(home, {"op": "status"})
    if running is not None and not running.get("stopping"):
        return running
    child = spawn(home, idle)
    log = home / LOG_NAME
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        status = ask(home, {"op": "status"}, timeout=START_TIMEOUT_S)
        if status is not None and not status.get("stopping"):
            return status
        # A start that lost the race to another: wait for the winner to answer.
        if child.poll() not in (None, EXIT_ALREADY_SERVED):
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    raise errors.KilnError(
        "the kiln server did not start" + (f": {' / '.join(tail)}" if tail else ""),
        hint=f"see {log}",
    )


def stop(home: Path, wait: float = 30.0) -> dict[str, Any] | None:
    """Ask the store's server to exit once its running commands finish, and
    wait until it has; its answer, or None if none was running."""
    answer = ask(home, {"op": "stop"})
    if answer is None:
        return None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and alive(int(answer["pid"])):
        time.sleep(0.02)
    return answer


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> None:
    """``python -m kiln.server.daemon --home STORE``: what ``kiln server start`` runs."""
    parser = argparse.ArgumentParser(prog="kiln.server.daemon")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    try:
        server = Server(args.home, args.idle)
    except AlreadyServed:
        _log("a server for this store is already running")
        sys.exit(EXIT_ALREADY_SERVED)
    except Untrusted as e:
        _log(f"cannot listen: {e}")
        sys.exit(1)
    server.warm()
    server.serve()


if __name__ == "__main__":
    main()
