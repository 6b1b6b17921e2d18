"""The ``native`` executor: ordinary Linux programs in a bubblewrap sandbox.

The sandbox (contract ``NATIVE_ABI``; change it with anything a step could
observe) has new user, mount, pid, network, ipc, uts and cgroup namespaces.
bubblewrap sets them up once per executor and tool set, and a resident first
process (``kiln.exec.zygote``) gives each step new user, mount, pid and ipc
namespaces of its own, so nothing a step leaves behind reaches the next. A
step sees:

- ``/usr`` (and ``/bin``, ``/lib``, ``/lib64`` as links into it) holding
  only the files of its declared tools and the Debian packages they need
  (see ``kiln.exec.tools``), read-only;
- ``/work`` (the working folder): the input tree, each file a symlink into
  the read-only ``/kiln/inputs``, so a step can create and remove entries
  but never change an input; declared outputs are taken from here;
- a private ``/tmp``, a minimal ``/dev``, loopback only, a ``/proc`` that
  shows its own processes and the sandbox's two resident ones (not
  readable by the step), an empty read-only ``/kiln/host``,
  hostname ``kiln``, uid/gid 1000, and an environment of exactly the
  declared variables plus ``PATH=/usr/bin:/bin``, ``HOME=/tmp``, ``TZ=UTC``,
  ``LANG=C.UTF-8`` and ``SOURCE_DATE_EPOCH=0``.

Limits: a wall-clock timeout (the step's own ``timeout=``, carried outside
its key in ``Action.timeout``, else the config's ``step-timeout``, 600 s by
default), a memory limit (a memory cgroup, whose
out-of-memory kills are reported as such; ``RLIMIT_AS`` where no cgroup can
be made), a process limit (a pids cgroup, else ``RLIMIT_NPROC``) and a disk
limit for the work folder (``RLIMIT_FSIZE`` and a watchdog, see
``kiln.exec.disk_guard``; going past it is a failed result). Every
process of the step dies with it (the step's pid namespace ends with its
first process). A timeout is a ``StepTimeout`` (transient: never a result,
never cached, not retried), and ends the resident sandbox too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import platform
import resource
import shutil
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln import errors
from kiln.config import Secret, check_secret, load_config
from kiln.exec import substep_modes, substep_proxy
from kiln.exec.base import (
    ExecContext,
    ExecHooks,
    TransientError,
    record_timing,
    step_timeout,
)
from kiln.exec.disk_guard import DiskGuard
from kiln.exec.host_outputs import collect_host_outputs
from kiln.exec.kinds import NATIVE_ABI
from kiln.exec.output_trees import missing_outputs
from kiln.exec.specs import RECURSIVE_PROPERTY, NativeLimits
from kiln.exec.substep_proxy import SANDBOX_CLIENT, SANDBOX_SOCKET, SubstepProxy
from kiln.exec.tools import (
    Dpkg,
    Tool,
    canonical,
    declared_files,
    identity,
    resolve,
    tool_root,
    tool_roots_folder,
)
from kiln.exec.zygote import HOST_DIR, OVERHEAD_PIDS, Outcome, Zygote
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.system import claims
from kiln.system.fsutil import empty_folder
from kiln.system.stat_signature import signature

__all__ = ["NATIVE_ABI", "NativeExecutor", "NativeLimits", "reap_leftovers"]
SANDBOX_UID = 1000
FIXED_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "TZ": "UTC",
    "LANG": "C.UTF-8",
    "SOURCE_DATE_EPOCH": "0",
}
CORES_VARIABLE = "KILN_BUILD_CORES"
MAX_ZYGOTES = 4  # resident sandboxes per executor (one per tool set and limits)
EXIT_OUT_OF_MEMORY = 137
EXIT_NOT_FOUND = 127  # the program could not be found (zygote.c, as shells do)
EXIT_DISK_LIMIT = 128 + signal.SIGXFSZ  # as when RLIMIT_FSIZE ends a step
PIDS_CGROUP = Path("/sys/fs/cgroup/pids")
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
# Cgroups are named "kiln-<pid>-...", after the process that made them, so
# that leftovers of a killed one can be found (sandbox folders are claims).
LEFTOVER_PREFIX = "kiln-"


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def missing_bwrap() -> errors.KilnError:
    return errors.KilnError(
        "native steps need bubblewrap (bwrap), which is not installed",
        hint="install it: `apt-get install bubblewrap` (Debian/Ubuntu); wasm steps work without it",
        exit_code=errors.ExitCode.FAILED,
    )


class NativeExecutor:
    """Runs native actions with bubblewrap."""

    name = "native"

    def __init__(
        self,
        ctx: ExecContext,
        hooks: ExecHooks | None = None,
        timeout: float | None = None,
    ) -> None:
        """``timeout``: the wall-clock limit of steps that carry none of their
        own (default: the config's ``step-timeout``)."""
        bwrap = bwrap_path()
        if bwrap is None:
            raise missing_bwrap()
        self._bwrap = bwrap
        self._cas = ctx.cas
        self._roots = tool_roots_folder(ctx.state)
        self._dpkg = Dpkg(cache=self._roots)
        self._sandboxes = ctx.state / "sandboxes"
        self._sandboxes.mkdir(exist_ok=True)
        reap_leftovers(ctx.state)
        # Ending the sandboxes and removing the cgroups: at ``close``, or when
        # the executor is collected (not on ``os._exit``: callers close).
        self._cleanups: list[weakref.finalize] = []
        # The cgroups this executor's sandboxes run in (one step at a time),
        # made on first use; a step's processes are all gone when it returns.
        self._groups: dict[str, _Cgroup | None] = {}
        self._resolved: dict[str, tuple[tuple[object, ...], list[Tool], str]] = {}
        self._zygotes: dict[tuple[object, ...], _Sandbox] = {}
        self._config = load_config()
        self._timeout = timeout if timeout is not None else self._config.step_timeout

    def tools(self, names: str) -> tuple[list[Tool], str]:
        """The declared tools and their identity, resolved again only when
        one of their files changed (not hashed anew for every step)."""
        paths = [p for n in names.split(",") if n for p in declared_files(n)]
        signature = tuple(_stat_signature(p) for p in paths)
        known = self._resolved.get(names)
        if known is None or known[0] != signature:
            tools = [resolve(n, self._dpkg) for n in names.split(",") if n]
            known = self._resolved[names] = (signature, tools, identity(tools))
        return known[1], known[2]

    def tool_root(self, tools: list[Tool]) -> Path:
        """The folder the sandbox of ``tools`` shows as its ``/usr`` (and
        ``/etc``), holding their files and their packages' files."""
        return tool_root(tools, self._dpkg, self._roots)

    def _cgroup(self, kind: str, limit: int) -> Path | None:
        """This executor's ``pids`` or ``memory`` cgroup, set to ``limit``."""
        if kind not in self._groups:
            make = _pids_cgroup if kind == "pids" else _memory_cgroup
            group = self._groups[kind] = make(limit)
            if group is not None:
                self._cleanups.append(weakref.finalize(self, _remove_cgroup, group.path))
        group = self._groups[kind]
        if group is None:
            return None
        group.set_limit(limit)
        return group.path

    def close(self) -> None:
        """End this executor's sandboxes and remove their folders and cgroups
        (zygotes first: a cgroup can go only once its processes have)."""
        for cleanup in reversed(self._cleanups):
            cleanup()
        self._cleanups.clear()
        self._zygotes.clear()
        self._groups.clear()

    def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> re_pb2.ActionResult:
        props = {p.name: p.value for p in action.platform.properties}
        if props.get("kiln-abi") != NATIVE_ABI:
            raise TransientError(f"action wants sandbox contract {props.get('kiln-abi')!r}")
        tools, tools_identity = self.tools(props.get("tool-names", ""))
        if tools_identity != props.get("tools"):
            raise TransientError(
                "the step's tools on this machine differ from those in its action",
                hint="rebuild: the action was made before a tool changed",
            )
        root = self.tool_root(tools)
        limits = NativeLimits.from_platform(props)
        secrets = self._secrets(props)
        recursive = props.get(RECURSIVE_PROPERTY) == "1"
        zygote = self._zygote(root, tools, limits, secrets, recursive)
        # One step at a time per sandbox: its folders are made once and
        # emptied after each step (creating folders is slow on some disks).
        step = "step"
        inputs, work = zygote.host / "inputs" / step, zygote.host / "work" / step
        inputs.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        try:
            input_root = Digest.from_proto(action.input_root_digest)
            self._cas.materialize_tree(input_root, inputs)
            _link_inputs(inputs, work)
            for path in command.output_paths:
                (work / path).parent.mkdir(parents=True, exist_ok=True)
            env = dict(FIXED_ENV)
            env.update({v.name: v.value for v in command.environment_variables})
            # The one impurity allowed in, outside the key: a parallelism hint.
            env[CORES_VARIABLE] = str(self._config.build_cores)
            cwd = "/".join(["/work", command.working_directory.strip("/")]).rstrip("/")
            started = time.time_ns()
            proxy = self._substep_proxy(zygote, key, props) if recursive else None
            try:
                code, stdout, stderr, note = self._run(
                    zygote, step, cwd, env, list(command.arguments), limits, work,
                    step_timeout(action, self._timeout),
                )  # fmt: skip
            finally:
                if proxy is not None:
                    proxy.close()
            if proxy is not None and proxy.tainted is not None:
                message = f"a step it requested through kiln-sub was not run: {proxy.tainted}"
                hint = "nothing of this run is kept: its output could depend on that"
                if not proxy.tainted.final:
                    raise TransientError(message, hint=hint)
                raise errors.KilnError(message, hint=hint, exit_code=errors.ExitCode.FAILED)
            if code == EXIT_NOT_FOUND:
                note = note or _no_loader(command, work, stderr)
            if note:
                stderr += f"kiln: {note}\n".encode()
            result = re_pb2.ActionResult(exit_code=code)
            with self._cas.batch(durable=False) as batch:
                collect_host_outputs(
                    batch, self._cas, work, input_root, list(command.output_paths), result
                )
                if missing := missing_outputs(result, list(command.output_paths)):
                    stderr += f"kiln: {missing}\n".encode()
                result.stdout_digest.CopyFrom(batch.add_bytes(stdout).to_proto())
                result.stderr_digest.CopyFrom(batch.add_bytes(stderr).to_proto())
        finally:
            empty_folder(inputs)
            empty_folder(work)
        record_timing(result, "kiln-native", started)
        return result

    # ------------------------------------------------------------ sandbox

    def _secrets(self, props: dict[str, str]) -> tuple[Secret, ...]:
        """The secrets a step may read, after checking this executor offers
        the features it requires."""
        requires = [f for f in props.get("requires", "").split(",") if f]
        missing = [f for f in requires if f not in self._config.features]
        if missing:
            raise errors.KilnError(
                f"this executor does not offer feature {missing[0]!r} "
                f"(offered: {', '.join(sorted(self._config.features)) or 'none'})",
                hint=f"add it to `features` in {self._config.where()} on a machine that has it",
                exit_code=errors.ExitCode.FAILED,
            )
        names = [n for n in props.get("secrets", "").split(",") if n]
        return tuple(check_secret(self._config, n, requires, "a native step") for n in names)

    def _substep_proxy(self, zygote: Zygote, key: Digest, props: dict[str, str]) -> SubstepProxy:
        """The channel of a recursive step to its build, for this run."""
        names = frozenset(n for n in props.get("tool-names", "").split(",") if n)
        requester = substep_modes.Requester(key, names, self._cas)
        return SubstepProxy(zygote.host / "sub", functools.partial(substep_modes.serve, requester))

    def _zygote(
        self, root: Path, tools: list[Tool], limits: NativeLimits, secrets: tuple[Secret, ...],
        recursive: bool = False,
    ) -> Zygote:  # fmt: skip
        """The resident sandbox for this tool root, these limits and secrets
        (and, for a recursive step, ``kiln-sub`` and its socket's folder)."""
        binds = tuple(
            path
            for tool in tools  # tools declared by a path outside /usr: at that path
            for path in sorted({tool.path, tool.real_path})
            if not canonical(path).startswith(("/usr/", "/etc/"))
        )
        key = (root, binds, limits, secrets, recursive)
        sandbox = self._zygotes.get(key)
        if sandbox is not None and sandbox.zygote.alive:
            return sandbox.zygote
        if sandbox is not None:
            self._zygotes.pop(key).end()
        if len(self._zygotes) >= MAX_ZYGOTES:
            self._zygotes.pop(next(iter(self._zygotes))).end()
        # Its folder is claimed: one a killed process left is reaped (by lock).
        claim = claims.Claim(self._sandboxes, prefix="sandbox-")
        claim.path.mkdir()
        under_tmp = tuple(p for p in binds if p.startswith("/tmp/"))
        sub = claim.path / "sub" if recursive else None
        try:
            if sub is not None:
                sub.mkdir()
            zygote = Zygote(
                self._bwrap_argv(root, binds, secrets, sub), claim.path,
                self._cgroups_joiner(limits), under_tmp,
            )  # fmt: skip
        except BaseException:
            claim.release()
            raise
        sandbox = self._zygotes[key] = _Sandbox(zygote, claim)
        self._cleanups.append(weakref.finalize(self, sandbox.end))
        return zygote

    def _bwrap_argv(
        self, root: Path, binds: tuple[str, ...], secrets: tuple[Secret, ...],
        sub: Path | None = None,
    ) -> list[str]:  # fmt: skip
        argv = [
            self._bwrap,
            "--unshare-all", "--die-with-parent",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "kiln",
            "--clearenv",
            "--ro-bind", str(root / "usr"), "/usr",
        ]  # fmt: skip
        for link in ("bin", "lib", "lib64", "sbin"):
            if (root / "usr" / link).exists():
                argv += ["--symlink", f"usr/{link}", f"/{link}"]
        if (root / "etc").is_dir():
            argv += ["--ro-bind", str(root / "etc"), "/etc"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--dir", "/tmp"]
        for path in binds:
            argv += ["--ro-bind", path, path]
        if sub is not None:  # a recursive step: kiln-sub, and the folder of its socket
            client = substep_proxy.binary()
            if client is None:
                raise TransientError(
                    f"kiln-sub is not built for this machine ({platform.machine()}): "
                    "recursive native steps cannot run here"
                )
            argv += ["--ro-bind", str(client), SANDBOX_CLIENT, "--bind", str(sub),
                     os.path.dirname(SANDBOX_SOCKET)]  # fmt: skip
        if secrets:  # shown at /kiln/secrets only to the steps that declared them
            argv += ["--dir", "/kiln/secrets"]
            for secret in secrets:
                argv += ["--ro-bind", str(secret.file), f"{HOST_DIR}/secrets/{secret.name}"]
        return argv

    def _cgroups_joiner(self, limits: NativeLimits) -> Callable[[], None]:
        """What the sandbox's first process runs before bubblewrap: join this
        executor's cgroups (or, where none can be made, set rlimits)."""
        pids, memory = _cgroup_limits(limits)
        groups = [self._cgroup("pids", pids), self._cgroup("memory", memory)]
        procs = [str(g / "cgroup.procs") for g in groups if g is not None]
        pids_group, memory_group = groups
        disk = limits.disk_mib << 20

        def join() -> None:  # in the child, before bwrap starts: keep it short
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")  # "0": the writing process itself
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_FSIZE, (disk, disk))  # no file past the limit
            if memory_group is None:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            if pids_group is None:
                resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))

        return join

    def _run(
        self, zygote: Zygote, step: str, cwd: str, env: dict[str, str], argv: list[str],
        limits: NativeLimits, work: Path, timeout: float | None,
    ) -> tuple[int, bytes, bytes, str]:  # fmt: skip
        pids, memory = _cgroup_limits(limits)
        self._cgroup("pids", pids)
        memory_group = self._cgroup("memory", memory)
        kills_before = _oom_kills(memory_group) if memory_group is not None else 0
        with DiskGuard(work, limits.disk_mib << 20, zygote.close) as guard:
            try:
                outcome = zygote.run(step, cwd, env, argv, timeout)
            except TransientError:
                if guard.tripped is None:
                    raise
                outcome = Outcome(None, signal.SIGKILL, b"", b"")  # the guard ended it
        code = outcome.exit_code if outcome.signal is None else 128 + outcome.signal
        note = ""
        over_disk = guard.verdict(code, outcome.written)
        if over_disk is not None:
            empty_folder(work)  # nothing of it is collected
            code = EXIT_DISK_LIMIT if code in (0, 128 + signal.SIGKILL) else code
            note = f"{over_disk}; raise it with native(..., disk_mib=N)"
        elif memory_group is not None and _oom_kills(memory_group) > kills_before:
            code = EXIT_OUT_OF_MEMORY if code == 0 else code
            note = f"out of memory: killed at the step's limit of {limits.memory_mib} MiB"
        elif outcome.signal is not None:
            note = f"killed by signal {outcome.signal}"
            if memory_group is None:
                note += (
                    f" (memory is limited here by RLIMIT_AS, {limits.memory_mib} MiB, under"
                    " which running out shows as a failed allocation or a crash)"
                )
        note = "; ".join([*outcome.cut_streams(), *([note] if note else [])])
        return code, outcome.stdout, outcome.stderr, note


