"""`kiln prefetch`: download once into the store and print the digest to pin."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from kiln.cli.common import json_option, open_store
from kiln.cli.report import write_json
from kiln.exec.base import ExecHooks
from kiln.exec.fetch import FetchExecutor
from kiln.exec.kinds import local_context
from kiln.exec.specs import UNPINNED, FetchSpec, url_file_name


@click.command("prefetch")
@click.argument("url")
@click.option("--unpack", is_flag=True, help="Pin the unpacked tree (tar, tgz, zip) instead.")
@click.option(
    "--strip",
    type=click.IntRange(min=0),
    default=0,
    help="With --unpack: drop N leading path components.",
)
@click.option(
    "--auth",
    "auth",
    multiple=True,
    metavar="SPEC",
    help="Credentials by reference: bearer:VAR, basic:USER_VAR:PASS_VAR or netrc.",
)
@json_option
@click.pass_context
def prefetch(
    ctx: click.Context, url: str, unpack: bool, strip: int, auth: tuple[str, ...], as_json: bool
) -> None:
    """Download URL into the store and print its digest, to pin in a build
    file as fetch.url(URL, digest=...). The content stays in the store (GC
    root prefetch:URL), so the build that pins it does not download again."""
    name = url_file_name(url) or "download"
    spec = FetchSpec(
        "url", "tree" if unpack else "file", UNPINNED, name, (url,), strip=strip, auth=auth
    )
    spec.check("kiln prefetch")
    store = open_store(ctx)
    with _DownloadBar(quiet=as_json) as bar:
        fetcher = FetchExecutor(local_context(store), ExecHooks(on_download=bar.update))
        pin, digest, _ = fetcher.prefetch(spec)
    with store.writing():
        store.add_root(f"prefetch:{spec.mode}:{url}", digest, "tree" if unpack else "blob")
    if as_json:
        write_json({"url": url, "mode": spec.mode, "digest": pin, "stored": str(digest)})
        return
    click.echo(pin)
    click.echo(f'kiln: pin it: fetch.url("{url}"{", unpack=True" if unpack else ""}'
               f'{f", strip={strip}" if strip else ""}, digest="{pin}")', err=True)  # fmt: skip


class _DownloadBar:
    """A rich progress bar on stderr while a download runs (TTY only)."""

    def __init__(self, quiet: bool) -> None:
        console = Console(stderr=True)
        self._progress = Progress(
            "{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=console, disable=quiet or not console.is_terminal, transient=True,
        )  # fmt: skip
        self._task: object = None

    def __enter__(self) -> _DownloadBar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def update(self, url: str, done: int, total: int | None) -> None:
        if self._task is None:
            name = url_file_name(url) or url
            self._task = self._progress.add_task(name, total=total)
        self._progress.update(self._task, completed=done, total=total)  # type: ignore[arg-type]
