"""The ``kiln`` command: parses arguments and calls the Python API.

Exit codes (see ``kiln.errors.ExitCode``): 0 success, 1 the command found a
problem, 2 bad usage or input, 3 not found in the store, 4 store unusable, 130 interrupted.
User errors print one line (and a hint), never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

import click

from kiln import __version__
from kiln.errors import ExitCode, KilnError, bad_usage

# Each command: its module, its function there, and its summary for
# `kiln --help` (the first sentence of its docstring; tests/test_cli.py
# checks they agree). A module is imported only when one of its commands
# runs: `kiln store put` does not load the build engine, and `kiln --help`
# loads no command module at all.
COMMANDS = {
    "build": ("kiln.cli.build", "build",
              "Build TARGETS (default: every target) of the project's kilnfile.py."),
    "cc": ("kiln.cli.cc", "cc",
           'Compile through the cache: make CC="kiln cc gcc" (faster: kiln-cc, see --setup).'),
    "check": ("kiln.cli.check", "check", "Check that results are reproducible."),
    "clean": ("kiln.cli.clean", "clean", "Remove TARGETS' outputs (default: all) from kiln-out/."),
    "doctor": ("kiln.cli.doctor", "doctor",
               "Check what this machine offers Kiln, with fixes for what is missing."),
    "gc": ("kiln.cli.gc", "gc_command", "Delete blobs and cache entries that no root reaches."),
    "gocacheprog": ("kiln.cli.gocache", "gocacheprog",
                    'Serve Go\'s build cache from the store: set GOCACHEPROG="kiln gocacheprog".'),
    "graph": ("kiln.cli.graph", "graph",
              "Print the step graph of TARGET's last build as DOT (or JSON)."),
    "inputs": ("kiln.cli.graph", "inputs",
               "List the source files and fetched inputs TARGET's last build read."),
    "log": ("kiln.cli.build", "log",
            "Print the stdout and stderr of TARGET's steps in its last build."),
    "prefetch": ("kiln.cli.fetch", "prefetch",
                 "Download URL into the store and print its digest, to pin in a build file "
                 "as fetch.url(URL, digest=...)."),
    "remote": ("kiln.cli.remote", "remote",
               "The REAPI remote cache and execution engine this machine uses."),
    "root": ("kiln.cli.gc", "root", "Named GC roots: what `kiln gc` never deletes."),
    "server": ("kiln.cli.server", "server", "A resident server that makes builds start warm."),
    "show": ("kiln.cli.build", "show",
             "List TARGET's steps in its last build: keys, inputs, outputs, status."),
    "store": ("kiln.cli.store", "store", "Put content into the store, get it out, check it."),
    "targets": ("kiln.cli.build", "targets_command",
                "List the targets of the project's kilnfile.py with their docstrings."),
    "trace": ("kiln.cli.build", "trace",
              "Write the last build as a Chrome trace (open it in ui.perfetto.dev)."),
    "wasm": ("kiln.cli.wasm", "wasm",
             "Run WebAssembly (WASI preview 1) modules as deterministic actions."),
    "worker": ("kiln.cli.remote", "worker",
               "Run Kiln steps for a REAPI engine's clients, as one of its workers."),
    "why": ("kiln.cli.build", "why",
            "Say why each step of the last build ran instead of being a cache hit."),
}  # fmt: skip


class _Commands(click.Group):
    """The command group, loading each command from ``COMMANDS`` on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        where = COMMANDS.get(name)
        if where is None:
            return None
        module, function, _ = where
        return getattr(importlib.import_module(module), function)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """An unknown command is an error that names the closest one."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            guess = f"did you mean `kiln {close[0]}`? " if close else ""
            raise KilnError(
                f"no command {name!r}",
                hint=f"{guess}`kiln --help` lists the commands",
                exit_code=ExitCode.BAD_INPUT,
            )
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands, summaries from ``COMMANDS``: no command is loaded."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, click.Command(name, help=summary).get_short_help_str(limit))
            for name, (_, _, summary) in sorted(COMMANDS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 problem found, 2 bad usage or input, "
    "3 not in the store (or not built yet), 4 store unusable, 130 interrupted.",
)
@click.version_option(__version__, "--version", "-V", prog_name="kiln")
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    envvar="KILN_HOME",
    help="Store folder (default: $KILN_HOME, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).",
)
@click.option(
    "-C",
    "directories",
    multiple=True,
    metavar="DIR",
    help="Run as if kiln was started in DIR (several: each relative to the one before).",
)
@click.pass_context
def cli(ctx: click.Context, store: str | None, directories: tuple[str, ...]) -> None:
    """Kiln: every build step a pure, memoized, sandboxed function.

    The store holds content by SHA-256 digest, written as <hex>/<size>.
    """
    for folder in directories:
        enter(folder)
    ctx.ensure_object(dict)
    ctx.obj["store"] = store


def enter(folder: str) -> None:
    """``kiln -C DIR``: work in ``folder`` from now on."""
    try:
        os.chdir(folder)
    except OSError as e:
        raise KilnError(
            f"-C {folder}: cannot enter the folder ({e.strerror})",
            hint="give the path of an existing folder, e.g. the project root",
            exit_code=ExitCode.BAD_INPUT,
        ) from None


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for ``--json`` (before any ``--``)."""
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def fail(error: KilnError, as_json: bool) -> int:
    """Report ``error``: one line on stderr, and with ``--json`` also
    ``{"ok": false, "error": ..., "hint": ...}`` on stdout; its exit code."""
    click.echo(f"kiln: error: {error.render()}", err=True)
    if as_json:
        _json_error(error.message, error.hint)
    return error.exit_code


def _json_error(message: str, hint: str | None) -> None:
    from kiln.cli.report import write_json  # (start-up: only on a failure)

    write_json({"ok": False, "error": message, "hint": hint})


def run(argv: list[str] | None, stamp_checked: bool = False) -> int:
    """Run one command; its exit code. ``stamp_checked``: the caller has
    just found that the build stamp of this ``kiln build`` cannot answer."""
    as_json = wants_json(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(
            args=argv, prog_name="kiln", standalone_mode=False,
            obj={"stamp_checked": stamp_checked},
        )  # fmt: skip
    except KilnError as e:
        return fail(e, as_json)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        return fail(bad_usage(e.format_message(), _command_path(e.ctx)), as_json)
    except click.ClickException as e:
        return fail(KilnError(e.format_message(), exit_code=ExitCode.BAD_INPUT), as_json)
    except (click.Abort, KeyboardInterrupt):
        click.echo("kiln: interrupted", err=True)
        if as_json:
            _json_error("interrupted", None)
        return ExitCode.INTERRUPTED
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return fail(KilnError(f"{where}{e.strerror or e}"), as_json)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.FAILED
    return ExitCode.OK


def _command_path(ctx: click.Context | None) -> str:
    return ctx.command_path if ctx is not None else "kiln"


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
