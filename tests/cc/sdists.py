"""Real C projects for the `kiln cc` tests, fetched from PyPI by exact name,
version and digest, and kept in the tests' cache (outside the checkout).

`lupa` 2.8's source distribution carries, untouched, the sources of
LuaJIT 2.1 (71 C units, an assembler unit and host tools generated during
the build, driven by LuaJIT's own Makefile) and of Lua 5.4 (35 C units).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LUPA = ("lupa", "2.8", "d8022641b9ec8ecf2c5ecbe9f47e5a70e0b87c4b5ae921b92cb02a638e0acd08")
CACHE = Path(os.environ.get("KILN_TEST_SDIST_CACHE", Path.home() / ".cache/kiln-tests/sdists"))


def fetch(name: str, version: str, sha256: str) -> Path:
    """The sdist's archive, downloaded once and checked against its digest."""
    archive = CACHE / f"{name}-{version}.tar.gz"
    if not archive.exists() or _sha256(archive) != sha256:
        CACHE.mkdir(parents=True, exist_ok=True)
        download = CACHE / f".download-{os.getpid()}"
        shutil.rmtree(download, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"{name}=={version}", "-d", str(download)],
            check=True, timeout=600,
        )  # fmt: skip
        (got,) = download.iterdir()
        if _sha256(got) != sha256:
            raise AssertionError(f"{got.name} does not have the pinned digest {sha256}")
        os.replace(got, archive)
        shutil.rmtree(download, ignore_errors=True)
    return archive


def lupa_third_party(dest: Path) -> Path:
    """The ``third-party`` folder of lupa's sdist, unpacked into ``dest``."""
    with tarfile.open(fetch(*LUPA)) as tar:
        members = [m for m in tar.getmembers() if "/third-party/" in m.name]
        tar.extractall(dest, members=members, filter="data")
    return dest / f"{LUPA[0]}-{LUPA[1]}" / "third-party"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
