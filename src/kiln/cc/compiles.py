"""``kiln cc``: every compile a pure, sandboxed, memoized native step.

A call that is one cacheable compile (``kiln.cc.args``) goes like this:

1. Its *manifest* is looked up: keyed by the compiler's tool identity, the
   sandbox form of the command (``kiln.cc.plan``) and the source's path and
   bytes, it lists the headers the same compile read last time.
2. If every listed header is still there, and no file of the same name has
   appeared earlier on the include path (which would now be read instead),
   the step's key is computed from the current bytes of exactly those
   files, and a result recorded under that key is the answer (a *hit*).
3. Otherwise (a *miss*) the compiler lists the headers (``-M``, the
   preprocessor only), and the compile runs in the native sandbox with the
   source and those headers as its only project files. A header left off
   the list makes the sandboxed compile fail, never a wrong result. The
   result is recorded only if the compile succeeded, and a failed one is
   run again directly, so its messages and exit code are the compiler's.

Headers outside the project come from the compiler's own packages (they
are part of its identity); a compile that reads any other file outside
the project runs directly, as does everything that is not one compile.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from kiln.cc import compiler as compilers
from kiln.cc.args import Compile, PassThrough, classify
from kiln.cc.depfile import prerequisites
from kiln.cc.digests import FileDigests
from kiln.cc.invocation import Exec, Invocation, Ran
from kiln.cc.plan import (
    NotCacheable,
    Plan,
    environment_reason,
    host_depfile,
    host_text,
    is_system,
    make_plan,
    widen,
)
from kiln.cc.stats import Stats
from kiln.engine.inputs import input_tree, write_blobs
from kiln.engine.values import File, Tree
from kiln.exec.kinds import local_context
from kiln.exec.native import NativeExecutor
from kiln.exec.specs import NativeLimits
from kiln.exec.tools import Tool
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.store.local import Store

MANIFEST_ABI = "kiln-cc-manifest-v1"
MANIFEST_EXECUTOR = "cc-manifest"
STEP_EXECUTOR = "native"
EMPTY_TREE = Digest.of_message(re_pb2.Directory())
USAGE = b"usage: kiln-cc COMPILER ARGS... (e.g. make CC='kiln-cc gcc')\n"


@dataclass(frozen=True)
class Headers:
    """What a compile read: project files (relative to the root) and
    files of the compiler's packages (absolute)."""

    project: tuple[str, ...]
    system: tuple[str, ...]
    up: int = 0  # the project root is this many folders above the call's own


class CompileCache:
    """Answers launcher calls from one store; safe to share between threads."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = Stats(store)
        self.digests = FileDigests()
        self._local = threading.local()

    def close(self) -> None:
        self.stats.flush()

    def _executor(self) -> NativeExecutor:
        executor = getattr(self._local, "executor", None)
        if executor is None:
            executor = self._local.executor = NativeExecutor(local_context(self.store))
        return executor

    # ------------------------------------------------------------ a call

    def handle(self, inv: Invocation) -> Ran | Exec:
        """What the launcher is to do for ``inv``."""
        split = compilers.split_launch(inv.argv)
        if split is None:
            return Ran(2, stderr=USAGE)
        name, args = split
        try:
            found = compilers.find(name, inv.cwd, inv.env.get("PATH", os.defpath), inv.launcher)
        except compilers.NotFound as e:
            return Ran(127, stderr=f"kiln cc: {e}\n".encode())
        direct = Exec([found.path, *args])
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
            return self._compile(found, unit, plan, inv, direct)
        except NotCacheable as e:
            return self._direct(direct, str(e))

    def _direct(self, direct: Exec, reason: str) -> Exec:
        self.stats.count("direct", reason)
        return direct

    def _compile(
        self, found: compilers.Compiler, unit: Compile, plan: Plan, inv: Invocation, direct: Exec
    ) -> Ran | Exec:
        executor = self._executor()
        tools, identity = executor.tools(found.path)
        platform = NativeLimits().platform([found.path], identity)
        source = self.digests.digest(plan.host(plan.source))
        if source is None:
            return self._direct(direct, f"cannot read the source {unit.source}")
        manifest = self._manifest_spec(plan, platform, source)
        known = self._manifest(manifest.key())
        if known is not None:
            wide = make_plan(found.path, unit, inv.cwd, inv.env, known.up) if known.up else plan
            spec = self._step(wide, platform, known, executor, tools, found, store=False)
            if spec is not None:
                hit = self.store.lookup(spec.key())
                if hit is not None and self._place(wide, hit.result, inv.umask):
                    self.stats.count("hit")
                    return self._ran(wide, hit.result)
        headers = self._discover(found, unit, plan, inv)
        if isinstance(headers, str):
            return self._direct(direct, headers)
        wide = make_plan(found.path, unit, inv.cwd, inv.env, headers.up) if headers.up else plan
        spec = self._step(wide, platform, headers, executor, tools, found, store=True)
        if spec is None:
            return self._direct(direct, "a header changed while it was read")
        self._record_manifest(manifest, headers)
        action, command = spec.action()
        key = spec.key()
        execution = self.store.execute_once(
            key, lambda: (executor.execute(key, action, command), STEP_EXECUTOR)
        )
        result = execution.result
        if result.exit_code != 0 or not self._place(wide, result, inv.umask):
            # A compile error, or the sandbox lacked a file the compiler
            # read: either way the compiler, run directly, says what it says.
            self.stats.count("failed")
            return direct
        self.stats.count("hit" if execution.cached else "miss")
        return self._ran(wide, result)

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

    def _manifest(self, key: Digest) -> Headers | None:
        hit = self.store.action_cache.lookup(key)
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
        with tempfile.TemporaryDirectory(prefix="kiln-cc-") as tmp:
            listing = os.path.join(tmp, "deps")
            argv = [found.path, *_without_outputs(list(unit.args)), "-M", "-MF", listing]
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
    ) -> ActionSpec | None:  # fmt: skip
        """The native step of this compile with exactly ``headers`` as its
        project files; None if one is gone, unreadable, outside the
        compiler's packages, or shadowed by a newer file earlier on the
        include path. With ``store``, the files are put in the store."""
        root = executor.tool_root(tools)
        for path in headers.system:
            if not (root / path.lstrip("/")).exists():
                raise NotCacheable(f"it reads {path}, which is not part of the compiler's "
                                   "packages")  # fmt: skip
        if self._shadowed(plan, headers, found):
            return None
        files = []
        for rel in headers.project:
            host = plan.host(rel)
            digest = self.digests.digest(host)
            if digest is None:
                return None
            if store:
                with self.store.writing():
                    if self.store.cas.put_file(host) != digest:
                        return None
            files.append(File(rel, digest))
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
        return spec

    def _shadowed(self, plan: Plan, headers: Headers, found: compilers.Compiler) -> bool:
        """Whether a file now exists that the compiler would read instead of
        a listed one: the same name in a folder searched before the one
        the listed file came from."""
        st = os.stat(found.real)
        search = (*plan.search, *compilers.system_include_dirs(
            found.real, "c", (st.st_size, st.st_mtime_ns)))  # fmt: skip
        listed = {plan.host(p) for p in headers.project} | set(headers.system)
        # A listed file under several search folders (nested ones) may have
        # been found through any of them: each is checked.
        for path in listed:
            for k, folder in enumerate(search):
                if not path.startswith(folder.rstrip("/") + "/"):
                    continue
                name = path[len(folder.rstrip("/")) + 1 :]
                for earlier in search[:k]:
                    candidate = os.path.join(earlier, name)
                    if candidate not in listed and os.path.exists(candidate):
                        return True
        return False

    # ------------------------------------------------------------ outputs

    def _place(self, plan: Plan, result: re_pb2.ActionResult, umask: int) -> bool:
        """Write the outputs to their host paths (each atomically); False if
        the result lacks one or its blob is gone."""
        produced = {f.path: Digest.from_proto(f.digest) for f in result.output_files}
        for rel, host in plan.outputs.items():
            digest = produced.get(rel)
            if digest is None:
                return False
            data = self.store.cas.get_bytes(digest)
            if data is None:
                return False
            if rel == plan.dep_file:
                data = host_depfile(data, plan.root)
            _write_atomically(host, data, 0o666 & ~umask)
        return True

    def _ran(self, plan: Plan, result: re_pb2.ActionResult) -> Ran:
        logs = [self.store.cas.get_bytes(Digest.from_proto(d)) or b""
                for d in (result.stdout_digest, result.stderr_digest)]  # fmt: skip
        return Ran(0, host_text(logs[0], plan.root), host_text(logs[1], plan.root))


def _without_outputs(args: list[str]) -> list[str]:
    """The arguments less the compile and its outputs (for ``-M``)."""
    out: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-o", "-MF", "-MT", "-MQ"):
            skip_next = True
            continue
        if arg in ("-c", "-MD", "-MMD", "-MP") or arg.startswith(("-o", "-MF", "-MT", "-MQ")):
            continue
        out.append(arg)
    return out


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
