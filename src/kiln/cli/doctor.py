"""``kiln doctor``: what this machine offers Kiln, with concrete fixes."""

from __future__ import annotations

import os
import platform
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import click

from kiln.cli.common import asdict, json_option
from kiln.cli.report import write_json
from kiln.exec.base import TransientError
from kiln.exec.native import _memory_cgroup, _pids_cgroup, _remove_cgroup
from kiln.exec.zygote import Zygote
from kiln.store.db import default_home

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn or fail
    detail: str
    fix: str = ""


def run_checks(store_home: Path) -> list[Check]:
    return [
        _wasmtime(),
        _wasm_contract(store_home),
        check_bubblewrap(),
        _native_steps(),
        _user_namespaces(),
        *_cgroups(),
        _node(),
        *_store(store_home),
        *_remote(),
        _watching(store_home),
    ]


def _watching(home: Path) -> Check:
    """Whether the resident server can watch the current project (inotify)."""
    from kiln.engine.root import find_root
    from kiln.errors import KilnError
    from kiln.server.client import ask
    from kiln.server.watch import IGNORED_NAMES, MAX_FOLDERS, inotify_limits, remote_file_system

    limit = inotify_limits()["max_user_watches"]
    if limit is None:
        return Check(
            "watch", WARN, "inotify is not available: the server checks sources with stat",
            "run on Linux with inotify (fs.inotify in /proc/sys)",
        )  # fmt: skip
    try:
        root = find_root(Path.cwd())
    except (KilnError, OSError):
        return Check("watch", OK, f"inotify available (max_user_watches = {limit}); "
                     "run `kiln doctor` in a project to check it")  # fmt: skip
    remote = remote_file_system(str(root))
    if remote is not None:
        return Check(
            "watch", WARN,
            f"{root} is on a {remote} file system: the server checks its sources with stat "
            "(changes made elsewhere raise no inotify event)",
            "keep projects on a local file system for instant no-op builds",
        )  # fmt: skip
    folders = 0
    for _folder, dirs, _files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in IGNORED_NAMES]
        folders += 1
        if folders > min(limit, MAX_FOLDERS):
            return Check(
                "watch", WARN,
                f"{root} has more folders than the server may watch "
                f"(max_user_watches = {limit}, Kiln's own limit {MAX_FOLDERS}): "
                "it checks the sources with stat",
                f"sysctl fs.inotify.max_user_watches={max(folders * 2, 2 * limit)}",
            )  # fmt: skip
    status = ask(home, {"op": "status"})
    served = {p["root"]: p for p in status.get("projects", [])} if status else {}
    here = served.get(str(root))
    if here is not None and not here["watched"]:
        return Check("watch", WARN, f"the server does not watch {root}: {here['why_not']}",
                     "see docs/server.md")  # fmt: skip
    state = (
        "the server watches it" if here is not None
        else "the server will watch it once it builds it" if status
        else "`kiln server start` to have it watched"
    )  # fmt: skip
    return Check(
        "watch", OK, f"{root}: {folders} folders to watch (max_user_watches = {limit}); {state}"
    )


def _remote() -> list[Check]:
    """The configured REAPI remote, if any: reachable, and what it offers."""
    import asyncio

    from kiln.cli.remote import probe_all
    from kiln.config import load_config
    from kiln.errors import KilnError

    try:
        settings = load_config().remote_settings().overridden()
    except KilnError as e:
        return [Check("remote", FAIL, e.message, e.hint or "")]
    if not settings.enabled:
        return [Check("remote", OK, "none configured: builds use this machine's store only")]
    checks = []
    for row in asyncio.run(probe_all(settings)):
        name = f"remote {row['role']}"
        if row["ok"]:
            detail = (
                f"{row['url']} answers in {row['latency_ms']:.1f} ms; execution "
                f"{'offered' if row['execution'] else 'not offered'}; results "
                f"{'pushed' if row['push'] else 'not pushed'}"
            )
            checks.append(Check(name, OK, detail))
        else:
            fix = "check the [remote] settings (docs/remote.md) and that the server runs"
            checks.append(Check(name, FAIL, str(row["error"]).splitlines()[0], fix))
    return checks


