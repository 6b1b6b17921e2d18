"""Putting folders: stat cache reuse, racy entries, bad input."""

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from kiln.errors import ExitCode, KilnError


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch) -> None:
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")


def test_unchanged_tree_is_not_read_again(store, sample_tree: Path) -> None:
    first = store.put(sample_tree)
    assert first.files_hashed == 4
    again = store.put(sample_tree)
    assert again.digest == first.digest
    assert again.files_hashed == 0 and again.dirs_rebuilt == 0


def test_one_changed_file_is_the_only_one_read(store, sample_tree: Path) -> None:
    store.put(sample_tree)
    (sample_tree / "src" / "main.c").write_text("int main(void) { return 1; }\n")
    result = store.put(sample_tree)
    assert result.files_hashed == 1
    assert result.dirs_rebuilt == 2  # src and the root


def test_same_size_same_mtime_rewrite_is_caught_by_ctime_and_inode(
    store, sample_tree: Path
) -> None:
    f = sample_tree / "README"
    first = store.put(sample_tree).digest
    st = f.stat()
    f.write_text("HELLO\n")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert store.put(sample_tree).digest != first


def test_racy_entries_are_rehashed(store, sample_tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", str(3600 * 1000))
    store.put(sample_tree)
    # Everything was modified "just now": nothing may be trusted by stat.
    assert store.put(sample_tree).files_hashed == 4


def test_cache_is_dropped_when_the_store_lost_the_tree(store, sample_tree: Path) -> None:
    first = store.put(sample_tree)
    path = store.cas.path(first.digest)
    path.unlink()
    again = store.put(sample_tree)
    assert again.digest == first.digest
    assert store.cas.has(first.digest)
    assert again.files_hashed == 4


def test_subfolder_reuses_cache_rows(store, sample_tree: Path) -> None:
    store.put(sample_tree)
    assert store.put(sample_tree / "src").files_hashed == 0


def test_a_single_file_is_stored_as_a_blob(store, sample_tree: Path) -> None:
    result = store.put(sample_tree / "README")
    assert result.kind == "blob"
    assert store.cas.get_bytes(result.digest) == b"hello\n"


def test_missing_path(store, tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="no such file") as info:
        store.put(tmp_path / "nope")
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_socket_and_fifo_are_refused_by_name(store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    os.mkfifo(root / "pipe")
    with pytest.raises(KilnError, match=r"pipe: is a FIFO"):
        store.put(root)
    (root / "pipe").unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "sock"))
        with pytest.raises(KilnError, match=r"sock: is a socket"):
            store.put(root)
    finally:
        sock.close()


def test_device_file_is_refused(store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    try:
        os.mknod(root / "null", 0o600 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod not permitted here")
    with pytest.raises(KilnError, match="character device"):
        store.put(root)


def test_time_does_not_matter(store, sample_tree: Path) -> None:
    first = store.put(sample_tree).digest
    later = time.time() + 1000
    for p in sample_tree.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (later, later))
    assert store.put(sample_tree).digest == first


@pytest.fixture
def parallel_scan(monkeypatch) -> None:
    """Make even a small tree use the forked scanning worker."""
    from kiln.store import ingest

    monkeypatch.setattr(ingest, "PARALLEL_MIN_DIRS", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def _wide_tree(root: Path) -> Path:
    for d in range(12):
        sub = root / f"d{d:02d}" / "inner"
        sub.mkdir(parents=True)
        (sub / "f").write_text(f"file {d}\n")
        (root / f"d{d:02d}" / "g").write_text(f"g {d}\n")
    return root


def test_parallel_scan_sees_changes_in_every_directory(
    store, tmp_path: Path, parallel_scan
) -> None:
    from kiln.store.local import Store

    tree = _wide_tree(tmp_path / "wide")
    first = store.put(tree)
    assert store.put(tree).files_hashed == 0
    # Change something in directories scanned by each process.
    (tree / "d00" / "inner" / "f").write_text("changed 0\n")
    (tree / "d07" / "g").write_text("changed 7\n")
    shutil.rmtree(tree / "d05")
    (tree / "d11" / "new").mkdir()
    changed = store.put(tree)
    assert changed.files_hashed == 2
    with Store(tmp_path / "fresh") as fresh:
        assert fresh.put(tree).digest == changed.digest != first.digest


def test_parallel_scan_reports_unreadable_directories(
    store, tmp_path: Path, parallel_scan, monkeypatch
) -> None:
    from kiln.store import ingest

    tree = _wide_tree(tmp_path / "wide")
    store.put(tree)
    victim = str(tree / "d03" / "inner")
    real_scan = ingest.scan

    def failing_scan(path: str):
        if path == victim:
            raise ingest.errors.path_unreadable(path, "Permission denied")
        return real_scan(path)

    monkeypatch.setattr(ingest, "scan", failing_scan)
    with pytest.raises(KilnError, match="inner: cannot read"):
        store.put(tree)


def test_a_put_of_an_unchanged_tree_loads_no_protobuf(tmp_path) -> None:
    """`kiln store put` of a tree already stored answers from the stat cache
    without loading protobuf, the build engine or asyncio (start-up time is
    most of its cost)."""
    import subprocess
    import sys

    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_text("x")
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home"), "KILN_RACY_WINDOW_MS": "0"}
    probe = (
        "import sys\nfrom kiln.cli.app import run\n"
        f"code = run(['store', 'put', {str(tree)!r}])\n"
        "heavy = ('google.protobuf', 'asyncio', 'kiln.engine.evaluation', 'kiln.model.tree')\n"
        "print(code, [m for m in heavy if m in sys.modules])\n"
    )
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert again.stdout.splitlines()[-1] == "0 []", again.stderr
