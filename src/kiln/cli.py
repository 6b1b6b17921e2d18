"""The ``kiln`` command: parses arguments and calls the Python API.

Exit codes (see ``kiln.errors.ExitCode``): 0 success, 1 the command found a
problem, 2 bad usage or input, 3 not found in the store, 4 store unusable.
User errors print one line (and a hint), never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kiln import __version__
from kiln.errors import ExitCode, KilnError

if TYPE_CHECKING:
    from kiln.store import Store

F = TypeVar("F", bound=Callable[..., Any])

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _emit_json(obj: object) -> None:
    import json

    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _open_store(ctx: click.Context) -> Store:
    from kiln.store import Store

    store = Store(ctx.obj.get("store"))
    ctx.call_on_close(store.close)
    return store


def asdict(obj: Any) -> dict[str, Any]:
    """A report dataclass as a dict (dataclasses is imported only when needed)."""
    import dataclasses

    return dataclasses.asdict(obj)


def parse_size(text: str) -> int:
    """'500M', '10G', '1.5GiB', '4096' -> bytes (binary units)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 500M, 10G or 4096")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not m:
        raise click.BadParameter(f"{text!r} is not an age; write e.g. 45s, 90m, 12h, 30d or 2w")
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def _digest_arg(text: str) -> Any:
    from kiln.digest import Digest

    return Digest.parse(text)


def _status(message: str) -> Any:
    """A spinner with ``message`` on a terminal's stderr, else one plain line."""
    if sys.stderr.isatty():
        from rich.console import Console

        return Console(stderr=True).status(message)
    import contextlib

    click.echo(f"kiln: {message}", err=True)
    return contextlib.nullcontext()


class _HashingProgress:
    """A transient status line on a terminal's stderr while a put reads files.

    Nothing is shown (and rich is not even imported) unless stderr is a
    terminal and the put has to read many files: re-puts stay fast.
    """

    def __init__(self) -> None:
        self._status: Any = None
        self._enabled = sys.stderr.isatty()

    def __call__(self, files: int, nbytes: int) -> None:
        if not self._enabled:
            return
        text = f"hashing: {files} files, {nbytes / (1 << 20):.1f} MiB read"
        if self._status is None:
            from rich.console import Console

            self._status = Console(stderr=True).status(text)
            self._status.start()
        else:
            self._status.update(text)

    def __enter__(self) -> _HashingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 problem found, 2 bad usage or input, "
    "3 not in the store, 4 store unusable.",
)
@click.version_option(__version__, "--version", "-V", prog_name="kiln")
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    envvar="KILN_HOME",
    help="Store folder (default: $KILN_HOME, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).",
)
@click.pass_context
def cli(ctx: click.Context, store: str | None) -> None:
    """Kiln: every build step a pure, memoized, sandboxed function.

    The store holds content by SHA-256 digest, written as <hex>/<size>.
    """
    ctx.ensure_object(dict)
    ctx.obj["store"] = store


# ------------------------------------------------------------------ store


@cli.group()
def store() -> None:
    """Put content into the store, get it out, check it."""


@store.command("put")
@click.argument("path", type=click.Path())
@click.option("--root", "root_name", metavar="NAME", help="Also keep it from GC as root NAME.")
@json_option
@click.pass_context
def store_put(ctx: click.Context, path: str, root_name: str | None, as_json: bool) -> None:
    """Store the folder (or file) PATH and print its digest.

    A folder becomes a Merkle tree of REAPI Directory messages; its digest is
    the root Directory's. Unchanged files are recognised by their stat data
    and not read again.
    """
    with _HashingProgress() as progress:
        result = _open_store(ctx).put(path, root=root_name, progress=progress)
    if as_json:
        _emit_json(
            {
                "digest": str(result.digest),
                "hash": result.digest.hash,
                "size": result.digest.size,
                "kind": result.kind,
                "files_hashed": result.files_hashed,
                "dirs_rebuilt": result.dirs_rebuilt,
                "root": root_name,
            }
        )
    else:
        click.echo(str(result.digest))


