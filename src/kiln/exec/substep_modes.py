"""What ``kiln-sub`` asks for, as the build sees it (``kiln.exec.substep_proxy``
carries the words).

    kiln-sub cc COMPILER ARGS...
        A compiler launcher (``make CC="/kiln/bin/kiln-sub cc gcc"``). One
        compile of one source (``kiln.cc.args.classify``) becomes a step of
        its own: its headers are listed by the compiler (``-M``, in the
        sandbox), the source and the headers under ``/work`` are its inputs
        at the same places, it runs in the same folder, and its object (and
        dependency file) are written back. Anything else, a compiler the
        step did not declare as a tool, a header outside ``/work`` and the
        compiler's own packages, or a file probing for others
        (``__has_include``), runs the compiler directly, as without Kiln.
    kiln-sub run [--tool NAME]... [--in PATH]... [--out PATH]...
                 [--env NAME=VALUE]... [--description TEXT] [--wasm]
                 [--recursive] -- PROGRAM ARGS...
        Any pure step: the files and folders ``--in`` (relative to the
        working folder) at the same paths, ``PROGRAM`` run among them with
        the ``--tool`` programs (a subset of the step's own; ``--wasm``: a
        WebAssembly module among the inputs instead), its ``--out`` paths
        written back, its output printed and its exit code returned.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.cc.args import FILE_PROBES, Compile, classify, without_outputs
from kiln.cc.depfile import prerequisites
from kiln.cc.plan import KEYED_ENV, environment_reason, is_system
from kiln.engine.inputs import stored_tree
from kiln.engine.values import File
from kiln.exec.substep_proxy import Hands, Hello, SandboxError, Tainted
from kiln.exec.substeps import Answer, NoService, Refused, request_step
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2

if TYPE_CHECKING:
    from kiln.store.cas import ContentStore

WORK = "/work"
EXIT_USAGE = 2
EXIT_TROUBLE = 125  # as kiln-sub.c: kiln-sub itself could not do its part
MAX_INPUT_FILES = 100_000
USAGE = (
    "usage: kiln-sub cc COMPILER ARGS...\n"
    "       kiln-sub run [--tool NAME]... [--in PATH]... [--out PATH]... [--env NAME=VALUE]...\n"
    "                    [--description TEXT] [--wasm] [--recursive] -- PROGRAM ARGS...\n"
)


@dataclass(frozen=True)
class Requester:
    """The running step that ``kiln-sub`` speaks for."""

    key: Digest
    tools: frozenset[str]  # the tools it declared
    cas: ContentStore


def serve(requester: Requester, hands: Hands, hello: Hello) -> None:
    """Do what one ``kiln-sub`` invocation asks."""
    mode, args = (hello.args[0], hello.args[1:]) if hello.args else ("", [])
    try:
        if mode == "cc" and args:
            _compile(requester, hands, hello, args)
        elif mode == "run":
            _run(requester, hands, hello, args)
        else:
            hands.exit(EXIT_USAGE, stderr=USAGE.encode())
    except Usage as e:
        hands.exit(EXIT_USAGE, stderr=f"kiln-sub: {e}\n{USAGE}".encode())
    except SandboxError as e:  # e.g. an output path the step made a folder
        hands.exit(EXIT_TROUBLE, stderr=f"kiln-sub: {e}\n".encode())


class Usage(Exception):
    """A mistake in ``kiln-sub``'s arguments."""


# ------------------------------------------------------------------ cc


