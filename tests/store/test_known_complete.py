"""Results remembered complete for the resident server's lifetime
(store/known_complete.py): trusted only while nothing was removed."""

from __future__ import annotations

import pytest

from kiln.model.action import ActionSpec
from kiln.model.digest import EMPTY, Digest
from kiln.model.reapi import ActionResult, OutputFile
from kiln.store import db, known_complete


@pytest.fixture
def remembering(monkeypatch):
    """known_complete turned on, with nothing known (as in a new server)."""
    monkeypatch.setattr(known_complete, "_enabled", True)
    monkeypatch.setattr(known_complete, "_known", {})
    monkeypatch.setattr(known_complete, "_learned", [])


def _recorded(store, content: bytes, n: int = 0) -> tuple[Digest, Digest]:
    blob = store.cas.put_bytes(content)
    key = store.put_action(ActionSpec(argv=("tool", str(n)), input_root=EMPTY))
    result = ActionResult(output_files=[OutputFile(path="out", digest=blob.to_proto())])
    store.action_cache.record(key, result, executor="t", duration=0)
    return key, blob


def test_a_result_found_complete_is_not_checked_again(store, remembering, monkeypatch) -> None:
    key, _ = _recorded(store, b"x")
    assert store.lookup(key) is not None
    assert known_complete.learned() == [(key.hash, db.removals(store.conn))]
    checks = []
    monkeypatch.setattr(store.action_cache, "complete", lambda r: checks.append(r) or True)
    assert store.lookup(key) is not None
    assert checks == []  # remembered: no blob looked at


def test_a_removal_makes_every_result_checked_again(store, remembering) -> None:
    key, blob = _recorded(store, b"will be collected")
    assert store.lookup(key) is not None
    # What GC and verify do before any blob goes: count it; then the blob goes.
    db.count_removal(store.conn)
    store.cas.path(blob).unlink()
    assert store.lookup(key) is None


def test_gc_counts_its_removals(store) -> None:
    before = db.removals(store.conn)
    store.gc()
    assert db.removals(store.conn) == before  # nothing to delete: nothing counted
    unused = store.cas.put_bytes(b"not kept by anything")
    assert store.gc().deleted_blobs >= 1 and not store.cas.has(unused)
    assert db.removals(store.conn) == before + 1


def test_verify_counts_a_removal(store) -> None:
    before = db.removals(store.conn)
    store.verify()
    assert db.removals(store.conn) == before + 1


def test_lessons_from_before_a_removal_are_not_taken(remembering) -> None:
    assert known_complete.merge([("a" * 64, 3), ("b" * 64, 4)], removals=4) == 1
    assert known_complete.known("b" * 64, 4)
    assert not known_complete.known("a" * 64, 4)
    known_complete.merge([], removals=5)  # a removal since: everything is forgotten
    assert known_complete.size() == 0
    assert known_complete.merge("not a list", removals=5) == 0
    assert known_complete.merge([("c" * 64,), ["d" * 64, "5"], (1, 5)], removals=5) == 0


def test_off_by_default_every_lookup_checks(store, monkeypatch) -> None:
    key, blob = _recorded(store, b"y")
    assert not known_complete.enabled()
    assert store.lookup(key) is not None
    store.cas.path(blob).unlink()  # (behind Kiln's back, no removal counted)
    assert store.lookup(key) is None