@store.command("get")
@click.argument("digest", type=str)
@click.argument("dest", type=click.Path())
@click.option("--blob", is_flag=True, help="DIGEST is a file's blob, not a tree.")
@click.option("--copy", is_flag=True, help="Copy files instead of hard-linking store files.")
@json_option
@click.pass_context
def store_get(
    ctx: click.Context, digest: str, dest: str, blob: bool, copy: bool, as_json: bool
) -> None:
    """Write the tree DIGEST into the new or empty folder DEST.

    Files are hard links to the store's read-only blobs when possible (use
    --copy for files you want to edit).
    """
    d = _digest_arg(digest)
    m = _open_store(ctx).get(d, dest, blob=blob, copy=copy)
    if as_json:
        _emit_json({"digest": str(d), "dest": dest, "linked": m.linked, "copied": m.copied})


@store.command("verify")
@json_option
@click.pass_context
def store_verify(ctx: click.Context, as_json: bool) -> None:
    """Re-hash every blob; move corrupt ones to quarantine/ and exit 1."""
    report = _open_store(ctx).verify()
    if as_json:
        _emit_json({"ok": report.ok, **asdict(report)})
    else:
        for c in report.corrupt:
            click.echo(
                f"corrupt: blob {c.expected} hashes to {c.actual}; moved to {c.quarantined_to}",
                err=True,
            )
        state = "ok" if report.ok else f"{len(report.corrupt)} corrupt"
        click.echo(f"{report.checked} blobs, {report.bytes} bytes checked: {state}")
    if not report.ok:
        sys.exit(ExitCode.FAILED)


@store.command("stats")
@json_option
@click.pass_context
def store_stats(ctx: click.Context, as_json: bool) -> None:
    """Show what the store holds."""
    stats = _open_store(ctx).stats()
    if as_json:
        _emit_json(asdict(stats))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for name, value in asdict(stats).items():
        table.add_row(name.replace("_", " "), str(value))
    Console().print(table)


@store.command("diff")
@click.argument("old", type=str)
@click.argument("new", type=str)
@json_option
@click.pass_context
def store_diff(ctx: click.Context, old: str, new: str, as_json: bool) -> None:
    """List paths added (+), removed (-) and changed (~) from tree OLD to NEW."""
    from kiln.tree import diff

    result = diff(_open_store(ctx).cas, _digest_arg(old), _digest_arg(new))
    if as_json:
        _emit_json(asdict(result))
        return
    for mark, paths in (("+", result.added), ("-", result.removed), ("~", result.changed)):
        for p in paths:
            click.echo(f"{mark} {p}")


# ------------------------------------------------------------------ roots


@cli.group()
def root() -> None:
    """Named GC roots: what `kiln gc` never deletes."""


@root.command("add")
@click.argument("name")
@click.argument("digest")
@click.option("--kind", type=click.Choice(["tree", "blob", "action"]), default="tree")
@click.pass_context
def root_add(ctx: click.Context, name: str, digest: str, kind: str) -> None:
    """Keep DIGEST (a tree, a blob or an action key) from GC as root NAME."""
    d = _digest_arg(digest)
    s = _open_store(ctx)
    if kind != "action" and not s.cas.has(d):
        from kiln.errors import digest_not_found

        raise digest_not_found(d)
    s.add_root(name, d, kind)


@root.command("rm")
@click.argument("name")
@click.pass_context
def root_rm(ctx: click.Context, name: str) -> None:
    """Remove root NAME (its content becomes collectable)."""
    if not _open_store(ctx).remove_root(name):
        raise KilnError(f"no root named {name!r}", exit_code=ExitCode.NOT_FOUND)


@root.command("list")
@json_option
@click.pass_context
def root_list(ctx: click.Context, as_json: bool) -> None:
    """List the named roots."""
    roots = _open_store(ctx).roots()
    if as_json:
        _emit_json([{"name": n, "kind": k, "digest": str(d), "created": c} for n, k, d, c in roots])
        return
    for n, k, d, _ in roots:
        click.echo(f"{n}\t{k}\t{d}")


# ------------------------------------------------------------------- wasm


@cli.group()
def wasm() -> None:
    """Run WebAssembly (WASI preview 1) modules as deterministic actions."""


