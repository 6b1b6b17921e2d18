"""A wasm step that runs again finds the calls its previous run made
already loaded (``kiln.engine.call_warmup``): answered from memory, not by
a lookup each; what it no longer needs is merely unused."""

from __future__ import annotations

from pathlib import Path

from engine_helpers import build, calls_project

from kiln.api import StepStatus
from kiln.engine import call_warmup
from kiln.exec import wasm_calls


def test_a_step_run_again_has_its_previous_calls_loaded(
    store, tmp_path: Path, monkeypatch
) -> None:
    root = calls_project(tmp_path / "p", "alpha beta gamma")
    warmed: list[tuple[str, str]] = []
    real_warm = call_warmup.warm

    def warm(store, target: str, step: str) -> int:
        warmed.append((target, step))
        return real_warm(store, target, step)

    monkeypatch.setattr(call_warmup, "warm", warm)
    first = build(store, root, "shout")
    assert first.ok, first.errors
    assert first.summary()["calls"] == {"ran": 3, "cached": 0}
    assert warmed == []  # no previous run
    keys = call_warmup.previous_calls(store, "shout", "shout")
    assert len(keys) == 3

    wasm_calls.MEMO.clear()
    assert call_warmup.warm(store, "shout", "shout") == 3
    assert all(wasm_calls.MEMO.get(wasm_calls.Digest.parse(k)) is not None for k in keys)

    wasm_calls.MEMO.clear()
    (root / "words.txt").write_text("alpha beta delta")  # one new word: one call runs
    before = len(warmed)
    second = build(store, root, "shout")
    assert warmed[before:] == [("shout", "shout")]  # the build loaded them before it ran
    assert [s.status for s in second.steps] == [StepStatus.EXECUTED]
    assert second.summary()["calls"] == {"ran": 1, "cached": 2}
    stdout = store.cas.get_bytes(wasm_calls.Digest.from_proto(second.steps[0].result.stdout_digest))
    assert stdout == b"0:ALPHA\n0:BETA\n0:DELTA\n"
