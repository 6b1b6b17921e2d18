"""Tool identity from dpkg's database (a small fake one here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kiln.exec.tools import Dpkg

STATUS = """Package: alpha
Status: install ok installed
Version: 1.0
Architecture: amd64
Depends: beta (>= 2), gamma | delta
Recommends: missing-package

Package: beta
Status: install ok installed
Version: 2.1
Architecture: amd64
Pre-Depends: zeta-virtual

Package: delta
Status: install ok installed
Version: 3
Architecture: all

Package: zeta
Status: install ok installed
Version: 9
Architecture: amd64
Provides: zeta-virtual

Package: removed
Status: deinstall ok config-files
Version: 1
Architecture: amd64
"""


def _dpkg_root(tmp_path: Path) -> Path:
    root = tmp_path / "dpkg"
    (root / "info").mkdir(parents=True)
    (root / "status").write_text(STATUS)
    (root / "info" / "alpha:amd64.list").write_text("/usr\n/usr/bin\n/usr/bin/alpha\n")
    return root


def test_closure_follows_depends_alternatives_and_provides(tmp_path: Path) -> None:
    dpkg = Dpkg(_dpkg_root(tmp_path))
    assert dpkg.closure(["alpha"]) == ["alpha", "beta", "delta", "zeta"]
    assert dpkg.identity("beta") == "beta=2.1:amd64"
    assert dpkg.files("alpha") == ["/usr", "/usr/bin", "/usr/bin/alpha"]


def test_owner_index_is_cached_until_dpkg_changes(tmp_path: Path) -> None:
    root = _dpkg_root(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert Dpkg(root, cache).owner("/usr/bin/alpha") == "alpha"
    assert (cache / "dpkg-owners.marshal").exists()
    assert Dpkg(root, cache).owner("/usr/bin/alpha") == "alpha"  # from the cache
    time.sleep(0.01)
    (root / "info" / "beta:amd64.list").write_text("/usr/bin/beta\n")
    os.utime(root / "info")  # dpkg installed something: the index is rebuilt
    assert Dpkg(root, cache).owner("/usr/bin/beta") == "beta"
