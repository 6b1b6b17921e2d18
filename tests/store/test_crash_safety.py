"""Killed writers and concurrent writers never leave a corrupt store."""

import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import KILN, make_sample_tree, run_kiln, snapshot
from kiln.store import Store


def _many_files(root: Path, dirs: int, per_dir: int, seed: int) -> Path:
    rng = random.Random(seed)
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"f{f:03d}").write_bytes(rng.randbytes(rng.randint(0, 4000)))
    return root


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_store_clean(home: Path, tmp_path: Path) -> None:
    tree = _many_files(tmp_path / "tree", 40, 50, seed=1)
    (tree / "big").write_bytes(random.Random(2).randbytes(3 << 20))
    rng = random.Random(3)
    env = {"KILN_HOME": str(home), "PATH": "/usr/bin:/bin"}
    for _ in range(8):
        proc = subprocess.Popen(
            [KILN, "store", "put", str(tree)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
    verify = run_kiln(home, "store", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # No staging file survives verify, and a complete put still round-trips.
    assert not any((home / "tmp").iterdir())
    digest = run_kiln(home, "store", "put", str(tree), check=True).stdout.strip()
    with Store(tmp_path / "fresh") as fresh:
        assert str(fresh.put(tree).digest) == digest
    run_kiln(home, "store", "get", digest, str(tmp_path / "out"), check=True)
    assert snapshot(tmp_path / "out") == snapshot(tree)


@pytest.mark.slow
def test_eight_processes_putting_overlapping_trees(home: Path, tmp_path: Path) -> None:
    base = _many_files(tmp_path / "base", 20, 25, seed=4)
    trees = []
    for i in range(8):
        t = tmp_path / f"t{i}"
        shutil.copytree(base, t)
        make_sample_tree(t / "extra")
        (t / f"own{i}").write_text(f"tree {i}\n")
        trees.append(t)
    procs = [
        subprocess.Popen(
            [KILN, "store", "put", str(t)],
            env={"KILN_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t in trees
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    assert run_kiln(home, "store", "verify").returncode == 0
    with Store(tmp_path / "fresh") as fresh:
        for t, (out, _) in zip(trees, results, strict=True):
            assert out.strip() == str(fresh.put(t).digest)
