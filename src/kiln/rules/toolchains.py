"""Toolchains Kiln knows by exact version and digest.

``YOWASP_CLANG`` is LLVM/clang/lld compiled to WASI preview 1, from the npm
package ``@yowasp/clang``: ``llvm.core.wasm`` is one command module for
``clang`` and ``wasm-ld`` (chosen by argv[1]), ``llvm-resources.tar`` its
headers, C library and runtime. A build fetches them as steps
(``kiln.rules.c``); ``kiln.rules.host_toolchains`` downloads them onto the
host for what runs them directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
