"""Build history in the store database: what each build asked for, and
every step it requested with its key, status, timing and the inputs its key
was computed from. ``kiln why``, ``show``, ``log`` and ``trace`` read it.

What it keeps, and pruning the rest, is engine/retention.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.engine import retention
from kiln.engine.stamp import ALL_TARGETS
from kiln.model.digest import Digest, canonical_bytes
from kiln.model.reapi import re_pb2
from kiln.store.db import transaction

if TYPE_CHECKING:
    from kiln.engine.report import BuildReport
    from kiln.store.local import Store


@dataclass(frozen=True)
class StepRow:
    """One recorded step."""

    build: int
    seq: int
    target: str
    step: str
    key: str
    status: str
    slot: int | None
    started: float | None
    finished: float | None
    inputs: dict[str, Any]
    result: bytes | None

    def action_result(self) -> re_pb2.ActionResult | None:
        return None if self.result is None else re_pb2.ActionResult.FromString(self.result)


def record_build(
    store: Store, project: Path, targets: list[str], report: BuildReport, started: float
) -> int:
    """Write one build and its steps; returns the build's id."""
    with transaction(store.conn) as conn:
        cur = conn.execute(
            "INSERT INTO builds(project, targets, started, finished, status, awaits, evaluation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                str(project),
                json.dumps(targets),
                started,
                time.time(),
                "ok" if report.ok else "failed",
                json.dumps(report.awaits, sort_keys=True),
                json.dumps(
                    {"because": report.evaluated_because, "not_stamped": report.not_stamped}
                ),
            ),
        )
        build_id = int(cur.lastrowid or 0)
        conn.executemany(
            "INSERT INTO build_steps(build, seq, target, step, key, status, slot, started, "
            "finished, inputs, result, also) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    build_id,
                    s.seq,
                    s.target,
                    s.description,
                    str(s.key),
                    s.status.value,
                    s.slot,
                    s.started,
                    s.finished,
                    json.dumps(s.identity, sort_keys=True),
                    None if s.result is None else canonical_bytes(s.result),
                    json.dumps(s.also) if s.also else None,
                )
                for s in report.steps
            ],
        )
    if retention.due(build_id):
        retention.prune(store.conn, sweep=retention.SWEEP_ROWS)
    return build_id


def last_build(store: Store, project: Path, with_steps: bool = False) -> int:
    """The id of the project's most recent build (``with_steps``: the most
    recent one that evaluated its rules, not answered from its stamp)."""
    row = store.conn.execute(
        "SELECT MAX(id) FROM builds WHERE project = ?"
        + (" AND status != 'unchanged'" if with_steps else ""),
        (str(project),),
    ).fetchone()
    if row is None or row[0] is None:
        raise errors.never_built(project)
    return int(row[0])


# The project's builds that included a target (?2): ran or found its steps,
# or were asked for it (a target may have no steps); ?3 adds builds answered
# from their stamp for a request covering it (stamp.stamp_key: a JSON list
# of names, or ALL_TARGETS).
_BUILDS_OF_TARGET = """
SELECT MAX(b.id) FROM builds AS b
WHERE b.project = ?1 AND (
    EXISTS (SELECT 1 FROM build_steps AS s WHERE s.build = b.id AND (s.target = ?2
            OR s.also IS NOT NULL AND ?2 IN (SELECT value FROM json_each(s.also))))
    OR ((b.status != 'unchanged' OR ?3) AND (
        b.targets = ?4 AND b.status = 'unchanged'
        OR ?2 IN (SELECT value FROM json_each(
            CASE WHEN json_valid(b.targets) THEN b.targets ELSE '[]' END))))
)
"""


def last_build_of(store: Store, project: Path, target: str, with_steps: bool = True) -> int:
    """The id of the project's most recent build that included ``target``
    (not ``with_steps``: also one answered from its stamp); an error that
    says it has not been built if there is none."""
    row = store.conn.execute(
        _BUILDS_OF_TARGET, (str(project), target, not with_steps, ALL_TARGETS)
    ).fetchone()
    if row is None or row[0] is None:
        raise errors.never_built(project, target)
    return int(row[0])


def steps(store: Store, build: int, target: str | None = None) -> list[StepRow]:
    query = (
        "SELECT build, seq, target, step, key, status, slot, started, finished, inputs, result "
        "FROM build_steps WHERE build = ?1"
    )
    params: tuple[Any, ...] = (build,)
    if target is not None:  # the steps it asked for, also those another target asked for first
        query += (
            " AND (target = ?2 OR also IS NOT NULL AND ?2 IN (SELECT value FROM json_each(also)))"
        )
        params += (target,)
    rows = store.conn.execute(query + " ORDER BY seq", params).fetchall()
    return [StepRow(*r[:9], json.loads(r[9]), r[10]) for r in rows]


def previous_run(store: Store, row: StepRow) -> StepRow | None:
    """The last earlier build's record of the same step (target and
    description) that actually ran or was found in the cache (retention.py
    keeps it for the steps of each project's last build with steps)."""
    found = store.conn.execute(
        "SELECT build, seq, target, step, key, status, slot, started, finished, inputs, result "
        "FROM build_steps WHERE target = ? AND step = ? AND build < ? "
        "AND status IN ('executed', 'cached', 'remote-cached', 'remote-executed') "
        "ORDER BY build DESC LIMIT 1",
        (row.target, row.step, row.build),
    ).fetchone()
    return None if found is None else StepRow(*found[:9], json.loads(found[9]), found[10])