def _compile(requester: Requester, hands: Hands, hello: Hello, args: list[str]) -> None:
    compiler, compiler_args = args[0], args[1:]
    unit = classify(compiler_args)
    tool = posixpath.basename(compiler)
    if (
        not isinstance(unit, Compile)
        or environment_reason(hello.env)
        or tool not in requester.tools
        or not _under_work(hello.cwd)
    ):
        hands.exec(args)
        return
    files = _compile_inputs(hands, hello.cwd, compiler, compiler_args)
    if files is None:
        hands.exec(args)
        return
    outputs = [_relative(hello.cwd, unit.output)]
    if unit.dep_file:
        outputs.append(_relative(hello.cwd, unit.dep_file))
    if any(o is None for o in outputs):
        hands.exec(args)
        return
    request = {
        "executor": "native",
        "argv": args,
        "env": {k: hello.env[k] for k in KEYED_ENV if k in hello.env},
        "input_root": str(_store_tree(requester.cas, files)),
        "outputs": outputs,
        "tools": [tool],
        "working_directory": _relative(hello.cwd, ".") or "",  # (under /work: checked above)
        "description": f"cc {unit.source}",
    }
    answer = _ask(requester, request)
    if answer.result.exit_code == 0:
        _write_outputs(requester.cas, hands, WORK, answer.result)
    _finish(requester.cas, hands, answer)


Input = tuple[File, bytes]  # a file of a requested step's inputs, and its bytes


def _compile_inputs(hands: Hands, cwd: str, compiler: str, args: list[str]) -> list[Input] | None:
    """The source and headers of a compile under ``/work``, read through
    ``hands``; None when the compile should run directly instead."""
    code, listing, _ = hands.run([compiler, *without_outputs(args), "-M"])
    if code != 0:
        return None  # the compiler itself will say what is wrong
    files: list[Input] = []
    for dependency in dict.fromkeys(prerequisites(listing.decode("utf-8", "surrogateescape"))):
        path = posixpath.normpath(posixpath.join(cwd, dependency))
        if is_system(path):
            continue  # the compiler's own packages: in its tool identity
        relative = _relative(WORK, path)
        if relative is None:
            return None  # a header outside the step's folder and the compiler's packages
        try:
            mode, data = hands.read(path)
        except SandboxError:
            return None
        if FILE_PROBES.search(data):
            return None  # looks for files no listing shows
        files.append((File(relative, Digest.of_bytes(data), bool(mode & 0o111)), data))
    return files


# ------------------------------------------------------------------ run


def _run(requester: Requester, hands: Hands, hello: Hello, args: list[str]) -> None:
    options = _parse_run(args)
    if not _under_work(hello.cwd):
        raise Usage(f"the working folder {hello.cwd} is outside {WORK}")
    files: list[Input] = []
    for path in options["in"]:
        files += _read_input(hands, path)
        if len(files) > MAX_INPUT_FILES:
            raise Usage(f"more than {MAX_INPUT_FILES} input files")
    request: dict[str, Any] = {
        "executor": "wasm" if options["wasm"] else "native",
        "argv": options["argv"],
        "env": options["env"],
        "input_root": str(_store_tree(requester.cas, files)),
        "outputs": options["out"],
        "tools": options["tool"],
        "description": options["description"] or " ".join(options["argv"][:3]),
        "recursive": options["recursive"],
    }
    answer = _ask(requester, request)
    if answer.result.exit_code == 0:
        _write_outputs(requester.cas, hands, hello.cwd, answer.result)
    _finish(requester.cas, hands, answer)


def _parse_run(args: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "tool": [], "in": [], "out": [], "env": {}, "description": "", "wasm": False,
        "recursive": False, "argv": [],
    }  # fmt: skip
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            options["argv"] = args[i + 1 :]
            break
        if arg in ("--wasm", "--recursive"):
            options[arg[2:]] = True
            i += 1
            continue
        if arg not in ("--tool", "--in", "--out", "--env", "--description"):
            raise Usage(f"unknown option {arg!r} (the program comes after --)")
        if i + 1 >= len(args):
            raise Usage(f"{arg} needs a value")
        value = args[i + 1]
        if arg == "--env":
            name, sep, text = value.partition("=")
            if not sep or not name:
                raise Usage(f"--env takes NAME=VALUE, not {value!r}")
            options["env"][name] = text
        elif arg == "--description":
            options["description"] = value
        else:
            if arg in ("--in", "--out") and not _plain_relative(value):
                raise Usage(f"{arg} {value!r}: give a path inside the working folder")
            options[arg[2:]].append(value)
        i += 2
    if not options["argv"]:
        raise Usage("no program to run (after --)")
    return options


