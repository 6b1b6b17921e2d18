"""What a build reports: each target's outcome, every step, the verdict.

Standard library only (no dataclasses, no typing at run time): a no-op
build answered from its stamp makes a report too, before anything else is
imported.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from typing import Any

    from kiln.engine.scheduler import StepRecord
    from kiln.errors import KilnError


class StepStatus(enum.Enum):
    """Where a step of a build stands (see ``kiln.engine.scheduler``)."""

    PENDING = "pending"  # requested, not finished yet
    CACHED = "cached"  # the action cache (or an identical in-flight step) had it
    EXECUTED = "executed"  # ran here and succeeded
    REMOTE_CACHED = "remote-cached"  # the remote action cache had it
    REMOTE_EXECUTED = "remote-executed"  # ran on the remote engine's worker
    FAILED = "failed"  # ran (or could not be run) and failed
    SKIPPED = "skipped"  # not started: the build was stopping after a failure


_RAN = (StepStatus.EXECUTED, StepStatus.REMOTE_EXECUTED)


class TargetOutcome:
    """One requested target: the folder holding its value and the value's
    tree digest, or the error that stopped it."""

    __slots__ = ("digest", "error", "name", "output")

    def __init__(
        self,
        name: str,
        output: str | None = None,
        digest: str | None = None,
        error: KilnError | None = None,
    ) -> None:
        self.name = name
        self.output = output  # kiln-out/<name>, absolute
        self.digest = digest
        self.error = error

    def __repr__(self) -> str:
        return f"TargetOutcome({self.name!r}, output={self.output!r}, digest={self.digest!r})"


class BuildReport:
    """The outcome of one ``kiln.api.build``.

    ``unchanged``: answered from the build stamp, nothing evaluated; then
    ``steps`` is empty, ``restored`` names the targets whose outputs were
    linked back from the store, and the stamped build's steps count as
    cached. ``stamped``: this build left a stamp, so the next identical
    request can be answered without evaluating anything.
    """

    def __init__(
        self,
        targets: list[TargetOutcome] | None = None,
        steps: list[StepRecord] | None = None,
        seconds: float = 0.0,
        *,
        unchanged: bool = False,
        restored: list[str] | None = None,
        steps_from_stamp: int = 0,
    ) -> None:
        self.targets = targets if targets is not None else []
        self.steps = steps if steps is not None else []
        self.seconds = seconds
        self.build_id: int | None = None
        self.files_hashed = 0
        self.folders_listed = 0  # of source trees, to compare with the stat cache
        self.errors: list[KilnError] = []
        self.stamped = False
        self.not_stamped: str | None = None  # why no stamp was filed
        self.evaluated_because: str | None = None  # why the stamp did not answer
        self.unchanged = unchanged
        self.restored = restored if restored is not None else []
        self._steps_from_stamp = steps_from_stamp
        self.remote: dict[str, int] | None = None  # traffic with a remote, if one was used
        self.warnings: list[str] = []  # problems that did not stop the build
        self.awaits: dict[str, list[str]] = {}  # target -> the targets it awaited (history)
        self.forgotten: list[str] = []  # targets the build file no longer defines, cleared

    @classmethod
    def from_stamp(cls, stamp: dict[str, Any], restored: list[str], seconds: float) -> BuildReport:
        """The report of a build answered from its stamp."""
        targets = [
            TargetOutcome(name, output, digest)
            for name, (output, digest) in sorted(stamp["targets"].items())
        ]
        return cls(
            targets, [], seconds, unchanged=True, restored=restored,
            steps_from_stamp=stamp["steps"],
        )  # fmt: skip

    def count(self, status: StepStatus) -> int:
        """Steps with ``status`` (a stamp's steps all count as cached)."""
        counted = sum(1 for s in self.steps if s.status is status)
        return counted + (self._steps_from_stamp if status is StepStatus.CACHED else 0)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_code(self) -> int:
        """What ``kiln build`` exits with: 0, or the worst error's code."""
        return max((e.exit_code for e in self.errors), default=0)

    def summary(self) -> dict[str, Any]:
        """The machine-readable report of ``kiln build --json``."""
        return {
            "ok": self.ok,
            "executed": self.count(StepStatus.EXECUTED),
            "cached": self.count(StepStatus.CACHED),
            "failed": self.count(StepStatus.FAILED),
            "skipped": self.count(StepStatus.SKIPPED),
            "executed_keys": [str(s.key) for s in self.steps if s.status is StepStatus.EXECUTED],
            "targets": {
                t.name: {
                    "output": t.output,
                    "digest": t.digest,
                    "error": t.error and t.error.render(),
                }
                for t in self.targets
            },
            "files_hashed": self.files_hashed,
            "folders_listed": self.folders_listed,
            "seconds": round(self.seconds, 3),
            "build_id": self.build_id,
            "unchanged": self.unchanged,  # answered from the build stamp, nothing evaluated
            "restored": self.restored,
            "remote_cached": self.count(StepStatus.REMOTE_CACHED),
            "remote_executed": self.count(StepStatus.REMOTE_EXECUTED),
            "remote": self.remote,
            "warnings": self.warnings,
            "forgotten": self.forgotten,
            "evaluated_because": self.evaluated_because,
            "not_stamped": self.not_stamped,
            "calls": self.calls(),
        }

    def calls(self) -> dict[str, int]:
        """Memoized calls made by the steps that ran in this build: how many
        ran and how many were answered from the cache."""
        ran = [s.result for s in self.steps if s.status in _RAN and s.result is not None]
        if not ran:
            return {"ran": 0, "cached": 0}
        from kiln.exec.wasm_calls import call_counts  # (start-up: only when steps ran)

        counts = [call_counts(result) for result in ran]
        executed = sum(c["ran"] for c in counts)
        return {"ran": executed, "cached": sum(c["total"] for c in counts) - executed}
