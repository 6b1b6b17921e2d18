"""`kiln doctor`'s check of whether the server can watch the project."""

from __future__ import annotations

from pathlib import Path

from kiln.cli import doctor
from kiln.server import watch


def _project(tmp_path: Path, folders: int = 3) -> Path:
    root = tmp_path / "project"
    for n in range(folders):
        (root / f"d{n}").mkdir(parents=True)
    (root / "kilnfile.py").write_text("")
    (root / "kiln-out" / "ignored").mkdir(parents=True)
    return root


def test_a_project_that_can_be_watched(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(_project(tmp_path))
    check = doctor._watching(tmp_path / "store")
    assert check.status == doctor.OK, check
    assert "4 folders to watch" in check.detail  # (the root and d0-d2; not kiln-out)
    assert "kiln server start" in check.detail


def test_too_many_folders_says_what_to_raise(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(_project(tmp_path, folders=5))
    monkeypatch.setattr(watch, "MAX_FOLDERS", 3)
    check = doctor._watching(tmp_path / "store")
    assert check.status == doctor.WARN and "more folders than the server may watch" in check.detail
    assert check.fix.startswith("sysctl fs.inotify.max_user_watches=")


def test_a_network_file_system_is_checked_with_stat(tmp_path: Path, monkeypatch) -> None:
    # (no NFS mount can be made here: the file system's type is what is faked)
    monkeypatch.chdir(_project(tmp_path))
    monkeypatch.setattr(watch, "remote_file_system", lambda path: "NFS")
    check = doctor._watching(tmp_path / "store")
    assert check.status == doctor.WARN and "NFS" in check.detail and "stat" in check.detail


def test_outside_a_project(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    check = doctor._watching(tmp_path / "store")
    assert check.status == doctor.OK and "max_user_watches" in check.detail
