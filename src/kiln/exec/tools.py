"""Host tools a native step declares: what they are, and what they need.

A step names the host programs it runs (``gcc``, ``sh``). Each is resolved
on ``PATH`` to its file and identified by

- the SHA-256 of the file the name resolves to (so a different binary at the
  same path changes the identity, packaged or not), and
- the Debian packages it needs: the package owning the name and the one
  owning the file it resolves to, with their ``Depends``, ``Pre-Depends``
  and ``Recommends``, closed transitively, each as ``name=version:arch``
  (read from dpkg's own database: fast, and honest as long as packages
  are installed by dpkg, which also guards their files' contents).

A step may also declare *runtimes*: what a program built earlier in the
build needs to run, without declaring the tools that built it. A runtime is
named ``runtime:NAME`` among the tool names and identified the same way,
by the file that stands for it and the closure of its Debian packages:

- ``runtime:c``: the dynamic loader and the C library (the loader's
  package, e.g. ``libc6``, and what it needs);
- ``runtime:c++``: that and the C++ library (``libstdc++6``, ``libgcc-s1``).

The identity of a step's tools goes into its action's platform properties,
so upgrading the compiler changes the keys of exactly the steps using it.
The sandbox gets the files of those packages (and the tool files), and
nothing else of the host's ``/usr``: ``tool_root`` builds that tree once per
identity, as hard links (copies where linking is not allowed).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import marshal
import os
import platform
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from kiln import errors
from kiln.exec.specs import RUNTIME_PREFIX
from kiln.model.digest import Digest
from kiln.system.stat_signature import signature

DPKG = Path("/var/lib/dpkg")
# How a tool root is laid out; a new layout builds roots afresh (2: the
# links between a tool's declared path and its file are placed too).
ROOT_LAYOUT = 2
# The dynamic loader of this machine's own ABI, by architecture.
LOADERS = {
    "x86_64": "/lib64/ld-linux-x86-64.so.2",
    "aarch64": "/lib/ld-linux-aarch64.so.1",
}
# A runtime: the files that stand for it (the first identifies it by content).
RUNTIMES = {
    "c": ("{loader}",),
    "c++": ("/usr/lib/{arch}-linux-gnu/libstdc++.so.6", "{loader}"),
}
_DEP_NAME = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)")


@dataclass(frozen=True)
class Tool:
    """A resolved host tool."""

    name: str  # as declared
    path: str  # where ``name`` resolved on PATH (may be a symlink)
    real_path: str  # the file it finally is
    digest: str  # SHA-256 of that file
    packages: tuple[str, ...]  # closure, "name=version:arch", sorted


@dataclass(frozen=True)
class _Package:
    name: str
    version: str
    arch: str
    needs: tuple[str, ...]  # alternatives groups flattened to their first installed choice


def tool_roots_folder(state: Path) -> Path:
    """Where the file trees of host tools are kept, in a state folder (made
    if missing): shared by the native executor and rules naming tools."""
    folder = state / "tool-roots"
    folder.mkdir(exist_ok=True)
    return folder


class Dpkg:
    """The installed packages, read from dpkg's status file and file lists."""

    def __init__(self, root: Path = DPKG, cache: Path | None = None) -> None:
        self._root = root
        self._cache = cache
        self._packages: dict[str, _Package] = {}
        self._provides: dict[str, str] = {}
        self._owners: dict[str, str] | None = None
        status = root / "status"
        if status.is_file():
            self._parse(status.read_text(errors="replace"))

    def _parse(self, text: str) -> None:
        raw: list[dict[str, str]] = []
        for paragraph in text.split("\n\n"):
            fields: dict[str, str] = {}
            key = ""
            for line in paragraph.splitlines():
                if line[:1] in (" ", "\t") and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            if fields.get("Status", "").endswith(" installed") and "Package" in fields:
                raw.append(fields)
        installed = {f["Package"] for f in raw}
        for f in raw:
            for provided in _names(f.get("Provides", "")):
                self._provides.setdefault(provided, f["Package"])
        for f in raw:
            needs = []
            for field in ("Pre-Depends", "Depends", "Recommends"):
                for group in f.get(field, "").split(","):
                    choice = self._first_installed(group, installed)
                    if choice:
                        needs.append(choice)
            self._packages[f["Package"]] = _Package(
                f["Package"], f.get("Version", ""), f.get("Architecture", ""), tuple(needs)
            )

    def _first_installed(self, group: str, installed: set[str]) -> str | None:
        for alternative in group.split("|"):
            m = _DEP_NAME.match(alternative)
            if not m:
                continue
            name = m.group(1)
            if name in installed:
                return name
            if name in self._provides:
                return self._provides[name]
        return None

    def owner(self, path: str) -> str | None:
        """The package that installed ``path``, if any."""
        if self._owners is None:
            self._owners = self._load_owners()
        return self._owners.get(path) or self._owners.get(canonical(path))

    def _load_owners(self) -> dict[str, str]:
        """path -> package, from dpkg's file lists; cached on disk (in the
        ``cache`` folder) for as long as dpkg's database is unchanged."""
        info = self._root / "info"
        version = (signature(self._root / "status"), signature(info))
        if None in version:
            return {}
        cached = self._cache / "dpkg-owners.marshal" if self._cache else None
        if cached is not None:
            with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
                stored_version, owners = marshal.loads(cached.read_bytes())
                if stored_version == version:
                    return owners
        owners: dict[str, str] = {}
        for listing in sorted(info.glob("*.list")):
            package = listing.name[: -len(".list")].split(":")[0]
            for line in listing.read_text(errors="replace").splitlines():
                owners.setdefault(line, package)
                # Merged /usr: "/bin/sh" is listed, "/usr/bin/sh" is found.
                owners.setdefault(canonical(line), package)
        if cached is not None:
            with contextlib.suppress(OSError):
                staged = cached.with_suffix(f".{os.getpid()}.tmp")
                staged.write_bytes(marshal.dumps((version, owners)))
                os.replace(staged, cached)
        return owners

    def closure(self, roots: list[str]) -> list[str]:
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in seen or name not in self._packages:
                continue
            seen.add(name)
            stack.extend(self._packages[name].needs)
        return sorted(seen)

    def identity(self, name: str) -> str:
        p = self._packages[name]
        return f"{p.name}={p.version}:{p.arch}"

    def files(self, name: str) -> list[str]:
        for candidate in (f"{name}:{self._packages[name].arch}.list", f"{name}.list"):
            listing = self._root / "info" / candidate
            if listing.is_file():
                return [ln for ln in listing.read_text(errors="replace").splitlines() if ln]
        return []


