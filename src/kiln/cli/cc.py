"""``kiln cc``: a compiler launcher whose every compile is a memoized,
sandboxed step (``kiln.cc``), and the management of its cache."""

from __future__ import annotations

from pathlib import Path

import click

from kiln.cli.common import json_option
from kiln.cli.report import write_json
from kiln.store.db import default_home


@click.command(
    "cc",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--stats", is_flag=True, help="Print hits, misses and direct calls by reason.")
@click.option("--zero-stats", is_flag=True, help="Reset those counts.")
@click.option(
    "--setup",
    type=click.Path(file_okay=False, path_type=Path),
    help="Install the fast native launcher `kiln-cc` in this folder, with links named "
    "cc, gcc, g++, c++, clang and clang++ to put first on PATH.",
)
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def cc(
    ctx: click.Context,
    stats: bool,
    zero_stats: bool,
    setup: Path | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Compile through the cache: make CC="kiln cc gcc" (faster: kiln-cc, see --setup).

    COMMAND is the compiler and its arguments. A compile of one source
    (-c) is keyed by the compiler's identity, its arguments, the source
    and exactly the headers it reads, and runs in the native sandbox with
    only those files; a hit writes the object (and -MD's dependency file)
    without running anything. Everything else (linking, -E, several
    sources, unknown compilers) runs the compiler directly. Set
    KILN_CC_BASE_DIR to the project's folder when its files are spread
    wider than the build's working folder.
    """
    home = Path(ctx.obj.get("store") or default_home())
    if command:
        from kiln.cc.launch import answer_here, carry_out, current

        ctx.exit(carry_out(answer_here(current(["kiln-cc", *command]), home)))
    if setup is not None:
        _setup(home, setup, as_json)
    if stats or zero_stats or (setup is None):
        _stats(home, zero_stats, as_json)


def _setup(home: Path, folder: Path, as_json: bool) -> None:
    from kiln.cc.service import socket_path
    from kiln.cc.setup import default_fallback, install_launcher

    made = install_launcher(folder.absolute(), socket_path(home), default_fallback())
    if as_json:
        write_json({"folder": str(folder.absolute()), "files": [str(p) for p in made]})
        return
    where = folder.absolute()
    click.echo(f"installed kiln-cc and compiler links in {where}")
    click.echo(f'  make:  make CC="{where}/kiln-cc gcc" CXX="{where}/kiln-cc g++"')
    click.echo(f"  CMake: cmake -DCMAKE_C_COMPILER_LAUNCHER={where}/kiln-cc "
               f"-DCMAKE_CXX_COMPILER_LAUNCHER={where}/kiln-cc ...")  # fmt: skip
    click.echo(f'  any:   export PATH="{where}:$PATH"')
    click.echo("start the resident server (kiln server start) for fast calls")


def _stats(home: Path, zero: bool, as_json: bool) -> None:
    from kiln.cc import stats as cc_stats
    from kiln.cc.launch import flush_service
    from kiln.store.local import Store

    flush_service(home)
    with Store(home) as store:
        if zero:
            cc_stats.zero(store)
        totals = cc_stats.load(store)
    if as_json:
        write_json(totals)
        return
    direct = totals["direct"]
    assert isinstance(direct, dict)
    click.echo(f"hits      {totals['hits']}")
    click.echo(f"misses    {totals['misses']}")
    click.echo(f"listed    {totals['listed']}  (misses whose headers the preprocessor listed)")
    click.echo(f"failed    {totals['failed']}  (compile errors, passed on from the compiler)")
    click.echo(f"direct    {sum(direct.values())}  (not one cacheable compile)")
    for reason, n in direct.items():
        click.echo(f"  {n:>6}  {reason}")
