"""ProjectWatch (kiln.server.watch): what it says changed, and when it
says it cannot tell."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.server import watch as watch_module
from kiln.server.watch import ProjectWatch


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "a.c").write_text("a")
    (root / "src" / "deep" / "b.c").write_text("b")
    (root / "kiln-out").mkdir()
    (root / ".git").mkdir()
    return root


def _changes(w: ProjectWatch, seq: int) -> set[str]:
    w.drain()
    changes = w.changes_after(seq)
    assert changes is not None
    return changes


def test_an_edit_is_seen_and_only_it(project: Path) -> None:
    w = ProjectWatch(str(project))
    seq = w.seq
    assert _changes(w, seq) == set()
    (project / "src" / "a.c").write_text("A")
    assert _changes(w, seq) == {str(project / "src" / "a.c")}
    assert _changes(w, w.seq) == set()  # nothing since


def test_outputs_and_version_control_are_not_watched(project: Path) -> None:
    w = ProjectWatch(str(project))
    seq = w.seq
    (project / "kiln-out" / "x").write_text("out")
    (project / ".git" / "index").write_text("i")
    assert _changes(w, seq) == set()
    assert not w.vouches_for(str(project / "kiln-out" / "x"))


def test_a_new_folder_is_watched_with_what_was_written_before_its_watch(project: Path) -> None:
    w = ProjectWatch(str(project))
    seq = w.seq
    (project / "new" / "deeper").mkdir(parents=True)
    (project / "new" / "deeper" / "c.c").write_text("c")  # before any event is read
    changes = _changes(w, seq)
    assert str(project / "new" / "deeper" / "c.c") in changes and str(project) in changes
    seq = w.seq
    (project / "new" / "deeper" / "c.c").write_text("C")
    assert _changes(w, seq) == {str(project / "new" / "deeper" / "c.c")}


def test_a_moved_folder_is_seen_under_its_new_name_only(project: Path) -> None:
    w = ProjectWatch(str(project))
    seq = w.seq
    os.rename(project / "src" / "deep", project / "moved")
    changes = _changes(w, seq)
    assert {str(project / "src"), str(project), str(project / "moved" / "b.c")} <= changes
    seq = w.seq
    (project / "moved" / "b.c").write_text("B")
    assert _changes(w, seq) == {str(project / "moved" / "b.c")}
    assert not w.vouches_for(str(project / "src" / "deep" / "b.c"))


def test_links_are_not_vouched_for(project: Path) -> None:
    (project / "src" / "link.c").symlink_to(project / "src" / "a.c")
    os.link(project / "src" / "deep" / "b.c", project / "src" / "hard.c")
    w = ProjectWatch(str(project))
    assert w.vouches_for(str(project / "src" / "a.c"))
    assert not w.vouches_for(str(project / "src" / "link.c"))
    assert not w.vouches_for(str(project / "src" / "hard.c"))
    assert not w.vouches_for(str(project / "src" / "deep" / "b.c"))  # (the same file)
    assert not w.vouches_for("/etc/passwd")
    assert w.changed_under(str(project / "src"), w.seq)  # it holds links: cannot tell


def test_lost_events_mean_cannot_tell(project: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    w = ProjectWatch(str(project))
    seq = w.seq
    # More distinct events than the kernel queues (two per new file): a
    # real overflow. (Repeating one event would not do: inotify merges
    # an event equal to the last one queued.)
    many = project / "many"
    many.mkdir()
    w.drain()
    for n in range(limit // 2 + 100):
        os.close(os.open(many / str(n), os.O_WRONLY | os.O_CREAT, 0o644))
    w.drain()
    assert w.changes_after(seq) is None
    assert w.changes_after(w.seq) == set()  # from now on it can tell again


def test_a_network_file_system_is_not_watched(project: Path, monkeypatch) -> None:
    # (no network file system can be mounted here: its type is what is faked)
    monkeypatch.setattr(watch_module, "remote_file_system", lambda path: "NFS")
    w = ProjectWatch(str(project))
    assert not w.usable and "NFS" in (w.reason or "")
    assert w.changes_after(0) is None and not w.vouches_for(str(project / "src" / "a.c"))


def test_too_many_folders_gives_up(project: Path) -> None:
    w = ProjectWatch(str(project), max_folders=2)
    assert not w.usable and "more than 2 folders" in (w.reason or "")
    assert w.changes_after(w.seq) is None


def test_an_old_moment_beyond_the_remembered_changes(project: Path, monkeypatch) -> None:
    monkeypatch.setattr(watch_module, "MAX_LOG", 8)
    w = ProjectWatch(str(project))
    seq = w.seq
    for n in range(20):
        (project / "src" / f"f{n}.c").write_text("x")
    w.drain()
    assert w.changes_after(seq) is None  # forgotten: cannot tell
    assert w.changes_after(w.seq) == set()
