"""Store -> folder round trips."""

import os
from pathlib import Path

import pytest

from conftest import snapshot
from kiln.errors import ExitCode, KilnError
from kiln.model.digest import Digest


def test_round_trip_bit_for_bit(store, sample_tree: Path, tmp_path: Path) -> None:
    d = store.put(sample_tree).digest
    m = store.get(d, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(sample_tree)
    assert m.linked == 4 and m.copied == 0


def test_files_are_hard_links_to_read_only_blobs(store, sample_tree: Path, tmp_path: Path) -> None:
    d = store.put(sample_tree).digest
    store.get(d, tmp_path / "out")
    readme = tmp_path / "out" / "README"
    blob = store.cas.path(Digest.of_file(readme))
    assert os.path.samefile(readme, blob)
    assert not os.access(readme, os.W_OK) or os.geteuid() == 0
    assert oct(readme.stat().st_mode & 0o777) == "0o444"
    assert oct((tmp_path / "out" / "run.sh").stat().st_mode & 0o777) == "0o555"


def test_copy_mode_gives_private_writable_files(store, sample_tree: Path, tmp_path: Path) -> None:
    d = store.put(sample_tree).digest
    m = store.get(d, tmp_path / "out", copy=True)
    assert m.copied == 4
    assert snapshot(tmp_path / "out") == snapshot(sample_tree)
    assert (tmp_path / "out" / "README").stat().st_mode & 0o200


def test_unknown_digest_creates_nothing(store, tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="not in the store") as info:
        store.get(Digest.of_bytes(b"nothing"), tmp_path / "out")
    assert info.value.exit_code == ExitCode.NOT_FOUND
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_destination(store, sample_tree: Path, tmp_path: Path) -> None:
    d = store.put(sample_tree).digest
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(KilnError, match="not an empty directory"):
        store.get(d, tmp_path / "out")


def test_blob_get(store, sample_tree: Path, tmp_path: Path) -> None:
    d = store.put(sample_tree / "README").digest
    store.get(d, tmp_path / "readme", blob=True)
    assert (tmp_path / "readme").read_text() == "hello\n"
