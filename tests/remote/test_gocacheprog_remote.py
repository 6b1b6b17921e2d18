"""Go cache entries through a real REAPI cache: a second machine (an empty
store) with the same remote builds the Go program compiling nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gocache.test_gocacheprog import Go, compiles, stats

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(params=["casd", "buildgrid_cache"])
def server(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def test_a_second_store_gets_every_compile_from_the_remote_cache(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_REMOTE_CACHE", server.url)
    go = Go(tmp_path)
    program = tmp_path / "bin" / "wordfreq"
    assert compiles(go("build", "-x", "-o", str(program), ".", home=tmp_path / "first")) > 10
    first = program.read_bytes()
    program.unlink()

    second = go("build", "-x", "-o", str(program), ".", home=tmp_path / "second")
    assert compiles(second) == 0 and "warning" not in second.stderr
    assert program.read_bytes() == first
    assert stats(tmp_path / "second")["hits"] > 0


def test_entries_of_one_namespace_are_not_served_to_another_through_the_remote(
    casd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_REMOTE_CACHE", casd.url)
    go = Go(tmp_path)
    go("build", "-o", str(tmp_path / "a"), ".", home=tmp_path / "first", namespace="team-a")
    other = go("build", "-x", "-o", str(tmp_path / "b"), ".", home=tmp_path / "second",
               namespace="team-b")  # fmt: skip
    assert compiles(other) > 10 and stats(tmp_path / "second", "team-b")["hits"] == 0
