"""Showing a build while it runs, on stderr.

On a terminal: one live status line (done / total known so far, running,
cached, failed, and the steps running now with their time once they take
long), redrawn in place. Elsewhere: one plain line per step that ran or
failed; cache hits are only counted, so a no-op build of thousands of
steps stays quiet.

As ninja does, what a step that ran here wrote to stderr (a compiler's
warnings) follows its line, cut after ``STDERR_LINES`` lines with a pointer
to ``kiln log``; cache hits that wrote to stderr are only counted, in one
line at the end. A step's bytes are hostile: control characters (terminal
escape sequences) are shown escaped. ``verbose``: each step's command is
shown as it starts. ``json``: nothing of the steps' stderr is printed; it
is kept for the report (``stderr_report``).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

from kiln.engine.report import StepStatus
from kiln.engine.scheduler import StepRecord
from kiln.model.digest import Digest

MAX_SHOWN = 4  # running steps named in the live line
LARGE_DOWNLOAD = 16 << 20  # without a terminal, report downloads from this size
LONG_RUNNING_S = 2.0  # a running step's time is shown once it runs this long
STDERR_LINES = 30  # lines of a step's stderr shown after its line
STDERR_BYTES = 8 << 10  # ... and at most this many of its bytes

_SHOWN = {  # without a terminal: the statuses that get a line, and its verb
    StepStatus.EXECUTED: "ran   ",
    StepStatus.REMOTE_EXECUTED: "ran remotely",
    StepStatus.FAILED: "FAILED",
}
_RAN = (StepStatus.EXECUTED, StepStatus.REMOTE_EXECUTED)
_HITS = (StepStatus.CACHED, StepStatus.REMOTE_CACHED)
# What a terminal would act on rather than show: C0 and C1 controls (but
# newline and tab), DEL, and the invisible and direction-changing marks.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def printable(data: bytes | str) -> str:
    """Text from a step, safe to print on a terminal: invalid UTF-8 as
    U+FFFD, control characters escaped (``\\x1b``, ``\\u202e``)."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def stderr_excerpt(data: bytes) -> tuple[str, bool]:
    """The start of a step's stderr to show, printable, and whether it was cut."""
    head = data[:STDERR_BYTES]
    lines = printable(head).rstrip("\n").split("\n")
    cut = len(head) < len(data) or len(lines) > STDERR_LINES
    return "\n".join(lines[:STDERR_LINES]), cut


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

    def __init__(
        self,
        stream: IO[str] | None = None,
        live: bool | None = None,
        *,
        verbose: bool = False,
        json: bool = False,
    ) -> None:
        self._stream = stream or sys.stderr
        self._live_enabled = self._stream.isatty() if live is None else live
        self._live: Any = None
        self._verbose = verbose
        self._json = json
        self._running: dict[int, StepRecord] = {}
        self.counts = {s: 0 for s in StepStatus}
        self._seen: dict[int, StepStatus] = {}
        self._downloads: dict[str, tuple[int, int | None]] = {}
        self._traffic = ""  # with a remote: what went up and down
        self._slow: dict[str, float] = {}  # something slow besides steps -> since when
        self._read: Callable[[Digest], bytes | None] | None = None
        self.stderr: list[dict[str, Any]] = []  # what steps that ran wrote to stderr
        self._cached_stderr: dict[str, int] = {}  # target -> cache hits that wrote to stderr
        self._shown: set[Digest] = set()  # keys of the steps whose stderr was shown

    def __enter__(self) -> BuildProgress:
        if self._live_enabled:  # (start-up: rich only on a terminal)
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                console=Console(file=self._stream),
                get_renderable=self._render,  # (redrawn as time passes too)
                refresh_per_second=8,
                transient=True,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_live()
        if self._cached_stderr and not self._json and exc[0] is None:
            logs = ", ".join(f"`kiln log {t}`" for t in sorted(self._cached_stderr))
            n = sum(self._cached_stderr.values())
            self._say(f"kiln: {n} cached step{'s' * (n != 1)} wrote to stderr: {logs}")

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def _say(self, text: str) -> None:
        """A line above the live line, or on its own."""
        if self._live is not None:
            from rich.text import Text

            self._live.console.print(Text(text), soft_wrap=True)
        else:
            print(text, file=self._stream, flush=True)

    def on_store(self, store: Any) -> None:
        """The build's store, to read what its steps wrote to stderr."""
        self._read = store.cas.get_bytes

    def on_change(self, record: StepRecord) -> None:
        previous = self._seen.get(record.seq)
        if previous is not None:
            self.counts[previous] -= 1
        self._seen[record.seq] = record.status
        self.counts[record.status] += 1
        if record.status is StepStatus.PENDING and record.started is not None:
            self._running[record.seq] = record
            if self._verbose and previous is StepStatus.PENDING:
                argv = record.identity.get("argv", [])
                named = "" if record.description == " ".join(argv) else f"  ({record.description})"
                self._say(printable(f"kiln: start  {record.target}: {shlex.join(argv)}{named}"))
        else:
            self._running.pop(record.seq, None)
        if record.status in _HITS:
            self._count_cached_stderr(record)
        if record.status in _RAN:
            data = self._stderr_of(record)
            if self._live is None or (data and not self._json):  # (live: only with stderr)
                self._say(f"kiln: {_SHOWN[record.status]} {self._title(record)}")
            if data:
                self._show_stderr(record, data)
        elif record.status in _SHOWN and self._live is None:
            self._say(f"kiln: {_SHOWN[record.status]} {self._title(record)}")

    @staticmethod
    def _title(record: StepRecord) -> str:
        took = (record.finished or time.time()) - (record.started or time.time())
        return printable(f"{record.target}: {record.description} ({took:.2f} s)")

    def _count_cached_stderr(self, record: StepRecord) -> None:
        if record.key in self._shown:  # the same step, requested again as it ran
            return
        if record.result is not None and record.result.stderr_digest.size_bytes:
            self._cached_stderr[record.target] = self._cached_stderr.get(record.target, 0) + 1

    def _stderr_of(self, record: StepRecord) -> bytes:
        if self._read is None or record.result is None:
            return b""
        if not record.result.stderr_digest.size_bytes:
            return b""
        return self._read(Digest.from_proto(record.result.stderr_digest)) or b""

    def _show_stderr(self, record: StepRecord, data: bytes) -> None:
        """What a step that ran here wrote to stderr, after its line."""
        text, cut = stderr_excerpt(data)
        self._shown.add(record.key)
        self.stderr.append({
            "target": record.target, "step": record.description, "stderr": text,
            "truncated": cut, "bytes": len(data),
        })  # fmt: skip
        if self._json:
            return
        if cut:
            text += f"\n(cut: {len(data)} bytes in all; `kiln log {record.target}` shows it)"
        self._say(text)

    def json_fields(self) -> dict[str, Any]:
        """For ``kiln build --json``: ``stderr``, what each step that ran
        wrote to stderr (cut as shown), and ``cached_stderr``, per target
        the cache hits that wrote to stderr."""
        return {"stderr": self.stderr, "cached_stderr": dict(self._cached_stderr)}

    def interrupted(self) -> None:
        """Ctrl-C: say what is being stopped (called from a signal handler)."""
        self._stop_live()
        now = time.time()
        running = [
            f"{r.target}: {r.description} ({now - (r.started or now):.0f} s)"
            for r in list(self._running.values())
        ]
        what = f"stopping {len(running)} running step{'s' * (len(running) != 1)}"
        names = f": {', '.join(running)}" if running else ""
        text = f"\nkiln: interrupted: {what}{names}; Ctrl-C again to quit without waiting\n"
        try:
            self._stream.write(text)
            self._stream.flush()
        except (RuntimeError, ValueError):  # (the stream was mid-write when the signal came)
            pass

    @contextlib.contextmanager
    def on_slow(self, message: str) -> Iterator[None]:
        """Something slow that is not a step (compiling a large WebAssembly
        module): one line when it starts and one when it ends without a
        terminal; in the live line on one."""
        started = time.time()
        self._slow[message] = started
        if self._live is None:
            self._say(f"kiln: {message} (once: later builds reuse it)...")
        try:
            yield
        finally:
            self._slow.pop(message, None)
            if self._live is None:
                self._say(f"kiln: done {message} ({time.time() - started:.1f} s)")

    def on_remote(self, counts: dict[str, int]) -> None:
        """The build's traffic with a remote changed (``RemoteStats.as_dict``)."""
        up, down = counts["uploaded_bytes"], counts["downloaded_bytes"]
        self._traffic = f"↑ {_size(up)} ↓ {_size(down)}"

    def on_download(self, url: str, done: int, total: int | None) -> None:
        """Progress of a fetch step's download (called from worker threads)."""
        before = self._downloads.get(url, (0, total))[0]
        finished = total is not None and done >= total
        if finished:
            self._downloads.pop(url, None)
        else:
            self._downloads[url] = (done, total)
        quarter = bool(total and done * 4 // total != before * 4 // total)
        if self._live is None and total and total >= LARGE_DOWNLOAD and quarter:
            name = url.rsplit("/", 1)[-1]
            self._say(f"kiln: downloading {name}: {done * 100 // total}% of {total >> 20} MiB")

    def _render(self) -> Any:
        from rich.text import Text  # (start-up: rich only on a terminal)

        c = self.counts
        remote_hits, remote_ran = c[StepStatus.REMOTE_CACHED], c[StepStatus.REMOTE_EXECUTED]
        done = c[StepStatus.EXECUTED] + c[StepStatus.CACHED] + remote_hits + remote_ran
        remote = ""
        if remote_hits or remote_ran:
            remote = f", remote: {remote_hits} hits, {remote_ran} ran"
        line = Text(
            f"kiln: {done}/{len(self._seen)} done ({c[StepStatus.CACHED]} cached{remote}), "
            f"{len(self._running)} running, {c[StepStatus.FAILED]} failed"
        )
        if self._traffic:
            line.append(f"  {self._traffic}", style="dim")
        now = time.time()
        # The longest-running steps first: what the build is waiting for.
        running = sorted(self._running.values(), key=lambda r: r.started or now)
        shown = running[:MAX_SHOWN]
        if shown:
            names = ", ".join(f"{r.target}: {r.description}{_took(r, now)}" for r in shown)
            more = len(running) - len(shown)
            line.append(f"  [{names}{f' +{more}' if more else ''}]", style="dim")
        for message, since in list(self._slow.items()):
            line.append(f"  {message} ({now - since:.0f} s)", style="cyan")
        for url, (got, total) in list(self._downloads.items())[:2]:
            size = f"{got / 2**20:.1f}/{total / 2**20:.1f} MiB" if total else f"{got >> 20} MiB"
            line.append(f"  downloading {url.rsplit('/', 1)[-1]} {size}", style="cyan")
        return line


def _took(record: StepRecord, now: float) -> str:
    """A running step's time so far, once it runs long."""
    took = now - (record.started or now)
    return f" {took:.0f} s" if took >= LONG_RUNNING_S else ""
