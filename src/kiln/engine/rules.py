"""The build-file API: what ``kilnfile.py`` imports from ``kiln.build``.

A target is an ``async def`` without parameters, decorated with
``@target``. Inside it, ``source``/``source_tree``/``glob`` name project
files, ``wasm(...)`` runs a step and returns its ``StepResult`` when
awaited, and awaiting another target gives that target's value. An
``async def`` with parameters decorated with ``@rule`` is evaluated once
per build for each distinct set of arguments. Targets, rules and steps are
evaluated at most once per build; awaiting one never blocks others
(``gather`` runs several at once). ``setting`` reads the build's ``-D``
settings.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.engine.values import File, StepResult, Tree, Value
from kiln.exec import specs
from kiln.exec.kinds import UNPACK_ABI
from kiln.exec.specs import (
    DEFAULT_DISK_MIB,
    DEFAULT_FUEL,
    DEFAULT_MEMORY_MIB,
    RECURSIVE_PROPERTY,
    RUNTIME_PREFIX,
    WasmLimits,
    unpack_argv,
)
from kiln.model.digest import Digest
from kiln.model.tree import Entry, lookup
from kiln.store.cas import read_blob

if TYPE_CHECKING:
    from kiln.engine.evaluation import BuildContext

gather = asyncio.gather

# The build being evaluated and the target whose code is running.
_build: ContextVar[BuildContext] = ContextVar("kiln_build")
_target: ContextVar[Target | None] = ContextVar("kiln_target", default=None)
# The rule calls (rule, arguments) the running code is inside of, outermost
# first: awaiting one of them again could never finish.
_rule_chain: ContextVar[tuple[tuple[Rule, RuleKey], ...]] = ContextVar("kiln_rules", default=())
# Targets defined while a build file is being loaded (see engine/loader.py).
_defining: list[Target] | None = None


@dataclass(frozen=True, eq=False)
class Target:
    """A named, memoized async rule defined in a build file."""

    name: str
    fn: Callable[[], Coroutine[Any, Any, Any]]
    doc: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __call__(self) -> Awaitable[Any]:
        """Awaiting this gives the target's value (evaluated once per build)."""
        return _context("a target").evaluate(self, _target.get())


def _check_async(fn: Callable[..., Any], what: str) -> None:
    if not asyncio.iscoroutinefunction(fn):
        code = fn.__code__
        raise errors.KilnError(
            f"{code.co_filename}:{code.co_firstlineno}: {what} {fn.__name__!r} "
            "is not an async function",
            hint=f"write `async def` for {what}s",
            exit_code=errors.ExitCode.BAD_INPUT,
        )


def target(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Target:
    """Declare an async function as a build target named after it."""
    _check_async(fn, "target")
    code = fn.__code__
    t = Target(fn.__name__, fn, (fn.__doc__ or "").strip(), code.co_filename, code.co_firstlineno)
    if _defining is not None:
        if any(other.name == t.name for other in _defining):
            raise errors.KilnError(
                f"{t.where}: target {t.name!r} is defined twice",
                hint="give each target its own name",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        _defining.append(t)
    return t


# Positional arguments and sorted keyword arguments of a rule call.
RuleKey = tuple[tuple[Any, ...], tuple[tuple[str, Any], ...]]


@dataclass(frozen=True, eq=False)
class Rule:
    """A memoized async function of a build file (``@rule``): all calls
    with equal arguments in one build share one evaluation and its result
    (or its error)."""

    fn: Callable[..., Coroutine[Any, Any, Any]]
    file: str
    line: int
    signature: inspect.Signature  # (calls are keyed as bound to it, defaults applied)

    @property
    def name(self) -> str:
        return self.fn.__qualname__

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Awaiting this gives the rule's result for these arguments."""
        where = _where()
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise errors.KilnError(
                f"{where}: rule {self.name!r} ({self.where}) called wrongly: {e}",
                exit_code=errors.ExitCode.BAD_INPUT,
            ) from None
        bound.apply_defaults()
        key: RuleKey = (bound.args, tuple(sorted(bound.kwargs.items(), key=lambda kv: kv[0])))
        try:
            hash(key)
        except TypeError as e:
            raise errors.KilnError(
                f"{where}: rule {self.name!r} called with an argument that cannot be a key ({e})",
                hint="a rule's arguments identify its result: pass hashable values "
                "(str, int, tuple, frozenset, File, Tree), e.g. a tuple instead of a list",
                exit_code=errors.ExitCode.BAD_INPUT,
            ) from None
        return _context(f"rule {self.name!r}").call_rule(self, key, where)


def rule(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Rule:
    """Memoize an async function for the build: called any number of times
    with equal (hashable) arguments, it runs once and every caller awaits
    the same result, like a step. Use it for helpers called once per unit
    that would otherwise ask for the same steps again and again."""
    _check_async(fn, "rule")
    code = fn.__code__
    return Rule(fn, code.co_filename, code.co_firstlineno, inspect.signature(fn))


def describe_call(rule: Rule, key: RuleKey) -> str:
    """``name(arg, ..., k=v)`` of a rule call, shortened, for messages."""
    args, kwargs = key
    text = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs)])
    return f"{rule.name}({text if len(text) <= 60 else text[:57] + '...'})"