def _read_input(hands: Hands, path: str) -> list[Input]:
    """The file at ``path``, or the files of the folder there."""
    try:
        mode, data = hands.read(path)
        return [(File(path, Digest.of_bytes(data), bool(mode & 0o111)), data)]
    except SandboxError as e:
        if e.errno != 21:  # EISDIR: a folder
            raise Usage(f"--in {path}: {e}") from None
    files: list[Input] = []
    try:
        entries = hands.list(path)
    except SandboxError as e:
        raise Usage(f"--in {path}: {e}") from None
    for name, kind in sorted(entries):
        if kind == "other":
            raise Usage(f"--in {path}: {name} is neither a file nor a folder")
        files += _read_input(hands, f"{path.rstrip('/')}/{name}")
    return files


# ------------------------------------------------------------------ shared


def _ask(requester: Requester, request: dict[str, Any]) -> Answer:
    try:
        return request_step(requester.key, request)
    except NoService:
        raise Tainted("the build that runs this step does not answer step requests") from None
    except Refused as e:
        raise Tainted(e.message + (f" ({e.hint})" if e.hint else ""), final=e.final) from None


def _store_tree(cas: ContentStore, files: list[Input]) -> Digest:
    """Put the files and their folders in the store; the root's digest."""
    for _, data in files:
        cas.put_bytes(data)
    try:
        return stored_tree(cas, [value for value, _ in files],
                           "the inputs of a step requested by kiln-sub")  # fmt: skip
    except errors.KilnError as e:
        raise Usage(e.message) from None


def _write_outputs(cas: ContentStore, hands: Hands, base: str, result: re_pb2.ActionResult) -> None:
    for f in result.output_files:
        hands.write(posixpath.join(base, f.path), 0o755 if f.is_executable else 0o644,
                    _blob(cas, Digest.from_proto(f.digest)))  # fmt: skip
    for d in result.output_directories:
        tree = re_pb2.Tree.FromString(_blob(cas, Digest.from_proto(d.tree_digest)))
        children = {Digest.of_message(c): c for c in tree.children}
        _write_folder(cas, hands, posixpath.join(base, d.path), tree.root, children)


def _write_folder(
    cas: ContentStore, hands: Hands, at: str, folder: re_pb2.Directory,
    children: dict[Digest, re_pb2.Directory],
) -> None:  # fmt: skip
    for f in folder.files:
        hands.write(posixpath.join(at, f.name), 0o755 if f.is_executable else 0o644,
                    _blob(cas, Digest.from_proto(f.digest)))  # fmt: skip
    for sub in folder.directories:
        child = children.get(Digest.from_proto(sub.digest))
        if child is not None:
            _write_folder(cas, hands, posixpath.join(at, sub.name), child, children)


def _finish(cas: ContentStore, hands: Hands, answer: Answer) -> None:
    result = answer.result
    hands.exit(
        result.exit_code,
        _blob(cas, Digest.from_proto(result.stdout_digest)),
        _blob(cas, Digest.from_proto(result.stderr_digest)),
    )


def _blob(cas: ContentStore, digest: Digest) -> bytes:
    if digest.size == 0:
        return b""
    data = cas.get_bytes(digest)
    if data is None:
        raise Tainted(f"an output of the requested step ({digest}) is missing from the store")
    return data


def _under_work(path: str) -> bool:
    return path == WORK or path.startswith(WORK + "/")


def _relative(base: str, path: str) -> str | None:
    """``path`` (relative to ``base``) relative to ``/work``; None outside it."""
    full = posixpath.normpath(posixpath.join(base, path))
    if full == WORK:
        return ""
    return full[len(WORK) + 1 :] if full.startswith(WORK + "/") else None


def _plain_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts
