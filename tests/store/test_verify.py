"""`verify` re-hashes blobs, names and quarantines the corrupt ones."""

from pathlib import Path

from kiln.model.digest import Digest


def test_corrupted_blob_is_named_quarantined_and_exits_1(
    kiln, home: Path, sample_tree: Path
) -> None:
    assert kiln("store", "put", str(sample_tree), check=True)
    victim = Digest.of_file(sample_tree / "src" / "main.c")
    path = home / "cas" / victim.hash[:2] / victim.hash
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.write(b"X")
    proc = kiln("store", "verify")
    assert proc.returncode == 1
    assert victim.hash in proc.stderr and "corrupt" in proc.stderr
    assert not path.exists()
    assert any(p.name.startswith(victim.hash) for p in (home / "quarantine").iterdir())
    assert kiln("store", "verify").returncode == 0


def test_clean_store_verifies(kiln, sample_tree: Path) -> None:
    kiln("store", "put", str(sample_tree), check=True)
    proc = kiln("store", "verify", "--json")
    assert proc.returncode == 0
    assert '"ok": true' in proc.stdout