def _names(field: str) -> list[str]:
    return [m.group(1) for part in field.split(",") if (m := _DEP_NAME.match(part))]


def resolve(name: str, dpkg: Dpkg) -> Tool:
    """Find a declared tool on ``PATH`` (or at its absolute path), or a
    runtime (``runtime:NAME``), and identify it."""
    if name.startswith(RUNTIME_PREFIX):
        return _resolve_runtime(name, dpkg)
    found = name if os.path.isabs(name) else shutil.which(name)
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise errors.KilnError(
            f"tool {name!r} is not an executable program on this machine",
            hint="install it, or declare it by its absolute path",
            exit_code=errors.ExitCode.BAD_INPUT,
            tool=name,
        )
    real = os.path.realpath(found)
    roots = {p for p in (dpkg.owner(found), dpkg.owner(real), _interpreter_owner(real, dpkg)) if p}
    packages = tuple(dpkg.identity(p) for p in dpkg.closure(sorted(roots)))
    return Tool(name, found, real, Digest.of_file(real).hash, packages)


def declared_files(name: str) -> list[str]:
    """The files a declared tool or runtime name stands for on this machine
    (what to watch for changes; a runtime's may be missing)."""
    if not name.startswith(RUNTIME_PREFIX):
        return [name if os.path.isabs(name) else shutil.which(name) or name]
    arch = platform.machine()
    loader = LOADERS.get(arch, "")
    runtime = RUNTIMES.get(name[len(RUNTIME_PREFIX) :], ())
    return [f.format(loader=loader, arch=arch) for f in runtime]


