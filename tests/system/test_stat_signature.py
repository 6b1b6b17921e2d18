"""Stat signatures and the racy-file rule (kiln/system/stat_signature.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kiln.store.ingest import scan
from kiln.system.stat_signature import (
    FIELDS,
    RACY_WINDOW_NS,
    is_racy,
    racy_window_ns,
    reference_ns,
    signature,
    signature_of,
)

HOUR_NS = 3600 * 10**9


def test_a_signature_is_the_stat_fields_in_order(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    st = os.stat(f)
    assert signature(f) == signature_of(st) == tuple(getattr(st, n) for n in FIELDS)
    assert signature(tmp_path / "missing") is None


def test_a_signature_relative_to_an_open_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert signature("f", fd) == signature(tmp_path / "f")
        assert signature("missing", fd) is None
    finally:
        os.close(fd)


def test_a_link_has_its_own_signature_and_its_target_s(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to("target")
    assert signature(tmp_path / "link") == signature(tmp_path / "target")
    assert signature(tmp_path / "link", follow_symlinks=False) == signature_of(
        os.lstat(tmp_path / "link")
    )


def test_the_tree_scan_lists_files_by_their_signature(tmp_path: Path) -> None:
    """ingest.scan spells the signature out (its hot loop): the same fields."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    listing = dict((e[0], e[1:]) for e in scan(str(tmp_path)))
    assert listing["f"] == signature_of(os.lstat(tmp_path / "f"))


def test_the_racy_window_defaults_and_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("KILN_RACY_WINDOW_MS", raising=False)
    assert racy_window_ns() == RACY_WINDOW_NS == 2 * 10**9
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    assert racy_window_ns() == 0
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "1.5")
    assert racy_window_ns() == 1_500_000
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "")
    assert racy_window_ns() == RACY_WINDOW_NS


def _sig(mtime_ns: int, ctime_ns: int) -> tuple[int, int, int, int, int]:
    return (0o100644, 1, 1, mtime_ns, ctime_ns)


@pytest.mark.parametrize(
    ("mtime_ns", "ctime_ns", "racy"),
    [
        (10_000, 10_000, False),  # long before the window
        (17_999, 17_999, False),  # just before it
        (18_000, 10_000, True),  # modified at its first instant
        (10_000, 18_000, True),  # inode data changed within it (chmod, rename, utime)
        (25_000, 25_000, True),  # after the start: racy too
    ],
)
def test_racy_is_modified_within_the_window_before_the_start(
    mtime_ns: int, ctime_ns: int, racy: bool
) -> None:
    # Started at 20_000 with a window of 2_000: the window begins at 18_000.
    assert is_racy(_sig(mtime_ns, ctime_ns), 20_000, 2_000) is racy


def test_a_file_written_now_is_racy_by_default_and_not_with_no_window(
    tmp_path: Path, monkeypatch
) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    sig = signature(f)
    assert sig is not None
    started = time.time_ns()
    monkeypatch.delenv("KILN_RACY_WINDOW_MS", raising=False)
    assert is_racy(sig, started, racy_window_ns())
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    assert not is_racy(sig, started + 1, racy_window_ns())
    # An old mtime does not make it trusted: setting it changed the ctime.
    os.utime(f, ns=(started - HOUR_NS, started - HOUR_NS))
    monkeypatch.delenv("KILN_RACY_WINDOW_MS")
    assert is_racy(signature(f), time.time_ns(), racy_window_ns())


def test_a_build_judges_raciness_by_the_file_systems_clock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KILN_RACY_WINDOW_MS", raising=False)
    edited = tmp_path / "edited"
    edited.write_text("x")
    time.sleep(0.02)  # past the timestamp tick (10 ms at most) of the edit
    started, window = reference_ns(tmp_path / "state")
    assert window == 0 and (tmp_path / "state" / "clock").is_file()
    assert not is_racy(signature(edited), started, window)  # edited before the touch
    os.utime(edited, ns=(started, started))  # the touch's own instant (its ctime: later)
    assert is_racy(signature(edited), started, window)
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "1500")
    assert reference_ns(tmp_path / "state")[1] == 1_500_000_000
    # No clock to read (a folder that cannot be made): the process's clock and the window.
    blocked = tmp_path / "file"
    blocked.write_text("")
    before = time.time_ns()
    fallback, window = reference_ns(blocked / "state")
    assert fallback >= before and window == 1_500_000_000
    monkeypatch.delenv("KILN_RACY_WINDOW_MS")
    assert reference_ns(None)[1] == RACY_WINDOW_NS


def test_the_clock_is_never_touched_through_a_link(tmp_path: Path) -> None:
    """A project may ship kiln-out/.kiln/clock as a link to a host file:
    reading the clock must not change that file's times."""
    from kiln.system.stat_signature import clock_ns

    victim = tmp_path / "victim"
    victim.write_text("x")
    os.utime(victim, ns=(10**18, 10**18))
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "clock").symlink_to(victim)
    assert clock_ns(folder) is not None
    assert os.stat(victim).st_mtime_ns == 10**18
