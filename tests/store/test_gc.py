"""Garbage collection: roots, temp roots of live sessions, policies, locking."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import make_sample_tree
from kiln.errors import KilnError
from kiln.model.action import ActionSpec
from kiln.model.digest import EMPTY, Digest
from kiln.model.reapi import ActionResult, Directory, FileNode, OutputFile
from kiln.model.tree import reachable
from kiln.store import GcPolicy, Store


def _blobs(store) -> set[str]:
    return {p.name for p in store.cas.root.glob("??/*") if not p.name.endswith(".x")}


def test_roots_keep_their_whole_tree(store, sample_tree: Path, tmp_path: Path) -> None:
    kept = store.put(sample_tree, root="keep").digest
    other = make_sample_tree(tmp_path / "other")
    (other / "README").write_text("different\n")
    gone = store.put(other).digest
    report = store.gc()
    assert report.deleted_blobs >= 2
    assert {d.hash for d in reachable(store.cas, kept)} <= _blobs(store)
    assert not store.cas.has(gone)
    assert store.cas.get_bytes(Digest.of_bytes(b"different\n")) is None


def test_removing_the_root_makes_it_collectable(store, sample_tree: Path) -> None:
    d = store.put(sample_tree, root="r").digest
    assert store.remove_root("r")
    store.gc()
    assert not store.cas.has(d)
    assert _blobs(store) == set()


def test_cache_entries_keep_outputs_until_evicted(store) -> None:
    key = store.put_action(ActionSpec(argv=("t",), input_root=EMPTY))
    out = store.cas.put_bytes(b"output")
    store.action_cache.record(
        key,
        ActionResult(output_files=[OutputFile(path="o", digest=out.to_proto())]),
        executor="t",
        duration=0,
    )
    report = store.gc(GcPolicy(max_age=3600))
    assert report.evicted_actions == 0 and store.lookup(key) is not None
    store.add_root("action", key, "action")
    assert store.gc().evicted_actions == 0 and store.cas.has(out)
    store.remove_root("action")
    assert store.gc().evicted_actions == 1
    assert not store.cas.has(out) and store.lookup(key) is None


def test_age_policy_deletes_only_old_blobs(store) -> None:
    old = store.cas.put_bytes(b"old")
    new = store.cas.put_bytes(b"new")
    past = time.time() - 10 * 86400
    os.utime(store.cas.path(old), (past, past))
    store.gc(GcPolicy(max_age=86400))
    assert not store.cas.has(old) and store.cas.has(new)


def test_size_policy_deletes_least_recently_used_first(store) -> None:
    blobs = [store.cas.put_bytes(bytes([i]) * 1000) for i in range(5)]
    for age, d in enumerate(reversed(blobs)):
        t = time.time() - 1000 * (age + 1)
        os.utime(store.cas.path(d), (t, t))
    report = store.gc(GcPolicy(max_size=2500))
    assert [store.cas.has(d) for d in blobs] == [False, False, False, True, True]
    assert report.kept_bytes == 2000


def test_dry_run_deletes_nothing(store) -> None:
    d = store.cas.put_bytes(b"x")
    report = store.gc(GcPolicy(dry_run=True))
    assert report.deleted_blobs == 1 and store.cas.has(d)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from kiln.store import Store
    from kiln.model.digest import Digest
    store = Store(sys.argv[1])
    with store.writing():
        d = store.cas.put_bytes(b"in flight")
        store.session.protect(d, "blob")
    print(d, flush=True)
    time.sleep(60)
    """
)


def test_live_sessions_temp_roots_survive_dead_ones_do_not(store, home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home)], stdout=subprocess.PIPE, text=True
    )
    try:
        d = Digest.parse(proc.stdout.readline())
        report = store.gc()
        assert report.temp_roots == 1 and store.cas.has(d)
    finally:
        proc.kill()
        proc.wait()
    report = store.gc()
    assert report.temp_roots == 0 and not store.cas.has(d)


WRITER = textwrap.dedent(
    """
    import sys, time
    from kiln.store import Store
    store = Store(sys.argv[1])
    with store.writing():
        print("writing", flush=True)
        time.sleep(60)
    """
)


def test_gc_waits_for_in_flight_writes(store, home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        with pytest.raises(KilnError, match="busy"):
            store.gc(timeout=0.3)
    finally:
        proc.kill()
        proc.wait()
    store.gc(timeout=5)


def test_gc_drops_stat_cache(store, sample_tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    first = store.put(sample_tree)
    store.gc()
    again = store.put(sample_tree)
    assert again.digest == first.digest and again.files_hashed == 4
    assert store.cas.has(again.digest)


def test_root_with_a_missing_subtree_keeps_everything_else(store, sample_tree: Path) -> None:
    root = store.put(sample_tree, root="partial").digest
    everything = {d.hash for d in reachable(store.cas, root)}
    util_node = FileNode(
        name="util.c", digest=Digest.of_file(sample_tree / "src/lib/util.c").to_proto()
    )
    lib = Digest.of_message(Directory(files=[util_node]))
    store.cas.path(lib).unlink()  # lose the src/lib Directory blob
    report = store.gc()
    assert report.dangling_roots == []
    kept = _blobs(store)
    util = Digest.of_file(sample_tree / "src/lib/util.c").hash
    assert everything - {lib.hash, util} <= kept


def test_a_kept_hit_survives_gc_and_is_marked_used_when_its_session_ends(home: Path) -> None:
    """A hit a session keeps stays through any GC while the session lives;
    its last use is written once, as the session ends (not at every hit)."""
    with Store(home) as builder:
        key = builder.put_action(ActionSpec(argv=("t",), input_root=EMPTY))
        out = builder.cas.put_bytes(b"output")
        result = ActionResult(output_files=[OutputFile(path="o", digest=out.to_proto())])
        builder.action_cache.record(key, result, executor="t", duration=0)
        past = time.time() - 10 * 86400
        builder.conn.execute("UPDATE action_cache SET last_used = ?", (past,))
        assert builder.lookup(key, keep=True) is not None
        with Store(home) as other:  # another session, as another process would have
            assert other.gc().evicted_actions == 0 and other.cas.has(out)
        used = builder.conn.execute("SELECT last_used FROM action_cache").fetchone()[0]
        assert used == past
    with Store(home) as later:
        used = later.conn.execute("SELECT last_used FROM action_cache").fetchone()[0]
        assert used > past + 86400
        assert later.gc(GcPolicy(max_age=86400)).evicted_actions == 0
        assert later.gc().evicted_actions == 1 and not later.cas.has(out)
