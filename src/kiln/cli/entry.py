"""The ``kiln`` entry point, and the no-op build answered before the CLI loads.

``kiln build [TARGET...]`` is the command run most often, and most often
there is nothing to do. A build or check goes first to the store's
resident server if one runs (``kiln.server.client``): it watches the
projects it builds, so it answers a no-op build without looking at the
sources again. Without a server, a plain ``kiln build`` command line (its
options are those of ``kiln.cli.build_options``) is put to the build stamp
(``kiln.api.answer_from_stamp``), importing only the standard library's
sqlite3 and a few small Kiln modules; if the stamp cannot answer, the full
command line tool (``kiln.cli.app``) runs it, told that the stamp was
checked already.
Leading ``-C DIR`` options are applied first, so that all three see the
command as if it was started in DIR.

The native client (``kiln server install-client``) runs this with
``KILN_SERVER_TRIED`` set when it asked the server already and was not
served, or found one it does not trust (and warned): the server is not
asked twice, nor does a warning show twice.
"""

from __future__ import annotations

import os
import sys

TRIED_VARIABLE = "KILN_SERVER_TRIED"  # as client.c's TRIED


def main() -> None:
    """``kiln``: a no-op build answered here; a build or check handed to the
    store's resident server if one runs; Go's cache program served with
    only what it needs loaded; everything else, and all of it without a
    server, by ``kiln.cli.app``."""
    argv = enter_directories(sys.argv[1:])
    # (gone before anything runs: the command never sees it)
    asked = os.environ.pop(TRIED_VARIABLE, None) is not None
    code = None
    if argv[:1] == ["gocacheprog"]:  # started by every `go` command: start fast
        from kiln.server import client
        from kiln.store import db

        if not asked:
            code = client.delegate(db.default_home(), argv)  # the server has it all loaded
        if code is None:
            from kiln.gocache.serve_fast import serve_command

            code = serve_command(argv[1:])
    if code is None:
        code = _stamp_server_or_cli(argv, asked)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # (None: the descriptor was closed when Kiln started)
            stream.flush()
    # Skip interpreter teardown (freeing every object one by one costs
    # several ms on large trees): only flushed output matters from here.
    os._exit(code)


def _stamp_server_or_cli(argv: list[str], asked: bool) -> int:
    from kiln.server import client
    from kiln.store import db

    # A running server answers a no-op build from what it watches (no stat
    # per source), and runs anything else warm.
    home = db.default_home()
    code = None if asked else client.delegate(home, argv)
    if code is not None:
        return code
    if not asked:
        client.start_on_build(home, argv)  # ([server] start = "on-build")
    from kiln.api import answer_from_stamp
    from kiln.cli import build_options
    from kiln.cli.report import show_report

    stamp_checked = False
    parsed = build_options.parse(argv)
    if parsed is not None:
        request, as_json = parsed
        report = answer_from_stamp(request)
        if report is not None:
            show_report(report, as_json)
            return 0
        stamp_checked = True
    from kiln.cli.app import run  # (start-up: the rest only once the stamp could not answer)

    return run(argv, stamp_checked=stamp_checked)


def enter_directories(argv: list[str]) -> list[str]:
    """Apply the leading ``-C DIR`` options here, so that the no-op path and
    the server see the command as if started in DIR; the command line
    without them. One that cannot be applied is left (with what follows)
    for ``kiln.cli.app`` to report."""
    while argv and argv[0].startswith("-C"):
        if argv[0] != "-C":
            folder, rest = argv[0][2:], argv[1:]  # -CDIR
        elif len(argv) > 1:
            folder, rest = argv[1], argv[2:]
        else:
            break
        try:
            os.chdir(folder)
        except OSError:
            break
        argv = rest
    return argv
