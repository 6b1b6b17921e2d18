"""A resident bubblewrap sandbox that runs native steps one at a time.

Setting up a full bubblewrap sandbox costs several milliseconds, mostly in
namespaces (the network one above all) and mounts that are the same for
every step of one tool set. A ``Zygote`` pays for them once: bubblewrap
starts ``kiln-zygote`` (``sandbox/zygote.c``, a static binary checked in next
to its source and reproducible with ``ziglang``) as the sandbox's first
process, and each step is one message to it. The zygote forks the step into
new user, mount, pid and ipc namespaces of its own, binds the step's folders
and runs it; see the C source for what a step sees.

Folders: ``host/inputs/<step>`` (bound read-only) and ``host/work/<step>``
are made by the caller before ``run`` and removed by it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.exec import interrupt
from kiln.exec.base import StepTimeout, TransientError

SANDBOX_DIR = Path(__file__).parent / "sandbox"
SOURCE = SANDBOX_DIR / "zygote.c"
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
HOST_DIR = "/kiln/host"
# Processes a step's pids limit must allow beyond its own: bubblewrap's two,
# the zygote, the step's set-up process and its init.
OVERHEAD_PIDS = 5
STREAM_CAP = 64 << 20  # bytes of a step's stdout and of its stderr kept (as for wasm)


def binary_name(arch: str) -> str:
    return f"kiln-zygote-{arch}"


def build_command(zig: list[str], arch: str, out: Path, source: Path = SOURCE) -> list[str]:
    """How a checked-in static helper binary for ``arch`` is made from its C
    ``source`` (``zig`` runs ziglang): the zygote's, or a ``Helper``'s."""
    return [*zig, "cc", "-target", f"{arch}-linux-musl", "-Os", "-s", "-static",
            "-Wall", "-Wextra", "-o", str(out), str(source)]  # fmt: skip


def rebuild_helpers(source: Path, name: Callable[[str], str]) -> None:
    """Make the checked-in binaries ``name(arch)``, next to ``source``, again
    from it, for every architecture Kiln ships them for."""
    for arch in sorted(set(ARCHES.values())):
        out = source.parent / name(arch)
        zig = [sys.executable, "-m", "ziglang"]
        subprocess.run(build_command(zig, arch, out, source), check=True)
        print(out)


def helper_binary(folder: Path, name: Callable[[str], str]) -> Path | None:
    """The checked-in binary ``name(arch)`` in ``folder`` for this machine,
    if Kiln ships one for it."""
    arch = ARCHES.get(platform.machine().lower())
    path = folder / name(arch) if arch else None
    return path if path is not None and path.is_file() else None


@dataclass(frozen=True)
class Helper:
    """A native program Kiln ships as checked-in static binaries, one per
    architecture, named ``<prefix>-<arch>`` next to its C ``source`` (the
    native clients: ``kiln.cc.native_client``, ``kiln.server.native_client``)."""

    source: Path
    prefix: str

    @property
    def folder(self) -> Path:
        return self.source.parent

    def binary_name(self, arch: str) -> str:
        return f"{self.prefix}-{arch}"

    def build_command(self, zig: list[str], arch: str, out: Path) -> list[str]:
        """How the checked-in binary for ``arch`` is made (``zig`` runs ziglang)."""
        return build_command(zig, arch, out, self.source)

    def rebuild(self) -> None:
        """Make the checked-in binaries again from the source."""
        rebuild_helpers(self.source, self.binary_name)

    def binary(self) -> Path | None:
        """The binary built for this machine, if Kiln ships one for it."""
        return helper_binary(self.folder, self.binary_name)


def rebuild() -> None:
    """Make the checked-in binaries again from the source (``./dev zygote``)."""
    rebuild_helpers(SOURCE, binary_name)


def binary() -> Path | None:
    """The zygote built for this machine, if Kiln ships one for it."""
    return helper_binary(SANDBOX_DIR, binary_name)


@dataclass(frozen=True)
class Outcome:
    """How a step's program ended: ``exit_code`` or ``signal`` is set.
    ``stdout`` and ``stderr`` keep at most ``STREAM_CAP`` bytes each of the
    ``written`` ones."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    written: tuple[int, int] = (0, 0)

    def cut_streams(self) -> list[str]:
        """The streams that were cut at ``STREAM_CAP``, as notes."""
        return [
            f"{name} cut at {STREAM_CAP >> 20} MiB of {size / (1 << 20):.1f} MiB written"
            for name, size in zip(("stdout", "stderr"), self.written, strict=True)
            if size > STREAM_CAP
        ]


