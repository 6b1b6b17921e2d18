"""unpack() and pick(): archives in the store as trees, parts of trees as values."""

from __future__ import annotations

from engine_helpers import build, ran, write_project
from fetch_servers import tarball


def test_an_archive_source_unpacks_once_and_its_parts_can_be_picked(store, tmp_path) -> None:
    archive = tarball({"include/lib.h": b"#define LIB 1\n", "lib/libx.a": b"!<arch>\n"})
    root = write_project(
        tmp_path / "p",
        """
from kiln.build import pick, source, target, unpack

@target
async def sdk():
    tree = await unpack(source("sdk.tar.gz"), strip=1)
    return {"header.h": pick(tree, "include/lib.h"), "lib": pick(tree, "lib")}
""",
        {"sdk.tar.gz": archive},
    )
    first = build(store, root)
    assert first.ok, first.errors
    assert ran(first) == ["sdk: unpack sdk.tar.gz"]
    out = root / "kiln-out" / "sdk"
    assert (out / "header.h").read_text() == "#define LIB 1\n"
    assert (out / "lib" / "libx.a").read_bytes() == b"!<arch>\n"
    assert ran(build(store, root)) == []


def test_unpack_refuses_escapes_and_pick_names_what_is_missing(store, tmp_path) -> None:
    root = write_project(
        tmp_path / "p",
        """
from kiln.build import pick, source, target, unpack

@target
async def evil():
    return await unpack(source("evil.tgz"))

@target
async def missing():
    return pick(await unpack(source("ok.tgz")), "no/such/file")
""",
        {"evil.tgz": tarball({"../../x": b"x"}), "ok.tgz": tarball({"a": b"a"})},
    )
    report = build(store, root, keep_going=True)
    messages = " ".join(e.render() for e in report.errors)
    assert "climbs out of the tree with '..'" in messages
    assert "'no/such/file' is not a file or folder of the tree" in messages
    assert "kilnfile.py:" in messages