def reap_leftovers(state: Path) -> int:
    """Remove the sandbox folders (with the input links inside) and cgroups
    that processes killed before closing their executors left behind in a
    state folder: the folders whose claim no live process holds, the
    cgroups named after a process that no longer runs. Returns how many went."""
    removed = claims.reap(state / "sandboxes")
    for base in (PIDS_CGROUP, MEMORY_CGROUP, Path("/sys/fs/cgroup")):
        with contextlib.suppress(OSError):
            for group in base.glob(f"{LEFTOVER_PREFIX}*"):
                owner = group.name[len(LEFTOVER_PREFIX) :].partition("-")[0]
                if owner.isdecimal() and not _runs(int(owner)):
                    with contextlib.suppress(OSError):
                        group.rmdir()  # refused while a process is in it
                        removed += 1
    return removed


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _no_loader(command: re_pb2.Command, work: Path, stderr: bytes) -> str:
    """For a program in the work folder that exec could not start ("No such
    file or directory" though it is there: its loader is missing), what to
    declare; else ""."""
    program = command.arguments[0] if command.arguments else ""
    said = f"kiln: cannot run {program}: {os.strerror(errno.ENOENT)}\n".encode()
    folder = work / command.working_directory.strip("/")
    if "/" not in program or not stderr.endswith(said) or not os.path.lexists(folder / program):
        return ""
    return (
        f"{program} is there, but not the dynamic loader it names: a dynamically "
        "linked program needs native(..., runtimes=['c']) (or ['c++']), or a tool that "
        "brings its libraries"
    )


