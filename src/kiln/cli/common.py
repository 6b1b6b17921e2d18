"""What the commands share: opening the store, JSON output, size and age
arguments, status lines on a terminal."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from kiln.model.digest import Digest
from kiln.store import Store

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def open_store(ctx: click.Context) -> Store:
    store = Store(ctx.obj.get("store"))
    ctx.call_on_close(store.close)
    return store


def asdict(obj: Any) -> dict[str, Any]:
    """A report dataclass as a dict."""
    return dataclasses.asdict(obj)


def parse_size(text: str) -> int:
    """'500M', '10G', '1.5GiB', '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 500M, 10G or 4096")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not m:
        raise click.BadParameter(f"{text!r} is not an age; write e.g. 45s, 90m, 12h, 30d or 2w")
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def digest_arg(text: str) -> Digest:
    return Digest.parse(text)


def status(message: str) -> Any:
    """A spinner with ``message`` on a terminal's stderr; else one plain
    line when it starts and one, with the time it took, when it ends."""
    if sys.stderr.isatty():
        from rich.console import Console  # (start-up: rich only on a terminal)

        return Console(stderr=True).status(message)
    return _plain_status(message)


@contextlib.contextmanager
def _plain_status(message: str) -> Iterator[None]:
    click.echo(f"kiln: {message}...", err=True)
    started = time.monotonic()
    yield
    click.echo(f"kiln: done {message} ({time.monotonic() - started:.1f} s)", err=True)


class HashingProgress:
    """A transient status line on a terminal's stderr while a put reads files.

    Nothing is shown (and rich is not even imported) unless stderr is a
    terminal and the put has to read many files: re-puts stay fast.
    """

    def __init__(self) -> None:
        self.status: Any = None
        self._enabled = sys.stderr.isatty()

    def __call__(self, files: int, nbytes: int) -> None:
        if not self._enabled:
            return
        text = f"hashing: {files} files, {nbytes / (1 << 20):.1f} MiB read"
        if self.status is None:
            from rich.console import Console  # (start-up: only once a put reads many files)

            self.status = Console(stderr=True).status(text)
            self.status.start()
        else:
            self.status.update(text)

    def __enter__(self) -> HashingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