def explain(old: StepRow | None, new: StepRow) -> list[str]:
    """Why ``new`` was not a cache hit, in terms of what its key came from."""
    if old is None:
        return ["never ran before (no earlier build recorded this step)"]
    if old.key == new.key:
        return [
            "the same action ran before, but its result was not in the cache "
            "(it failed then, or was collected since)"
        ]
    a, b = old.inputs, new.inputs
    reasons: list[str] = []
    old_in, new_in = a.get("inputs", {}), b.get("inputs", {})
    for path in sorted(old_in.keys() | new_in.keys()):
        if path not in new_in:
            reasons.append(f"input {path} is no longer used")
        elif path not in old_in:
            reasons.append(f"input {path} is new")
        elif old_in[path] != new_in[path]:
            reasons.append(
                f"input {path} changed: {_short(old_in[path])} -> {_short(new_in[path])}"
            )
    old_argv, new_argv = a.get("argv", []), b.get("argv", [])
    if old_argv != new_argv:
        reasons.append(f"arguments changed: {' '.join(old_argv)!r} -> {' '.join(new_argv)!r}")
    old_env, new_env = a.get("env", {}), b.get("env", {})
    for name in sorted(old_env.keys() | new_env.keys()):
        if old_env.get(name) != new_env.get(name):
            old_value, new_value = old_env.get(name), new_env.get(name)
            reasons.append(f"environment variable {name} changed: {old_value!r} -> {new_value!r}")
    for what in ("outputs", "platform"):
        if a.get(what) != b.get(what):
            reasons.append(f"{what} changed: {a.get(what)} -> {b.get(what)}")
    return reasons or ["its key changed for a reason kiln did not record"]


def _short(digest: str) -> str:
    d = Digest.parse(digest)
    return f"{d.hash[:12]}/{d.size}"


def evaluation(store: Store, build: int) -> dict[str, str | None]:
    """Why ``build`` evaluated the build file instead of answering from its
    stamp (``because``), and why it filed no stamp (``not_stamped``); empty
    for a build recorded before Kiln kept these."""
    row = store.conn.execute("SELECT evaluation FROM builds WHERE id = ?", (build,)).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


def awaits(store: Store, build: int) -> dict[str, list[str]]:
    """Which targets each target of ``build`` awaited (empty for a build
    recorded before Kiln kept this)."""
    row = store.conn.execute("SELECT awaits FROM builds WHERE id = ?", (build,)).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


def build_started(store: Store, build: int) -> float:
    row = store.conn.execute("SELECT started FROM builds WHERE id = ?", (build,)).fetchone()
    return float(row[0]) if row else 0.0


def _call_events(row: StepRow, lane: int, started: float) -> list[dict[str, Any]]:
    """The memoized calls that ran inside a step, on the step's lane."""
    return [
        {"name": f"call {c['export']}", "cat": "call", "pid": 1, "tid": lane, "ph": "X",
         "ts": round((c["started"] - started) * 1e6), "dur": round(c["seconds"] * 1e6),
         "args": {"key": c["key"], "input": c["input"], "depth": c["depth"]}}
        for c in calls_ran(row)
    ]  # fmt: skip


def calls_ran(row: StepRow) -> list[dict[str, Any]]:
    """The memoized calls that ran (were not answered from the cache)
    while the step of ``row`` ran."""
    from kiln.exec.wasm_calls import calls_of  # (start-up: only steps that ran)

    result = row.action_result()
    return [c for c in calls_of(result) if c["ran"]] if result is not None else []


def chrome_trace(rows: list[StepRow], started: float) -> dict[str, Any]:
    """The steps as Chrome trace events (Perfetto, chrome://tracing): one
    lane per local slot, one per remote worker; cache hits (local or
    remote) as instant events on their own lane."""
    cache_lane = 1 + max((r.slot for r in rows if r.slot is not None), default=-1)
    remote_lanes: dict[str, int] = {}
    for r in rows:
        if r.status == "remote-executed":
            result = r.action_result()
            worker = (result.execution_metadata.worker if result else "") or "(unnamed)"
            remote_lanes.setdefault(worker, cache_lane + 1 + len(remote_lanes))
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "kiln build"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": cache_lane,
         "args": {"name": "cache hits"}},
    ]  # fmt: skip
    for slot in sorted({r.slot for r in rows if r.slot is not None}):
        events.append(
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": slot,
             "args": {"name": f"slot {slot}"}}
        )  # fmt: skip
    for worker, lane in remote_lanes.items():
        events.append(
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": lane,
             "args": {"name": f"remote worker {worker}"}}
        )  # fmt: skip
    for r in rows:
        if r.started is None:
            continue  # skipped: never started
        event = {
            "name": f"{r.target}: {r.step}",
            "cat": r.status,
            "pid": 1,
            "ts": round((r.started - started) * 1e6),
            "args": {"key": r.key, "status": r.status},
        }
        lane = r.slot
        if r.status == "remote-executed":
            result = r.action_result()
            lane = remote_lanes[(result.execution_metadata.worker if result else "") or "(unnamed)"]
        if lane is None or r.status == "remote-cached":
            event.update(ph="i", s="t", tid=cache_lane)
        else:
            event.update(ph="X", tid=lane, dur=round(((r.finished or r.started) - r.started) * 1e6))
            events.extend(_call_events(r, lane, started))
        events.append(event)
    return {"traceEvents": events, "displayTimeUnit": "ms"}
