"""Toolchains Kiln knows by exact version and digest.

``YOWASP_CLANG`` is LLVM/clang/lld compiled to WASI preview 1, from the npm
package ``@yowasp/clang``: ``llvm.core.wasm`` is one command module for
``clang`` and ``wasm-ld`` (chosen by argv[1]), ``llvm-resources.tar`` its
headers, C library and runtime. Downloads are checked against the registry's
sha512 integrity before anything is unpacked, and cached by that digest.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kiln import errors


@dataclass(frozen=True)
class NpmPackage:
    """One npm package tarball, pinned by the registry's sha512 integrity."""

    name: str
    version: str
    integrity: str  # "sha512-<base64>"

    @property
    def url(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return f"https://registry.npmjs.org/{self.name}/-/{base}-{self.version}.tgz"


YOWASP_CLANG = NpmPackage(
    "@yowasp/clang",
    "22.0.0-git20542-10",
    "sha512-V31/z9GrJECKeACTDUyvg2llbEUiFi3bxtL5HSg7H/6sydSxdI/AoVAD9F5ozrfLjotWl0B9rghR87m+DUM/zg==",
)


def default_cache() -> Path:
    """Where downloaded toolchains are kept: ``$KILN_CACHE`` or ~/.cache/kiln."""
    return Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln")


def fetch_npm(package: NpmPackage, cache: Path | None = None, timeout: float = 120.0) -> Path:
    """The package's files unpacked (its ``package/`` folder), downloaded once
    (with the retries and resuming of fetch steps) and checked first."""
    import tarfile

    from kiln.exec.download import download
    from kiln.exec.fetch import file_hash, parse_pin

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
