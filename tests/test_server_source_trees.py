"""Source trees under a watching server: a build sees every edit, and
looks only at the folders on the way to what changed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from server_helpers import Served, serving

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server is Linux-only")

KILNFILE = """
from kiln.build import source_tree, target

@target
async def lib():
    return source_tree("lib")
"""
FOLDERS = 40


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "p"
    for n in range(FOLDERS):
        folder = project / "lib" / f"d{n:02d}" / "inner"
        folder.mkdir(parents=True)
        for f in range(3):
            (folder.parent / f"f{f}.txt").write_text(f"{n} {f}\n")
        (folder / "deep.txt").write_text(f"deep {n}\n")
    (project / "kilnfile.py").write_text(KILNFILE)
    return project


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _build(served: Served, project: Path, **env: str) -> dict:
    proc = served.kiln("build", "--json", cwd=project, **env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # The oracle: the target's value is the folder as it is on disk now.
    assert _files(project / "kiln-out" / "lib" / "lib") == _files(project / "lib")
    return report


EDITS = {
    "same size": lambda lib: (lib / "d07" / "f1.txt").write_text("7 X\n"),
    "new file": lambda lib: (lib / "d07" / "new.txt").write_text("new\n"),
    "deleted": lambda lib: (lib / "d07" / "f2.txt").unlink(),
    "deep": lambda lib: (lib / "d07" / "inner" / "deep.txt").write_text("deeper\n"),
    "new folder": lambda lib: (
        (lib / "d07" / "fresh").mkdir(),
        (lib / "d07" / "fresh" / "x.txt").write_text("x\n"),
    ),
    "renamed over": lambda lib: (
        (lib / "d07" / ".tmp").write_text("atomic\n"),
        os.replace(lib / "d07" / ".tmp", lib / "d07" / "f0.txt"),
    ),
    "folder moved": lambda lib: os.rename(lib / "d07", lib / "d99"),
}


@pytest.mark.parametrize("server", [True, False], ids=["server", "no-server"])
def test_every_edit_is_seen(tmp_path: Path, server: bool) -> None:
    project = _project(tmp_path)
    with serving(tmp_path / "home") as served:
        env = {} if server else {"KILN_SERVER": "off"}
        if server:
            served.start()
        _build(served, project, **env)
        for edit in EDITS.values():  # one after the other, each built twice
            _build(served, project, **env)  # (what the server learns from a build)
            edit(project / "lib")
            _build(served, project, **env)


def test_a_one_file_edit_lists_only_the_folders_on_its_way(tmp_path: Path) -> None:
    project = _project(tmp_path)
    with serving(tmp_path / "home") as served:
        served.start()
        first = _build(served, project)
        assert first["folders_listed"] == 2 * FOLDERS + 1  # lib, d*, d*/inner
        _build(served, project)
        (project / "lib" / "d03" / "inner" / "deep.txt").write_text("changed\n")
        edited = _build(served, project)
        # lib/d03/inner changed; nothing else is listed (its parents' rows
        # hold; their digests are made again from their children's).
        assert edited["folders_listed"] == 1, edited
        alone = _build(served, project, KILN_SERVER="off")
        assert alone["folders_listed"] == 2 * FOLDERS + 1
