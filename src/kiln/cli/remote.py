"""``kiln worker`` (run steps for a REAPI engine) and ``kiln remote status``."""

from __future__ import annotations

import asyncio
import time

import click

from kiln.cli.common import json_option, open_store
from kiln.cli.report import write_json
from kiln.config import load_config
from kiln.remote.settings import RemoteSettings


def _settings(url: str | None, instance: str | None, *, exec_url: bool) -> RemoteSettings:
    """The config's ``[remote]`` settings with the command's on top."""
    base = load_config().remote_settings()
    if exec_url:
        return base.overridden(exec=url, instance=instance)
    return base.overridden(cache=url, instance=instance)


@click.command("worker")
@click.option("--remote", "url", metavar="URL", help="The engine's bots service "
              "(grpc://HOST:PORT); default: [remote] exec, or KILN_REMOTE_EXEC.")  # fmt: skip
@click.option("--instance", metavar="NAME", help='The REAPI instance name (default: "").')
@click.option("--slots", type=click.IntRange(min=1), default=1, show_default=True,
              help="Steps run at once.")  # fmt: skip
@click.option("--bot-id", metavar="ID", help="This bot's name (default: HOST-PID).")
@click.option("--max-leases", type=click.IntRange(min=1), hidden=True)
@click.pass_context
def worker(
    ctx: click.Context, url: str | None, instance: str | None, slots: int,
    bot_id: str | None, max_leases: int | None,
) -> None:  # fmt: skip
    """Run Kiln steps for a REAPI engine's clients, as one of its workers.

    Opens a bot session with the engine's Remote Workers API (BuildGrid's
    bots service), advertising Kiln's wasm and native contracts, this CPU,
    and the features of this machine's config; then runs the steps the
    engine leases to it in its own store, with Kiln's own executors, and
    uploads their results. Survives the engine restarting. Ctrl-C or
    SIGTERM: finish the steps in hand, then stop.
    """
    from kiln.remote.worker import Worker, WorkerOptions, serve

    settings = _settings(url, instance, exec_url=True)
    if settings.exec is None:
        raise click.UsageError("give the engine's address: --remote grpc://HOST:PORT")
    options = WorkerOptions(slots, bot_id or "", load_config().features)
    store = open_store(ctx)

    def say(message: str) -> None:
        click.echo(f"kiln worker: {message}", err=True)

    bot = Worker(store, settings, options, say)
    if max_leases is not None:
        asyncio.run(bot.run(max_leases))
    else:
        asyncio.run(serve(bot))


@click.group("remote")
def remote() -> None:
    """The REAPI remote cache and execution engine this machine uses."""


@remote.command("status")
@click.option("--remote", "url", metavar="URL",
              help="The server to ask (default: the configured cache, else exec).")  # fmt: skip
@click.option("--instance", metavar="NAME", help="The REAPI instance name.")
@json_option
def status(url: str | None, instance: str | None, as_json: bool) -> None:
    """Whether the remote answers, what it offers, and its round-trip time.

    Exits 1 if it cannot be used.
    """
    settings = _settings(url, instance, exec_url=False)
    rows = asyncio.run(probe_all(settings))
    if as_json:
        write_json(rows)
    elif not rows:
        click.echo("no remote configured: see `kiln build --help` (--remote-cache) and "
                   "the [remote] table of the config file")  # fmt: skip
    for row in [] if as_json else rows:
        if row["ok"]:
            click.echo(
                f"{row['role']}: {row['url']} (instance {row['instance']!r}): reachable, "
                f"{row['latency_ms']:.1f} ms round trip; execution "
                f"{'offered' if row['execution'] else 'not offered'}; results "
                f"{'pushed' if row['push'] else 'not pushed'}"
            )
        else:
            click.echo(f"{row['role']}: {row['url']}: {row['error']}")
    if any(not row["ok"] for row in rows):
        raise SystemExit(1)


async def probe_all(settings: RemoteSettings) -> list[dict[str, object]]:
    """``probe`` each configured endpoint (cache, then exec if different)."""
    rows = []
    if settings.cache is not None:
        rows.append(await probe(settings, "cache", settings.cache))
    if settings.exec is not None and settings.exec != settings.cache:
        rows.append(await probe(settings, "exec", settings.exec))
    return rows


async def probe(settings: RemoteSettings, role: str, endpoint: object) -> dict[str, object]:
    """Reach one server: its capabilities and the median of 5 round trips."""
    from kiln.errors import KilnError
    from kiln.remote.client import RemoteClient

    row: dict[str, object] = {"role": role, "url": str(endpoint), "instance": settings.instance}
    try:
        client = RemoteClient(endpoint, settings)  # type: ignore[arg-type]
    except KilnError as e:
        return {**row, "ok": False, "error": e.render()}
    try:
        caps = await client.check(execution=False)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            await client.check()
            times.append((time.perf_counter() - start) * 1000)
        row.update(
            ok=True,
            latency_ms=round(sorted(times)[2], 2),
            execution=caps.execution,
            push=settings.push and caps.action_cache_update,
            batch_limit=caps.batch_limit,
        )
    except KilnError as e:
        row.update(ok=False, error=e.render())
    finally:
        await client.close()
    return row
