"""``kiln cc``: every compile a pure, sandboxed, memoized native step.

A call that is one cacheable compile (``kiln.cc.args``) goes like this:

1. Its *manifest* is looked up: keyed by the compiler's tool identity, the
   sandbox form of the command (``kiln.cc.plan``) and the source's path and
   bytes, it lists the headers the same compile read last time.
2. If every listed header is still there, and no file of the same name has
   appeared earlier on the include path (which would now be read instead),
   the step's key is computed from the current bytes of exactly those
   files, and a result recorded under that key is the answer (a *hit*).
3. Otherwise (a *miss*) the compile runs in the native sandbox with the
   source and a list of headers as its only project files: the list of
   step 1 if there is one (a header changed), else that of the previous
   version of the source (the source changed), else, or when the compile
   then misses a header, the list the compiler gives (``-M``, the
   preprocessor only). A header left off the list makes the sandboxed
   compile fail, never a wrong result. The result is recorded only if the
   compile succeeded, and a failed one is run again directly, so its
   messages and exit code are the compiler's.

Headers outside the project come from the compiler's own packages (they
are part of its identity); a compile that reads any other file outside
the project runs directly, as does everything that is not one compile.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.cc import compiler as compilers
from kiln.cc.args import FILE_PROBES, Compile, PassThrough, classify, without_outputs
from kiln.cc.depfile import prerequisites
from kiln.cc.digests import FileDigests
from kiln.cc.invocation import Exec, Invocation, Ran
from kiln.cc.launch import FLUSH_REQUEST
from kiln.cc.plan import (
    KEYED_ENV,
    UNCACHEABLE_ENV,
    NotCacheable,
    Plan,
    environment_reason,
    host_depfile,
    host_text,
    is_system,
    make_plan,
    widen,
)
from kiln.cc.shadows import ShadowCheck
from kiln.cc.stats import Ledger
from kiln.engine.inputs import input_tree, write_blobs
from kiln.engine.values import File, Tree
from kiln.exec.kinds import local_context
from kiln.exec.native import NativeExecutor
from kiln.exec.specs import NativeLimits
from kiln.exec.tools import Tool
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.remote.blocking import BlockingRemoteCache
from kiln.store.local import Store
from kiln.system.stat_signature import signature

MANIFEST_ABI = "kiln-cc-manifest-v1"
MANIFEST_EXECUTOR = "cc-manifest"
STEP_EXECUTOR = "native"
EMPTY_TREE = Digest.of_message(re_pb2.Directory())
# What besides argv and the folder decides a call's answer (PATH is looked
# at again on every call, through the compiler found).
MEMO_ENV = ("KILN_CC_BASE_DIR", *KEYED_ENV, *UNCACHEABLE_ENV)
MEMO_LIMIT = 100_000
DPKG_STATUS = "/var/lib/dpkg/status"  # changes with every package installed or removed
# What makes a compile read a file by name without listing it among its
# headers: the sandbox would answer "no such file" where the host says yes.
# How GCC and Clang say that an #include found nothing.
MISSING_HEADER = re.compile(rb"fatal error: .*(No such file or directory|file not found)")
USAGE = b"usage: kiln-cc COMPILER ARGS... (e.g. make CC='kiln-cc gcc')\n"


@dataclass(frozen=True)
class Headers:
    """What a compile read: project files (relative to the root) and
    files of the compiler's packages (absolute)."""

    project: tuple[str, ...]
    system: tuple[str, ...]
    up: int = 0  # the project root is this many folders above the call's own


@dataclass(frozen=True)
class Recent:
    """A call answered before, and everything its answer depended on that a
    ``stat`` can check again: the compiler file, the project files (by
    digest, through ``FileDigests``) and the include folders (``shadows``)."""

    compiler: tuple[str, str, object]  # path, real path, stat signature
    files: tuple[tuple[str, Digest], ...]
    search: tuple[str, ...]
    listed: frozenset[str]
    plan: Plan
    result: re_pb2.ActionResult
    logs: tuple[bytes, bytes]
    keys: tuple[Digest, Digest]  # the manifest's and the step's


@dataclass(frozen=True)
class _Miss:
    """What a miss carries from the lookup to running the step."""

    found: compilers.Compiler
    unit: Compile
    plan: Plan
    inv: Invocation
    direct: Exec
    executor: NativeExecutor
    tools: list[Tool]
    platform: tuple[tuple[str, str], ...]
    memo: tuple[object, ...]
    manifest: ActionSpec


