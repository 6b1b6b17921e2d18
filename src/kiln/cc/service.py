"""The resident cc service: answers the native ``kiln-cc`` client.

Each compile a build system starts through the launcher is one connection:
one request (``kiln.cc.wire``), one reply, each connection in a thread of
its own (``make -j8`` sends eight at once). What to answer is the
``handler``'s business (``kiln.cc.launch.make_handler``); this module only
carries invocations to it, and only from this user's processes.

The resident server (``kiln.server.daemon``) forks the service as a child
at start-up (``run``); it listens next to the server's own socket, in the
folder only this user may enter, and ends with the server.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from kiln.cc.invocation import Exec, Invocation, Ran
from kiln.cc.wire import REQUEST_TIMEOUT_S, WireError, encode_reply, read_request
from kiln.server.client import check_private_folder, peer_credentials, place

Handler = Callable[[Invocation], Ran | Exec]
EXIT_INTERNAL = 70  # (EX_SOFTWARE) what a compile whose handler failed exits with
DRAIN_S = 60.0  # how long a stopping service lets its running compiles finish
MAX_WORKERS = 256  # compiles answered at once (make -j256); more wait their turn


def socket_path(home: Path) -> str:
    """Where the cc service of a store (and of this installation) listens."""
    server = place(home).socket
    return server.removesuffix(".sock") + ".cc.sock"


class Activity:
    """When the service last took a request, readable by the process that
    forked it (an anonymous shared mapping): the server's idle timer."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 8)
        self.touch()

    def touch(self) -> None:
        struct.pack_into("d", self._map, 0, time.monotonic())

    def last(self) -> float:
        """The ``time.monotonic()`` of the last request."""
        return float(struct.unpack_from("d", self._map, 0)[0])


class CcService:
    """Listens at ``path`` (in a folder private to this user) and answers
    each connection of this user with ``handler``."""

    def __init__(
        self,
        path: str,
        handler: Handler,
        log_file: str = "the kiln server's log",
        activity: Activity | None = None,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        """Listen at once; raises ``Untrusted`` if the socket's folder is not
        private, ``OSError`` if it cannot be listened at."""
        check_private_folder(os.path.dirname(path))
        self.path = path
        self.handler = handler
        self.log_file = log_file
        self.activity = activity
        self.request_timeout = request_timeout
        self.uid = os.getuid()
        self.stopping = threading.Event()
        # Long-lived workers, started as needed: a sandbox started from a
        # thread ends when that thread does (bubblewrap's --die-with-parent
        # follows the thread), so a thread per connection would start a new
        # sandbox for every compile.
        self._connections: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        # Workers started, waiting for a connection, and connections not yet
        # answered; connections queued while every worker was busy.
        self._workers = self._idle = self._pending = self._waiting = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead service's (the server's lock is held)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self._inode = os.lstat(path).st_ino
        self.listener.listen(128)

    def serve_forever(self) -> None:
        """Answer connections until ``stop``; returns once the listener is
        closed (compiles still running go on: see ``drain``)."""
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                if self.stopping.is_set():
                    break
                time.sleep(0.01)  # (out of descriptors: a moment for some to close)
                continue
            if self.activity is not None:
                self.activity.touch()
            with self._lock:
                self._pending += 1
                if self._idle > 0:  # a worker waits: this connection is its
                    self._idle -= 1
                elif self._workers < MAX_WORKERS:
                    self._workers += 1
                    threading.Thread(target=self._work, args=(conn,), daemon=True).start()
                    continue
                else:  # every worker busy: the first to finish takes it
                    self._waiting += 1
            self._connections.put(conn)

    def __enter__(self) -> CcService:
        """Serve from a thread of this process until the block ends."""
        self._serving = threading.Thread(target=self.serve_forever, daemon=True)
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._serving.join()
        self.drain()

    def stop(self) -> None:
        """Take no more connections and remove the socket file; safe from a
        signal handler and from other threads."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._inode:  # (not a newer service's)
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()

    def drain(self, timeout: float | None = DRAIN_S) -> bool:
        """Wait for the running compiles to be answered; whether all were."""
        with self._answered:
            done = self._answered.wait_for(lambda: self._pending == 0, timeout)
            for _ in range(self._workers):
                self._connections.put(None)  # (each worker ends at one of these)
        return done

    def _work(self, conn: socket.socket | None) -> None:
        """Answer ``conn``, then each connection handed to this worker."""
        while conn is not None:
            try:
                self._serve(conn)
            finally:
                with self._answered:
                    self._pending -= 1
                    self._answered.notify_all()
                    if self._waiting > 0:  # one queued while all were busy: ours
                        self._waiting -= 1
                    else:
                        self._idle += 1
            conn = self._connections.get()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._answer(conn)
        except Exception:  # (never lose a failure silently)
            _log(f"cc service: {traceback.format_exc()}")

    def _answer(self, conn: socket.socket) -> None:
        _pid, uid = peer_credentials(conn)
        if uid != self.uid:
            _log(f"cc service: refused a connection from uid {uid}")
            return
        try:
            inv = read_request(conn, self.request_timeout)
        except WireError as e:
            _log(f"cc service: bad request: {e}")
            return
        conn.settimeout(None)  # (a compile may take minutes; its client waits)
        data = self._reply(inv)
        try:
            conn.sendall(data)
        except OSError as e:  # the client is gone (killed, or make stopped)
            _log(f"cc service: lost a client: {e}")

    def _reply(self, inv: Invocation) -> bytes:
        try:
            return encode_reply(self.handler(inv))
        except Exception as e:
            _log(f"cc service: {inv.argv!r} failed:\n{traceback.format_exc()}")
            line = (str(e).splitlines() or [""])[0]
            message = f"kiln cc: internal error: {type(e).__name__}: {line}; see {self.log_file}\n"
            return encode_reply(Ran(EXIT_INTERNAL, b"", message.encode(errors="replace")))


_log_lock = threading.Lock()


def _log(message: str) -> None:
    """A line of the server's log (its stderr), as ``kiln.server.daemon`` writes them."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with _log_lock:
        sys.stderr.write(f"{stamp} {message.rstrip()}\n")
        sys.stderr.flush()


def run(home: Path, log_file: str, activity: Activity | None = None) -> int:
    """The forked service process of a store's server (which has set it to
    get SIGTERM when the server dies): serve until SIGTERM; the exit code."""
    try:
        # (kiln.cc.launch may not be there yet: the server still starts)
        from kiln.cc.launch import make_handler

        handler = make_handler(home)
        service = CcService(socket_path(home), handler, log_file, activity)
    except Exception:
        _log(f"cc service: cannot start:\n{traceback.format_exc()}")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _log(f"cc service: listening at {service.path} (pid {os.getpid()})")
    service.serve_forever()
    if not service.drain():
        _log("cc service: stopped with compiles still running (their clients fall back)")
    close = getattr(handler, "close", None)
    if close is not None:
        close()
    _log("cc service: stopped")
    return 0
