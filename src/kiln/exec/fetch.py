"""The ``fetch`` executor: the only steps with network access.

A fetch is an ordinary action whose command is ``kiln-fetch`` with what to
get (URLs, a registry package or a git revision), how to hash it and the
pinned digest (``kiln.exec.specs.FetchSpec``). Two hash modes:

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

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from kiln import errors
from kiln.config import load_config
from kiln.exec.archives import archive_tree, folder_tree
from kiln.exec.base import ExecContext, ExecHooks, record_timing
from kiln.exec.download import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT, download
from kiln.exec.output_trees import StoredTree
from kiln.exec.registries import npm_tarball, pypi_file
from kiln.exec.specs import UNPINNED, Auth, FetchSpec
from kiln.model.digest import Digest, canonical_bytes
from kiln.model.reapi import re_pb2
from kiln.model.tree import tree_message


class FetchMismatch(errors.KilnError):
    """What arrived is not what the pin says."""


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
