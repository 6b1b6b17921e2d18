"""Trees: canonical Directory messages, digests, walks and diffs."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.model.digest import Digest
from kiln.model.reapi import Directory, FileNode, SymlinkNode
from kiln.model.tree import check_canonical, diff, make_directory, walk


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _digest_msg(data: bytes) -> bytes:
    return _field(1, hashlib.sha256(data).hexdigest().encode()) + bytes([0x10]) + _varint(len(data))


def test_known_tree_digest_matches_hand_encoding(store, tmp_path: Path) -> None:
    """tree/ = {a.txt: "hello\\n", bin/run (executable): "x", ln -> a.txt}."""
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "bin" / "run").write_bytes(b"x")
    (root / "bin" / "run").chmod(0o755)
    (root / "ln").symlink_to("a.txt")

    # Directory bin: files { name: "run" digest: {...} is_executable: true }
    run_node = _field(1, b"run") + _field(2, _digest_msg(b"x")) + bytes([0x20, 0x01])
    bin_dir = _field(1, run_node)
    # Root: files {a.txt}, directories {bin}, symlinks {ln -> a.txt}
    a_node = _field(1, b"a.txt") + _field(2, _digest_msg(b"hello\n"))
    bin_node = _field(1, b"bin") + _field(2, _digest_msg(bin_dir))
    ln_node = _field(1, b"ln") + _field(2, b"a.txt")
    root_dir = _field(1, a_node) + _field(2, bin_node) + _field(3, ln_node)
    expected = Digest(hashlib.sha256(root_dir).hexdigest(), len(root_dir))

    assert store.put(root).digest == expected
    assert store.cas.get_bytes(expected) == root_dir


def test_same_content_elsewhere_same_digest(store, sample_tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(sample_tree, copy, symlinks=True)
    assert store.put(sample_tree).digest == store.put(copy).digest


@pytest.mark.parametrize(
    "change",
    ["one_byte", "exec_bit", "symlink_target", "rename", "empty_dir", "file_to_symlink"],
)
def test_any_change_changes_the_digest(store, sample_tree: Path, change: str) -> None:
    before = store.put(sample_tree).digest
    if change == "one_byte":
        data = bytearray((sample_tree / "src/lib/util.c").read_bytes())
        data[1000] ^= 1
        (sample_tree / "src/lib/util.c").write_bytes(bytes(data))
    elif change == "exec_bit":
        (sample_tree / "README").chmod(0o744)
    elif change == "symlink_target":
        (sample_tree / "link").unlink()
        (sample_tree / "link").symlink_to("src/main.h")
    elif change == "rename":
        (sample_tree / "README").rename(sample_tree / "README.md")
    elif change == "empty_dir":
        (sample_tree / "src" / "empty-too" / "x").mkdir()
    elif change == "file_to_symlink":
        (sample_tree / "README").unlink()
        (sample_tree / "README").symlink_to("run.sh")
    assert store.put(sample_tree).digest != before


def test_make_directory_sorts_and_rejects_duplicates() -> None:
    d = Digest.of_bytes(b"")
    msg = make_directory([("b", d, False), ("a", d, True)], [], [("c", "x")])
    assert [f.name for f in msg.files] == ["a", "b"]
    with pytest.raises(KilnError, match="duplicate"):
        make_directory([("a", d, False)], [("a", d)], [])
    for bad in ["", ".", "..", "a/b", "nul\0"]:
        with pytest.raises(KilnError, match="invalid entry name"):
            make_directory([(bad, d, False)], [], [])


def test_check_canonical_rejects_unsorted_and_traversal() -> None:
    d = Digest.of_bytes(b"").to_proto()
    with pytest.raises(KilnError, match="not sorted"):
        check_canonical(
            Directory(files=[FileNode(name="b", digest=d), FileNode(name="a", digest=d)])
        )
    with pytest.raises(KilnError, match="invalid entry name"):
        check_canonical(Directory(files=[FileNode(name="../evil", digest=d)]))
    with pytest.raises(KilnError, match="duplicate"):
        check_canonical(
            Directory(
                files=[FileNode(name="a", digest=d)], symlinks=[SymlinkNode(name="a", target="x")]
            )
        )


def test_walk_lists_everything(store, sample_tree: Path) -> None:
    root = store.put(sample_tree).digest
    paths = {p: e for p, e in walk(store.cas, root)}
    assert paths["empty"] is None and paths["src/empty-too"] is None
    assert paths["run.sh"].executable and not paths["README"].executable
    assert paths["link"].target == "src/main.c"
    assert paths["src/lib/util.c"].digest == Digest.of_file(sample_tree / "src/lib/util.c")


def test_diff_reports_added_removed_changed(store, sample_tree: Path) -> None:
    old = store.put(sample_tree).digest
    (sample_tree / "README").write_text("changed\n")
    (sample_tree / "run.sh").chmod(0o644)
    shutil.rmtree(sample_tree / "src" / "lib")
    (sample_tree / "new").mkdir()
    (sample_tree / "new" / "file").write_text("n")
    new = store.put(sample_tree).digest
    d = diff(store.cas, old, new)
    assert d.added == ["new", "new/file"]
    assert d.removed == ["src/lib", "src/lib/util.c"]
    assert d.changed == ["README", "run.sh"]
    assert not diff(store.cas, new, new)


def test_non_utf8_name_is_rejected(store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    try:
        with open(os.fsencode(root) + b"/bad\xff", "wb"):
            pass
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    with pytest.raises(KilnError, match="not valid UTF-8"):
        store.put(root)