class Zygote:
    """One sandbox, started by ``bwrap_argv`` (ending before ``--``), that runs
    steps whose folders are under ``host``. ``prepare`` runs in the child
    before bubblewrap; ``under_tmp`` are paths the argv binds under /tmp,
    which every step's fresh /tmp shows again."""

    def __init__(
        self,
        bwrap_argv: list[str],
        host: Path,
        prepare: Callable[[], None] | None = None,
        under_tmp: tuple[str, ...] = (),
    ) -> None:
        program = binary()
        if program is None:
            raise TransientError(f"no kiln-zygote for this machine ({platform.machine()})")
        self.host = host
        for name in ("inputs", "work"):
            (host / name).mkdir(parents=True, exist_ok=True)
        if not os.access(program, os.X_OK):  # installed without its mode bits
            program = Path(shutil.copy(program, host / "zygote"))
            program.chmod(0o755)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            *bwrap_argv,
            "--ro-bind", str(host / "inputs"), f"{HOST_DIR}/inputs",
            "--bind", str(host / "work"), f"{HOST_DIR}/work",
            "--ro-bind", str(program), f"{HOST_DIR}/zygote",
            "--dir", "/kiln/inputs", "--dir", "/work",
            "--", f"{HOST_DIR}/zygote", str(theirs.fileno()), *under_tmp,
        ]  # fmt: skip
        with theirs:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),),
                preexec_fn=prepare, start_new_session=True,
            )  # fmt: skip
        self._sock = ours
        self._stderr = b""
        _live.add(self)
        if interrupt.stopped():  # (stopped while it was starting)
            self.kill()

    def run(
        self, step: str, cwd: str, env: dict[str, str], argv: list[str], timeout: float | None
    ) -> Outcome:
        """Run ``argv`` as step ``step``; a timeout ends the whole sandbox."""
        message = encode_request(step, cwd, env, argv)
        if interrupt.stopped():
            raise interrupt.Interrupted()
        out = os.memfd_create("stdout", os.MFD_CLOEXEC)
        err = os.memfd_create("stderr", os.MFD_CLOEXEC)
        try:
            self._sock.settimeout(timeout)
            try:
                socket.send_fds(self._sock, [message], [out, err])
                reply = self._sock.recv(512)
            except TimeoutError:
                self.close()
                raise StepTimeout(timeout or 0, "native") from None
            except OSError:
                reply = b""
            if not reply and interrupt.stopped():
                raise interrupt.Interrupted()
            if not reply:
                raise TransientError(f"the sandbox ended unexpectedly: {self._last_words()}")
            kind, _, value = reply.decode(errors="replace").partition(" ")
            if kind == "error":
                raise TransientError(f"the sandbox could not run the step: {value}")
            return Outcome(
                int(value) if kind == "exit" else None,
                int(value) if kind == "signal" else None,
                _read_capped(out),
                _read_capped(err),
                (os.fstat(out).st_size, os.fstat(err).st_size),
            )
        finally:
            os.close(out)
            os.close(err)

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def kill(self) -> None:
        """End every process in the sandbox now (safe in a signal handler:
        the step's ``run`` sees it end; ``close`` still reaps it)."""
        if self._proc.returncode is not None:
            return  # reaped: its pid may belong to another process by now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """End the sandbox and every process in it."""
        if self._sock.fileno() < 0:
            return
        self._sock.close()
        self.kill()
        _live.discard(self)
        _, stderr = self._proc.communicate()
        self._stderr = stderr or self._stderr

    def _last_words(self) -> str:
        self.close()
        text = self._stderr.decode(errors="replace").strip()
        return text or f"bubblewrap exited with {self._proc.returncode}"


# This process's sandboxes not yet closed (a plain set: copying it is atomic,
# also while other threads add to it, as in a signal handler).
_live: set[Zygote] = set()


def _kill_all() -> None:
    for zygote in list(_live):
        zygote.kill()


interrupt.on_stop(_kill_all)


def encode_request(step: str, cwd: str, env: dict[str, str], argv: list[str]) -> bytes:
    """A request to the zygote: items framed by their lengths (see zygote.c).
    A NUL byte in any of them is refused here, before the sandbox refuses it."""
    items = [("s", step), ("c", cwd), *(("e", f"{k}={v}") for k, v in env.items())]
    items += [("a", a) for a in argv]
    out = []
    for kind, text in items:
        data = text.encode()
        if b"\0" in data:
            raise KilnError(
                f"a native step's argument or variable holds a NUL byte: {text!r}",
                hint="a program's arguments and environment cannot carry NUL bytes",
            )
        out.append(kind.encode() + struct.pack("=I", len(data)) + data)
    return b"".join(out)


def _read_capped(fd: int) -> bytes:
    """The first ``STREAM_CAP`` bytes a step wrote to a stream: what a step
    prints is not held whole in Kiln's memory."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, left = [], STREAM_CAP
    while left and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    rebuild()
