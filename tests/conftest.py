"""Shared fixtures: a fresh store per test, sample trees, the real `kiln` binary.

Tests write only under their temporary folders (``tmp_path``) and one cache,
pytest's (``.pytest_cache/d/``, emptied by ``pytest --cache-clear``): the
compiled test guests, the downloaded @yowasp/clang and the store that keeps
its compiled module, zig's build cache and Hypothesis's examples. A `kiln`
run without a store of its own gets a temporary one, never ~/.cache/kiln."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from kiln.store import Store

KILN = str(Path(sys.executable).parent / "kiln")

# Where the caches named above go, as environment variables (seen by the
# `kiln` and zig processes the tests start too) -> their folder in pytest's cache.
CACHES = {"KILN_CACHE": "kiln-cache", "ZIG_GLOBAL_CACHE_DIR": "zig-cache"}
_saved_environment = pytest.StashKey[dict[str, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    """Point the caches at pytest's cache, before test modules are imported
    (some look up ``default_cache()`` then)."""
    if getattr(config, "cache", None) is None:
        raise pytest.UsageError(
            "Kiln's tests keep their caches in pytest's cache: do not disable cacheprovider"
        )
    config.stash[_saved_environment] = {name: os.environ.get(name) for name in CACHES}
    for name, folder in CACHES.items():
        os.environ[name] = str(config.cache.mkdir(folder))
    set_hypothesis_home_dir(config.cache.mkdir("hypothesis"))


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in config.stash.get(_saved_environment, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True, scope="session")
def no_user_store_or_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A `kiln` (or a ``Store``) not given a store uses a temporary one, not
    the user's ~/.cache/kiln; the user's config file (~/.config/kiln) is not read."""
    defaults = tmp_path_factory.mktemp("defaults")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KILN_HOME", str(defaults / "kiln-home"))
        patch.setenv("KILN_CONFIG", str(defaults / "no-config.toml"))  # (absent: defaults)
        yield


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "kiln-home"


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    with Store(home) as s:
        yield s


def make_sample_tree(root: Path) -> Path:
    """Files (one executable), a symlink, nested and empty directories."""
    (root / "src" / "lib").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "src" / "empty-too").mkdir()
    (root / "README").write_text("hello\n")
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "src" / "lib" / "util.c").write_bytes(bytes(range(256)) * 10)
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "link").symlink_to("src/main.c")
    (root / "dangling").symlink_to("../nowhere")
    return root


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    return make_sample_tree(tmp_path / "sample")


def run_kiln(
    home: Path,
    *args: str,
    check: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed `kiln` console script against store ``home``."""
    full_env = {**os.environ, "KILN_HOME": str(home), **(env or {})}
    proc = subprocess.run(
        [KILN, *args], capture_output=True, text=True, env=full_env, timeout=300, cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} failed: {proc.stderr}")
    return proc


@pytest.fixture
def kiln(home: Path):
    def _run(*args: str, check: bool = False, env: dict[str, str] | None = None):
        return run_kiln(home, *args, check=check, env=env)

    return _run


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything REAPI trees capture about a folder: kinds, bytes, exec bits, targets."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("symlink", os.readlink(p))
                if name in dirnames:
                    dirnames.remove(name)
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


# WASM test guests: C sources compiled to wasm32-wasi by the `ziglang`
# package, cached in pytest's cache folder by source digest.
GUESTS = Path(__file__).parent / "exec" / "guests"
CFLAGS = ["--target=wasm32-wasi", "-O2", "-s"]


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest):
    cache = Path(request.config.cache.mkdir("wasm-guests"))

    def build(name: str) -> Path:
        source = GUESTS / f"{name}.c"
        key = hashlib.sha256(source.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
        out = cache / f"{name}-{key}.wasm"
        if not out.exists():
            tmp = out.with_suffix(".tmp.wasm")
            subprocess.run(
                [sys.executable, "-m", "ziglang", "cc", *CFLAGS, "-o", str(tmp), str(source)],
                check=True,
                capture_output=True,
            )
            shutil.move(tmp, out)
        return out

    return build


# ------------------------------------------------------------------ engine

EXAMPLE = Path(__file__).parents[1] / "examples" / "wordcount"


def copy_example(name: str, tmp_path: Path, monkeypatch) -> Path:
    """A copy of ``examples/<name>``; racy window off so edits are seen at once."""
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = tmp_path / name
    shutil.copytree(EXAMPLE.parent / name, root, ignore=shutil.ignore_patterns("kiln-out"))
    return root


@pytest.fixture
def example(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the bundled example project."""
    return copy_example("wordcount", tmp_path, monkeypatch)


@pytest.fixture
def tools(tmp_path: Path, guest) -> dict[str, bytes]:
    """The test guests a project can carry as files: tools/<name>.wasm."""
    return {f"tools/{n}.wasm": guest(n).read_bytes() for n in ("cat", "slow")}


def kiln_out_files(root: Path) -> dict[str, bytes]:
    """Every file a build placed in ``root/kiln-out`` (not Kiln's own
    markers): relative path -> bytes."""
    out = root / "kiln-out"
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".kiln" not in p.parts
    }


@pytest.fixture(scope="session")
def arm64() -> Path:
    """An emulated ARM64 Python to run Kiln on (``aarch64_helpers``), or skip."""
    from aarch64_helpers import aarch64_python

    return aarch64_python()
