"""Property tests: any tree round-trips, and its digest depends only on content."""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import snapshot
from kiln.store import Store

names = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)

leaf = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=300), st.booleans()),
    st.tuples(st.just("link"), names),
)
trees = st.recursive(
    leaf,
    lambda children: st.dictionaries(names, children, max_size=5),
    max_leaves=20,
)


def _write(path: Path, node) -> None:
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            _write(path / name, child)
    elif node[0] == "file":
        path.write_bytes(node[1])
        path.chmod(0o755 if node[2] else 0o644)
    else:
        path.symlink_to(node[1])


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=st.dictionaries(names, trees, max_size=6))
def test_any_tree_round_trips_and_digest_ignores_location(tree, tmp_path: Path) -> None:
    # One folder per example, inside the test's (shared by all its examples).
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        base = Path(tmp)
        src = base / "src"
        _write(src, tree)
        with Store(base / "home") as store:
            digest = store.put(src).digest
            moved = base / "elsewhere" / "deeper"
            shutil.copytree(src, moved, symlinks=True)
            assert store.put(moved).digest == digest
            store.get(digest, base / "out")
            assert snapshot(base / "out") == snapshot(src)