def _wasmtime() -> Check:
    try:
        import wasmtime  # (here: failing to load it is what this check reports)

        wasmtime.Engine()
        return Check("wasmtime", OK, f"wasmtime {version('wasmtime')}: wasm steps can run")
    except Exception as e:  # any failure to load the engine is the finding
        return Check("wasmtime", FAIL, f"cannot load wasmtime: {e}", "reinstall kiln-build")


def _wasm_contract(home: Path) -> Check:
    """The contract every wasm step runs under, and that its results travel."""
    try:
        from kiln.exec.wasm import contract_summary, host_cpu, modules_folder
    except Exception as e:  # reported by the wasmtime check
        return Check("wasm contract", FAIL, f"cannot load the wasm executor: {e}")
    detail = (
        f"{contract_summary()}. No fact about this host is in a wasm step's key, so its "
        f"results are shared with machines of any CPU and OS (this one: "
        f"{platform.machine()}, {platform.system()}). Modules are compiled once for this "
        f"CPU ({host_cpu()}) and kept in {modules_folder(home)}"
    )
    return Check("wasm contract", OK, detail)


def check_bubblewrap() -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check(
            "bubblewrap", FAIL, "bwrap is not installed: native steps cannot run",
            "apt-get install bubblewrap (wasm steps work without it)",
        )  # fmt: skip
    probe = subprocess.run(
        [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--proc", "/proc", "--dev", "/dev", "/usr/bin/true"],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        return Check(
            "bubblewrap", FAIL, f"bwrap cannot make a sandbox: {probe.stderr.strip()}",
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
            "or on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)",
        )  # fmt: skip
    return Check("bubblewrap", OK, f"{bwrap} makes sandboxes with all namespaces")


def _native_steps() -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check("native steps", FAIL, "they need bubblewrap (see above)")
    failure = _step_in_resident_sandbox(bwrap)
    if failure:
        return Check(
            "native steps", FAIL, f"the resident sandbox cannot run a step: {failure}",
            "allow nested user namespaces (sysctl user.max_user_namespaces=10000); "
            "on a machine other than x86_64 or aarch64, build kiln-zygote (./dev zygote)",
        )  # fmt: skip
    return Check("native steps", OK, "a step runs in the resident sandbox (kiln-zygote)")


def _step_in_resident_sandbox(bwrap: str) -> str:
    """Run ``true`` as a step in a resident sandbox (``kiln.exec.zygote``);
    what went wrong, or "" if it ran."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--uid", "1000", "--gid", "1000",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev", "--dir", "/tmp"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kiln-doctor-") as host:
        try:
            zygote = Zygote(argv, Path(host))
        except TransientError as e:
            return str(e)
        try:
            for name in ("inputs", "work"):
                (Path(host) / name / "probe").mkdir()
            outcome = zygote.run("probe", "/work", {}, ["/usr/bin/true"], 30)
        except TransientError as e:
            return str(e)
        finally:
            zygote.close()
    return "" if outcome.exit_code == 0 else f"true ended with {outcome}"


def _user_namespaces() -> Check:
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except OSError:
        return Check("user namespaces", WARN, "cannot read /proc/sys/user/max_user_namespaces")
    if limit == 0:
        return Check(
            "user namespaces", FAIL, "user namespaces are disabled",
            "sysctl user.max_user_namespaces=10000",
        )  # fmt: skip
    return Check("user namespaces", OK, f"up to {limit} user namespaces")


_MEMORY_FALLBACK = (
    "RLIMIT_AS (address space of each process, not the step's memory in total); "
    "running out of memory is then a plain failure, not reported as such"
)
# What native steps fall back to without each cgroup (kiln.exec.native), for
# root and for any other user: a process limit root ignores, and one that
# counts every process of the user, not only the step's.
_FALLBACKS = {
    "pids": (
        "RLIMIT_NPROC, which root ignores: a step's processes are not limited",
        "RLIMIT_NPROC, which counts every process of user {user} (not only the step's): "
        "a step may be refused new processes while that user runs many others",
    ),
    "memory": (_MEMORY_FALLBACK, _MEMORY_FALLBACK),
}


def _cgroups() -> list[Check]:
    """The two cgroup controllers native steps are limited by: pids and memory."""
    checks = []
    for kind, make in (("pids", _pids_cgroup), ("memory", _memory_cgroup)):
        group = make(64 if kind == "pids" else 1 << 30)
        name = f"{kind} cgroup"
        if group is not None:
            _remove_cgroup(group.path)
            checks.append(Check(name, OK, f"{kind} cgroups can be made under {group.path.parent}"))
            continue
        root = os.geteuid() == 0
        fallback = _FALLBACKS[kind][0 if root else 1].format(user=_user_name())
        fix = (
            "make /sys/fs/cgroup writable here (in a container: give it a writable cgroup "
            "file system)"
            if root
            else f"native steps still run; for a hard {kind} limit run kiln as root (a user "
            "may make cgroups only where /sys/fs/cgroup is writable to it)"
        )
        detail = f"no {kind} cgroup can be made here: native steps fall back to {fallback}"
        checks.append(Check(name, WARN, detail, fix))
    return checks


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _node() -> Check:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        return Check(
            "node", WARN, "Node.js is not installed: `kiln check --engine node` is unavailable",
            "apt-get install nodejs",
        )  # fmt: skip
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    return Check("node", OK, f"{node} {version}: the second wasm engine can run")


def _store(home: Path) -> list[Check]:
    target = home if home.exists() else home.parent
    while not target.exists():
        target = target.parent
    checks = [_store_writable(home, target)]
    checks += _store_space(home, target)
    return checks


# The store's folders a build writes to (kiln.store.local), its database
# and the files next to it SQLite needs to write.
_WRITTEN = ("", "tmp", "cas", "cas/00", "locks", "sessions")
_DATABASE = ("kiln.db", "kiln.db-wal", "kiln.db-shm", "kiln.db.open-lock")


def _store_writable(home: Path, existing: Path) -> Check:
    """Whether builds can write the store at ``home`` (``existing``: it, or
    the nearest folder above it that exists, where it would be made): a
    file made in each folder builds write, and its database opened for
    writing."""
    folders = [home / sub for sub in _WRITTEN if (home / sub).is_dir()] if home.is_dir() else []
    problem = ""
    for folder in folders or [existing]:
        try:
            with tempfile.TemporaryFile(dir=folder, prefix=".kiln-doctor-"):
                pass
        except OSError as e:
            problem = f"cannot write in {folder} ({e.strerror})"
            break
    for name in _DATABASE if not problem else ():
        path = home / name
        if path.exists() and not os.access(path, os.W_OK):  # (root: only a read-only disk)
            problem = f"cannot write {path}"
            break
    if problem:
        return Check(
            "store writable", FAIL, f"{problem}: every build would be refused",
            f"let user {_user_name()} write {home} (e.g. `chown -R {_user_name()} {home}`), or "
            "set KILN_HOME to a folder it owns",
        )  # fmt: skip
    where = f"{home}" if home.is_dir() else f"{existing} (where {home} will be made)"
    return Check("store writable", OK, f"builds can write to {where}")


def _store_space(home: Path, target: Path) -> list[Check]:
    fs = _filesystem(target)
    st = os.statvfs(target)
    free = st.f_bavail * st.f_frsize
    checks = [Check("store file system", OK, f"{home} is on {fs}")]
    if fs in ("nfs", "nfs4", "cifs", "smb3"):
        checks[0] = Check(
            "store file system", WARN, f"{home} is on {fs}: locks and hard links may not work",
            "set KILN_HOME to a local disk",
        )  # fmt: skip
    gib = free / (1 << 30)
    if gib < 1:
        checks.append(
            Check("free space", FAIL, f"{gib:.2f} GiB free for the store",
                  "free space, or `kiln gc --max-size 1G`")
        )  # fmt: skip
    else:
        checks.append(Check("free space", OK, f"{gib:.1f} GiB free for the store"))
    return checks


def _filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1]
            inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, parts[2]
    return kind


@click.command("doctor")
@json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check what this machine offers Kiln, with fixes for what is missing.

    Exits 1 if something Kiln needs is missing (warnings do not count).
    """
    home = Path(ctx.obj.get("store") or default_home())
    checks = run_checks(home)
    if as_json:
        write_json([asdict(c) for c in checks])
    else:
        for c in checks:
            click.echo(f"{c.status:>4}  {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                click.echo(f"      fix: {c.fix}")
    if any(c.status == FAIL for c in checks):
        sys.exit(1)
