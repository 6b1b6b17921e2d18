"""The options of ``kiln build``, defined once.

The fast path (``kiln.cli.entry``) parses a plain ``kiln build`` command
line with ``parse`` (standard library only), and the click command is made
from the same table (``kiln.cli.build``), so the two cannot disagree on
what an option means. ``-v`` and ``--watch`` are the click command's
alone: ``parse`` returns None for an option not in the table, so a
command line with one of them is never answered by the fast path (nor by
the server's no-op answer, ``kiln.server.quick``).
"""

from __future__ import annotations

import re

from kiln.api import BuildRequest

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


class Option:
    """One option: its flags, the field of ``BuildRequest`` it sets (or
    ``as_json``), its help, and what it takes: nothing (a flag), a count
    (``-j 4``) or a text (``--remote-cache URL``, given as ``metavar``);
    ``repeatable``: a setting (``-D NAME=VALUE``, see ``parse_setting``),
    given any number of times."""

    __slots__ = ("field", "flags", "help", "metavar", "repeatable", "takes_count")

    def __init__(
        self, flags: tuple[str, ...], field: str, help: str, takes_count: bool = False,
        metavar: str | None = None, repeatable: bool = False,
    ) -> None:  # fmt: skip
        self.flags = flags
        self.field = field
        self.help = help
        self.takes_count = takes_count
        self.metavar = metavar
        self.repeatable = repeatable


def parse_setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``-D`` as (name, value); ValueError saying what is
    wrong for anything else."""
    name, eq, value = text.partition("=")
    if not eq:
        raise ValueError(f"{text!r} is not NAME=VALUE")
    if not _SETTING_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a setting name (letters, digits, '_', '.', '-'; not first a digit)"
        )
    return name, value


BUILD_OPTIONS = (
    Option(
        ("-j", "--jobs"), "jobs", "Steps run at once (default: CPU cores).", takes_count=True
    ),
    Option(
        ("-k", "--keep-going"), "keep_going", "After a failure, still run what does not need it."
    ),
    Option(
        ("--allow-unpinned",), "allow_unpinned",
        "Let fetches without a digest download, then fail showing the digest to pin.",
    ),
    Option(
        ("--remote-cache",), "remote_cache",
        "Look results up in this REAPI cache (grpc://HOST:PORT or grpcs://) before "
        "running steps, and push what ran [env: KILN_REMOTE_CACHE].", metavar="URL",
    ),
    Option(
        ("--remote-exec",), "remote_exec",
        "Run wasm and native steps on this REAPI engine's workers "
        "[env: KILN_REMOTE_EXEC].", metavar="URL",
    ),
    Option(
        ("--remote-fallback",), "remote_fallback",
        "Build locally if the execution server cannot be used (else: an error).",
    ),
    Option(
        ("-D", "--define"), "settings",
        "Give the build file's setting NAME the value VALUE (read with "
        "`setting(NAME)`); repeatable.", metavar="NAME=VALUE", repeatable=True,
    ),
    Option(("--json",), "as_json", "Print a JSON report."),
)  # fmt: skip
_BY_FLAG = {flag: option for option in BUILD_OPTIONS for flag in option.flags}


def parse(argv: list[str]) -> tuple[BuildRequest, bool] | None:
    """A plain ``kiln build ...`` command line as (its request, whether
    ``--json`` was given); None for anything else: another command, a
    global option, an option not in the table, a bad count (the full
    command line tool then parses it, and reports what is wrong)."""
    if not argv or argv[0] != "build":
        return None
    fields: dict[str, object] = {}
    targets: list[str] = []
    settings: list[tuple[str, str]] = []
    args = iter(argv[1:])
    for arg in args:
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg[:2] in ("-j", "-D") and arg not in _BY_FLAG:  # -j4, -Dname=value
            flag, eq, inline = arg[:2], "=", arg[2:]
        option = _BY_FLAG.get(flag)
        if option is None:
            if arg.startswith("-"):
                return None
            targets.append(arg)
        elif option.repeatable:
            try:
                settings.append(parse_setting(inline if eq else next(args, "")))
            except ValueError:
                return None
        elif option.takes_count:
            count = inline if eq else next(args, "")
            if not (count.isdigit() and int(count) >= 1):
                return None
            fields[option.field] = int(count)
        elif option.metavar:
            text = inline if eq else next(args, None)
            if not text:
                return None
            fields[option.field] = text
        elif eq:
            return None  # a flag given a value
        else:
            fields[option.field] = True
    as_json = bool(fields.pop("as_json", False))
    return BuildRequest(targets, settings=tuple(settings), **fields), as_json
