"""The ``kiln`` entry point, and the no-op build answered before the CLI loads.

``kiln build [TARGET...]`` is the command run most often, and most often
there is nothing to do. When the build stamp (``engine/stamp.py``) shows
that no file the last build read has changed, this module answers from
the stamp alone (putting back any output removed since), importing only
the standard library's sqlite3 and a few small Kiln modules. Anything
else, or any doubt, goes to the full CLI (``kiln.cli.app``), which checks the
same stamp the same way and then builds.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

# (store home, project root, stamp key) whose stamp this process found not
# to answer: the full CLI, run next in the same process, skips checking it.
_declined: tuple[str, str, str] | None = None

# Options of `kiln build` that do not change what a no-op build answers.
_FLAGS = {"-k", "--keep-going", "--allow-unpinned"}
_VALUED = {"-j", "--jobs"}


def build_targets(argv: list[str]) -> list[str] | None:
    """The targets of a plain ``kiln build`` command line, or None for
    anything the quick path leaves to the CLI (other options, --json...)."""
    if not argv or argv[0] != "build":
        return None
    targets: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg in _FLAGS:
            continue
        if arg in _VALUED:
            if not _jobs(next(args, "")):
                return None
        elif arg.startswith("-j") and _jobs(arg[2:]):
            continue
        elif arg.startswith("-"):
            return None
        else:
            targets.append(arg)
    return targets


def _jobs(text: str) -> bool:
    return text.isdigit() and int(text) >= 1


def noop_build(argv: list[str]) -> int | None:
    """Answer ``kiln build`` from its stamp: the exit code, or None when a
    real build (or the full CLI) is needed."""
    from pathlib import Path

    from kiln.engine import stamp
    from kiln.engine.root import find_root
    from kiln.errors import KilnError
    from kiln.store import db

    started = time.perf_counter()
    targets = build_targets(argv)
    if targets is None:
        return None
    home = db.default_home()
    if not (home / "kiln.db").is_file():
        return None
    try:
        root = find_root(Path.cwd())
        key = stamp.stamp_key(targets or None)
        conn = db.connect(home / "kiln.db")
    except (KilnError, OSError, db.sqlite3.Error):
        return None  # the CLI reports it properly
    global _declined
    try:
        answer = stamp.answer(conn, home / "cas", root, key)
    except (OSError, db.sqlite3.Error):
        return None
    finally:
        conn.close()
    if answer is None:
        _declined = (str(home), str(root), key)
        return None
    say_unchanged(*answer, time.perf_counter() - started)
    return 0


def declined(home: Path, root: Path, key: str) -> bool:
    """Whether this process already found that stamp unable to answer."""
    return _declined == (str(home), str(root), key)


def mark_declined(stamp: tuple[str, str, str] | None) -> None:
    """Note a stamp found stale by the client a server runs a command for."""
    global _declined
    _declined = stamp


def say_unchanged(stamp: dict[str, Any], restored: list[str], seconds: float) -> None:
    """What `kiln build` prints when its stamp shows nothing changed."""
    for name, (output, _) in sorted(stamp["targets"].items()):
        sys.stdout.write(f"{name}: {os.path.relpath(output)}\n")
    put_back = f"; restored {', '.join(restored)} from the store" if restored else ""
    sys.stderr.write(
        f"kiln: nothing to do: no source changed since the last build{put_back} "
        f"({stamp['steps']} steps, {seconds:.3f} s)\n"
    )


def main() -> None:
    """``kiln``: a no-op build answered here; a build or check handed to the
    store's resident server if one runs (``kiln.server.daemon``); everything else,
    and all of it without a server, by ``kiln.cli.app``."""
    argv = sys.argv[1:]
    code = noop_build(argv)
    if code is None:
        from kiln.server import client as server_client
        from kiln.store import db

        code = server_client.delegate(db.default_home(), argv, _declined)
    if code is None:
        from kiln.cli.app import main as cli_main

        cli_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
