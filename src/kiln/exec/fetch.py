"""The ``fetch`` executor: the only steps with network access.

A fetch is an ordinary action whose command is ``kiln-fetch`` with what to
get (URLs, a registry package or a git revision), how to hash it and the
pinned digest. Two hash modes:

- ``file``: the SHA-256 (or SHA-512) of the downloaded bytes as they are;
- ``tree``: the digest of the unpacked tree (tar, tar.gz/tgz, tar.bz2,
  tar.xz or zip; or a git checkout without ``.git``), i.e. the SHA-256 of
  its root REAPI ``Directory``, which keeps only names, contents, the
  executable bit and symlink targets (see ``kiln.exec.archives``).

The result is stored only if it matches the pin. A mismatch raises
``FetchMismatch`` with both digests and keeps the download aside for
inspection; nothing enters the action cache. An unpinned fetch (only when
the build allows it) downloads, stores the content and fails with the
digest to pin. Credentials are named in the command (``Auth``), never their
values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.config import load_config
from kiln.exec.base import ExecContext, ExecHooks, record_timing
from kiln.exec.download import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT, Auth, check_url
from kiln.exec.kinds import FETCH_ABI
from kiln.exec.output_trees import StoredTree
from kiln.model.digest import Digest, canonical_bytes

if TYPE_CHECKING:
    from kiln.model.reapi import re_pb2
PROGRAM = "kiln-fetch"
KINDS = ("url", "npm", "pypi", "git")
MODES = ("file", "tree")
UNPINNED = "unpinned"
_HEX = {"sha256": 64, "sha512": 128}


class FetchMismatch(errors.KilnError):
    """What arrived is not what the pin says."""


def parse_pin(text: str, where: str) -> str:
    """A pinned digest in canonical form, ``sha256:<hex>`` or ``sha512:<hex>``.
    Accepts that form, a bare SHA-256 in hex, and subresource-integrity
    strings (``sha512-<base64>``, as npm lock files write them)."""
    text = text.strip()
    algorithm, sep, value = text.partition(":")
    if not sep:
        algorithm, sep, value = text.partition("-")
        if sep and algorithm in _HEX:
            try:
                value = base64.b64decode(value, validate=True).hex()
            except (binascii.Error, ValueError):
                value = ""
        elif re.fullmatch(r"[0-9a-fA-F]{64}", text):
            algorithm, value = "sha256", text
    value = value.lower()
    if algorithm not in _HEX or not re.fullmatch(f"[0-9a-f]{{{_HEX[algorithm]}}}", value):
        raise errors.KilnError(
            f"{where}: malformed digest {text!r}",
            hint="write sha256:<64 hex digits>, sha512:<128 hex digits> or an integrity "
            "string like sha512-<base64>; `kiln prefetch URL` prints the digest to pin",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return f"{algorithm}:{value}"


@dataclass(frozen=True)
class FetchSpec:
    """What a fetch step gets; all of it (credential names, not values) is in
    its command and so in its key."""

    kind: str
    mode: str
    pin: str  # canonical pin, or UNPINNED
    name: str  # the output's path
    sources: tuple[str, ...]  # URLs (mirrors), or the registry / index / repository
    package: str = ""
    version: str = ""
    filename: str = ""
    rev: str = ""
    strip: int = 0
    auth: tuple[str, ...] = field(default=())

    def argv(self) -> list[str]:
        options = [f"--kind={self.kind}", f"--mode={self.mode}", f"--pin={self.pin}",
                   f"--name={self.name}", f"--strip={self.strip}"]  # fmt: skip
        for key in ("package", "version", "filename", "rev"):
            if getattr(self, key):
                options.append(f"--{key}={getattr(self, key)}")
        options += [f"--auth={a}" for a in self.auth]
        return [PROGRAM, *options, "--", *self.sources]

    @staticmethod
    def from_argv(argv: list[str]) -> FetchSpec:
        if not argv or argv[0] != PROGRAM or "--" not in argv:
            raise errors.KilnError(f"not a fetch command: {argv[:3]}")
        split = argv.index("--")
        values: dict[str, object] = {"auth": []}
        for option in argv[1:split]:
            key, _, value = option[2:].partition("=")
            if key == "auth":
                values["auth"].append(value)  # type: ignore[attr-defined]
            else:
                values[key] = int(value) if key == "strip" else value
        values["auth"] = tuple(values["auth"])  # type: ignore[arg-type]
        return FetchSpec(sources=tuple(argv[split + 1 :]), **values)  # type: ignore[arg-type]

    def platform(self) -> tuple[tuple[str, str], ...]:
        return (("kiln-abi", FETCH_ABI), ("mode", self.mode), ("pin", self.pin))

    def check(self, where: str) -> None:
        """Clear errors for what cannot be fetched, before anything runs."""
        if self.kind not in KINDS or self.mode not in MODES:
            raise errors.KilnError(f"{where}: unknown fetch {self.kind}/{self.mode}")
        if self.kind == "git" and self.mode != "tree":
            raise errors.KilnError(f"{where}: a git fetch is always hashed as a tree")
        if self.pin != UNPINNED and self.mode == "tree" and not self.pin.startswith("sha256:"):
            raise errors.KilnError(
                f"{where}: a tree is pinned by its sha256 digest, not {self.pin.split(':')[0]}",
                hint="`kiln prefetch --unpack URL` prints it",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        if not self.sources:
            raise errors.KilnError(f"{where}: nothing to fetch from", exit_code=2)
        for url in self.sources:
            if self.kind != "git":
                check_url(url, where)
            elif urllib.parse.urlsplit(url).password:
                raise errors.KilnError(
                    f"{where}: the repository URL carries a password; it would be in the key",
                    hint="use a git credential helper or an SSH key instead",
                    exit_code=errors.ExitCode.BAD_INPUT,
                )
        for a in self.auth:
            Auth.parse(a, where)
        name_ok = self.name and "/" not in self.name and self.name not in (".", "..")
        if not name_ok:
            raise errors.KilnError(
                f"{where}: fetch name {self.name!r} must be a plain file name",
                exit_code=errors.ExitCode.BAD_INPUT,
            )


class FetchExecutor:
    """Downloads, checks and stores fetch actions."""

    name = "fetch"

    def __init__(
        self,
        ctx: ExecContext,
        hooks: ExecHooks | None = None,
        *,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> None:
        """``hooks.on_download`` hears how each download progresses."""
        self._cas = ctx.cas
        self._scratch = ctx.scratch
        env_timeout = os.environ.get("KILN_FETCH_TIMEOUT")
        self._timeout = timeout or (float(env_timeout) if env_timeout else DEFAULT_TIMEOUT)
        env_attempts = os.environ.get("KILN_FETCH_ATTEMPTS")
        self._attempts = attempts or (int(env_attempts) if env_attempts else DEFAULT_ATTEMPTS)
        self._progress = hooks.on_download if hooks is not None else None
        self._partial = ctx.state / "fetch-partial"
        self._rejected = ctx.state / "fetch-rejected"

    def execute(
        self, key: Digest, action: re_pb2.Action, command: re_pb2.Command
    ) -> re_pb2.ActionResult:
        from kiln.model.reapi import re_pb2

        spec = FetchSpec.from_argv(list(command.arguments))
        started = time.time_ns()
        result = re_pb2.ActionResult(exit_code=0)
        auth = [Auth(a) for a in spec.auth]
        known = self._in_store(spec)
        if known is not None:
            (digest, tree), origin = known, "the store (already there)"
        else:
            with tempfile.TemporaryDirectory(prefix="fetch-", dir=self._scratch()) as tmp:
                if spec.kind == "git":
                    origin, stored, checkout = self._git(spec, Path(tmp))
                    shutil.rmtree(checkout / ".git", ignore_errors=True)
                    self._verify(spec, origin, f"sha256:{stored.root.hash}", checkout)
                    digest, tree = stored.root, stored.tree
                else:
                    origin, path = self._download(spec, auth)
                    digest, tree = self._check_and_store(spec, origin, path)
        if tree is None:
            result.output_files.add(path=spec.name, digest=digest.to_proto())
        else:
            result.output_directories.add(path=spec.name, tree_digest=tree.to_proto())
        with self._cas.batch(durable=False) as batch:
            result.stdout_digest.CopyFrom(batch.add_bytes(f"from {origin}\n".encode()).to_proto())
            result.stderr_digest.CopyFrom(batch.add_bytes(b"").to_proto())
        record_timing(result, "kiln-fetch", started)
        return result

    def prefetch(self, spec: FetchSpec) -> tuple[str, Digest, Digest | None]:
        """Download ``spec`` (unpinned) into the store: (the pin to write, the
        file's or root's digest, the Tree's digest for a tree)."""
        with tempfile.TemporaryDirectory(prefix="fetch-", dir=self._scratch()) as tmp:
            if spec.kind == "git":
                _, stored, _ = self._git(spec, Path(tmp))
                return f"sha256:{stored.root.hash}", stored.root, stored.tree
            origin, path = self._download(spec, [Auth(a) for a in spec.auth])
            try:
                if spec.mode == "file":
                    with self._cas.batch(durable=False) as batch:
                        blob = batch.add_file(path)
                    return f"sha256:{blob.hash}", blob, None
                with self._cas.batch(durable=False) as batch:
                    stored = self._archive_tree(batch, path, spec.strip, origin)
                return f"sha256:{stored.root.hash}", stored.root, stored.tree
            finally:
                path.unlink(missing_ok=True)

    def _in_store(self, spec: FetchSpec) -> tuple[Digest, Digest | None] | None:
        """The pinned content if the store already holds all of it (e.g. from
        ``kiln prefetch`` or a fetch of the same thing from another URL)."""
        from kiln.model.tree import tree_message

        algorithm, _, hash_hex = spec.pin.partition(":")
        if algorithm != "sha256":
            return None
        cas = self._cas
        if spec.mode == "file":
            try:
                digest = Digest(hash_hex, cas.path_for_hash(hash_hex).stat().st_size)
            except OSError:
                return None
            return (digest, None) if cas.has(digest) else None
        data = cas.get_bytes_by_hash(hash_hex)
        if data is None:
            return None
        root = Digest(hash_hex, len(data))
        try:
            tree = tree_message(cas, root)  # (raises if a directory is missing)
        except errors.KilnError:
            return None
        files = [Digest.from_proto(f.digest) for d in (tree.root, *tree.children) for f in d.files]
        if cas.find_missing(files):
            return None
        with cas.batch(durable=False) as batch:
            return root, batch.add_metadata(canonical_bytes(tree))

    # ------------------------------------------------------------ download

    def _download(self, spec: FetchSpec, auth: list[Auth]) -> tuple[str, Path]:
        from kiln.exec.download import download
        from kiln.exec.registries import npm_tarball, pypi_file

        urls = list(spec.sources)
        registry_args = (auth, self._timeout, self._attempts)
        if spec.kind == "npm":
            urls = [npm_tarball(urls[0], spec.package, spec.version, *registry_args)]
        elif spec.kind == "pypi":
            urls = [pypi_file(urls[0], spec.package, spec.version, spec.filename, *registry_args)]
        self._partial.mkdir(exist_ok=True)
        return download(
            urls, self._partial_for, auth=auth, timeout=self._timeout, attempts=self._attempts,
            progress=self._progress,
        )  # fmt: skip

    def _partial_for(self, url: str) -> Path:
        """Where a download from ``url`` collects (kept across builds to resume)."""
        return self._partial / hashlib.sha256(url.encode()).hexdigest()[:32]

    def _check_and_store(
        self, spec: FetchSpec, origin: str, path: Path
    ) -> tuple[Digest, Digest | None]:
        """Store what arrived if it matches the pin: (blob or root digest, tree)."""
        try:
            if spec.mode == "file":
                algorithm = spec.pin.split(":")[0] if spec.pin != UNPINNED else "sha256"
                got = f"{algorithm}:{file_hash(path, algorithm)}"
                if spec.pin == UNPINNED:  # kept, so the build that pins it needs no download
                    with self._cas.batch(durable=False) as batch:
                        batch.add_file(path)
                self._verify(spec, origin, got, path)
                with self._cas.batch(durable=False) as batch:
                    return batch.add_file(path), None
            with self._cas.batch(durable=False) as batch:
                stored = self._archive_tree(batch, path, spec.strip, origin)
            self._verify(spec, origin, f"sha256:{stored.root.hash}", path)
            return stored.root, stored.tree
        finally:
            path.unlink(missing_ok=True)

    def _archive_tree(self, batch: Any, path: Path, strip: int, origin: str) -> StoredTree:
        from kiln.exec.archives import archive_tree

        return archive_tree(
            batch, path, strip, where=origin,
            limits=load_config().archives, scratch=self._scratch(),
        )  # fmt: skip

    def _verify(self, spec: FetchSpec, origin: str, got: str, path: Path | None) -> None:
        if got == spec.pin:
            return
        keep = path is not None and spec.pin != UNPINNED  # unpinned content is in the store
        kept = self._keep_aside(spec.name, got, path) if keep and path else None
        aside = f"\n  the download is kept at {kept}" if kept else ""
        if spec.pin == UNPINNED:
            raise FetchMismatch(
                f"fetch {spec.name!r} from {origin} has no pinned digest\n  got: {got}{aside}",
                hint=f'pin it: digest="{got}"',
                exit_code=errors.ExitCode.FAILED,
            )
        raise FetchMismatch(
            f"fetch {spec.name!r} from {origin}: digest mismatch\n"
            f"  expected: {spec.pin}\n  got:      {got}{aside}",
            hint="the source changed or is not the pinned one; do not use it unless you trust it",
            exit_code=errors.ExitCode.FAILED,
        )

    def _keep_aside(self, name: str, got: str, path: Path) -> Path:
        self._rejected.mkdir(exist_ok=True)
        kept = self._rejected / f"{got.split(':')[1][:16]}-{name}"
        if path.is_file():
            shutil.move(path, kept)
        else:
            shutil.copytree(path, kept, dirs_exist_ok=True)
        return kept

    # ------------------------------------------------------------ git

    def _git(self, spec: FetchSpec, tmp: Path) -> tuple[str, StoredTree, Path]:
        """Check out ``spec.rev`` and store it (without .git): (origin, tree, checkout)."""
        from kiln.exec.archives import folder_tree

        repo, checkout = spec.sources[0], tmp / "checkout"
        git = shutil.which("git")
        if git is None:
            raise errors.KilnError("a git fetch needs git", hint="apt-get install git")
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C"}  # fmt: skip

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [git, "-C", str(checkout), *args], env=env, capture_output=True, text=True,
                timeout=self._timeout * self._attempts,
            )  # fmt: skip

        checkout.mkdir()
        steps = [
            ("init", "-q"),
            ("fetch", "-q", "--depth=1", repo, spec.rev),
            ("-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"),
        ]
        for step in steps:
            proc = run(*step)
            if proc.returncode != 0:
                raise errors.KilnError(
                    f"git {step[0]} of {repo} at {spec.rev} failed: {proc.stderr.strip()[-500:]}",
                    hint="check the repository URL and that the revision exists",
                    exit_code=errors.ExitCode.FAILED,
                )
        with self._cas.batch(durable=False) as batch:
            stored = folder_tree(batch, checkout, skip=frozenset({".git"}))
        return f"{repo} at {spec.rev}", stored, checkout


def file_hash(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes with ``algorithm`` (e.g. sha256)."""
    if algorithm == "sha256":
        return Digest.of_file(path).hash
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()
