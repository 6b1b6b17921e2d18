"""The watches of the projects a resident server builds
(``kiln.server.watch``), which must never vouch for what they do not see."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