class CompileCache:
    """Answers launcher calls from one store; safe to share between threads."""

    def __init__(
        self, store: Store, flush_delay: float | None = None,
        remote: BlockingRemoteCache | None = None,
    ) -> None:  # fmt: skip
        """``flush_delay``: see ``kiln.cc.stats.Ledger`` (a resident service
        gives one; a one-off call writes its counts at ``close``). With
        ``remote``, a miss is looked up in that REAPI cache before it runs,
        and what runs here is pushed to it."""
        self.store = store
        self.remote = remote
        self.stats = Ledger(store, flush_delay)
        self.digests = FileDigests()
        self.shadows = ShadowCheck()
        # Executors (each with its resident sandboxes) are taken by one call
        # at a time and kept for the calls that follow.
        self._idle: queue.SimpleQueue[NativeExecutor] = queue.SimpleQueue()
        self._recent: dict[tuple[object, ...], Recent] = {}
        self._packages = signature(DPKG_STATUS)

    def close(self) -> None:
        """Write what is pending, wait for the pushes, end the sandboxes."""
        self.stats.flush()
        if self.remote is not None:
            self.remote.close()
        while not self._idle.empty():
            self._idle.get_nowait().close()

    @contextlib.contextmanager
    def _executor(self) -> Iterator[NativeExecutor]:
        packages = self._packages
        try:
            executor = self._idle.get_nowait()
        except queue.Empty:
            executor = NativeExecutor(local_context(self.store))
        try:
            yield executor
        finally:
            if packages == self._packages:
                self._idle.put(executor)
            else:  # (made before an upgrade: see _forget_if_packages_changed)
                executor.close()

    # ------------------------------------------------------------ a call

    def __call__(self, inv: Invocation) -> Ran | Exec:
        return self.handle(inv)

    def handle(self, inv: Invocation) -> Ran | Exec:
        """What the launcher is to do for ``inv``."""
        if inv.argv[1:] == [FLUSH_REQUEST]:
            self.stats.flush()
            return Ran(0)
        self._forget_if_packages_changed()
        split = compilers.split_launch(inv.argv)
        if split is None:
            return Ran(2, stderr=USAGE)
        name, args = split
        try:
            found = compilers.find(name, inv.cwd, inv.env.get("PATH", os.defpath), inv.launcher)
        except compilers.NotFound as e:
            return Ran(127, stderr=f"kiln cc: {e}\n".encode())
        direct = Exec([found.path, *args])
        memo = (tuple(inv.argv), inv.cwd, *(inv.env.get(n) for n in MEMO_ENV))
        recent = self._recent.get(memo)
        if recent is not None:
            replayed = self._replay(recent, found, inv.umask)
            if replayed is not None:
                return replayed
        if not found.known:
            return self._direct(direct, f"not a GCC- or Clang-style compiler ({found.name})")
        unit = classify(args)
        if isinstance(unit, PassThrough):
            return self._direct(direct, unit.reason)
        reason = environment_reason(inv.env)
        if reason:
            return self._direct(direct, reason)
        try:
            plan = make_plan(found.path, unit, inv.cwd, inv.env)
            with self._executor() as executor:
                return self._compile(found, unit, plan, inv, direct, executor, memo)
        except NotCacheable as e:
            return self._direct(direct, str(e))

    def _forget_if_packages_changed(self) -> None:
        """A package upgrade (new headers, a new compiler) changes the tools'
        identity: executors, which resolved it once, and the answers
        remembered under the old one are dropped."""
        packages = signature(DPKG_STATUS)
        if packages == self._packages:
            return
        self._packages = packages
        self._recent.clear()
        while not self._idle.empty():
            self._idle.get_nowait().close()

    def _direct(self, direct: Exec, reason: str) -> Exec:
        self.stats.count("direct", reason)
        return direct

    def _compile(
        self, found: compilers.Compiler, unit: Compile, plan: Plan, inv: Invocation,
        direct: Exec, executor: NativeExecutor, memo: tuple[object, ...],
    ) -> Ran | Exec:  # fmt: skip
        tools, identity = executor.tools(found.path)
        platform = NativeLimits().platform([found.path], identity)
        source = self.digests.digest(plan.host(plan.source))
        if source is None:
            return self._direct(direct, f"cannot read the source {unit.source}")
        manifest = self._manifest_spec(plan, platform, source)
        manifest_key = manifest.key()
        known = self._manifest(manifest_key)
        if known is not None:
            wide = make_plan(found.path, unit, inv.cwd, inv.env, known.up) if known.up else plan
            step = self._step(wide, platform, known, executor, tools, found, store=False)
            if step is not None:
                key = step[0].key()
                hit = self.store.action_cache.lookup(key, touch=False)
                if hit is not None and self._place(wide, hit.result, inv.umask):
                    self.stats.used(manifest_key, key)
                    self.stats.count("hit")
                    ran = self._ran(wide, hit.result)
                    self._remember(memo, found, wide, known, step[1], hit.result, ran,
                                   (manifest_key, key))  # fmt: skip
                    return ran
        ctx = _Miss(found, unit, plan, inv, direct, executor, tools, platform, memo, manifest)
        # A header or the source changed: the headers this source (or its
        # previous version) read are most likely still the right ones. A
        # compile that needs another fails in the sandbox ("No such file"),
        # and only then does the preprocessor list them.
        candidate = known or self._manifest(self._previous_spec(plan, platform).key())
        if candidate is not None:
            ran = self._run_step(ctx, candidate, speculative=True)
            if ran is not None:
                return ran
        headers = self._discover(found, unit, plan, inv)
        if isinstance(headers, str):
            return self._direct(direct, headers)
        ran = self._run_step(ctx, headers, speculative=False)
        return direct if ran is None else ran

    def _run_step(self, ctx: _Miss, headers: Headers, speculative: bool) -> Ran | Exec | None:
        """Run the compile in the sandbox with ``headers``, record it and its
        manifest; None when a speculative run lacked a header."""
        plan = ctx.plan
        if headers.up:
            plan = make_plan(ctx.found.path, ctx.unit, ctx.inv.cwd, ctx.inv.env, headers.up)
        step = self._step(plan, ctx.platform, headers, ctx.executor, ctx.tools, ctx.found,
                          store=True)  # fmt: skip
        if step is None:
            return None if speculative else self._direct(ctx.direct, "a header changed while "
                                                         "it was read")  # fmt: skip
        spec, files = step
        action, command = spec.action()
        key = spec.key()
        if self.remote is not None and self.store.action_cache.lookup(key, touch=False) is None:
            self.remote.fetch(key)  # (a result it brings is a hit below)
        execution = self.store.execute_once(
            key, lambda: (ctx.executor.execute(key, action, command), STEP_EXECUTOR)
        )
        result = execution.result
        if self.remote is not None and not execution.cached and result.exit_code == 0:
            self.remote.push(key, action, command, result)
        if result.exit_code != 0:
            if speculative and MISSING_HEADER.search(self._log(result.stderr_digest)):
                return None
            # A compile error (or a file the sandbox lacked): the compiler,
            # run directly, says what it says, and nothing is cached.
            self.stats.count("failed")
            return ctx.direct
        self._record_manifest(ctx.manifest, headers)
        self._record_manifest(self._previous_spec(ctx.plan, ctx.platform), headers)
        if not self._place(plan, result, ctx.inv.umask):
            self.stats.count("failed")
            return ctx.direct
        self.stats.count("hit" if execution.cached else "miss")
        ran = self._ran(plan, result)
        self._remember(ctx.memo, ctx.found, plan, headers, files, result, ran,
                       (ctx.manifest.key(), key))  # fmt: skip
        return ran

    # ------------------------------------------------------------ replay

    def _remember(
        self, memo: tuple[object, ...], found: compilers.Compiler, plan: Plan, headers: Headers,
        files: list[tuple[str, Digest]], result: re_pb2.ActionResult, ran: Ran,
        keys: tuple[Digest, Digest],
    ) -> None:  # fmt: skip
        search, listed = self._shadow_inputs(plan, headers, found)
        recent = Recent((found.path, found.real, signature(found.real)), tuple(files), search,
                        listed, plan, result, (ran.stdout, ran.stderr), keys)  # fmt: skip
        if len(self._recent) >= MEMO_LIMIT:
            self._recent.clear()
        self._recent[memo] = recent

    def _replay(self, recent: Recent, found: compilers.Compiler, umask: int) -> Ran | None:
        """The answer given before, if nothing it depended on has changed
        (checked by ``stat`` alone while files keep their signatures)."""
        path, real, sig = recent.compiler
        if (found.path, found.real) != (path, real) or signature(real) != sig:
            return None
        for host, digest in recent.files:
            if self.digests.digest(host) != digest:
                return None
        if self.shadows.shadowed(recent.search, recent.listed):
            return None
        if not self._place(recent.plan, recent.result, umask):
            return None
        self.stats.used(*recent.keys)
        self.stats.count("hit")
        return Ran(0, *recent.logs)

    # ------------------------------------------------------------ manifest

    def _manifest_spec(
        self, plan: Plan, platform: tuple[tuple[str, str], ...], source: Digest
    ) -> ActionSpec:
        """The manifest's own action: the command and the source, no headers."""
        tree, _ = input_tree([File(plan.source, source)], "kiln cc")
        return ActionSpec(
            argv=("kiln-cc-manifest", *plan.argv),
            input_root=tree,
            env=plan.env,
            platform=(*(p for p in platform if p[0] != "kiln-abi"), ("kiln-abi", MANIFEST_ABI)),
            working_directory=plan.cwd,
        )

    def _previous_spec(self, plan: Plan, platform: tuple[tuple[str, str], ...]) -> ActionSpec:
        """The action keying the headers of this command's latest compile,
        whatever the source held then (no input: the path is in the command)."""
        return ActionSpec(
            argv=("kiln-cc-previous", plan.source, *plan.argv),
            input_root=EMPTY_TREE,
            env=plan.env,
            platform=(*(p for p in platform if p[0] != "kiln-abi"), ("kiln-abi", MANIFEST_ABI)),
            working_directory=plan.cwd,
        )

    def _log(self, digest: re_pb2.Digest) -> bytes:
        return self.store.cas.get_bytes(Digest.from_proto(digest)) or b""

    def _manifest(self, key: Digest) -> Headers | None:
        hit = self.store.action_cache.lookup(key, touch=False)
        if hit is None or len(hit.result.output_files) != 1:
            return None
        data = self.store.cas.get_bytes(Digest.from_proto(hit.result.output_files[0].digest))
        try:
            listed = json.loads(data or b"")
            return Headers(
                tuple(listed["project"]), tuple(listed["system"]), int(listed.get("up", 0))
            )
        except (ValueError, KeyError, TypeError):
            return None

    def _record_manifest(self, spec: ActionSpec, headers: Headers) -> None:
        body = json.dumps(
            {"project": headers.project, "system": headers.system, "up": headers.up}
        ).encode()
        with self.store.writing():
            digest = self.store.cas.put_bytes(body)
            key = self.store.put_action(spec)
            result = re_pb2.ActionResult(
                exit_code=0,
                output_files=[re_pb2.OutputFile(path="headers.json", digest=digest.to_proto())],
            )
            self.store.action_cache.record(key, result, executor=MANIFEST_EXECUTOR, duration=0.0)

    # ------------------------------------------------------------ headers

    def _discover(
        self, found: compilers.Compiler, unit: Compile, plan: Plan, inv: Invocation
    ) -> Headers | str:
        """The files the compile reads, as the preprocessor lists them; or
        why it cannot be cached."""
        if unit.language == "assembler":  # no preprocessor: only the source
            return Headers((plan.source,), ())
        self.stats.count("listed")
        with tempfile.TemporaryDirectory(prefix="kiln-cc-") as tmp:
            listing = os.path.join(tmp, "deps")
            argv = [found.path, *without_outputs(list(unit.args)), "-M", "-MF", listing]
            try:
                run = subprocess.run(
                    argv, cwd=inv.cwd, env=inv.env, capture_output=True, check=False
                )
            except OSError as e:
                return f"the compiler cannot list its headers ({e})"
            if run.returncode != 0:
                return "the compiler cannot list its headers (the compile will fail)"
            text = Path(listing).read_text(errors="surrogateescape")
        paths = [os.path.normpath(os.path.join(inv.cwd, n)) for n in prerequisites(text)]
        system = [p for p in paths if is_system(p)]
        others = [p for p in paths if not is_system(p)]
        up = widen(plan.root, others)
        root = plan.root
        for _ in range(up):
            root = os.path.dirname(root)
        project = [os.path.relpath(p, root) for p in [plan.host(plan.source), *others]]
        return Headers(tuple(dict.fromkeys(project)), tuple(dict.fromkeys(system)), up)

    def _step(
        self, plan: Plan, platform: tuple[tuple[str, str], ...], headers: Headers,
        executor: NativeExecutor, tools: list[Tool], found: compilers.Compiler, store: bool,
    ) -> tuple[ActionSpec, list[tuple[str, Digest]]] | None:  # fmt: skip
        """The native step of this compile with exactly ``headers`` as its
        project files, and those files' host paths and digests; None if one
        is gone, unreadable, outside the compiler's packages, or shadowed by
        a newer file earlier on the include path. With ``store``, the files
        are put in the store."""
        root = str(executor.tool_root(tools))
        for path in headers.system:
            if not _in_tool_root(root, path):
                raise NotCacheable(f"it reads {path}, which is not part of the compiler's "
                                   "packages")  # fmt: skip
        if self._shadowed(plan, headers, found):
            return None
        files, hosts = [], []
        for rel in headers.project:
            host = plan.host(rel)
            digest = self.digests.digest(host)
            if digest is None:
                return None
            files.append(File(rel, digest))
            hosts.append((host, digest))
        if store and not self._store_inputs(hosts):
            return None
        values: list[File | Tree] = list(files)
        if not any(f.path.startswith(plan.cwd + "/") for f in files) and plan.cwd:
            values.append(Tree(plan.cwd, EMPTY_TREE))
        tree, blobs = input_tree(values, "kiln cc")
        if store:
            with self.store.writing():
                write_blobs(self.store.cas, blobs)
                self.store.cas.put_metadata([(EMPTY_TREE, b"")])
        spec = ActionSpec(
            argv=plan.argv,
            input_root=tree,
            env=plan.env,
            outputs=tuple(plan.outputs),
            platform=platform,
            working_directory=plan.cwd,
        )
        if store:
            self.store.put_action(spec)
        return spec, hosts

    def _store_inputs(self, hosts: list[tuple[str, Digest]]) -> bool:
        """Put the step's project files in the store (not synced: they are
        copies of host files, put again by the next miss if lost); False if
        one changed since it was hashed, or probes for files by name
        (``__has_include``), which no list of headers shows."""
        with self.store.writing(), self.store.cas.batch(durable=False) as batch:
            for host, digest in hosts:
                try:
                    with open(host, "rb") as f:
                        data = f.read()
                except OSError:
                    return False
                if FILE_PROBES.search(data):
                    raise NotCacheable(f"{host} probes for files (__has_include), which no "
                                       "list of headers shows")  # fmt: skip
                if batch.add_bytes(data) != digest:
                    return False
        return True

    def _shadowed(self, plan: Plan, headers: Headers, found: compilers.Compiler) -> bool:
        return self.shadows.shadowed(*self._shadow_inputs(plan, headers, found))

    def _shadow_inputs(
        self, plan: Plan, headers: Headers, found: compilers.Compiler
    ) -> tuple[tuple[str, ...], frozenset[str]]:
        """The include folders in search order, and the files read."""
        st = os.stat(found.real)
        search = (*plan.search, *compilers.system_include_dirs(
            found.real, "c", (st.st_size, st.st_mtime_ns)))  # fmt: skip
        listed = frozenset({plan.host(p) for p in headers.project} | set(headers.system))
        return search, listed

    # ------------------------------------------------------------ outputs

    def _place(self, plan: Plan, result: re_pb2.ActionResult, umask: int) -> bool:
        """Write the outputs to their host paths (each atomically); False if
        the result lacks one or its blob is gone."""
        produced = {f.path: Digest.from_proto(f.digest) for f in result.output_files}
        for rel, host in plan.outputs.items():
            digest = produced.get(rel)
            if digest is None:
                return False
            blob = self.store.cas.path(digest)
            try:
                if rel == plan.dep_file:
                    data = host_depfile(blob.read_bytes(), plan.root)
                    _write_atomically(host, data, 0o666 & ~umask)
                else:
                    _copy_atomically(str(blob), host, 0o666 & ~umask)
            except FileNotFoundError as e:
                if e.filename == str(blob):
                    return False  # the blob is gone (a gc): compile again
                raise
        return True

    def _ran(self, plan: Plan, result: re_pb2.ActionResult) -> Ran:
        return Ran(0, host_text(self._log(result.stdout_digest), plan.root),
                   host_text(self._log(result.stderr_digest), plan.root))  # fmt: skip


@functools.lru_cache(maxsize=100_000)
def _in_tool_root(root: str, path: str) -> bool:
    """Whether the sandbox of a tool root has ``path`` (a tool root never
    changes once built: it is named by the identity of its contents)."""
    return os.path.lexists(os.path.join(root, path.lstrip("/")))


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    with _temporary_beside(path, mode) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


def _copy_atomically(source: str, path: str, mode: int) -> None:
    """``source``'s bytes at ``path``, by a kernel copy (a reflink where the
    file system shares blocks): never a link to the store's file."""
    with open(source, "rb") as src, _temporary_beside(path, mode) as fd:
        left = os.fstat(src.fileno()).st_size
        while left > 0:
            copied = os.copy_file_range(src.fileno(), fd, left)
            if copied == 0:
                raise OSError(f"{source} ended early")
            left -= copied


@contextlib.contextmanager
def _temporary_beside(path: str, mode: int) -> Iterator[int]:
    """An open file that replaces ``path`` when the block ends without error."""
    folder, name = os.path.split(path)
    # A new file of a name no one can guess: never one planted in the folder.
    tmp = os.path.join(folder, f".{name}.kiln-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        yield fd
        os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
