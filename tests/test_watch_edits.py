"""The watches of the projects a resident server builds
(``kiln.server.watch``), which must never vouch for what they do not see."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from kiln.server.projects import Projects
from kiln.server.watch import ProjectWatch

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server is Linux-only")


def test_a_watch_that_gives_up_while_reading_events_stops_reading(tmp_path: Path) -> None:
    """Giving up while reading events (a new folder past the limit on
    folders, or past the inotify watch limit) closes the watch: reading
    stops there instead of failing (which took the server down when its
    loop read the events)."""
    (tmp_path / "p").mkdir()
    watch = ProjectWatch(str(tmp_path / "p"), max_folders=1)
    try:
        assert watch.usable and watch.folders == 1
        (tmp_path / "p/new").mkdir()
        (tmp_path / "p/new/n.txt").write_text("november\n")
        watch.drain()
        assert not watch.usable and "more than 1 folders" in (watch.reason or "")
        assert watch.changes_after(0) is None  # (the caller checks with stat)
        assert watch.drain() == 0
    finally:
        watch.close()


@pytest.mark.parametrize("how", ["moved", "deleted", "replaced", "parent replaced", "back"])
def test_a_watch_knows_when_its_folder_is_no_longer_the_project(tmp_path: Path, how: str) -> None:
    """Moved away (even if moved back), deleted or replaced: its watches
    tell about another folder (or none) than the one at the project's
    path. So is one whose parent folder was replaced, with no event."""
    up = tmp_path / "up"
    (up / "p/src").mkdir(parents=True)
    watch = ProjectWatch(str(up / "p"))
    try:
        assert watch.at_root()
        if how in ("moved", "back"):
            os.rename(up / "p", up / "elsewhere")
            if how == "back":
                os.rename(up / "elsewhere", up / "p")
        elif how == "deleted":
            shutil.rmtree(up / "p")
            (up / "p/src").mkdir(parents=True)
        elif how == "replaced":
            os.rename(up / "p", up / "old")
            shutil.copytree(up / "old", up / "p")
        else:
            os.rename(up, tmp_path / "old")
            shutil.copytree(tmp_path / "old", up)
        watch.drain()
        assert not watch.at_root()
        if how != "parent replaced":  # (that one raises no event here)
            assert not watch.usable and watch.changes_after(0) is None
            assert not watch.vouches_for(str(up / "p/src/a.txt"))
    finally:
        watch.close()


def test_the_server_watches_a_replaced_project_anew(tmp_path: Path) -> None:
    """What the server knew of a project folder that was replaced is
    dropped: its watch, made again on the folder now there, and the
    moments its stamps were found to hold."""
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    projects = Projects(tmp_path / "home")
    try:
        first = projects.watch(str(root))
        assert projects.watch(str(root)) is first
        projects.baselines[(str(root), "*")] = None  # type: ignore[assignment]
        os.rename(root, tmp_path / "old")
        shutil.copytree(tmp_path / "old", root)
        again = projects.watch(str(root))
        assert again is not first and again.at_root() and again.usable
        assert first.fileno() == -1 and again.fileno() != -1
        assert projects.baselines == {}
        assert projects.watch(str(root)) is again
    finally:
        projects.close()
