"""``kiln gocacheprog`` without the command-line framework: every ``go``
command starts it once, so it loads only the store and the protocol.
Anything but ``[--namespace NS | -n NS]`` goes to the full command line."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.store.local import Store


def namespace_of(args: list[str]) -> str | None:
    """The namespace the arguments name (default: $KILN_GO_NAMESPACE, else
    "default"), or None when they ask for more than serving."""
    namespace = os.environ.get("KILN_GO_NAMESPACE") or "default"
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--namespace", "-n") and rest:
            namespace = rest.pop(0)
        elif arg.startswith("--namespace="):
            namespace = arg.partition("=")[2]
        else:
            return None
    return namespace


def serve_command(args: list[str]) -> int | None:
    """Serve one ``go`` command's session; None to leave it to the full CLI."""
    namespace = namespace_of(args)
    if namespace is None:
        return None
    from kiln.errors import KilnError
    from kiln.gocache.protocol import ProtocolError
    from kiln.store.db import default_home
    from kiln.store.local import Store

    try:
        with Store(default_home()) as store:
            serve_with_remote(store, namespace)
    except ProtocolError as e:
        print(f"kiln gocacheprog: {e}; ending the session", file=sys.stderr)
        return 1
    except KilnError as e:
        print(f"kiln gocacheprog: error: {e.render()}", file=sys.stderr)
        return e.exit_code
    return 0


def serve_with_remote(store: Store, namespace: str) -> None:
    """Serve a session on stdin and stdout, sharing entries through the
    configured remote cache if there is one (its warnings go to stderr)."""
    from kiln.gocache.entries import GoCache
    from kiln.gocache.session import serve
    from kiln.remote.blocking import open_remote_cache

    remote = open_remote_cache(store)
    try:
        serve(GoCache(store, namespace, remote), sys.stdin.buffer, sys.stdout.buffer)
    finally:
        if remote is not None:
            remote.close()
            for warning in remote.warnings:
                print(f"kiln gocacheprog: warning: {warning}", file=sys.stderr)
