"""``kiln doctor``: what this machine offers Kiln, with concrete fixes."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
        check_bubblewrap(),
        _user_namespaces(),
        _cgroups(),
        _node(),
        *_store(store_home),
    ]


def _wasmtime() -> Check:
    try:
        from importlib.metadata import version

        import wasmtime

        wasmtime.Engine()
        return Check("wasmtime", OK, f"wasmtime {version('wasmtime')}: wasm steps can run")
    except Exception as e:  # any failure to load the engine is the finding
        return Check("wasmtime", FAIL, f"cannot load wasmtime: {e}", "reinstall kiln-build")


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


def _cgroups() -> Check:
    from kiln.exec.native import _pids_cgroup, _remove_cgroup

    group = _pids_cgroup(64)
    if group is None:
        return Check(
            "cgroups", WARN,
            "no pids cgroup can be made here: native steps fall back to RLIMIT_NPROC, "
            "which does not hold for root",
            "run kiln where it may create cgroups (e.g. a systemd user slice with the pids "
            "controller delegated)",
        )  # fmt: skip
    _remove_cgroup(group)
    return Check("cgroups", OK, f"pids cgroups can be made under {group.parent}")


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
