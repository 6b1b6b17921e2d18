"""The pinned toolchains (``kiln.rules.toolchains``) downloaded onto this
host, outside any build: for tests and benchmarks that run them directly.
Downloads are checked against the registry's sha512 integrity before
anything is unpacked, and cached by that digest."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from kiln import errors
from kiln.exec.download import download
from kiln.exec.fetch import file_hash
from kiln.exec.specs import parse_pin
from kiln.rules.toolchains import YOWASP_CLANG, NpmPackage, default_cache


def fetch_npm(package: NpmPackage, cache: Path | None = None, timeout: float = 120.0) -> Path:
    """The package's files unpacked (its ``package/`` folder), downloaded once
    (with the retries and resuming of fetch steps) and checked first."""
    expected = parse_pin(package.integrity, f"{package.name}@{package.version}")
    algorithm, _, digest_hex = expected.partition(":")
    folder = (cache or default_cache()) / "npm" / digest_hex[:32]
    unpacked = folder / "package"
    if unpacked.is_dir():
        return unpacked
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"unpack.{os.getpid()}"
    _, tarball = download(
        [package.url], lambda _: folder / f"download.{os.getpid()}.tgz", timeout=timeout
    )
    try:
        got = file_hash(tarball, algorithm)
        if got != digest_hex:
            raise errors.KilnError(
                f"{package.url}: {algorithm} mismatch: expected {digest_hex}, got {got}",
                hint="the registry served other bytes than the pinned ones; do not use them",
            )
        with tarfile.open(tarball) as tar:
            tar.extractall(staging, filter="data")
        try:
            os.replace(staging / "package", unpacked)
        except OSError:
            if not unpacked.is_dir():  # else another process unpacked it first
                raise
    finally:
        tarball.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return unpacked


def yowasp_clang(cache: Path | None = None) -> Path:
    """The ``llvm.core.wasm`` module of the pinned ``@yowasp/clang``."""
    return fetch_npm(YOWASP_CLANG, cache) / "gen" / "llvm.core.wasm"