def _link_inputs(inputs: Path, work: Path) -> None:
    """Mirror the input tree in ``work``: folders as folders, every file or
    symlink as a symlink to its read-only place under /kiln/inputs."""
    for folder, dirs, files in os.walk(inputs):
        rel = os.path.relpath(folder, inputs)
        target = work / rel if rel != "." else work
        target.mkdir(parents=True, exist_ok=True)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            sandbox_path = "/kiln/inputs/" + (name if rel == "." else f"{rel}/{name}")
            os.symlink(sandbox_path, target / name)


def _stat_signature(path: str) -> object:
    """What changes when the file at ``path`` (or its link's target) is
    replaced: the signatures of the file it resolves to and of the name."""
    return (signature(path), signature(path, follow_symlinks=False))


def _cgroup_limits(limits: NativeLimits) -> tuple[int, int]:
    """The pids and memory (bytes) limits of a step's cgroups, or rlimits."""
    return limits.pids + OVERHEAD_PIDS, limits.memory_mib << 20


@dataclass
class _Cgroup:
    """A cgroup this process made, and the limit it holds now."""

    path: Path
    limit_file: str
    limit: int

    def set_limit(self, limit: int) -> None:
        if limit != self.limit:
            (self.path / self.limit_file).write_text(str(limit))
            self.limit = limit


