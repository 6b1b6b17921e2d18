"""`kiln wasm run`: one WebAssembly module run as a memoized action."""

from __future__ import annotations

import sys

import click

from kiln.cli.common import json_option, open_store, status
from kiln.cli.report import write_json
from kiln.engine.wasm_run import run_wasm
from kiln.exec.specs import DEFAULT_DISK_MIB, DEFAULT_FUEL, DEFAULT_MEMORY_MIB, WasmLimits
from kiln.model.digest import Digest
from kiln.store.cas import read_blob

# ------------------------------------------------------------------- wasm


@click.group()
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
    env = {}
    for pair in env_pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    limits = WasmLimits(
        fuel or DEFAULT_FUEL, memory_mib or DEFAULT_MEMORY_MIB, disk_mib or DEFAULT_DISK_MIB
    )
    store = open_store(ctx)
    run = run_wasm(
        store,
        module,
        list(args),
        inputs=list(inputs),
        outputs=list(outputs),
        env=env,
        limits=limits,
        timeout=timeout,
        progress=status,
    )
    result = run.result
    stdout = read_blob(store.cas, Digest.from_proto(result.stdout_digest), "stdout")
    stderr = read_blob(store.cas, Digest.from_proto(result.stderr_digest), "stderr")
    if as_json:
        write_json(
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
