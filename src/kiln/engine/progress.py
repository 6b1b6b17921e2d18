"""Showing a build while it runs, on stderr.

On a terminal: one live status line (done / running / cached / failed and
the steps running now), redrawn in place. Elsewhere: one plain line per
step that ran or failed; cache hits are only counted, so a no-op build of
thousands of steps stays quiet.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

from kiln.engine.report import StepStatus
from kiln.engine.scheduler import StepRecord

MAX_SHOWN = 4  # running steps named in the live line
LARGE_DOWNLOAD = 16 << 20  # without a terminal, report downloads from this size


_SHOWN = {  # without a terminal: the statuses that get a line, and its verb
    StepStatus.EXECUTED: "ran   ",
    StepStatus.REMOTE_EXECUTED: "ran remotely",
    StepStatus.FAILED: "FAILED",
}


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


class BuildObserver(Protocol):
    """What hears a build as it goes (``kiln.api.build``'s observer)."""

    def on_change(self, record: StepRecord) -> None:
        """A step was requested, started, or finished (``record.status``)."""
        ...

    def on_download(self, url: str, done: int, total: int | None) -> None:
        """A fetch step's download progressed (called from worker threads)."""
        ...


class BuildProgress:
    """Receives every step status change (``on_change``) from the scheduler."""

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._live_enabled = self._stream.isatty() if live is None else live
        self._live: Any = None
        self._running: dict[int, StepRecord] = {}
        self.counts = {s: 0 for s in StepStatus}
        self._seen: dict[int, StepStatus] = {}
        self._downloads: dict[str, tuple[int, int | None]] = {}
        self._traffic = ""  # with a remote: what went up and down

    def __enter__(self) -> BuildProgress:
        if self._live_enabled:  # (start-up: rich only on a terminal)
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._render(),
                console=Console(file=self._stream),
                refresh_per_second=8,
                transient=True,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def on_change(self, record: StepRecord) -> None:
        previous = self._seen.get(record.seq)
        if previous is not None:
            self.counts[previous] -= 1
        self._seen[record.seq] = record.status
        self.counts[record.status] += 1
        if record.status is StepStatus.PENDING and record.started is not None:
            self._running[record.seq] = record
        else:
            self._running.pop(record.seq, None)
        if self._live is not None:
            self._live.update(self._render())
        elif record.status in _SHOWN:
            took = (record.finished or time.time()) - (record.started or time.time())
            verb = _SHOWN[record.status]
            print(
                f"kiln: {verb} {record.target}: {record.description} ({took:.2f} s)",
                file=self._stream,
                flush=True,
            )

    def on_remote(self, counts: dict[str, int]) -> None:
        """The build's traffic with a remote changed (``RemoteStats.as_dict``)."""
        up, down = counts["uploaded_bytes"], counts["downloaded_bytes"]
        self._traffic = f"↑ {_size(up)} ↓ {_size(down)}"
        if self._live is not None:
            self._live.update(self._render())

    def on_download(self, url: str, done: int, total: int | None) -> None:
        """Progress of a fetch step's download (called from worker threads)."""
        before = self._downloads.get(url, (0, total))[0]
        finished = total is not None and done >= total
        if finished:
            self._downloads.pop(url, None)
        else:
            self._downloads[url] = (done, total)
        if self._live is not None:
            self._live.update(self._render())
        elif total and total >= LARGE_DOWNLOAD and done * 4 // total != before * 4 // total:
            name = url.rsplit("/", 1)[-1]
            print(f"kiln: downloading {name}: {done * 100 // total}% of {total >> 20} MiB",
                  file=self._stream, flush=True)  # fmt: skip

    def _render(self) -> Any:
        from rich.text import Text  # (start-up: rich only on a terminal)

        c = self.counts
        remote_hits, remote_ran = c[StepStatus.REMOTE_CACHED], c[StepStatus.REMOTE_EXECUTED]
        done = c[StepStatus.EXECUTED] + c[StepStatus.CACHED] + remote_hits + remote_ran
        remote = ""
        if remote_hits or remote_ran:
            remote = f", remote: {remote_hits} hits, {remote_ran} ran"
        line = Text(
            f"kiln: {done} done ({c[StepStatus.CACHED]} cached{remote}), "
            f"{len(self._running)} running, {c[StepStatus.FAILED]} failed"
        )
        if self._traffic:
            line.append(f"  {self._traffic}", style="dim")
        shown = list(self._running.values())[:MAX_SHOWN]
        if shown:
            names = ", ".join(f"{r.target}: {r.description}" for r in shown)
            more = len(self._running) - len(shown)
            line.append(f"  [{names}{f' +{more}' if more else ''}]", style="dim")
        for url, (done, total) in list(self._downloads.items())[:2]:
            size = f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB" if total else f"{done >> 20} MiB"
            line.append(f"  downloading {url.rsplit('/', 1)[-1]} {size}", style="cyan")
        return line