def setting(name: str, default: str | None = None) -> str | None:
    """The value given to ``kiln build -D name=value``, else the one in the
    ``[settings]`` table of the project's ``kiln.toml``, else ``default``.
    Both are part of the build stamp: another value evaluates again."""
    return _context("setting()").setting(name, default)


def _context(what: str) -> BuildContext:
    try:
        return _build.get()
    except LookupError:
        raise errors.KilnError(
            f"{what} can only be used while kiln builds (inside a target)",
            exit_code=errors.ExitCode.BAD_INPUT,
        ) from None


def _where() -> str:
    """``file:line`` of the build-file line that called into this module."""
    frame = sys._getframe(2)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _current_name() -> str:
    t = _target.get()
    return t.name if t is not None else "(no target)"


# ------------------------------------------------------------------ sources


def source(path: str) -> File:
    """A project file (path relative to the project root), hashed through
    the stat cache; it appears in steps at the same path."""
    return _context("source()").sources.file(path, f"{_where()} (target {_current_name()!r})")


def source_tree(path: str, *, gitignore: bool = False) -> Tree:
    """A project folder, stored as a tree; it appears in steps at ``path``.
    With ``gitignore=True``, what git would ignore is left out of it (the
    ``.gitignore`` files of the project down to the folder and in it, and
    the project's ``.git/info/exclude``): it is no part of the tree's
    digest, so editing it runs no step again."""
    ctx = _context("source_tree()")
    where = f"{_where()} (target {_current_name()!r})"
    if not isinstance(gitignore, bool):
        raise errors.KilnError(
            f"{where}: source_tree(..., gitignore=) must be True or False, got {gitignore!r}",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return ctx.sources.tree(path, where, gitignore)


def glob(pattern: str) -> list[File]:
    """The project files matching ``pattern`` (``**`` for any depth), sorted.
    Matching nothing is an error."""
    return _context("glob()").sources.glob(pattern, f"{_where()} (target {_current_name()!r})")


# -------------------------------------------------------------------- steps


def wasm(
    tool: File,
    *args: str,
    inputs: Iterable[Value] | Mapping[str, Value] = (),
    outputs: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    fuel: int | None = None,
    memory_mib: int | None = None,
    disk_mib: int | None = None,
    requires: Iterable[str] = (),
    description: str | None = None,
    timeout: float | None = None,
) -> Coroutine[Any, Any, StepResult]:
    """A WebAssembly step: run ``tool`` (a WASI command module) with ``args``.

    ``inputs`` are placed in the step's (read-only) tree at their paths, or
    at the keys of a mapping; ``tool`` is placed at its own path and is
    argv[0]. The step may create the ``outputs`` paths (folders it makes
    itself). ``fuel``, ``memory_mib`` and ``disk_mib`` (what its files, the
    outputs and /tmp, may hold at once) are its limits, part of its key.
    ``requires`` names system features an executor must offer (see
    ``kiln.config``). ``timeout`` is a wall-clock limit in seconds (default:
    the config's ``step-timeout``), not part of the key: a run past it is
    an error, never a result. Await the call for its ``StepResult``; a
    failure raises.
    """
    ctx = _context("wasm()")
    where = _where()
    owner = _target.get()
    _check_command("wasm", args, where)
    if not isinstance(tool, File):
        raise errors.KilnError(
            f"{where}: wasm() needs the module as a File (e.g. source('tool.wasm')), "
            f"got {type(tool).__name__}",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    placed = [v.at(p) for p, v in inputs.items()] if isinstance(inputs, Mapping) else list(inputs)
    bad = next((v for v in placed if not isinstance(v, File | Tree)), None)
    if bad is not None:
        raise errors.KilnError(
            f"{where}: inputs must be File or Tree values, got {type(bad).__name__}",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    limits = WasmLimits(
        fuel or DEFAULT_FUEL, memory_mib or DEFAULT_MEMORY_MIB, disk_mib or DEFAULT_DISK_MIB
    )
    return ctx.run_step(
        owner,
        where,
        kind="wasm",
        argv=[tool.path, *map(str, args)],
        inputs=[tool, *placed],
        outputs=list(outputs),
        env=dict(env or {}),
        platform=limits.platform() + ctx.features(requires, (), where),
        description=description or " ".join([os.path.basename(tool.path), *map(str, args)]),
        timeout=_timeout("wasm", timeout, where),
    )


def native(
    *argv: str,
    tools: Iterable[str],
    runtimes: Iterable[str] = (),
    inputs: Iterable[Value] | Mapping[str, Value] = (),
    outputs: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    memory_mib: int | None = None,
    pids: int | None = None,
    disk_mib: int | None = None,
    requires: Iterable[str] = (),
    secrets: Iterable[str] = (),
    description: str | None = None,
    timeout: float | None = None,
    recursive: bool = False,
) -> Coroutine[Any, Any, StepResult]:
    """A native step: run ``argv`` in a bubblewrap sandbox (Linux).

    ``tools`` names the host programs the step uses (``argv[0]`` among
    them, unless it is an input); the sandbox holds only those and the
    Debian packages they need, and their identity is part of the step's key.
    ``runtimes`` (``"c"``, ``"c++"``) adds what a dynamically linked program
    built earlier in the build needs to run (the loader and C library, and
    the C++ library), identified the same way; ``tools=[]`` declares none.
    ``inputs``, ``outputs`` and ``env`` are as for ``wasm``; the working
    folder holds the inputs (read-only) and the outputs the step creates,
    at most ``disk_mib`` MiB of them (with ``memory_mib`` and ``pids``, the
    step's limits).
    ``requires`` names system features an executor must offer; ``secrets``
    names secrets of those features, readable at ``/kiln/secrets/NAME``
    (their names, never their contents, are in the key). ``timeout`` is a
    wall-clock limit in seconds (default: the config's ``step-timeout``),
    not part of the key. ``recursive``: the step may ask the build for
    steps through ``/kiln/bin/kiln-sub`` (e.g. as a compiler launcher for
    ``make``: ``CC="/kiln/bin/kiln-sub cc gcc"``; see docs/native.md), which
    the build runs like its own; part of the key.
    """
    ctx = _context("native()")
    where = _where()
    owner = _target.get()
    if not argv:
        raise errors.KilnError(
            f"{where}: native() needs a command", exit_code=errors.ExitCode.BAD_INPUT
        )
    if recursive and secrets:
        raise errors.KilnError(
            f"{where}: a native() step with secrets cannot be recursive: the steps it asks "
            "for could carry them out of it",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    _check_command("native", argv, where)
    for name in [tools, runtimes]:
        if isinstance(name, str):
            raise errors.KilnError(
                f"{where}: native() takes a list of names for tools= and runtimes=, "
                f"got the string {name!r}",
                hint=f"write [{name!r}]",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
    declared = sorted(set(tools) | {f"{RUNTIME_PREFIX}{r}" for r in runtimes})
    placed = [v.at(p) for p, v in inputs.items()] if isinstance(inputs, Mapping) else list(inputs)
    limits = specs.NativeLimits(
        memory_mib or specs.NATIVE_MEMORY_MIB,
        pids or specs.NATIVE_PIDS,
        disk_mib or specs.NATIVE_DISK_MIB,
    )
    return ctx.run_step(
        owner,
        where,
        kind="native",
        argv=[str(a) for a in argv],
        inputs=placed,
        outputs=list(outputs),
        env=dict(env or {}),
        platform=limits.platform(declared, ctx.tools_identity(declared, where))
        + ctx.features(requires, secrets, where)
        + (((RECURSIVE_PROPERTY, "1"),) if recursive else ()),
        description=description or _default_description(argv),
        timeout=_timeout("native", timeout, where),
    )


def _default_description(argv: tuple[Any, ...]) -> str:
    """A native step's name when it is given none: the program and its first
    two arguments, paths by their last part and long ones (a script for
    ``sh -c``) cut."""

    def short(arg: str) -> str:
        if not any(c.isspace() for c in arg):
            arg = os.path.basename(arg.rstrip("/")) or arg
        return arg if len(arg) <= 40 else arg[:37] + "..."

    return " ".join(short(str(a)) for a in argv[:3])


def _check_command(kind: str, argv: Iterable[object], where: str) -> None:
    """Refuse a command given as one list (``native(["gcc", "-v"])``)."""
    bad = next((a for a in argv if isinstance(a, list | tuple | set | dict)), None)
    if bad is not None:
        raise errors.KilnError(
            f"{where}: {kind}() takes the command as separate arguments, "
            f"got a {type(bad).__name__}: {bad!r}",
            hint=f"write {kind}({'tool, ' if kind == 'wasm' else ''}"
            f"{', '.join(map(repr, bad))}, ...), or unpack a list: {kind}(*command, ...)",
            exit_code=errors.ExitCode.BAD_INPUT,
        )


def _timeout(kind: str, seconds: float | None, where: str) -> float | None:
    """A step's wall-clock limit, checked (None: the executor's default)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < 1e9:
        raise errors.KilnError(
            f"{where}: {kind}(..., timeout=) must be a positive number of seconds, got {seconds!r}",
            hint="leave it out for the default (`step-timeout` in the Kiln config)",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return float(seconds)


# ---------------------------------------------------------------- archives


async def unpack(archive: File, *, strip: int = 0, name: str | None = None) -> Tree:
    """The files of ``archive`` (tar, tgz, tar.bz2, tar.xz or zip, a ``File``
    from a source, a fetch or a step) as a ``Tree`` at ``name`` (default: the
    archive's name without its extension), with ``strip`` leading path
    components removed; read as safely and deterministically as a fetch."""
    ctx = _context("unpack()")
    where = _where()
    if not isinstance(archive, File):
        raise errors.KilnError(
            f"{where}: unpack() needs a File, got {type(archive).__name__}",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    base = os.path.basename(archive.path)
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip"):
        base = base.removesuffix(suffix)
    out = name or f"{base}.d"
    result = await ctx.run_step(
        _target.get(), where, kind="unpack", argv=unpack_argv(archive.path, strip),
        inputs=[archive], outputs=[out], env={}, platform=(("kiln-abi", UNPACK_ABI),),
        description=f"unpack {archive.path}",
    )  # fmt: skip
    value = result.outputs[out]
    assert isinstance(value, Tree)
    return value


def pick(tree: Tree, path: str) -> File | Tree:
    """The file or folder at ``path`` inside ``tree``, placed at its own
    name (use ``.at()`` to move it)."""
    where = _where()
    found = lookup(_context("pick()").store.cas, tree.digest, path)
    name = os.path.basename(path.rstrip("/"))
    if isinstance(found, Entry) and found.digest is not None:
        return File(name, found.digest, found.executable)
    if isinstance(found, Digest):
        return Tree(name, found)
    raise errors.KilnError(
        f"{where}: {path!r} is not a file or folder of the tree {tree.path!r}",
        exit_code=errors.ExitCode.BAD_INPUT,
    )


def read_bytes(file: File) -> bytes:
    """The content of a ``File`` value (a source, a fetch, a step's output)."""
    where = _where()
    if not isinstance(file, File):
        raise errors.KilnError(
            f"{where}: read_bytes() needs a File, got {file!r}",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return read_blob(_context("read_bytes()").store.cas, file.digest, f"{where}: {file.path}")