@wasm.command("run", context_settings={"ignore_unknown_options": False})
@click.argument("module", type=click.Path())
@click.argument("args", nargs=-1)
@click.option(
    "--in", "inputs", multiple=True, metavar="PATH", help="Input folder or file (repeatable)."
)
@click.option(
    "--out", "outputs", multiple=True, metavar="PATH", help="Output path to copy back (repeatable)."
)
@click.option(
    "--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="Guest environment variable."
)
@click.option(
    "--fuel", type=int, default=None, help="Instructions the guest may run (default 10^10)."
)
@click.option(
    "--memory",
    "memory_mib",
    type=int,
    default=None,
    metavar="MIB",
    help="Memory limit (default 1024).",
)
@click.option(
    "--disk",
    "disk_mib",
    type=int,
    default=None,
    metavar="MIB",
    help="What the guest's files (outputs, /tmp) may hold at once (default 16384).",
)
@click.option(
    "--timeout", type=float, default=None, metavar="SECONDS", help="Wall-clock safety limit."
)
@json_option
@click.pass_context
def wasm_run(
    ctx: click.Context,
    module: str,
    args: tuple[str, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    env_pairs: tuple[str, ...],
    fuel: int | None,
    memory_mib: int | None,
    disk_mib: int | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run MODULE with ARGS (after --) as a memoized action.

    The guest sees MODULE and each --in path at their paths relative to the
    current folder, read-only; it may create the --out paths, which are then
    copied back here. The same module, inputs, arguments and limits run once:
    later runs replay the recorded result. Exits with the guest's exit code.
    """
    from kiln.exec.wasm import DEFAULT_DISK_MIB, DEFAULT_FUEL, DEFAULT_MEMORY_MIB, WasmLimits
    from kiln.wasm_run import run_wasm

    env = {}
    for pair in env_pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    limits = WasmLimits(
        fuel or DEFAULT_FUEL, memory_mib or DEFAULT_MEMORY_MIB, disk_mib or DEFAULT_DISK_MIB
    )
    store = _open_store(ctx)
    run = run_wasm(
        store,
        module,
        list(args),
        inputs=list(inputs),
        outputs=list(outputs),
        env=env,
        limits=limits,
        timeout=timeout,
        progress=_status,
    )
    from kiln.digest import Digest
    from kiln.store.cas import read_blob

    result = run.result
    stdout = read_blob(store.cas, Digest.from_proto(result.stdout_digest), "stdout")
    stderr = read_blob(store.cas, Digest.from_proto(result.stderr_digest), "stderr")
    if as_json:
        _emit_json(
            {
                "key": str(run.key),
                "cached": run.cached,
                "exit_code": result.exit_code,
                "outputs": run.outputs,
                "stdout": str(Digest.from_proto(result.stdout_digest)),
                "stderr": str(Digest.from_proto(result.stderr_digest)),
            }
        )
    else:
        sys.stdout.buffer.write(stdout)
    sys.stderr.buffer.write(stderr)
    if result.exit_code:
        sys.exit(result.exit_code)


@cli.command("check")
@click.argument("items", nargs=-1, required=True, metavar="TARGET|KEY...")
@click.option(
    "--engine",
    type=click.Choice(["node"]),
    help="Compare wasm results with a second engine (node: Node.js's V8).",
)
@click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="Wall-clock limit of each run under the second engine.",
)
@json_option
@click.pass_context
def check(
    ctx: click.Context, items: tuple[str, ...], engine: str | None, timeout: float, as_json: bool
) -> None:
    """Check that results are reproducible.

    `kiln check TARGET...` builds the targets (from the cache where it can),
    then runs every step of theirs again, ignoring and not touching the
    cache, and compares exit code, stdout, stderr and every output by
    digest. Pinned fetches are not run again.

    With --engine node, each wasm step (of TARGETs, or each action KEY as
    `kiln wasm run --json` prints it) runs again under the second engine
    with the same virtual WASI instead. Exits 1 if anything differs.
    """
    from kiln.check import check_engines, is_wasm_action

    store = _open_store(ctx)
    keys = [i for i in items if _looks_like_key(i)]
    targets = [i for i in items if not _looks_like_key(i)]
    if keys and engine is None:
        raise KilnError(
            "checking an action KEY needs a second engine",
            hint="add --engine node, or name a TARGET to rebuild its steps",
            exit_code=ExitCode.BAD_INPUT,
        )
    checks: list[Any] = [_digest_arg(k) for k in keys]
    if targets:
        from kiln.cli_build import build_for_check

        records = build_for_check(store, targets)
        if engine is None:
            _report_rebuild(store, records, as_json)
            return
        checks += [r.key for r in records if r.result is not None and is_wasm_action(store, r.key)]
    reports = []
    for key in checks:
        with _status(f"running {key} under {engine}"):
            reports.append(check_engines(store, key, engine or "node", timeout))
    if as_json:
        _emit_json([{**asdict(r), "identical": r.identical} for r in reports])
    else:
        for r in reports:
            if r.identical:
                click.echo(f"{r.key}: identical under wasmtime and {r.other_engine}")
                continue
            click.echo(f"{r.key}: DIFFERS between wasmtime and {r.other_engine}")
            for d in r.differences:
                click.echo(f"  {d.what}: wasmtime {d.reference}, {r.other_engine} {d.other}")
    if not all(r.identical for r in reports):
        sys.exit(ExitCode.FAILED)


def _looks_like_key(text: str) -> bool:
    digest_hash, sep, size = text.partition("/")
    return bool(sep) and len(digest_hash) == 64 and size.isdigit()


def _report_rebuild(store: Store, records: list[Any], as_json: bool) -> None:
    from kiln.check import rebuild_steps

    with _status("running the steps again") as status:
        on_step = getattr(status, "update", None)
        checks = rebuild_steps(store, records, lambda d: on_step and on_step(f"running {d}"))
    differing = [c for c in checks if not c.identical]
    if as_json:
        _emit_json([{**asdict(c), "identical": c.identical} for c in checks])
    else:
        for c in differing:
            click.echo(f"{c.target}: {c.step}: DIFFERS when run again (key {c.key})")
            for d in c.differences:
                click.echo(f"  {d.what}: first {d.reference}, again {d.other}")
        ran = sum(1 for c in checks if not c.skipped)
        verdict = f"{len(differing)} differ" if differing else "all identical"
        click.echo(f"kiln: {ran} steps run again: {verdict}", err=True)
    if differing:
        sys.exit(ExitCode.FAILED)


# --------------------------------------------------------------------- gc


@cli.command("gc")
@click.option(
    "--max-size",
    type=str,
    metavar="SIZE",
    help="Shrink the store to this size (e.g. 10G), LRU first.",
)
@click.option(
    "--max-age", type=str, metavar="AGE", help="Delete what was not used for this long (e.g. 30d)."
)
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds to wait for in-flight writes to end.",
)
@json_option
@click.pass_context
def gc_command(
    ctx: click.Context,
    max_size: str | None,
    max_age: str | None,
    dry_run: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Delete blobs and cache entries that no root reaches.

    Without --max-size or --max-age, everything unreachable goes. Content
    in use by a running build (its session's temporary roots) is never
    deleted, and GC waits for in-flight writes to finish. Sandbox folders
    and cgroups left by killed builds go too.
    """
    from kiln.exec.native import reap_leftovers
    from kiln.store import GcPolicy

    policy = GcPolicy(
        max_size=parse_size(max_size) if max_size else None,
        max_age=parse_age(max_age) if max_age else None,
        dry_run=dry_run,
    )
    store = _open_store(ctx)
    if not dry_run:
        reap_leftovers(store.home)
    report = store.gc(policy, timeout=timeout)
    if as_json:
        _emit_json(asdict(report))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {report.deleted_blobs} blobs ({report.deleted_bytes} bytes) and "
        f"{report.evicted_actions} cache entries; kept {report.kept_blobs} blobs "
        f"({report.kept_bytes} bytes) and {report.kept_actions} cache entries"
    )
    for name in report.dangling_roots:
        click.echo(f"warning: root {name!r} names content missing from the store", err=True)


# The build commands live in their own module; importing it registers them.
from kiln import cli_build, cli_fetch, cli_server  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one-line messages."""
    code = run(argv)
    # The command has finished and closed the store; skip interpreter
    # teardown (freeing every object one by one costs several ms on large
    # trees). Only flushed output matters from here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(argv: list[str] | None) -> int:
    """Run one command; its exit code."""
    try:
        cli.main(args=argv, prog_name="kiln", standalone_mode=False)
    except KilnError as e:
        click.echo(f"kiln: error: {e.render()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return ExitCode.BAD_INPUT
    except (click.Abort, KeyboardInterrupt):
        click.echo("kiln: interrupted", err=True)
        return 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"kiln: error: {where}{e.strerror or e}", err=True)
        return ExitCode.FAILED
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    main()