def _make_cgroup(bases: tuple[Path, ...], limit_file: str, limit: int) -> _Cgroup | None:
    """A fresh cgroup under the first of ``bases`` where we may make one, with
    ``limit_file`` set to ``limit``."""
    for base in bases:
        if not (base / "cgroup.procs").exists():
            continue
        group = base / f"{LEFTOVER_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit))
            return _Cgroup(group, limit_file, limit)
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
    return None


def _pids_cgroup(limit: int) -> _Cgroup | None:
    """A fresh pids cgroup (v1 or v2) limited to ``limit``, if we may make one."""
    return _make_cgroup((PIDS_CGROUP, Path("/sys/fs/cgroup")), "pids.max", limit)


def _memory_cgroup(limit: int) -> _Cgroup | None:
    """A fresh memory cgroup (v1, else v2) limited to ``limit`` bytes."""
    return _make_cgroup((MEMORY_CGROUP,), "memory.limit_in_bytes", limit) or _make_cgroup(
        (Path("/sys/fs/cgroup"),), "memory.max", limit
    )


def _oom_kills(group: Path) -> int:
    """How many processes the kernel killed in ``group`` for lack of memory."""
    for name in ("memory.oom_control", "memory.events"):  # v1, v2
        with contextlib.suppress(OSError):
            for line in (group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


@dataclass(frozen=True)
class _Sandbox:
    """A resident sandbox and the claim on its folder."""

    zygote: Zygote
    claim: claims.Claim

    def end(self) -> None:
        self.zygote.close()
        self.claim.release()  # removes the folder


def _remove_cgroup(group: Path) -> None:
    for _ in range(50):  # its processes are gone once the sandbox has exited
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.01)
