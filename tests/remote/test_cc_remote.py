"""`kiln cc` results through a real REAPI cache: a second machine (an empty
store) with the same remote gets the object without compiling."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kiln.cc import stats
from kiln.cc.compiles import CompileCache
from kiln.cc.invocation import Invocation, Ran
from kiln.exec.native import bwrap_path
from kiln.remote.blocking import open_remote_cache
from kiln.store.local import Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.network,
    pytest.mark.skipif(
        bwrap_path() is None or shutil.which("gcc") is None, reason="needs bubblewrap and gcc"
    ),
]


@pytest.fixture(params=["casd", "buildgrid_cache"])
def server(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def compile_in(home: Path, project: Path) -> dict:
    """One compile of main.c from the store at ``home``; its counts."""
    with Store(home) as store:
        cache = CompileCache(store, remote=open_remote_cache(store))
        try:
            inv = Invocation(["kiln-cc", "gcc", "-O2", "-Iinc", "-c", "main.c"], str(project),
                             {"PATH": os.environ["PATH"]})  # fmt: skip
            assert cache.handle(inv) == Ran(0)
        finally:
            cache.close()
        assert cache.remote is not None and not cache.remote.warnings
        return stats.load(store)


def test_a_second_store_gets_the_object_from_the_remote_cache(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_REMOTE_CACHE", server.url)
    project = tmp_path / "p"
    (project / "inc").mkdir(parents=True)
    (project / "inc" / "a.h").write_text("#define A 6\n")
    (project / "main.c").write_text('#include "a.h"\nint main(void) { return A; }\n')
    first = compile_in(tmp_path / "first", project)
    assert (first["misses"], first["hits"]) == (1, 0)
    built = (project / "main.o").read_bytes()
    (project / "main.o").unlink()

    second = compile_in(tmp_path / "second", project)
    assert (second["misses"], second["hits"]) == (0, 1)
    assert (project / "main.o").read_bytes() == built
