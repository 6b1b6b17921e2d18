"""Attacks through archives a build unpacks: symlink chains that lead out
of the tree, and bombs (tar, zip, overlapping zip entries, huge headers)
that would fill memory or disk.

Each test builds a small hostile archive and checks that Kiln refuses it
with an error naming the archive and what to do, stores nothing of it, and
never holds a large member in memory."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import stat
import struct
import tarfile
import threading
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_kiln
from kiln.config import ArchiveLimits
from kiln.errors import KilnError, UnsafeArchive
from kiln.exec import archives
from kiln.exec.archives import archive_tree
from kiln.model.tree import lookup

# A member is a file (bytes) or a symlink (str: its target); folders are implied.
Members = dict[str, bytes | str]
FORMATS = ["tar", "zip"]


def make_tar(path: Path, members: Members, compression: str = "gz") -> Path:
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def make_zip(path: Path, members: Members) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if isinstance(content, str):
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, content.encode())
            else:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, content)
    return path


def make_archive(tmp_path: Path, kind: str, members: Members) -> Path:
    if kind == "zip":
        return make_zip(tmp_path / "a.zip", members)
    return make_tar(tmp_path / "a.tar.gz", members)


def unpack(store, archive: Path, limits: ArchiveLimits | None = None):
    with store.writing(), store.cas.batch(durable=False) as batch:
        return archive_tree(
            batch, archive, where=archive.name, limits=limits or ArchiveLimits(),
            scratch=store.session.staging,
        )  # fmt: skip


# ------------------------------------------------------------ symlink chains

DEEP = "a/b/c/d/e/f/g/h"
LINK_ATTACKS = ["chain", "later-link", "link-to-dir", "two-hops", "missing", "absolute",
                "via-absolute", "loop", "self-loop"]  # fmt: skip


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize(
    "members",
    [
        # The review's chain: each target alone stays inside the tree.
        {f"{DEEP}/up": "../../../../../../../..", f"{DEEP}/esc": "up/../../../etc/passwd"},
        # The escaping link first: links are resolved in the finished tree.
        {"esc": "sub/up/../x", "sub/up": "..", "sub/file": b"x"},
        # A link to a folder, then '..' through it.
        {"a/b/c/file": b"x", "d": "a/b/c", "esc": "d/../../../.."},
        # Two hops through links to folders.
        {"x/y/z/file": b"x", "l1": "x/y/z", "l2": "l1/..", "esc": "l2/../../../etc"},
        # Through a name the tree does not hold, lexically.
        {"esc": "missing/../../etc/passwd"},
        # An absolute target, directly and on the way.
        {"abs": "/etc/passwd"},
        {"root": "/", "esc": "root/etc/passwd"},
        # A loop on the way: refused, the host could not resolve it either.
        {"loop1": "loop2/x", "loop2": "loop1/y"},
        {"self": "self/self"},
    ],
    ids=LINK_ATTACKS,
)
def test_a_symlink_leading_out_of_the_tree_is_refused(store, tmp_path, kind, members) -> None:
    archive = make_archive(tmp_path, kind, members)
    with pytest.raises(
        UnsafeArchive, match=r"a\.(zip|tar\.gz): symlink .* points outside the tree"
    ):
        unpack(store, archive)


@pytest.mark.parametrize("kind", FORMATS)
def test_symlinks_that_stay_inside_are_kept_as_they_are(store, tmp_path, kind) -> None:
    members: Members = {
        "lib/libfoo.so.1": b"\x7fELF",
        "lib/libfoo.so": "libfoo.so.1",
        "bin/foo": "../lib/libfoo.so",
        "share/doc/up": "../..",  # the top of the tree itself
        "share/via": "doc/up/lib/./libfoo.so",
        "dangling": "nowhere/at/all",
        "ping": "pong",  # a loop whose last step is never taken on the way
        "pong": "ping",
    }
    stored = unpack(store, make_archive(tmp_path, kind, members))
    for path, target in members.items():
        if isinstance(target, str):
            assert lookup(store.cas, stored.root, path).target == target


def test_a_git_checkout_with_a_link_chain_is_refused(store, tmp_path) -> None:
    folder = tmp_path / "checkout"
    (folder / DEEP).mkdir(parents=True)
    os.symlink("../../../../../../../..", folder / DEEP / "up")
    os.symlink("up/../../../etc/passwd", folder / DEEP / "esc")
    with store.writing(), store.cas.batch(durable=False) as batch, pytest.raises(UnsafeArchive):
        archives.folder_tree(batch, folder)


# ------------------------------------------------------------------- bombs

SMALL = ArchiveLimits(max_bytes=4 << 20, max_ratio=50, max_members=100, config="kiln.toml")


@pytest.fixture
def low_floor(monkeypatch) -> None:
    """Check the ratio from 1 MiB on (not 64 MiB), so the bombs stay small."""
    monkeypatch.setattr(archives, "RATIO_FLOOR", 1 << 20)


def zeros_tar(path: Path, size: int, compression: str) -> Path:
    return make_tar(path, {"pkg/zeros": bytes(size)}, compression)


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_tar_bomb_is_refused_by_its_ratio(store, tmp_path, low_floor, compression) -> None:
    bomb = zeros_tar(tmp_path / f"bomb.tar.{compression}", 3 << 20, compression)
    with pytest.raises(UnsafeArchive) as caught:
        unpack(store, bomb, SMALL)
    message = caught.value.render()
    assert f"bomb.tar.{compression}: unpacks to more than 50 times its own size" in message
    assert "raise `max-ratio` in the [archives] table of kiln.toml" in message


def test_a_zip_bomb_is_refused_before_any_member_is_read(store, tmp_path, low_floor) -> None:
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros": bytes(3 << 20)})
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchive, match=r"bomb\.zip: unpacks to more than 50 times"):
            unpack(store, bomb, SMALL)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def overlapping_zip(path: Path, copies: int, size: int) -> Path:
    """A zip whose central directory lists one compressed member ``copies``
    times under different names (the overlapping-entries bomb)."""
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m", bytes(size))
    data = one.getvalue()
    cd_at = struct.unpack("<I", data[-6:-2])[0]
    local, record = data[:cd_at], data[cd_at:-22]
    records = b"".join(
        record[:28] + struct.pack("<H", len(name)) + record[30:46] + name
        for name in (f"m{i:04d}".encode() for i in range(copies))
    )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, copies, copies, len(records), cd_at, 0)
    path.write_bytes(local + records + end)
    return path


def test_overlapping_zip_entries_count_once_each(store, tmp_path) -> None:
    bomb = overlapping_zip(tmp_path / "overlap.zip", copies=50, size=200 << 10)
    assert len(zipfile.ZipFile(bomb).infolist()) == 50
    with pytest.raises(UnsafeArchive, match=r"overlap\.zip: unpacks to more than 4 MiB"):
        unpack(store, bomb, SMALL)


def test_too_many_members_are_refused(store, tmp_path) -> None:
    many = make_tar(tmp_path / "many.tar.gz", {f"pkg/f{i}": b"" for i in range(101)})
    with pytest.raises(UnsafeArchive) as caught:
        unpack(store, many, SMALL)
    message = caught.value.render()
    assert "many.tar.gz: has more than 100 members" in message and "`max-members`" in message


def test_a_huge_pax_header_is_refused_while_read(store, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(archives, "MAX_HEADERS", 1 << 20)
    path = tmp_path / "pax.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pkg/f")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeArchive, match=r"pax\.tar\.gz: a member's headers exceed 1 MiB"):
        unpack(store, path, ArchiveLimits())


@pytest.mark.parametrize("kind", FORMATS)
def test_a_large_member_is_streamed_not_held_in_memory(store, tmp_path, kind) -> None:
    size = 24 << 20
    if kind == "zip":
        archive = make_zip(tmp_path / "big.zip", {"pkg/zeros": bytes(size)})
    else:
        archive = zeros_tar(tmp_path / "big.tar.gz", size, "gz")
    tracemalloc.start()
    try:
        stored = unpack(store, archive, ArchiveLimits(max_ratio=10_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lookup(store.cas, stored.root, "pkg/zeros").digest.size == size
    assert peak < 8 << 20, f"unpacking held {peak >> 20} MiB in memory"


def test_a_member_nested_too_deep_is_refused(store, tmp_path) -> None:
    deep = make_tar(tmp_path / "deep.tar.gz", {"/".join(["d"] * 3000) + "/f": b"x"})
    with pytest.raises(UnsafeArchive, match="is more than 256 folders deep"):
        unpack(store, deep)


def test_a_truncated_archive_is_a_clear_error(store, tmp_path) -> None:
    whole = zeros_tar(tmp_path / "whole.tar.gz", 1 << 20, "gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(KilnError, match=r"cut\.tar\.gz: cannot be unpacked"):
        unpack(store, cut)


# ---------------------------------------------------- through the command line


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 for the files in ``folder``; its base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prefetch_refuses_a_bomb_naming_the_limit_and_the_setting(home, tmp_path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    zeros_tar(served / "bomb.tgz", 3 << 20, "gz")
    make_tar(served / "chain.tgz", {f"{DEEP}/up": "../../../../../../../..",
                                    f"{DEEP}/esc": "up/../../../etc/passwd"})  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text("[archives]\nmax-unpacked-mib = 2\n")
    env = {"KILN_CONFIG": str(config), "KILN_FETCH_ATTEMPTS": "1"}
    with serving(served) as base:
        bomb = run_kiln(home, "prefetch", "--unpack", f"{base}/bomb.tgz", env=env)
        chain = run_kiln(home, "prefetch", "--unpack", f"{base}/chain.tgz", env=env)
    assert bomb.returncode == 1 and "Traceback" not in bomb.stderr
    assert "bomb.tgz: unpacks to more than 2 MiB" in bomb.stderr
    assert f"raise `max-unpacked-mib` in the [archives] table of {config}" in bomb.stderr
    assert chain.returncode == 1 and "Traceback" not in chain.stderr
    assert "symlink 'a/b/c/d/e/f/g/h/esc' -> 'up/../../../etc/passwd' points outside" in (
        chain.stderr
    )
