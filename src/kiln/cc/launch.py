"""Running one launcher call: in this process, or handed to the service.

``python -m kiln.cc.launch ARGV0 ARGS...`` is what the native ``kiln-cc``
client runs when no resident service answers (and ``kiln cc COMPILER
ARGS...`` comes here too). ``make_handler`` gives the resident service
(``kiln.cc.service``) its answer for each call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from kiln import errors
from kiln.cc.invocation import Exec, Invocation, Ran

FLUSH_REQUEST = "--kiln-flush-stats"  # (argv[1] of a call from `kiln cc --stats`)


def make_handler(home: Path) -> Callable[[Invocation], Ran | Exec]:
    """The service's handler: one compile cache on the store at ``home``
    (callable; its ``close`` writes what is pending)."""
    from kiln.cc.compiles import CompileCache
    from kiln.cc.stats import FLUSH_DELAY_S
    from kiln.remote.blocking import open_remote_cache
    from kiln.store.local import Store

    store = Store(home)
    return CompileCache(store, FLUSH_DELAY_S, open_remote_cache(store))


def flush_service(home: Path) -> None:
    """Have the store's cc service, if one runs, write its pending counts
    (so that ``kiln cc --stats`` shows every call made so far)."""
    import socket

    from kiln.cc.service import socket_path
    from kiln.cc.wire import WireError, decode_reply, encode_request
    from kiln.server.client import Untrusted, check_private_folder, peer_credentials

    path = socket_path(home)
    try:
        check_private_folder(os.path.dirname(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            if peer_credentials(sock)[1] != os.getuid():
                return
            sock.sendall(encode_request(current(["kiln-cc", FLUSH_REQUEST])))
            sock.shutdown(socket.SHUT_WR)
            decode_reply(b"".join(iter(lambda: sock.recv(65536), b"")))
    except (OSError, Untrusted, WireError):
        return  # no service, or not one to talk to: nothing pending anywhere


def current(argv: list[str], launcher: str = "") -> Invocation:
    """This process's call of the launcher."""
    umask = os.umask(0o022)
    os.umask(umask)
    return Invocation(list(argv), os.getcwd(), dict(os.environ), launcher, umask)


def answer_here(inv: Invocation, home: Path | None = None) -> Ran | Exec:
    """Answer ``inv`` in this process. A store that cannot be used makes
    the call run the compiler directly, after a warning: a broken cache
    must not stop a build."""
    from kiln.cc.compiles import CompileCache
    from kiln.remote.blocking import open_remote_cache
    from kiln.store.local import Store

    try:
        store = Store(home)
    except errors.KilnError as e:
        sys.stderr.write(f"kiln cc: not caching: {e}\n")
        return _direct(inv)
    remote = open_remote_cache(store)
    cache = CompileCache(store, remote=remote)
    try:
        return cache.handle(inv)
    finally:
        cache.close()
        store.close()
        for warning in remote.warnings if remote is not None else ():
            sys.stderr.write(f"kiln cc: warning: {warning}\n")


def _direct(inv: Invocation) -> Ran | Exec:
    from kiln.cc import compiler

    split = compiler.split_launch(inv.argv)
    if split is None:
        return Ran(2)
    try:
        found = compiler.find(split[0], inv.cwd, inv.env.get("PATH", os.defpath), inv.launcher)
    except compiler.NotFound as e:
        return Ran(127, stderr=f"kiln cc: {e}\n".encode())
    return Exec([found.path, *split[1]])


def carry_out(reply: Ran | Exec) -> int:
    """Do what the reply says: pass the streams on and return the exit
    code, or become the compiler (does not return)."""
    if isinstance(reply, Exec):
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(reply.argv[0], reply.argv)
        except OSError as e:
            sys.stderr.write(f"kiln cc: cannot run {reply.argv[0]}: {e.strerror}\n")
            return 127
    for fd, data in ((1, reply.stdout), (2, reply.stderr)):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    return reply.exit_code


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write("usage: python -m kiln.cc.launch ARGV0 ARGS...\n")
        sys.exit(2)
    launcher = args[0] if "/" in args[0] else ""
    sys.exit(carry_out(answer_here(current(args, launcher))))


if __name__ == "__main__":
    main()