def _resolve_runtime(name: str, dpkg: Dpkg) -> Tool:
    """A runtime as a ``Tool``: its first file, and its files' packages."""
    runtime = name[len(RUNTIME_PREFIX) :]
    arch = platform.machine()
    files = declared_files(name)
    if runtime not in RUNTIMES:
        raise errors.KilnError(
            f"unknown runtime {runtime!r}",
            hint=f"known runtimes: {', '.join(sorted(RUNTIMES))}",
            exit_code=errors.ExitCode.BAD_INPUT,
            tool=name,
        )
    missing = next((f for f in files if not f.startswith("/") or not os.path.isfile(f)), None)
    if missing is not None:
        raise errors.KilnError(
            f"runtime {runtime!r} is not installed on this machine "
            f"({missing or 'no known dynamic loader for ' + arch} is missing)",
            hint="install its C (libc6) or C++ (libstdc++6) library packages",
            exit_code=errors.ExitCode.BAD_INPUT,
            tool=name,
        )
    owners = {p for f in files for p in (dpkg.owner(f), dpkg.owner(os.path.realpath(f))) if p}
    packages = tuple(dpkg.identity(p) for p in dpkg.closure(sorted(owners)))
    real = os.path.realpath(files[0])
    return Tool(name, files[0], real, Digest.of_file(real).hash, packages)


def _interpreter_owner(path: str, dpkg: Dpkg) -> str | None:
    """For a script, the package of its ``#!`` interpreter."""
    with open(path, "rb") as f:
        head = f.read(256)
    if not head.startswith(b"#!"):
        return None
    interpreter = head[2:].split(b"\n", 1)[0].strip().split(b" ", 1)[0].decode(errors="replace")
    return dpkg.owner(interpreter) or dpkg.owner(os.path.realpath(interpreter))


def identity(tools: list[Tool]) -> str:
    """One string naming exactly these tools (it goes into action keys)."""
    payload = [
        {"name": t.name, "path": t.path, "sha256": t.digest, "packages": list(t.packages)}
        for t in sorted(tools, key=lambda t: t.name)
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def tool_root(tools: list[Tool], dpkg: Dpkg, cache: Path) -> Path:
    """A folder holding, at their absolute paths, the files of the tools'
    packages and the tools themselves; built once per identity."""
    root = cache / f"{identity(tools)}.{ROOT_LAYOUT}"
    with _building:  # threads of one build share the work (other processes race safely)
        if not (root / ".complete").exists():
            _build_root(tools, dpkg, cache, root)
    return root


_building = threading.Lock()


def _build_root(tools: list[Tool], dpkg: Dpkg, cache: Path, root: Path) -> None:
    staging = cache / f".{root.name}.{os.getpid()}.{threading.get_ident()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "usr").mkdir(parents=True)  # the sandbox's /usr, even with no tools
    paths: set[str] = set()
    for t in tools:
        paths.update((t.path, t.real_path, *_link_chain(t.path)))
        for package in t.packages:
            paths.update(dpkg.files(package.split("=", 1)[0]))
    for path in sorted(paths):
        _place(path, staging)
    (staging / ".complete").touch()
    try:
        os.rename(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process built it first


def _link_chain(path: str) -> list[str]:
    """Each link a tool's path goes through to its file (``/usr/bin/cc``,
    ``/etc/alternatives/cc``, ``/usr/bin/gcc``, ...), so that the sandbox can
    run it by the name it was declared with."""
    chain: list[str] = []
    while os.path.islink(path) and len(chain) < 40:
        path = os.path.join(os.path.dirname(path), os.readlink(path))
        chain.append(os.path.normpath(path))
    return chain


@functools.lru_cache(maxsize=65536)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def canonical(path: str) -> str:
    """``path`` with its folder's symlinks resolved (merged /usr)."""
    folder, name = os.path.split(path)
    return os.path.join(_real_folder(folder), name)


def _place(path: str, root: Path) -> None:
    """Recreate the host's ``path`` under ``root``: folders, symlinks as
    symlinks, files as hard links (copies if linking is refused)."""
    host = canonical(path)  # merged /usr: /bin, /lib, /lib64 are symlinks to usr/...
    dest = root / host.lstrip("/")
    if os.path.islink(host):
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.is_symlink():
            os.symlink(os.readlink(host), dest)
    elif os.path.isdir(host):
        dest.mkdir(parents=True, exist_ok=True)
    elif os.path.isfile(host):
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            return
        try:
            os.link(host, dest)
        except OSError:
            shutil.copy2(host, dest)
